// ShadowKV ("ShadowKV: KV Cache in Shadows for High-Throughput Long-Context LLM Inference"): a layer's keys before
// RoPE are close to low rank, so at the prompt's end they are kept as a rank-r factorization (a (n, r) per token,
// b (r, width) per layer, width = kv-heads x head dim) and the values go to a cold tier. Each chunk of 8
// consecutive tokens keeps a landmark, the mean of its rotated keys; chunks that a landmark stands for badly (the
// lowest cosine between a key and its chunk's mean) and the first chunk (the attention sink) keep their keys exact.
// At every decode step a query scores the landmarks, and the chunks with the highest attention, a budget's worth,
// are rebuilt: keys from the factors, rotated at their positions, values fetched from the cold tier. Attention
// reads those, the exact chunks and the store, which keeps only the prompt's last tokens and every generated one.
//
// Here the cold tier is host memory like the rest (on a GPU it would be the host's, the fast tier the device's);
// bytes_fast() and bytes_cold() say what each holds. Decode reads the factors of the chosen chunks, the landmarks
// and the chosen values, not the whole cache.
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include "kv/read_filter.h"

namespace longctx::kv {

// A rank-r factorization of the rows x (n, D): b (r, D) orthonormal rows spanning the top r right singular
// vectors (found by subspace iteration on the Gram matrix x^T x, in double; D is a layer's key width, a few
// hundred), and a = x b^T (n, r), so that a b is the projection of x on them: the best rank-r approximation up to
// the iteration's convergence.
void low_rank_factorize(const float* x, int64_t n, int32_t D, int32_t r, std::vector<float>& a,
                        std::vector<float>& b);

// The loops of a decode step (shadowkv_simd.cpp): out[c] = scale * q . landmarks[c] for n f16 landmarks of d; x
// turned into its softmax in place; n f16 values widened; and one key before RoPE, out (d) = a (r) times b (r rows of d, b_stride floats
// apart).
void shadowkv_landmark_scores(const float* q, const uint16_t* landmarks, int32_t n, int32_t d, float scale,
                              float* out);
void shadowkv_softmax(float* x, int32_t n);
void shadowkv_f16_to_f32(const uint16_t* x, int32_t n, float* out);
void shadowkv_rebuild_key(const float* a, int32_t r, const float* b, int64_t b_stride, int32_t d, float* out);

struct ShadowKvOptions {
  int32_t budget = 1024;  // tokens rebuilt per (layer, kv-head) each decode step, in whole chunks
  int32_t chunk = 8;      // tokens per chunk (one landmark each)
  int32_t rank = 0;       // of the key factorization; 0: rank_for's default
  int32_t outliers = 8;   // chunks per (layer, kv-head) kept exact besides the first
  int32_t recent = 32;    // the prompt's last tokens that stay in the store, at least
};

class ShadowKvReadFilter final : public KvReadFilter {
 public:
  explicit ShadowKvReadFilter(const ShadowKvOptions& o);

  // What one layer holds for one kv-head.
  struct Head {
    std::vector<uint16_t> landmarks;    // (n_chunks, head_dim) f16: the mean of each chunk's rotated keys
    std::vector<int32_t> exact_index;   // (n_chunks): the chunk's place in exact_keys, -1 when rebuilt
    std::vector<uint16_t> exact_keys;   // (n_exact * chunk, head_dim) f16, rotated
    std::vector<uint16_t> exact_values; // (n_exact * chunk, head_dim) f16
    std::vector<uint16_t> values;       // cold tier: (n_shadow, head_dim) f16, every shadowed token's value
  };
  // What a layer holds: tokens at positions 0 .. n_shadow - 1, whose keys the factors rebuild.
  struct Layer {
    int32_t n_shadow = 0, rank = 0;
    std::vector<uint16_t> a;  // (n_shadow, rank) f16
    std::vector<float> b;     // (rank, n_head_kv * head_dim)
    std::vector<Head> heads;  // (n_head_kv)
    float rope_base = 0, scale = 1;
    int32_t n_rot = 0;
    RopeOrder rope_order = RopeOrder::Adjacent;
  };

  void narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) override;
  bool holds_tokens() const override { return true; }
  int32_t prefill_query_stats_from(int32_t n_prompt) const override { return n_prompt - 1; }
  void after_prefill(KvSequence& seq, const KvScores& scores) override;
  void reset() override;
  size_t bytes_fast() const override;
  size_t bytes_cold() const override;

  const ShadowKvOptions& options() const { return o_; }
  // The layer's shadow, null when it holds none (a sliding-window layer, or a prompt too short to gain).
  const Layer* layer(int32_t l) const;
  // The rank a layer of n_head_kv heads of head_dim is factorized at.
  int32_t rank_for(int32_t n_head_kv, int32_t head_dim) const;
  // Rows attention read against rows held (shadowed and in the store), summed over every narrow() of a shadowed
  // layer since the last reset.
  int64_t rows_read() const { return rows_read_; }
  int64_t rows_held() const { return rows_held_; }
  // Bytes of what it holds that those narrow() calls read: landmarks, the factor rows and cold values of the rebuilt
  // chunks, the exact chunks (b, a few KiB a layer, is left out). The store's part is the store's.
  int64_t bytes_read() const { return bytes_read_; }
  void reset_counts() { rows_read_ = rows_held_ = bytes_read_ = 0; }

 private:
  // cos then sin (n_rot / 2 each) of positions 0 .. n - 1, per RoPE base; shared by the layers that use it.
  struct RopeTable {
    int32_t n_rot = 0;
    std::vector<float> cos, sin;  // (n, n_rot / 2)
  };
  const RopeTable& rope_table(float base, int32_t n_rot, int32_t n);
  // The prompt tokens layer l would shadow (whole chunks, the recent ones left out); 0: none (a sliding-window
  // layer, heads holding different tokens, or too short a prompt to gain).
  int32_t shadow_length(const KvSequence& seq, int32_t l) const;
  // Layer l's shadow of its first n_shadow tokens (shadow_length) from the store's copy (which it leaves as it is).
  void shadow_layer(const KvSequence& seq, int32_t l, int32_t n_shadow, const KvScores& scores);
  // The chunks (ascending) head g of layer L reads for the chunk's queries: the exact ones, and per query the
  // best budget's worth of the others by their landmarks' attention (max over the query heads of g).
  void select_chunks(const Layer& L, int32_t g, const float* q, int32_t n_tok, int32_t n_head, int32_t d);

  ShadowKvOptions o_;
  std::vector<Layer> layers_;  // (n_layer); n_shadow == 0 where none is held
  std::map<float, RopeTable> rope_tables_;
  int64_t rows_read_ = 0, rows_held_ = 0, bytes_read_ = 0;
  // Scratch of narrow(): the rebuilt pages and positions of each kv-head (alive while the layer's attention runs).
  std::vector<std::vector<float>> pages_;
  std::vector<std::vector<int32_t>> positions_;
  std::vector<int32_t> chosen_;
  std::vector<std::vector<int32_t>> chosen_by_head_;
  std::vector<uint8_t> mark_;
  std::vector<float> probs_, best_;
};

}  // namespace longctx::kv
