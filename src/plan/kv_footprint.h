// What a KV policy makes the paged store hold and read, computed without filling a store: per (layer, kv-head),
// the tokens the policy's budget and the layer's window leave, laid out in pages as the store lays them out (full
// pages sealed into the policy's sealed format except those holding its full-precision recent tokens, the partial
// last page open), each page's bytes from the page codec's own kv_page_bytes.
#pragma once
#include <cstdint>
#include <vector>

#include "core/kv_format.h"
#include "plan/plan_arch.h"

namespace longctx::kv {
class KvPolicy;
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
  int64_t read_bytes = 0;       // what one decode step's attention reads: every held slot it may see, at its
                                // page's bytes per slot (held == visible: the window has expired the rest)
  std::vector<int64_t> slots;   // (n_layer, n_head_kv) tokens each head holds

  int64_t bytes() const { return payload_bytes + metadata_bytes; }
};

// The cache of one sequence after a prompt of n_prompt tokens (cut to the policy's budgets at its end) and
// n_generated tokens decoded since, under the policy (made for this arch's n_layer and n_head_kv), with
// sliding-window layers holding only their window.
KvFootprint kv_footprint(const PlanArch& arch, const kv::KvPolicy& policy, int64_t n_prompt, int64_t n_generated = 0,
                         int32_t page_tokens = kPlanPageTokens);

// Bytes of one page in the format (the codec's kv_page_bytes): the unit of the pool.
int64_t kv_plan_page_bytes(KvFormat format, int32_t page_tokens, int32_t head_dim);

}  // namespace longctx::plan
