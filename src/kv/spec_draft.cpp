#include "kv/spec_draft.h"

#include <algorithm>
#include <cstdlib>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/spec_args.h"

namespace longctx::kv {

SelfSpec parse_self_spec(const std::string& spec, const std::string& extra_key) {
  const std::string valid = "valid: gamma=N (1.." + std::to_string(SelfSpec::kMaxGamma) + ")" +
                            (extra_key.empty() ? "" : ", " + extra_key + "=V") + ", draft=SPEC (last)";
  SelfSpec sp;
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  if (name != "self") fail("--spec '{}': unknown method '{}'; valid: self[:gamma=N,draft=SPEC]", spec, name);
  std::vector<std::string> items;
  if (colon != std::string::npos) {
    std::string rest = spec.substr(colon + 1);
    if (rest.empty()) fail("--spec '{}': nothing after 'self:'; {}", spec, valid);
    const size_t d = rest.find("draft=");
    if (d != std::string::npos && (d == 0 || rest[d - 1] == ',')) {
      sp.draft = rest.substr(d + 6);
      const size_t e = extra_key.empty() ? std::string::npos : sp.draft.rfind("," + extra_key + "=");
      if (e != std::string::npos) {
        if (sp.draft.find(',', e + 1) != std::string::npos)
          fail("--spec '{}': draft= takes the rest of the spec, so only a last ',{}=V' may follow its arguments; put "
               "gamma= and {}= before draft=",
               spec, extra_key, extra_key);
        items.push_back(sp.draft.substr(e + 1));
        sp.draft = sp.draft.substr(0, e);
      }
      rest = d == 0 ? std::string() : rest.substr(0, d - 1);
    }
    if (!rest.empty())
      for (const std::string& item : split_spec(rest, ',')) items.push_back(item);
  }
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const std::string value = eq == std::string::npos ? std::string() : item.substr(eq + 1);
    if (eq != std::string::npos && !extra_key.empty() && key == extra_key) {
      sp.extra = value;
      sp.extra_given = true;
    } else if (eq != std::string::npos && key == "gamma") {
      char* end = nullptr;
      const long g = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || g < 1 || g > SelfSpec::kMaxGamma)
        fail("--spec '{}': gamma must be an integer in [1, {}], not '{}'", spec, SelfSpec::kMaxGamma, value);
      sp.gamma = static_cast<int32_t>(g);
    } else {
      fail("--spec '{}': unknown argument '{}'; {}", spec, item, valid);
    }
  }
  // Refuses a draft that cannot draft, before any work.
  if (is_read_draft(sp.draft)) {
    if (sp.draft.find('+') != std::string::npos)
      fail("--spec draft '{}': the draft is one policy's view of the full cache, not a composition of several",
           sp.draft);
    make_kv_policy(verifier_spec_for_draft("full", sp.draft), 1, 1);  // its arguments
  } else {
    std::vector<std::unique_ptr<TokenRanker>> owned;
    make_draft_ranker(sp.draft, owned);
  }
  return sp;
}

bool is_read_draft(const std::string& spec) { return spec.substr(0, spec.find_first_of(":+")) == "quest"; }

std::string verifier_spec_for_draft(const std::string& verifier_spec, const std::string& draft_spec) {
  return is_read_draft(draft_spec) ? verifier_spec + "+" + draft_spec : verifier_spec;
}

const TokenRanker* make_draft_ranker(const std::string& spec, std::vector<std::unique_ptr<TokenRanker>>& owned) {
  if (spec.empty())
    fail("--spec: draft= is empty; give a token policy or quest, e.g. draft=streaming:budget=512 or "
         "draft=quest:budget=1024");
  if (spec.find('+') != std::string::npos)
    fail("--spec draft '{}': the draft is one token policy's view of the full cache (streaming or snapkv), not a "
         "composition of several",
         spec);
  const std::string name = spec.substr(0, spec.find(':'));
  const KvComponent* c = find_kv_component(name);
  if (c == nullptr)
    fail("--spec draft '{}': unknown policy '{}'; the draft takes streaming, snapkv or quest", spec, name);
  if (c->kind != KvComponentKind::TokenPolicy)
    fail("--spec draft '{}': {} is not a token policy; the draft reads the pages a token policy selects (streaming "
         "or snapkv) or those quest ranks highest for each step",
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
