// PyramidKV ("PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"): per-layer budgets
// that fall linearly with depth around the spec's mean. The token policy's observation window (SnapKV's last
// prompt tokens) is kept in every layer on top of the layer's share, as the paper keeps the last tokens in all
// layers and spreads the rest as an arithmetic sequence; so the top layers' few selected tokens are not eaten by
// the window. Without a token policy in the spec, PyramidKV selects the SnapKV way.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kv/policy_registry.h"

namespace longctx::kv {

namespace {
constexpr double kDefaultBeta = 20.0;
}  // namespace

std::vector<int32_t> pyramid_budgets(int32_t budget, int32_t n_window, double beta, int32_t n_layer) {
  std::vector<int32_t> b(static_cast<size_t>(n_layer));
  const double shared = budget - n_window, last = shared / beta, first = 2.0 * shared - last;
  for (int32_t l = 0; l < n_layer; ++l) {
    const double t = n_layer > 1 ? static_cast<double>(l) / (n_layer - 1) : 0.0;
    const int32_t selected = static_cast<int32_t>(std::lround(first - (first - last) * t));
    b[static_cast<size_t>(l)] = std::max(1, selected + n_window);
  }
  return b;
}

KvComponent kv_component_pyramid() {
  return {"pyramid",
          KvComponentKind::BudgetShape,
          "PyramidKV (\"PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling\"): per-layer "
          "budgets falling linearly with depth, the observation window on top of each; SnapKV selects unless another "
          "token policy is named",
          {{"budget", "the token policy's", "mean tokens per (layer, kv-head), the window included"},
           {"beta", "20", "first layer's selected tokens / last layer's, roughly: 2 beta - 1"}},
          [](const SpecArgs& args, KvPolicyDraft& d) {
            if (d.ranker == nullptr) d.ranker = d.add_ranker(make_snapkv_ranker(SpecArgs("snapkv", {})));
            const int32_t window = d.ranker->n_window();
            const int32_t budget = args.get_int("budget", d.ranker->budget(), 1, 1 << 30);
            const double beta = args.get_float("beta", kDefaultBeta, 1.0, 1000.0);
            if (budget <= window)
              fail("pyramid: budget={} leaves nothing to share out beyond the window of {} tokens; raise it", budget,
                   window);
            const std::vector<int32_t> b = pyramid_budgets(budget, window, beta, d.n_layer);
            for (int32_t l = 0; l < d.n_layer; ++l)
              for (int32_t g = 0; g < d.n_head_kv; ++g) d.plan(l, g) = HeadPlan{d.ranker, b[static_cast<size_t>(l)]};
            d.shapes.push_back("pyramid(budget=" + std::to_string(budget) + ", beta=" + args.get_string("beta", "20") +
                               ", layer 0: " + std::to_string(b.front() - window) + "+" + std::to_string(window) +
                               ", last: " + std::to_string(b.back() - window) + "+" + std::to_string(window) + ")");
          }};
}

}  // namespace longctx::kv
