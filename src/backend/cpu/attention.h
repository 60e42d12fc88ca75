// Grouped-query attention over the paged KV store, computed as tiled online-softmax attention
// (the FlashAttention algorithm: "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness"),
// one KV page per tile. For decode the pages are split across threads and the partial softmax states merged
// (the Flash-Decoding split-K scheme).
#pragma once
#include <cstdint>
#include <vector>

#include "core/kv_format.h"
#include "core/thread_pool.h"

namespace longctx::cpu {

// One (layer, kv-head): page p holds keys (page_tokens, head_dim) then values (page_tokens, head_dim) in `format`.
struct KvHeadView {
  std::vector<const uint8_t*> pages;  // (n_pages)
  const int32_t* positions = nullptr;  // (n_tokens) original position of each slot
  int32_t n_tokens = 0;
};

struct KvLayerView {
  std::vector<KvHeadView> heads;  // (n_head_kv)
  int32_t page_tokens = 0;
  int32_t head_dim = 0;
  KvFormat format = KvFormat::F16;
};

struct AttentionParams {
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  float scale = 1.0f;
  // Sliding window: a query at position p sees keys at positions in (p - window, p]; 0 means unlimited.
  int32_t window = 0;
};

// q: (n_tok, n_head, head_dim); q_pos: (n_tok); out: (n_tok, n_head, head_dim).
// Causal by position: a query sees only keys whose position is <= its own. A query that sees no key gets zeros.
void attention(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
               const KvLayerView& kv, float* out);

// The plain reference: for every query and head, softmax over all visible keys in one pass, in double.
void attention_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                         const KvLayerView& kv, float* out);

}  // namespace longctx::cpu
