// Grouped-query attention over the paged KV store, computed as tiled online-softmax attention
// (the FlashAttention algorithm: "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness"),
// one KV page per tile. For decode the pages are split across threads and the partial softmax states merged
// (the Flash-Decoding split-K scheme).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "core/kv_format.h"
#include "core/thread_pool.h"

namespace longctx::cpu {

// The page views, the parameters and the score reduction are backend.h's (the one backend interface).
using longctx::AttentionParams;
using longctx::keep_pages;
using longctx::KvHeadView;
using longctx::KvLayerView;
using longctx::ScoreReduce;

// q: (n_tok, n_head, head_dim); q_pos: (n_tok); out: (n_tok, n_head, head_dim).
// Causal by position: a query sees only keys whose position is <= its own. A query that sees no key gets zeros.
void attention(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
               const KvLayerView& kv, float* out);

// The attention that queries paid to cached tokens, for the token policies (SnapKV's observation window, H2O's
// accumulation, TOVA, KVzip): for each chunk row t >= first_row and each query head, the softmax probabilities over
// the head's visible slots, reduced over those rows and over the query heads sharing a kv-head (GQA-aware voting):
// summed, or with ScoreReduce::Max the maximum taken. scores: (n_head_kv, n_slots_stride), accumulated into (not
// cleared: added to, or max'ed with); n_slots_stride >= every head's n_tokens. Costs one more pass of q·k over the
// selected rows only, and nothing when no policy asks.
void attention_scores(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                      int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride,
                      ScoreReduce reduce = ScoreReduce::Sum);

// attention and attention_scores(first_row 0, Sum) in one pass for up to 16 query rows (decode steps of the
// policies that rank every step: TOVA, H2O): the probabilities are the ones the attention computes, kept per page
// and rescaled to the row's final softmax, not recomputed. More rows: the two calls.
void attention_with_scores(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos,
                           int32_t n_tok, const KvLayerView& kv, float* out, float* scores, int32_t n_slots_stride);
// The plain reference of attention_scores: one query head and row at a time, in double.
void attention_scores_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                                int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride,
                                ScoreReduce reduce = ScoreReduce::Sum);

// The plain reference: for every query and head, softmax over all visible keys in one pass, in double.
void attention_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                         const KvLayerView& kv, float* out);

}  // namespace longctx::cpu
