// SnapKV ("SnapKV: LLM Knows What You are Looking for Before Generation"): the queries of an observation window
// at the end of the prompt already attend to what generation will need. Their attention, summed over the window
// and over the query heads of each kv-head (GQA-aware), is pooled along positions so that neighbours of a chosen
// token come with it, and each kv-head keeps its top (budget - window) tokens plus the window itself: the budget
// is the paper's cache capacity, window included. The cache is cut once, at prefill end, and grows during decode.
#include <algorithm>
#include <limits>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

constexpr int32_t kDefaultBudget = 1024, kDefaultWindow = 32, kDefaultPool = 7;

class SnapKvRanker final : public TokenRanker {
 public:
  SnapKvRanker(int32_t budget, int32_t window, int32_t kernel, KvPooling pooling)
      : budget_(budget), window_(window), kernel_(kernel), pooling_(pooling) {}
  std::string describe() const override {
    return "snapkv(budget=" + std::to_string(budget_) + ", window=" + std::to_string(window_) +
           ", pool=" + std::to_string(kernel_) + (pooling_ == KvPooling::Max ? " max" : " avg") + ")";
  }
  int32_t budget() const override { return budget_; }
  int32_t prefill_score_from(int32_t n_prompt) const override { return std::max(0, n_prompt - window_); }
  int32_t n_window() const override { return window_; }
  bool has_selection_scores() const override { return true; }

  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    const std::vector<int32_t> order = slots_by_position(positions);  // pooling runs along positions
    const int32_t n = static_cast<int32_t>(order.size());
    const int32_t n_window = std::min({window_, n, budget});
    // The window: the n_window most recent tokens.
    std::vector<int32_t> keep(order.end() - n_window, order.end());
    const int32_t n_rest = n - n_window;
    const std::vector<float> pooled = pool_along_positions(order, n_rest, scores, kernel_, pooling_);
    const std::vector<int32_t> rest(order.begin(), order.begin() + n_rest);
    const auto top = top_slots(rest, pooled, budget - n_window, positions);
    keep.insert(keep.end(), top.begin(), top.end());
    std::sort(keep.begin(), keep.end());
    return keep;
  }

  std::vector<float> selection_scores(const std::vector<int32_t>& positions, const float* scores) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size()), n_rest = n - std::min(window_, n);
    std::vector<float> s = pool_along_positions(order, n_rest, scores, kernel_, pooling_);
    for (int32_t i = n_rest; i < n; ++i) s[static_cast<size_t>(order[i])] = std::numeric_limits<float>::infinity();
    return s;
  }

 private:
  int32_t budget_, window_, kernel_;
  KvPooling pooling_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_snapkv_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t window = args.get_int("window", kDefaultWindow, 1, 1 << 20);
  const int32_t kernel = args.get_int("pool", kDefaultPool, 1, 1001);
  const std::string pooling = args.get_string("pooling", "max");
  if (pooling != "max" && pooling != "avg") fail("snapkv: pooling must be max or avg, not '{}'", pooling);
  if (kernel % 2 == 0) fail("snapkv: pool={} must be odd (a window centred on each token)", kernel);
  return std::make_unique<SnapKvRanker>(budget, window, kernel, pooling == "max" ? KvPooling::Max : KvPooling::Avg);
}

KvComponent kv_component_snapkv() {
  return {"snapkv",
          KvComponentKind::TokenPolicy,
          "SnapKV (\"SnapKV: LLM Knows What You are Looking for Before Generation\"): the tokens the prompt's last "
          "queries vote for, pooled, plus those queries' own tokens; cuts once, after the prompt",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), the window included"},
           {"window", std::to_string(kDefaultWindow), "observation window: the last prompt tokens, which vote and stay"},
           {"pool", std::to_string(kDefaultPool), "pooling kernel over neighbouring positions (odd)"},
           {"pooling", "max", "max or avg"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_snapkv_ranker(args)); }};
}

}  // namespace longctx::kv
