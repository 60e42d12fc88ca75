#include "kv/spec_draft.h"

#include <algorithm>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/spec_args.h"

namespace longctx::kv {

const TokenRanker* make_draft_ranker(const std::string& spec, std::vector<std::unique_ptr<TokenRanker>>& owned) {
  if (spec.empty()) fail("--spec: draft= is empty; give a token policy, e.g. draft=streaming:budget=512");
  if (spec.find('+') != std::string::npos)
    fail("--spec draft '{}': the draft is one token policy's view of the full cache (streaming or snapkv), not a "
         "composition of several",
         spec);
  const std::string name = spec.substr(0, spec.find(':'));
  const KvComponent* c = find_kv_component(name);
  if (c == nullptr) fail("--spec draft '{}': unknown policy '{}'; the draft takes streaming or snapkv", spec, name);
  if (c->kind != KvComponentKind::TokenPolicy)
    fail("--spec draft '{}': {} is not a token policy; the draft reads the pages a token policy selects (streaming "
         "or snapkv)",
         spec, name);
  std::vector<std::string> keys;
  for (const SpecArg& a : c->args) keys.push_back(a.name);
  KvPolicyDraft d;
  d.n_layer = 1;
  d.n_head_kv = 1;
  c->apply(SpecArgs(spec, keys), d);
  if (d.ranker == nullptr) fail("internal: --spec draft '{}' made no token policy", spec);
  if (d.ranker->wants_decode_scores())
    fail("--spec draft '{}': {} ranks tokens by the attention of every decode step, which the draft view does not "
         "gather; use streaming or snapkv",
         spec, name);
  if (d.ranker->reconstruction().chunk > 0)
    fail("--spec draft '{}': {} scores the cache by a pass after prefill, which the draft view does not run; use "
         "streaming or snapkv",
         spec, name);
  if (d.ranker->budget() <= 0) fail("--spec draft '{}': the draft needs a budget", spec);
  const TokenRanker* r = d.ranker;
  for (auto& x : d.rankers) owned.push_back(std::move(x));
  return r;
}

int32_t draft_page_cap(int32_t budget, int32_t page_tokens) { return (budget + page_tokens - 1) / page_tokens + 2; }

std::vector<int32_t> draft_pages(const std::vector<int32_t>& count, int32_t n_pick) {
  std::vector<int32_t> order;
  for (size_t q = 0; q < count.size(); ++q)
    if (count[q] > 0) order.push_back(static_cast<int32_t>(q));
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const int32_t ca = count[static_cast<size_t>(a)], cb = count[static_cast<size_t>(b)];
    return ca > cb || (ca == cb && a > b);
  });
  if (static_cast<int32_t>(order.size()) > n_pick) order.resize(static_cast<size_t>(n_pick));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace longctx::kv
