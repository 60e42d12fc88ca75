// ChunkKV ("ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference"): a fact
// spans several consecutive tokens (a number read one digit a token, a name, a clause), and ranking tokens one by
// one keeps the token the question points at while its neighbours go. ChunkKV ranks chunks instead: the
// observation window's attention (as SnapKV gathers it) is averaged over each chunk of `chunk` consecutive tokens,
// and the best chunks stay whole, with the window.
//
// The chunks tile the tokens before the window in position order, from the oldest; the last one, just before the
// window, may be shorter, and is ranked by its mean like the others. A head keeps its window plus the
// floor((budget - window) / chunk) best chunks, so the budget counts tokens, window included, as SnapKV's does; a
// remainder too small for a whole chunk stays unused, and a short chunk among the kept ones leaves a few tokens
// of the budget unused too. As in the authors' code (in NVIDIA kvpress), the attention is summed over all kv-heads
// of the layer by default, so that the layer keeps one set of chunks (the paper's layer-wise index reuse builds on
// that); scope=head ranks each kv-head's chunks by its own attention, which AdaKV's per-head budgets need.
// Optional pooling (SnapKV's) spreads each token's attention over its neighbours before the chunks are summed.
// The cache is cut once, at prefill end.
#include <algorithm>
#include <limits>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

// chunk: 20 as in the authors' released code (kvpress's ChunkKVPress); the paper's ablation on LongBench favours
// 10, but fixed chunks cut a fact at a chunk boundary about half as often at 20 (a 7-digit number, read one digit a
// token, splits across two chunks of 10 more often than not).
constexpr int32_t kDefaultBudget = 1024, kDefaultWindow = 32, kDefaultChunk = 20, kDefaultPool = 1;

class ChunkKvRanker final : public TokenRanker {
 public:
  ChunkKvRanker(int32_t budget, int32_t window, int32_t chunk, int32_t kernel, KvPooling pooling, KvScoreScope scope)
      : budget_(budget), window_(window), chunk_(chunk), kernel_(kernel), pooling_(pooling), scope_(scope) {}
  std::string describe() const override {
    std::string s = "chunkkv(budget=" + std::to_string(budget_) + ", window=" + std::to_string(window_) +
                    ", chunk=" + std::to_string(chunk_);
    if (kernel_ > 1) s += ", pool=" + std::to_string(kernel_) + (pooling_ == KvPooling::Max ? " max" : " avg");
    return s + (scope_ == KvScoreScope::Layer ? ", one set per layer)" : ", per kv-head)");
  }
  int32_t budget() const override { return budget_; }
  int32_t prefill_score_from(int32_t n_prompt) const override { return std::max(0, n_prompt - window_); }
  int32_t n_window() const override { return window_; }
  KvScoreScope score_scope() const override { return scope_; }
  bool has_selection_scores() const override { return true; }

  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size());
    const int32_t n_window = std::min({window_, n, budget});
    std::vector<int32_t> keep(order.end() - n_window, order.end());
    const int32_t n_rest = n - n_window;
    const std::vector<float> mean = chunk_means(order, n_rest, scores);
    // Chunk i is slot order[i * chunk_]; ranking its first slot by the chunk's mean ranks the chunk.
    std::vector<int32_t> firsts;
    for (int32_t i = 0; i < n_rest; i += chunk_) firsts.push_back(order[static_cast<size_t>(i)]);
    const int32_t n_chunks = std::max(0, budget - n_window) / chunk_;
    std::vector<int32_t> rank(order.size());  // slot -> its index in order
    for (int32_t i = 0; i < n; ++i) rank[static_cast<size_t>(order[i])] = i;
    for (int32_t first : top_slots(firsts, mean, n_chunks, positions)) {
      const int32_t i = rank[static_cast<size_t>(first)];
      keep.insert(keep.end(), order.begin() + i, order.begin() + std::min(i + chunk_, n_rest));
    }
    std::sort(keep.begin(), keep.end());
    return keep;
  }

  std::vector<float> selection_scores(const std::vector<int32_t>& positions, const float* scores) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size()), n_rest = n - std::min(window_, n);
    std::vector<float> s = chunk_means(order, n_rest, scores);
    for (int32_t i = 0; i < n_rest; ++i)
      s[static_cast<size_t>(order[i])] = s[static_cast<size_t>(order[i / chunk_ * chunk_])];
    for (int32_t i = n_rest; i < n; ++i) s[static_cast<size_t>(order[i])] = std::numeric_limits<float>::infinity();
    return s;
  }

 private:
  // (n_slots): at the first slot of each chunk of order[0, n_rest), the mean of its (pooled) scores; 0 elsewhere.
  std::vector<float> chunk_means(const std::vector<int32_t>& order, int32_t n_rest, const float* scores) const {
    const std::vector<float> pooled = pool_along_positions(order, n_rest, scores, kernel_, pooling_);
    std::vector<float> mean(order.size(), 0.0f);
    for (int32_t i = 0; i < n_rest; i += chunk_) {
      const int32_t end = std::min(i + chunk_, n_rest);
      double sum = 0;
      for (int32_t j = i; j < end; ++j) sum += pooled[static_cast<size_t>(order[j])];
      mean[static_cast<size_t>(order[i])] = static_cast<float>(sum / (end - i));
    }
    return mean;
  }

  int32_t budget_, window_, chunk_, kernel_;
  KvPooling pooling_;
  KvScoreScope scope_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_chunkkv_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t window = args.get_int("window", kDefaultWindow, 1, 1 << 20);
  const int32_t chunk = args.get_int("chunk", kDefaultChunk, 1, 1 << 20);
  const int32_t kernel = args.get_int("pool", kDefaultPool, 1, 1001);
  const std::string pooling = args.get_string("pooling", "avg");
  const std::string scope = args.get_string("scope", "layer");
  if (pooling != "max" && pooling != "avg") fail("chunkkv: pooling must be max or avg, not '{}'", pooling);
  if (kernel % 2 == 0) fail("chunkkv: pool={} must be odd (a window centred on each token)", kernel);
  if (scope != "layer" && scope != "head") fail("chunkkv: scope must be layer or head, not '{}'", scope);
  if (budget < window + chunk)
    fail("chunkkv: budget={} holds no chunk of {} tokens beyond the window of {}; raise it to at least {}", budget, chunk,
         window, window + chunk);
  return std::make_unique<ChunkKvRanker>(budget, window, chunk, kernel, pooling == "max" ? KvPooling::Max : KvPooling::Avg,
                                         scope == "layer" ? KvScoreScope::Layer : KvScoreScope::KvHead);
}

KvComponent kv_component_chunkkv() {
  return {"chunkkv",
          KvComponentKind::TokenPolicy,
          "ChunkKV (\"ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference\"): "
          "SnapKV's window votes averaged over chunks of consecutive tokens, the best chunks kept whole, plus the "
          "window; cuts once, after the prompt",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), the window included"},
           {"window", std::to_string(kDefaultWindow), "observation window: the last prompt tokens, which vote and stay"},
           {"chunk", std::to_string(kDefaultChunk), "tokens per chunk, tiled from the oldest token; kept or dropped whole"},
           {"pool", std::to_string(kDefaultPool), "pooling kernel over neighbouring positions before chunking (odd; 1: none)"},
           {"pooling", "avg", "max or avg"},
           {"scope", "layer", "layer: one set of chunks for all kv-heads of a layer (attention summed); head: each its own"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_chunkkv_ranker(args)); }};
}

}  // namespace longctx::kv
