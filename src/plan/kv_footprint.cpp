#include "plan/kv_footprint.h"

#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"
#include "kv/composed_policy.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
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

KvFootprint kv_footprint(const PlanArch& arch, const kv::KvPolicy& policy, int64_t n_prompt, int64_t n_generated,
                         int32_t page_tokens) {
  if (n_prompt < 0 || n_generated < 0) fail("a context of {} + {} tokens", n_prompt, n_generated);
  const int64_t n_ctx = n_prompt + n_generated;
  if (page_tokens <= 0) fail("internal: pages of {} tokens", page_tokens);
  const KvFormat open = policy.page_format(), sealed = policy.sealed_format();
  const int64_t open_bytes = kv_plan_page_bytes(open, page_tokens, arch.head_dim);
  const int64_t sealed_bytes = kv_plan_page_bytes(sealed, page_tokens, arch.head_dim);
  const int64_t n_recent = std::max<int64_t>(0, policy.n_recent_full_precision());
  KvFootprint f;
  f.n_ctx = n_ctx;
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
      // Bytes per slot as the decode kernel reads them: a page's bytes over its tokens.
      const int64_t sealed_slots = n_sealed * page_tokens;
      f.read_bytes_sealed += sealed_slots * (sealed_bytes / page_tokens);
      f.read_bytes += sealed_slots * (sealed_bytes / page_tokens) + (held - sealed_slots) * (open_bytes / page_tokens);
    }
  f.metadata_bytes += static_cast<int64_t>(f.slots.size() * sizeof(kv::KvHeadCache));
  return f;
}

}  // namespace longctx::plan
