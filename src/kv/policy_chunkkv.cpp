// ChunkKV ("ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference"): a fact
// spans several consecutive tokens (a number read one digit a token, a name, a clause), and ranking tokens one by
// one keeps the token the question points at while its neighbours go. ChunkKV ranks chunks instead: the
// observation window's attention (as SnapKV gathers it) is averaged over each chunk of `chunk` consecutive tokens,
// and the best chunks stay whole, with the window.
//
// The chunks tile the tokens before the window in position order, from the oldest; the last one, just before the
// window, may be shorter, and is ranked by its mean like the others. A head keeps its window plus the best chunks,
// each whole while it fits in the rest of the budget (a chunk that does not fit is passed over for the next), so
// the budget counts tokens, window included, as SnapKV's does.
//
// Fixed chunks still cut a fact where a chunk ends: on SmolLM2 a 7-digit needle read one digit a token loses its
// last digits when its chunk ends inside the number and the next chunk ranks low (the question's attention falls on
// the words before the number). align=word / align=sentence move each chunk's end, within half a chunk, to a
// boundary of the text (between words; between sentences where one is that near), which the engine derives from
// the tokenizer (kv::TextBreak), so a number, a name or a short sentence is kept or dropped whole: the semantic
// chunks the paper's title is about, found from the text rather than from a fixed length. Measured on SmolLM2 at
// 4K tokens (EVAL.md), sentence-aligned chunks keep every needle the full cache finds at 20x fewer tokens, where
// fixed chunks keep 2 of 5 (and word-aligned ones 3 of 5: the layers, each choosing its own chunks, still part a
// number from its key), so it is the default; a policy told no boundaries (no tokenizer) cuts by counts alone.
//
// As in the authors' code (in NVIDIA kvpress), the attention is summed over all kv-heads of the layer by default,
// so that the layer keeps one set of chunks (the paper's layer-wise index reuse builds on that); scope=head ranks each kv-head's chunks by its own attention, which AdaKV's per-head budgets need.
// Optional pooling (SnapKV's) spreads each token's attention over its neighbours before the chunks are summed.
// The cache is cut once, at prefill end.
#include <algorithm>
#include <cstdlib>
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
// align: sentence, ours (below); none is the paper's fixed chunks, which kvpress runs.
constexpr const char* kDefaultAlign = "sentence";

class ChunkKvRanker final : public TokenRanker {
 public:
  ChunkKvRanker(int32_t budget, int32_t window, int32_t chunk, int32_t kernel, KvPooling pooling, KvScoreScope scope,
                TextBreak align)
      : budget_(budget), window_(window), chunk_(chunk), kernel_(kernel), pooling_(pooling), scope_(scope), align_(align) {}
  std::string describe() const override {
    std::string s = "chunkkv(budget=" + std::to_string(budget_) + ", window=" + std::to_string(window_) +
                    ", chunk=" + std::to_string(chunk_);
    if (align_ != TextBreak::None) s += align_ == TextBreak::Word ? ", cut between words" : ", cut between sentences";
    if (kernel_ > 1) s += ", pool=" + std::to_string(kernel_) + (pooling_ == KvPooling::Max ? " max" : " avg");
    return s + (scope_ == KvScoreScope::Layer ? ", one set per layer)" : ", per kv-head)");
  }
  int32_t budget() const override { return budget_; }
  int32_t prefill_score_from(int32_t n_prompt) const override { return std::max(0, n_prompt - window_); }
  int32_t n_window() const override { return window_; }
  KvScoreScope score_scope() const override { return scope_; }
  bool has_selection_scores() const override { return true; }
  bool wants_text_breaks() const override { return align_ != TextBreak::None; }
  void read_text_breaks_from(const std::vector<TextBreak>* breaks) override { breaks_ = breaks; }

  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size());
    const int32_t n_window = std::min({window_, n, budget});
    std::vector<int32_t> keep(order.end() - n_window, order.end());
    const int32_t n_rest = n - n_window;
    const std::vector<int32_t> starts = tile(order, n_rest, positions);
    const std::vector<float> mean = chunk_means(order, starts, scores);
    // The best chunks by mean (ties: the older), each taken whole while it fits in what the window leaves.
    std::vector<int32_t> best(mean.size());
    for (size_t c = 0; c < best.size(); ++c) best[c] = static_cast<int32_t>(c);
    std::stable_sort(best.begin(), best.end(), [&](int32_t a, int32_t b) { return mean[a] > mean[b]; });
    int32_t room = std::max(0, budget - n_window);
    for (int32_t c : best) {
      const int32_t len = starts[c + 1] - starts[c];
      if (len > room) continue;
      room -= len;
      keep.insert(keep.end(), order.begin() + starts[c], order.begin() + starts[c + 1]);
    }
    std::sort(keep.begin(), keep.end());
    return keep;
  }

  std::vector<float> selection_scores(const std::vector<int32_t>& positions, const float* scores) const override {
    const std::vector<int32_t> order = slots_by_position(positions);
    const int32_t n = static_cast<int32_t>(order.size()), n_rest = n - std::min(window_, n);
    const std::vector<int32_t> starts = tile(order, n_rest, positions);
    const std::vector<float> mean = chunk_means(order, starts, scores);
    std::vector<float> s(order.size(), std::numeric_limits<float>::infinity());
    for (size_t c = 0; c + 1 < starts.size(); ++c)
      for (int32_t i = starts[c]; i < starts[c + 1]; ++i) s[static_cast<size_t>(order[i])] = mean[c];
    return s;
  }

 private:
  TextBreak break_before(int32_t position) const {
    if (breaks_ == nullptr || position < 0 || static_cast<size_t>(position) >= breaks_->size()) return TextBreak::None;
    return std::min((*breaks_)[static_cast<size_t>(position)], align_);
  }

  // Where the chunks of order[0, n_rest) start (indices into order), then n_rest. Unaligned: every chunk_ tokens.
  // Aligned: each chunk ends at the strongest boundary (up to align_) from half a chunk to one and a half chunks
  // past its start, the one nearest a whole chunk among equals; where there is none (a long run of digits, text
  // whose boundaries are unknown) after a whole chunk.
  std::vector<int32_t> tile(const std::vector<int32_t>& order, int32_t n_rest, const std::vector<int32_t>& positions) const {
    std::vector<int32_t> starts;
    for (int32_t i = 0; i < n_rest;) {
      starts.push_back(i);
      int32_t end = std::min(i + chunk_, n_rest);
      if (align_ != TextBreak::None && i + chunk_ < n_rest) {
        TextBreak best = TextBreak::None;
        int32_t best_gap = 0;
        for (int32_t j = i + std::max(1, chunk_ / 2); j <= std::min(n_rest, i + chunk_ + chunk_ / 2); ++j) {
          const TextBreak b = break_before(positions[static_cast<size_t>(order[j])]);
          const int32_t gap = std::abs(j - (i + chunk_));
          if (b > best || (b == best && b != TextBreak::None && gap < best_gap)) {
            best = b;
            best_gap = gap;
            end = j;
          }
        }
      }
      i = end;
    }
    starts.push_back(n_rest);
    return starts;
  }

  // The mean of each chunk's (pooled) scores (in float, as the scores are: near ties fall as kvpress's do).
  std::vector<float> chunk_means(const std::vector<int32_t>& order, const std::vector<int32_t>& starts,
                                  const float* scores) const {
    const int32_t n_rest = starts.back();
    const std::vector<float> pooled = pool_along_positions(order, n_rest, scores, kernel_, pooling_);
    std::vector<float> mean(starts.size() - 1);
    for (size_t c = 0; c < mean.size(); ++c) {
      double sum = 0;
      for (int32_t j = starts[c]; j < starts[c + 1]; ++j) sum += pooled[static_cast<size_t>(order[j])];
      mean[c] = static_cast<float>(sum / (starts[c + 1] - starts[c]));
    }
    return mean;
  }

  int32_t budget_, window_, chunk_, kernel_;
  KvPooling pooling_;
  KvScoreScope scope_;
  TextBreak align_;
  const std::vector<TextBreak>* breaks_ = nullptr;
};

}  // namespace

std::unique_ptr<TokenRanker> make_chunkkv_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t window = args.get_int("window", kDefaultWindow, 1, 1 << 20);
  const int32_t chunk = args.get_int("chunk", kDefaultChunk, 1, 1 << 20);
  const int32_t kernel = args.get_int("pool", kDefaultPool, 1, 1001);
  const std::string pooling = args.get_string("pooling", "avg");
  const std::string scope = args.get_string("scope", "layer");
  const std::string align = args.get_string("align", kDefaultAlign);
  if (pooling != "max" && pooling != "avg") fail("chunkkv: pooling must be max or avg, not '{}'", pooling);
  if (kernel % 2 == 0) fail("chunkkv: pool={} must be odd (a window centred on each token)", kernel);
  if (scope != "layer" && scope != "head") fail("chunkkv: scope must be layer or head, not '{}'", scope);
  if (align != "none" && align != "word" && align != "sentence")
    fail("chunkkv: align must be none, word or sentence, not '{}'", align);
  if (budget < window + chunk)
    fail("chunkkv: budget={} holds no chunk of {} tokens beyond the window of {}; raise it to at least {}", budget, chunk,
         window, window + chunk);
  return std::make_unique<ChunkKvRanker>(budget, window, chunk, kernel, pooling == "max" ? KvPooling::Max : KvPooling::Avg,
                                         scope == "layer" ? KvScoreScope::Layer : KvScoreScope::KvHead,
                                         align == "none" ? TextBreak::None : align == "word" ? TextBreak::Word : TextBreak::Sentence);
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
           {"align", kDefaultAlign, "none: chunks of exactly `chunk` tokens (the paper's); word: chunks end between words; "
                                    "sentence: between sentences where one ends within half a chunk, else between words"},
           {"scope", "layer", "layer: one set of chunks for all kv-heads of a layer (attention summed); head: each its own"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_chunkkv_ranker(args)); }};
}

}  // namespace longctx::kv
