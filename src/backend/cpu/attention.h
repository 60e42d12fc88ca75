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

// One (layer, kv-head): page p holds slots [slot0[p], slot0[p + 1]) in its first rows, at most page_tokens of
// them, keys and values in formats[p] (kv_page_codec.h). Pages need not be full: eviction inside a packed page
// compacts it in place, keeping the scales its rows were quantized with.
struct KvHeadView {
  std::vector<const uint8_t*> pages;  // (n_pages)
  std::vector<KvFormat> formats;      // (n_pages)
  std::vector<int32_t> slot0;         // (n_pages + 1) first slot of each page; slot0[n_pages] == n_tokens
  const int32_t* positions = nullptr;  // (n_tokens) original position of each slot
  int32_t n_tokens = 0;
  // Per page, the element-wise min then max of its keys ((n_pages, 2, head_dim) f32), where the store keeps them
  // (Quest's page summaries); null otherwise. The attention kernels do not read it; keep_pages leaves it null.
  const float* key_summary = nullptr;
  int32_t n_pages() const { return static_cast<int32_t>(pages.size()); }
  int32_t page_rows(int32_t p) const { return slot0[static_cast<size_t>(p) + 1] - slot0[static_cast<size_t>(p)]; }
  int32_t page_of(int32_t slot) const;  // the page holding a slot (binary search)
};

// The view of a head restricted to some of its pages (Quest's query-aware pages, a speculative draft's part of the
// cache): pages in ascending order. The kept slots are renumbered from 0 in order; their original positions are
// gathered into `positions` (which the returned view points into, so it must outlive the view).
KvHeadView keep_pages(const KvHeadView& head, const std::vector<int32_t>& pages, std::vector<int32_t>& positions);

struct KvLayerView {
  std::vector<KvHeadView> heads;  // (n_head_kv)
  int32_t page_tokens = 0;
  int32_t head_dim = 0;
  int32_t n_head = 0;  // query heads of the q handed to a read filter with this view (set by the forward); 0: unset
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

// How attention_scores folds the probabilities of many queries into one score per slot: their sum (SnapKV's vote,
// H2O's accumulation), or their maximum (KVzip: a token matters if any query of the reconstruction needs it).
enum class ScoreReduce { Sum, Max };

// The attention that queries paid to cached tokens, for the token policies (SnapKV's observation window, H2O's
// accumulation, TOVA, KVzip): for each chunk row t >= first_row and each query head, the softmax probabilities over
// the head's visible slots, reduced over those rows and over the query heads sharing a kv-head (GQA-aware voting):
// summed, or with ScoreReduce::Max the maximum taken. scores: (n_head_kv, n_slots_stride), accumulated into (not
// cleared: added to, or max'ed with); n_slots_stride >= every head's n_tokens. Costs one more pass of q·k over the
// selected rows only, and nothing when no policy asks.
void attention_scores(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                      int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride,
                      ScoreReduce reduce = ScoreReduce::Sum);

// The plain reference of attention_scores: one query head and row at a time, in double.
void attention_scores_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                                int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride,
                                ScoreReduce reduce = ScoreReduce::Sum);

// The plain reference: for every query and head, softmax over all visible keys in one pass, in double.
void attention_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                         const KvLayerView& kv, float* out);

}  // namespace longctx::cpu
