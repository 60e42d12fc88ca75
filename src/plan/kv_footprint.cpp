#include "plan/kv_footprint.h"

#include <algorithm>
#include <climits>

#include "backend/backend.h"
#include "core/error.h"
#include "kv/composed_policy.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/quest.h"
#include "kv/spec_draft.h"
#include "kv/token_ranker.h"

namespace longctx::plan {

KvHeadBudget kv_head_budget(const kv::KvPolicy& policy, int32_t layer, int32_t kv_head) {
  const auto* composed = dynamic_cast<const kv::ComposedPolicy*>(&policy);
  if (composed == nullptr) return {};  // a policy without per-head plans keeps everything
  const kv::HeadPlan& plan = composed->plan(layer, kv_head);
  if (plan.ranker == nullptr || plan.budget == kv::kKeepAll) return {};
  return {plan.budget, plan.ranker->evicts_during_decode()};
}

int64_t kv_plan_page_bytes(KvFormat format, int32_t page_tokens, int32_t head_dim) {
  return static_cast<int64_t>(kv_page_bytes(format, page_tokens, head_dim));
}

namespace {

// The policy's read filter when it is Quest's. read_filter() is not const (the engine's forward calls it on a live
// policy); only its settings are read here.
const kv::QuestReadFilter* quest_filter(const kv::KvPolicy& policy) {
  return dynamic_cast<const kv::QuestReadFilter*>(const_cast<kv::KvPolicy&>(policy).read_filter());
}

int32_t policy_page_tokens(const kv::KvPolicy& policy) {
  return policy.page_tokens() > 0 ? policy.page_tokens() : kPlanPageTokens;
}

}  // namespace

KvFootprint kv_footprint(const PlanArch& arch, const kv::KvPolicy& policy, int64_t n_prompt, int64_t n_generated,
                         int32_t page_tokens) {
  if (n_prompt < 0 || n_generated < 0) fail("a context of {} + {} tokens", n_prompt, n_generated);
  if (policy.holds_tokens_beside_store())
    fail("plan does not model {} yet: it holds the prompt beside the paged store (factors, landmarks, a cold tier); "
         "measure it with run or bench",
         policy.describe());
  const int64_t n_ctx = n_prompt + n_generated;
  if (page_tokens == 0) page_tokens = policy_page_tokens(policy);
  if (page_tokens <= 0) fail("internal: pages of {} tokens", page_tokens);
  const kv::QuestReadFilter* quest = quest_filter(policy);
  // Quest reads this many pages of a head that holds more (QuestReadFilter::narrow).
  const int64_t quest_pages = quest != nullptr ? quest->read_pages(page_tokens) : 0;
  const int64_t summary_page_bytes =
      policy.wants_key_summaries() ? 2 * int64_t{arch.head_dim} * static_cast<int64_t>(sizeof(float)) : 0;
  const KvFormat open = policy.page_format(), sealed = policy.sealed_format();
  const int64_t open_bytes = kv_plan_page_bytes(open, page_tokens, arch.head_dim);
  const int64_t sealed_bytes = kv_plan_page_bytes(sealed, page_tokens, arch.head_dim);
  const int64_t n_recent = std::max<int64_t>(0, policy.n_recent_full_precision());
  KvFootprint f;
  f.n_ctx = n_ctx;
  f.page_tokens = page_tokens;
  f.slots.resize(static_cast<size_t>(arch.n_layer) * arch.n_head_kv);
  for (int32_t il = 0; il < arch.n_layer; ++il)
    for (int32_t g = 0; g < arch.n_head_kv; ++g) {
      int64_t held = n_ctx;
      const KvHeadBudget b = kv_head_budget(policy, il, g);
      if (b.budget >= 0)
        held = b.evicts_during_decode ? std::min(n_ctx, b.budget) : std::min(n_prompt, b.budget) + n_generated;
      if (arch.local(il)) held = std::min<int64_t>(held, arch.sliding_window);
      f.slots[static_cast<size_t>(il) * arch.n_head_kv + g] = held;
      const int64_t n_pages = (held + page_tokens - 1) / page_tokens;
      // The store seals a page once it is full and none of its tokens is among the recent ones kept at full
      // precision; the partial last page stays open because new tokens append into it.
      const int64_t n_sealed = sealed == open ? 0 : std::max<int64_t>(0, held - n_recent) / page_tokens;
      f.n_slots += held;
      f.n_pages_sealed += n_sealed;
      f.n_pages_open += n_pages - n_sealed;
      f.payload_bytes += n_sealed * sealed_bytes + (n_pages - n_sealed) * open_bytes;
      f.metadata_bytes += held * static_cast<int64_t>(sizeof(int32_t)) + n_pages * static_cast<int64_t>(sizeof(kv::KvPage));
      f.summary_bytes += n_pages * summary_page_bytes;
      // Bytes per slot as the decode kernel reads them: a page's bytes over its tokens.
      const int64_t sealed_slots = n_sealed * page_tokens;
      const int64_t read_sealed = sealed_slots * (sealed_bytes / page_tokens);
      const int64_t read_all = read_sealed + (held - sealed_slots) * (open_bytes / page_tokens);
      f.read_bytes_dense += read_all;
      if (quest == nullptr || il < quest->dense_layers() || n_pages <= quest_pages) {
        f.read_bytes_sealed += read_sealed;
        f.read_bytes += read_all;
        f.n_slots_read += held;
        f.n_pages_read += n_pages;
        continue;
      }
      // Quest: the newest page always (open, unless every page is sealed), and n_read - 1 of the n_pages - 1 full
      // ones before it (recent= of them always), whose bytes (sealed and open alike) count at their mean; the
      // bounds of all but the n_recent newest.
      const int64_t newest_rows = held - (n_pages - 1) * page_tokens;
      const int64_t newest = newest_rows * ((n_sealed == n_pages ? sealed_bytes : open_bytes) / page_tokens);
      const double share = static_cast<double>(quest_pages - 1) / static_cast<double>(n_pages - 1);
      const int64_t sealed_before = n_sealed == n_pages ? read_sealed - newest : read_sealed;
      const auto rest_sealed = static_cast<int64_t>(share * static_cast<double>(sealed_before));
      const auto rest = static_cast<int64_t>(share * static_cast<double>(read_all - newest));
      const int64_t summaries = quest->ranked_pages(n_pages, page_tokens) * summary_page_bytes;
      f.read_bytes_sealed += rest_sealed + (n_sealed == n_pages ? newest : 0);
      f.read_bytes_summaries += summaries;
      f.read_bytes += newest + rest + summaries;
      f.n_slots_read += newest_rows + (quest_pages - 1) * page_tokens;
      f.n_pages_read += quest_pages;
      f.n_pages_narrowed += quest_pages;
    }
  f.metadata_bytes += static_cast<int64_t>(f.slots.size() * sizeof(kv::KvHeadCache));
  return f;
}

KvFootprint spec_draft_footprint(const PlanArch& arch, const kv::KvPolicy& verifier, const kv::TokenRanker& ranker,
                                 int64_t n_ctx, int32_t gamma) {
  if (n_ctx <= 0 || gamma < 1) fail("internal: a draft at context {} of {} tokens", n_ctx, gamma);
  const int32_t T = kPlanPageTokens;  // the verifier's store: the full cache at the default page size
  const int64_t slot_bytes = kv_plan_page_bytes(verifier.page_format(), T, arch.head_dim) / T;
  const int64_t budget = ranker.budget();
  // The pages of the selection (SpecDraftView::select): the page of each selected slot counted, the most-counted
  // n_pick kept, ties to the newer page. Every global head holds the same positions 0..n_ctx-1 in the full cache.
  const int64_t n_pages = (n_ctx + T - 1) / T;
  const int64_t n_pick = kv::draft_page_cap(static_cast<int32_t>(budget), T);
  const int64_t tail_page = n_ctx / T;  // holds position n_ctx: where the draft's tokens go
  int64_t selected_rows = 0;            // rows of the selected pages before the tail page
  if (n_ctx <= budget) {
    selected_rows = tail_page * T;
  } else if (ranker.prefill_score_from(1 << 30) != INT_MAX) {
    // Picks by attention scores are taken to scatter over every page, so the cap's pages are read, all full but
    // the tail page: that one holds the newest tokens, which the observation window always picks, whenever it
    // holds prompt tokens (and is then read as the tail).
    const int64_t n_sel = std::min(n_pick, n_pages) - (n_ctx % T != 0 && ranker.n_window() > 0 ? 1 : 0);
    selected_rows = std::min(n_sel, tail_page) * T;
  } else {
    if (n_ctx > INT32_MAX) fail("a context of {} tokens", n_ctx);
    std::vector<int32_t> positions(static_cast<size_t>(n_ctx));
    for (int64_t i = 0; i < n_ctx; ++i) positions[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    const std::vector<int32_t> keep = ranker.select(positions, nullptr, static_cast<int32_t>(budget));
    std::vector<int32_t> count(static_cast<size_t>(n_pages), 0);
    for (int32_t s : keep) ++count[static_cast<size_t>(s / T)];
    for (int32_t p : kv::draft_pages(count, static_cast<int32_t>(n_pick))) selected_rows += p < tail_page ? T : 0;
  }
  // The tail: the prompt's tokens in the page holding position n_ctx, and the drafts' own (the j-th draft forward
  // reads j + 1 of them).
  const double tail_rows = static_cast<double>(n_ctx - tail_page * T) + 0.5 * (gamma + 1);
  KvFootprint f;
  f.n_ctx = n_ctx;
  double rows = 0;
  for (int32_t il = 0; il < arch.n_layer; ++il) {
    const double per_head = arch.local(il) ? static_cast<double>(std::min<int64_t>(n_ctx, arch.sliding_window)) +
                                                 0.5 * (gamma + 1)
                                           : static_cast<double>(selected_rows) + tail_rows;
    rows += per_head * arch.n_head_kv;
  }
  f.n_slots_read = static_cast<int64_t>(rows);
  f.page_tokens = T;
  f.n_pages_read = static_cast<int64_t>(std::ceil(rows / T));
  f.read_bytes = static_cast<int64_t>(rows * static_cast<double>(slot_bytes));
  f.read_bytes_dense = f.read_bytes;
  return f;
}

}  // namespace longctx::plan
