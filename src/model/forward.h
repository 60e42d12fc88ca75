// The forward pass of every supported architecture on CPU, f32 activations and accumulation. A chunk of tokens
// goes through each layer at once (matrix-matrix products), so prefill never runs token by token.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/read_filter.h"
#include "model/model.h"

namespace longctx {

// Sliding-window layers: a query at position q sees keys in (q - window, q], and every later query has a larger
// position, so a key at or before next_pos - window is never read again. Frees those slots on every local layer
// (no output changes: attention masks them anyway) and tells the policy which slots went so its per-slot state
// follows. After a decode step (decode_step) under a policy that leaves the cache alone while decoding
// (KvPolicy::passive_during_decode) only whole pages go, when every slot of the oldest is expired: a step then frees
// a page every page_tokens steps instead of compacting the oldest page every step (a third of Gemma 3's decode time
// on the CPU), and the cache holds at most a page more per head. Otherwise every expired slot goes at once, since
// what a policy selects from is what the cache holds. Call it only between forwards whose gathered attention scores
// the policy has already consumed (slots are renumbered).
void kv_expire_window(const ModelConfig& c, kv::KvSequence& kv, kv::KvPolicy& policy, int32_t next_pos,
                      bool decode_step = false);

// StreamingLLM ("Efficient Streaming Language Models with Attention Sinks") positions tokens within the cache: the
// cached tokens, in position order, sit at 0..n-1 and the query after them at n. RoPE scores depend only on the
// distance from query to key, so the rule can be kept in the original frame: the query stays at its original
// position q and the key of rank r (of n cached, the query's own included) moves to q - (n - 1) + r. A window that
// runs contiguously up to the query already sits there; only keys before a gap, the attention sinks, move.
//
// How, of the two exact ways: keys stay stored rotated at their original positions (the store's contract, so the
// window keys need nothing, and the sinks may be packed like any page), and at each decode step the keys that must
// move are read and rotated by (target - original) into a scratch f32 copy of their page, which the attention reads
// in place of the stored page. The rotation starts from the stored bits every step and is never written back, so the
// error stays the one rounding of storage, as for every other key, however long the stream; the alternative, keys
// stored before RoPE and rotated on every read, would rotate the whole window each step for the same result.

// A key that must move: its slot and the position it is rotated to.
struct KvKeyShift {
  int32_t slot = 0;
  int32_t target = 0;
};

// The keys of one (layer, kv-head) that in-cache positions move, for a query at q_pos whose own key is cached:
// positions (n_slots), unique and <= q_pos. Empty when the cache runs contiguously from 0 (nothing evicted).
std::vector<KvKeyShift> kv_in_cache_shifts(const std::vector<int32_t>& positions, int32_t q_pos);

// Re-rotates, for one layer's attention, the keys that in-cache positions move (kv_in_cache_shifts), by pointing the
// view's pages that hold them at scratch f32 copies; the store is not changed, and the view's positions stay the
// original ones (causal and sliding-window masks keep working on them). Returns how many keys moved.
class KvInCacheRotation {
 public:
  int32_t apply(const kv::KvSequence& kv, int32_t layer, int32_t q_pos, float rope_base, int32_t n_rot,
                RopeOrder order, KvLayerView& view);  // host pages only (the scratch copies are host memory)

 private:
  std::vector<std::vector<float>> pages_;  // scratch pages in the F32 page layout, reused from layer to layer
  std::vector<float> k_, v_;               // (page_tokens, head_dim) rows of one page
  // The angles of the last rotation: every sink of every head of a layer turns by the same difference, and layers
  // of one RoPE base by the same one too, so they are formed once a step, not once a key.
  int32_t angles_delta_ = 0;
  float angles_base_ = 0;
  int32_t angles_n_rot_ = 0;
  std::vector<float> cos_, sin_;  // (n_rot / 2)
};

// KvReadFilter (kv/read_filter.h): what a forward reads of each layer's cache.

// One sequence's part of a forward: n consecutive rows of the chunk, at their positions in that sequence, with what
// that sequence's policy asks of the forward (Forward::run's single-sequence form describes each field).
struct ForwardSegment {
  kv::KvSequence* kv = nullptr;
  const int32_t* tokens = nullptr;     // host (n)
  const int32_t* positions = nullptr;  // host (n)
  int32_t n = 0;
  kv::KvScores* scores = nullptr;
  kv::KvPositions key_positions = kv::KvPositions::Original;
  KvReadFilter* read = nullptr;
};

class Forward {
 public:
  // n_batch: the most tokens one call to run() takes; activation buffers (backend memory) are sized for it. Every
  // op runs on `backend`; the model's matrices and norm vectors are handed to its prepare() here. The KV sequences
  // given to run() must keep their pages in backend.kv_memory(). Host-side work of the policies (query statistics)
  // runs on host_pool when given, else on the calling thread.
  Forward(const Model& model, Backend& backend, int32_t n_batch, ThreadPool* host_pool = nullptr);
  // The CPU backend on pool's threads, owned by the forward.
  Forward(const Model& model, ThreadPool& pool, int32_t n_batch);

  // Runs n tokens at the given positions, appending their keys and values to `kv`, and writes the logits of the
  // chunk rows listed in logit_rows into host memory: logits (logit_rows.size(), n_vocab). n <= n_batch.
  // When scores is given and wanted, the attention of the queries at positions >= scores->first_pos is added
  // into it (or max'ed, scores->reduce), layer by layer, for the KV policy; when scores->queries is wanted, the
  // queries at positions >= its first_pos are added to its statistics, before RoPE (read on the host). key_positions
  // InCache (one token at a time only, host-memory backends only) applies StreamingLLM's in-cache positions
  // (KvInCacheRotation); positions stay the tokens' original ones. read, when given, narrows each layer's attention
  // to part of the cache (KvReadFilter; it is handed q in host memory).
  void run(kv::KvSequence& kv, const int32_t* tokens, const int32_t* positions, int32_t n,
           const std::vector<int32_t>& logit_rows, float* logits, kv::KvScores* scores = nullptr,
           kv::KvPositions key_positions = kv::KvPositions::Original, KvReadFilter* read = nullptr);
  // Several sequences in one forward (continuous batching): the segments' rows are stacked in order, every weight
  // is read once for all of them (the matmuls, norms and activations run over the stacked rows), and each
  // segment's attention, scores and read filter act on its own cache only. logit_rows index the stacked rows. The
  // sum of the segments' n is at most n_batch; a sequence appears in at most one segment.
  void run(std::span<const ForwardSegment> segments, const std::vector<int32_t>& logit_rows, float* logits);

  int32_t n_batch() const { return n_batch_; }
  const Model& model() const { return model_; }
  Backend& backend() { return backend_; }
  ThreadPool& host_pool() { return host_pool_; }

 private:
  Forward(const Model& model, std::unique_ptr<Backend> owned, ThreadPool* host_pool, int32_t n_batch);
  void matmul(const Weight& w, const float* x, int32_t n, float* y);  // y (n, w.n_out) = x (n, w.n_in) W^T
  // The output head over the stacked rows logit_rows (of n) into logits (host).
  void output_logits(const std::vector<int32_t>& logit_rows, int32_t n, float* logits);
  // q_ (n rows) as host memory: q_ itself on a host backend, else a copy.
  const float* q_on_host(int32_t n);
  std::vector<int32_t> tokens_, positions_;  // the segments' rows stacked (host)

  const Model& model_;
  std::unique_ptr<Backend> owned_;  // the CPU backend of the ThreadPool constructor
  Backend& backend_;
  std::unique_ptr<ThreadPool> owned_host_pool_;
  ThreadPool& host_pool_;
  int32_t n_batch_;
  Backend::Floats x_;     // (n_batch, n_embd) residual stream
  Backend::Floats xn_;    // (n_batch, n_embd) normalized input of a block
  Backend::Floats q_;     // (n_batch, n_head, head_dim)
  Backend::Floats k_;     // (n_batch, n_head_kv, head_dim)
  Backend::Floats v_;     // (n_batch, n_head_kv, head_dim)
  Backend::Floats attn_;  // (n_batch, n_head, head_dim)
  Backend::Floats out_;   // (n_batch, n_embd) block output before the residual add
  Backend::Floats gate_;  // (n_batch, n_ff)
  Backend::Floats up_;    // (n_batch, n_ff)
  Backend::Floats logits_;  // (rows, n_vocab) on a device backend, grown as asked
  size_t logits_floats_ = 0;
  std::vector<float> q_host_;  // q_ copied to the host for host-side readers, on a device backend
  KvInCacheRotation in_cache_;
};

}  // namespace longctx
