// TOVA ("Transformers are Multi-State RNNs"): Token Omission Via Attention. When the cache is over its budget,
// drop the token that the current query attends to least, its attention averaged over the heads of the layer; so
// every head of a layer keeps the same tokens (the paper's multi-state RNN has one state per layer). No accumulated
// history: only the latest step's attention counts. At prefill end the last prompt query ranks the prompt.
//
// Our scores come summed over the query heads of each kv-head; the layer's mean is their sum over the layer's
// kv-heads divided by the number of query heads, a constant that does not change the ranking, so the sum ranks.
#include <algorithm>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

constexpr int32_t kDefaultBudget = 1024;

class TovaRanker final : public TokenRanker {
 public:
  TovaRanker(int32_t budget, KvScoreScope scope) : budget_(budget), scope_(scope) {}
  std::string describe() const override {
    return "tova(budget=" + std::to_string(budget_) + (scope_ == KvScoreScope::Layer ? ")" : ", reduce=sum)");
  }
  int32_t budget() const override { return budget_; }
  int32_t prefill_score_from(int32_t n_prompt) const override { return std::max(0, n_prompt - 1); }
  bool wants_decode_scores() const override { return true; }
  bool evicts_during_decode() const override { return true; }
  KvScoreScope score_scope() const override { return scope_; }

  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    std::vector<int32_t> all(positions.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
    return top_slots(all, std::vector<float>(scores, scores + positions.size()), budget, positions);
  }

 private:
  int32_t budget_;
  KvScoreScope scope_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_tova_ranker(const SpecArgs& args) {
  const std::string reduce = args.get_string("reduce", "mean");
  if (reduce != "mean" && reduce != "sum") fail("tova: reduce must be mean or sum, not '{}'", reduce);
  return std::make_unique<TovaRanker>(args.get_int("budget", kDefaultBudget, 1, 1 << 30),
                                      reduce == "mean" ? KvScoreScope::Layer : KvScoreScope::KvHead);
}

KvComponent kv_component_tova() {
  return {"tova",
          KvComponentKind::TokenPolicy,
          "TOVA (\"Transformers are Multi-State RNNs\"): drops the token the current query, averaged over the "
          "layer's heads, attends to least; evicts as it decodes",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head)"},
           {"reduce", "mean", "mean over the layer's heads, or sum over each kv-head's own query heads"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_tova_ranker(args)); }};
}

}  // namespace longctx::kv
