// The forward pass of every supported architecture on CPU, f32 activations and accumulation. A chunk of tokens
// goes through each layer at once (matrix-matrix products), so prefill never runs token by token.
#pragma once
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "model/model.h"

namespace longctx {

// Sliding-window layers: a query at position q sees keys in (q - window, q], and every later query has a larger
// position, so a key at or before next_pos - window is never read again. Frees those slots on every local layer,
// exactly (no output changes), and tells the policy which slots went so its per-slot state follows. Call it only
// between forwards whose gathered attention scores the policy has already consumed (slots are renumbered).
void kv_expire_window(const ModelConfig& c, kv::KvSequence& kv, kv::KvPolicy& policy, int32_t next_pos);

class Forward {
 public:
  // n_batch: the most tokens one call to run() takes; activation buffers are sized for it.
  Forward(const Model& model, ThreadPool& pool, int32_t n_batch);

  // Runs n tokens at the given positions, appending their keys and values to `kv`, and writes the logits of the
  // chunk rows listed in logit_rows: logits (logit_rows.size(), n_vocab). n <= n_batch.
  // When scores is given and wanted, the attention of the queries at positions >= scores->first_pos is added
  // into it, layer by layer, for the KV policy.
  void run(kv::KvSequence& kv, const int32_t* tokens, const int32_t* positions, int32_t n,
           const std::vector<int32_t>& logit_rows, float* logits, kv::KvScores* scores = nullptr);

  int32_t n_batch() const { return n_batch_; }
  const Model& model() const { return model_; }

 private:
  void matmul(const Weight& w, const float* x, int32_t n, float* y);  // y (n, w.n_out) = x (n, w.n_in) W^T

  const Model& model_;
  ThreadPool& pool_;
  int32_t n_batch_;
  std::vector<float> x_;     // (n_batch, n_embd) residual stream
  std::vector<float> xn_;    // (n_batch, n_embd) normalized input of a block
  std::vector<float> q_;     // (n_batch, n_head, head_dim)
  std::vector<float> k_;     // (n_batch, n_head_kv, head_dim)
  std::vector<float> v_;     // (n_batch, n_head_kv, head_dim)
  std::vector<float> attn_;  // (n_batch, n_head, head_dim)
  std::vector<float> out_;   // (n_batch, n_embd) block output before the residual add
  std::vector<float> gate_;  // (n_batch, n_ff)
  std::vector<float> up_;    // (n_batch, n_ff)
};

}  // namespace longctx
