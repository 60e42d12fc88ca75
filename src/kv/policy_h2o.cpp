// H2O ("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"): a few tokens
// collect most of the attention over time (heavy hitters). Each token's attention is accumulated over every
// query that saw it, from the prompt on; the cache keeps the heaviest tokens plus a window of recent ones and
// evicts the lightest as decoding goes on, so it stays at its budget.
#include <algorithm>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

constexpr int32_t kDefaultBudget = 1024;

class H2oRanker final : public TokenRanker {
 public:
  H2oRanker(int32_t budget, int32_t recent) : budget_(budget), recent_(recent) {}
  std::string describe() const override {
    return "h2o(budget=" + std::to_string(budget_) + ", recent=" + std::to_string(recent_) + ")";
  }
  int32_t budget() const override { return budget_; }
  int32_t prefill_score_from(int32_t) const override { return 0; }  // every prompt query accumulates
  bool wants_decode_scores() const override { return true; }
  bool evicts_during_decode() const override { return true; }
  bool accumulates_scores() const override { return true; }

  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size());
    // The recent share scales with a per-head budget that differs from the spec's (pyramid, head roles).
    const int32_t n_recent = std::min({n, budget, static_cast<int32_t>(int64_t{recent_} * budget / budget_)});
    const std::vector<int32_t> rest(order.begin(), order.end() - n_recent);
    const std::vector<float> s(scores, scores + positions.size());
    std::vector<int32_t> keep = top_slots(rest, s, budget - n_recent, positions);
    keep.insert(keep.end(), order.end() - n_recent, order.end());
    if (!std::is_sorted(keep.begin(), keep.end())) std::sort(keep.begin(), keep.end());  // sorted when slots are
    return keep;
  }

 private:
  int32_t budget_, recent_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_h2o_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t recent = args.get_int("recent", budget / 2, 0, budget);
  return std::make_unique<H2oRanker>(budget, recent);
}

KvComponent kv_component_h2o() {
  return {"h2o",
          KvComponentKind::TokenPolicy,
          "H2O (\"H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models\"): the "
          "tokens with the most attention accumulated since the prompt, plus the most recent; evicts as it decodes",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), recent ones included"},
           {"recent", "budget/2", "of those, the most recent tokens kept whatever their scores"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_h2o_ranker(args)); }};
}

}  // namespace longctx::kv
