// What a KV policy makes the paged store hold and read, computed without filling a store: per (layer, kv-head),
// the tokens the policy's budget and the layer's window leave, laid out in pages as the store lays them out (full
// pages sealed into the policy's sealed format except those holding its full-precision recent tokens, the partial
// last page open), each page's bytes from the page codec's own kv_page_bytes. A read policy (Quest) leaves the
// memory as it is (but for its per-page key summaries) and narrows what a decode step reads; a self-speculation
// draft reads the pages its token policy selects of the full cache.
#pragma once
#include <cstdint>
#include <vector>

#include "core/kv_format.h"
#include "plan/plan_arch.h"

namespace longctx::kv {
class KvPolicy;
class TokenRanker;
}

namespace longctx::plan {

// The page geometry the engine uses (kv::KvGeometry's default).
constexpr int32_t kPlanPageTokens = 64;

// What the policy does to one (layer, kv-head): how many tokens it keeps (-1: all), and whether it keeps to that
// during decode (H2O, TOVA, StreamingLLM evict every step) or only cuts at the end of the prompt (SnapKV,
// PyramidKV), after which generated tokens accumulate. The one place that reads the policy's per-head plan.
struct KvHeadBudget {
  int64_t budget = -1;
  bool evicts_during_decode = false;
};
KvHeadBudget kv_head_budget(const kv::KvPolicy& policy, int32_t layer, int32_t kv_head);

struct KvFootprint {
  int64_t n_ctx = 0;            // tokens of context: the positions seen so far, the current token included
  int64_t read_bytes_sealed = 0;  // the part of read_bytes in sealed pages
  int64_t n_slots = 0;          // tokens held, summed over (layer, kv-head)
  int64_t n_pages_open = 0;     // pages in the policy's page_format()
  int64_t n_pages_sealed = 0;   // pages in its sealed_format() (0 when the two are the same)
  int64_t payload_bytes = 0;    // the pages' bytes
  int64_t metadata_bytes = 0;   // positions (4 bytes a slot) and page tables (one KvPage a page), at their sizes
  int64_t summary_bytes = 0;    // per-page key min/max the store keeps for a read policy (KvBytes::summaries)
  int64_t read_bytes = 0;       // what one decode step's attention reads: every held slot it may see, at its
                                // page's bytes per slot (held == visible: the window has expired the rest); under
                                // a read policy (Quest) the pages it reads plus the key summaries it ranks them by
  int64_t read_bytes_dense = 0; // the same step without the read policy (== read_bytes when there is none)
  int64_t read_bytes_summaries = 0;  // the part of read_bytes in key summaries (Quest's ranking)
  int64_t n_slots_read = 0;     // tokens read by the step, summed over (layer, kv-head)
  int64_t n_pages_read = 0;     // pages the step visits, summed over (layer, kv-head)
  int64_t n_pages_narrowed = 0; // of those, the pages a read filter (Quest) picked out of a head's
  int32_t page_tokens = 0;      // the pages' size
  std::vector<int64_t> slots;   // (n_layer, n_head_kv) tokens each head holds

  int64_t bytes() const { return payload_bytes + metadata_bytes + summary_bytes; }
};

// The cache of one sequence after a prompt of n_prompt tokens (cut to the policy's budgets at its end) and
// n_generated tokens decoded since, under the policy (made for this arch's n_layer and n_head_kv), with
// sliding-window layers holding only their window. page_tokens 0: the policy's own (Quest's page=), else 64.
//
// Under Quest (quest:budget=B,dense_layers=D,page=P; kv/quest.h) a decode step reads, on every layer >= D and
// kv-head holding more than n_read = max(1, B / P) pages, the newest page (at its own format) and n_read - 1 of
// the others, which are full, at their mean bytes (the query's bounds pick them; this is the expectation when the
// pick is indifferent to their format), plus the key summary of every page but the newest (with recent=R, but the
// max(1, ceil(R / P)) newest), 2 x head_dim f32 each, which quest_select_pages ranks; other heads and the first D
// layers read everything.
KvFootprint kv_footprint(const PlanArch& arch, const kv::KvPolicy& policy, int64_t n_prompt, int64_t n_generated = 0,
                         int32_t page_tokens = 0);

// What one draft forward of lossless self-speculation reads (engine/speculative.h, SpecDraftView) over a full cache
// (`verifier`'s: f16 or f32 pages) of n_ctx tokens at positions 0..n_ctx-1, with the draft token policy `draft`
// (streaming or snapkv, made for this arch): per (layer, kv-head) of a global layer, the pages holding the most of
// the tokens the draft policy selects over those positions, at most ceil(budget / page) + 2 of them, those before
// the page holding position n_ctx (the tail), plus the tail's tokens and the draft's own, the mean over gamma
// drafts ((gamma + 1) / 2); sliding-window layers read their whole window. A policy that needs attention scores
// (SnapKV) is taken to scatter its picks over every page: the cap's pages, one of them the tail page when that
// holds prompt tokens (its observation window picks the newest). read_bytes and n_slots_read are set; the memory
// fields are left 0.
KvFootprint spec_draft_footprint(const PlanArch& arch, const kv::KvPolicy& verifier, const kv::TokenRanker& draft,
                                 int64_t n_ctx, int32_t gamma);

// Bytes of one page in the format (the codec's kv_page_bytes): the unit of the pool.
int64_t kv_plan_page_bytes(KvFormat format, int32_t page_tokens, int32_t head_dim);

}  // namespace longctx::plan
