// StreamingLLM ("Efficient Streaming Language Models with Attention Sinks"): the first few tokens draw attention
// whatever their content (attention sinks), so keeping them plus a window of the most recent tokens keeps a model
// stable with a bounded cache. No scores are needed; the cache stays at its budget during decode.
#include <algorithm>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

constexpr int32_t kDefaultBudget = 1024, kDefaultSink = 4;

class StreamingRanker final : public TokenRanker {
 public:
  StreamingRanker(int32_t budget, int32_t n_sink) : budget_(budget), n_sink_(n_sink) {}
  std::string describe() const override {
    return "streaming(budget=" + std::to_string(budget_) + ", sink=" + std::to_string(n_sink_) + ")";
  }
  int32_t budget() const override { return budget_; }
  bool evicts_during_decode() const override { return true; }
  // Sinks plus a window ending at the newest token: the paper's positions within the cache are what let it run
  // past the trained context.
  KvPositions positions() const override { return KvPositions::InCache; }
  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float*, int32_t budget) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size());
    if (n <= budget) return sorted(order);
    const int32_t n_sink = std::min(n_sink_, budget);
    std::vector<int32_t> keep(order.begin(), order.begin() + n_sink);
    keep.insert(keep.end(), order.end() - (budget - n_sink), order.end());
    return sorted(keep);
  }

 private:
  static std::vector<int32_t> sorted(std::vector<int32_t> v) {
    std::sort(v.begin(), v.end());
    return v;
  }
  int32_t budget_, n_sink_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_streaming_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t sink = args.get_int("sink", kDefaultSink, 0, 1 << 20);
  if (sink >= budget) fail("streaming: sink={} must be smaller than budget={}", sink, budget);
  return std::make_unique<StreamingRanker>(budget, sink);
}

KvComponent kv_component_streaming() {
  return {"streaming",
          KvComponentKind::TokenPolicy,
          "StreamingLLM (\"Efficient Streaming Language Models with Attention Sinks\"): the first tokens plus the most "
          "recent ones",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), sinks included"},
           {"sink", std::to_string(kDefaultSink), "first tokens always kept (attention sinks)"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_streaming_ranker(args)); }};
}

}  // namespace longctx::kv
