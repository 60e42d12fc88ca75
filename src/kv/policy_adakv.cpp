// AdaKV ("Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference"): the
// kv-heads of a layer do not need the same number of tokens: a head whose attention concentrates on few tokens
// loses little when cut hard, one whose attention is spread loses much. With a fixed budget per layer (the plan
// budgets of its heads, summed), AdaKV keeps the layer's best tokens across all its heads together, ranked by the
// token policy's own scores (SnapKV's pooled window votes, ChunkKV's chunk means), which bounds the layer's loss
// of attention mass better than equal shares. A safeguard (alpha) first gives every head its own floor(alpha *
// budget) best tokens, so no head is cut to nothing. The window the token policy keeps counts as its best tokens.
//
// A budget shape over a scoring token policy that cuts once (snapkv, chunkkv:scope=head), composing with pyramid
// (the per-layer budget is then the pyramid's). Heads cut by whole chunks (ChunkKV) keep the whole chunks within
// their share; a chunk the share splits is dropped.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/error.h"
#include "kv/policy_registry.h"

namespace longctx::kv {

namespace {

constexpr double kDefaultAlpha = 0.2;

class AdaKvShare final : public LayerBudgetShare {
 public:
  AdaKvShare(const TokenRanker* ranker, double alpha) : LayerBudgetShare(ranker), alpha_(alpha) {}
  std::vector<int32_t> share(const std::vector<std::vector<float>>& scores,
                             const std::vector<std::vector<int32_t>>& positions,
                             const std::vector<int32_t>& budgets) const override {
    return adakv_budgets(scores, positions, budgets, alpha_);
  }

 private:
  double alpha_;
};

}  // namespace

std::vector<int32_t> adakv_budgets(const std::vector<std::vector<float>>& scores,
                                   const std::vector<std::vector<int32_t>>& positions,
                                   const std::vector<int32_t>& budgets, double alpha) {
  const size_t n_head = scores.size();
  int64_t total = 0;
  std::vector<int32_t> out(n_head, 0);
  // (score, head, position) of every slot past its head's safeguard, best first.
  std::vector<std::tuple<float, int32_t, int32_t>> rest;
  for (size_t g = 0; g < n_head; ++g) {
    total += budgets[g];
    const int32_t n = static_cast<int32_t>(scores[g].size());
    int32_t n_safe = static_cast<int32_t>(std::floor(alpha * budgets[g]));
    if (alpha > 0 && budgets[g] > 0) n_safe = std::max(n_safe, 1);
    n_safe = std::min(n_safe, n);
    std::vector<int32_t> order(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    auto better = [&](int32_t a, int32_t b) {
      const float sa = scores[g][static_cast<size_t>(a)], sb = scores[g][static_cast<size_t>(b)];
      return sa != sb ? sa > sb : positions[g][static_cast<size_t>(a)] < positions[g][static_cast<size_t>(b)];
    };
    std::sort(order.begin(), order.end(), better);
    out[g] = n_safe;
    total -= n_safe;
    for (int32_t i = n_safe; i < n; ++i) {
      const int32_t slot = order[static_cast<size_t>(i)];
      rest.emplace_back(scores[g][static_cast<size_t>(slot)], static_cast<int32_t>(g),
                        positions[g][static_cast<size_t>(slot)]);
    }
  }
  const size_t n_take = static_cast<size_t>(std::clamp<int64_t>(total, 0, static_cast<int64_t>(rest.size())));
  auto better = [](const auto& a, const auto& b) {
    if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
    if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) < std::get<1>(b);
    return std::get<2>(a) < std::get<2>(b);
  };
  if (n_take < rest.size()) std::nth_element(rest.begin(), rest.begin() + static_cast<ptrdiff_t>(n_take), rest.end(), better);
  for (size_t i = 0; i < n_take; ++i) ++out[static_cast<size_t>(std::get<1>(rest[i]))];
  return out;
}

KvComponent kv_component_adakv() {
  return {"adakv",
          KvComponentKind::BudgetShape,
          "AdaKV (\"Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference\"): "
          "each layer's budget (budget x kv-heads) shared among its kv-heads by the token policy's scores, the best "
          "tokens of all heads together",
          {{"alpha", "0.2", "safeguard: each head first keeps its floor(alpha x budget) best tokens"}},
          [](const SpecArgs& args, KvPolicyDraft& d) {
            const double alpha = args.get_float("alpha", kDefaultAlpha, 0.0, 1.0);
            if (d.ranker == nullptr)
              fail("adakv shares each layer's budget by the token policy's scores: name one (snapkv, chunkkv), e.g. "
                   "snapkv:budget=1024+adakv");
            if (!d.ranker->has_selection_scores())
              fail("adakv: {} does not rank by scores it can share across heads (it cuts during decode or by "
                   "position); use snapkv or chunkkv:scope=head",
                   d.ranker->describe());
            if (d.ranker->score_scope() == KvScoreScope::Layer)
              fail("adakv: {} keeps one token set for all kv-heads of a layer, so there is no per-head budget to "
                   "adapt; use chunkkv:scope=head",
                   d.ranker->describe());
            if (d.share != nullptr) fail("adakv: another budget shape already shares each layer's budget");
            d.share = std::make_unique<AdaKvShare>(d.ranker, alpha);
            d.shapes.push_back("adakv(alpha=" + args.get_string("alpha", "0.2") + ")");
          }};
}

}  // namespace longctx::kv
