// A policy put together from a --kv spec (policy_registry.h): a token ranker (which tokens), budgets per
// (layer, kv-head) (uniform, PyramidKV's per-layer pyramid, or head roles), and the formats of open and sealed
// pages (f16/f32, KIVI).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kv/policy.h"
#include "kv/token_ranker.h"

namespace longctx::kv {

// Budget value for a head that keeps everything.
constexpr int32_t kKeepAll = -1;

// What becomes of the tokens a head drops. RazorAttention ("RazorAttention: Efficient KV Cache Compression Through
// Retrieval Heads") folds them into one compensation token, the mean of their keys and of their values, which the
// head keeps on top of its budget.
enum class KvDropped { Forgotten, Compensated };

struct HeadPlan {
  const TokenRanker* ranker = nullptr;  // null: keeps everything
  int32_t budget = kKeepAll;            // tokens selected by the ranker; a compensation token comes on top
  KvDropped dropped = KvDropped::Forgotten;
};

// A budget shape that shares each layer's budget among the layer's kv-heads at the moment of the cut, from their
// scores (AdaKV), where the other shapes fix every head's budget beforehand. It governs the heads whose plan has
// `ranker` (which has_selection_scores()); their plan budgets are what it shares out, per layer.
class LayerBudgetShare {
 public:
  explicit LayerBudgetShare(const TokenRanker* ranker) : ranker_(ranker) {}
  virtual ~LayerBudgetShare() = default;
  const TokenRanker* ranker() const { return ranker_; }
  // For the governed heads of one layer: each head's selection scores and positions (n_slots each) and plan
  // budget. Returns each head's budget for this cut; their sum is at most the sum of `budgets`.
  virtual std::vector<int32_t> share(const std::vector<std::vector<float>>& scores,
                                     const std::vector<std::vector<int32_t>>& positions,
                                     const std::vector<int32_t>& budgets) const = 0;

 private:
  const TokenRanker* ranker_;
};

class ComposedPolicy final : public KvPolicy {
 public:
  // plans: (n_layer * n_head_kv), each head's ranker and budget; rankers are owned here. n_recent_full_precision:
  // KIVI's residual window when `sealed` is packed. share: null, or how each layer's budget is shared among the
  // heads it governs when they are cut.
  ComposedPolicy(std::vector<std::unique_ptr<TokenRanker>> rankers, std::vector<HeadPlan> plans, int32_t n_head_kv,
                 KvFormat open, KvFormat sealed, int32_t n_recent_full_precision, std::string description,
                 std::unique_ptr<LayerBudgetShare> share = nullptr);

  ComposedPolicy(ComposedPolicy&&) = delete;  // its rankers point at text_breaks_
  std::string describe() const override { return description_; }
  KvFormat page_format() const override { return open_; }
  KvFormat sealed_format() const override { return sealed_; }
  int32_t prefill_score_from(int32_t n_prompt) const override;
  int32_t prefill_query_stats_from(int32_t n_prompt) const override;
  KvReconstruction reconstruction() const override;
  int32_t n_recent_full_precision() const override;
  void reset() override;
  bool wants_text_breaks() const override;
  void on_text(int32_t first_pos, std::span<const TextBreak> breaks) override;
  bool wants_decode_scores() const override;
  KvPositions positions() const override;
  void after_prefill_chunk(KvSequence& seq, const KvScores& scores) override;
  int64_t max_tokens_after_cut(int64_t n_tokens) const override;
  void after_prefill(KvSequence& seq, const KvScores& scores) override;
  void after_decode_step(KvSequence& seq, const KvScores& scores) override;
  void on_slots_removed(int32_t layer, int32_t kv_head, int32_t n_before, const std::vector<int32_t>& slots) override;
  using KvPolicy::read_filter;
  KvReadFilter* read_filter() override { return read_filter_.get(); }
  bool wants_key_summaries() const override { return key_summaries_; }
  int32_t page_tokens() const override { return page_tokens_; }
  bool keeps_every_token() const override { return rankers_.empty() && open_ == sealed_ && !read_filter_; }
  bool passive_during_decode() const override;
  // The read policy (Quest): what decode reads of what this policy keeps, whether it needs key summaries, and the
  // page size it selects in (0: the store's default).
  void set_read_filter(std::unique_ptr<KvReadFilter> filter, bool key_summaries, int32_t page_tokens) {
    read_filter_ = std::move(filter);
    key_summaries_ = key_summaries;
    page_tokens_ = page_tokens;
  }

  const HeadPlan& plan(int32_t layer, int32_t kv_head) const { return plans_[index(layer, kv_head)]; }

 private:
  enum class Step { PrefillChunk, PrefillEnd, Decode };
  // The running mean of what one head dropped, and where its token sits.
  struct Compensation {
    int64_t n_dropped = 0;
    std::vector<double> k_sum, v_sum;  // (head_dim) each
    int32_t position = -1;             // the compensation token's position in the store; -1: none placed
  };

  size_t index(int32_t layer, int32_t kv_head) const { return static_cast<size_t>(layer) * n_head_kv_ + kv_head; }
  // Adds this round's scores to accumulating heads, then cuts every head over its budget.
  void compress(KvSequence& seq, const KvScores& scores, Step step);
  // Each slot's score for the heads of `layer` that `ranker` manages with KvScoreScope::Layer: the attention summed
  // over all their query heads, looked up by position. (n_head_kv) of (n_slots).
  std::vector<std::vector<float>> layer_scores(const KvSequence& seq, const KvScores& scores, int32_t layer,
                                               const TokenRanker* ranker) const;
  // The slot holding the head's compensation token, -1 if it holds none (never placed, or expired by a sliding
  // window, which also forgets what it stood for: every token it stood for is older still).
  int32_t find_compensation(const KvSequence& seq, int32_t layer, int32_t kv_head);
  // Folds the dropped slots into the head's compensation (read before they are removed).
  void fold_into_compensation(const KvSequence& seq, int32_t layer, int32_t kv_head, const std::vector<int32_t>& drop);
  void place_compensation(KvSequence& seq, int32_t layer, int32_t kv_head);

  // Each head's budget for this cut in `layer`: the plans', or what share_ gives the heads it governs.
  std::vector<int32_t> layer_budgets(const KvSequence& seq, const KvScores& scores, int32_t layer) const;

  std::vector<std::unique_ptr<TokenRanker>> rankers_;
  std::vector<HeadPlan> plans_;
  std::unique_ptr<LayerBudgetShare> share_;
  int32_t n_head_kv_;
  KvFormat open_, sealed_;
  int32_t n_recent_full_precision_;
  std::string description_;
  std::vector<std::vector<float>> accumulated_;  // (n_layer * n_head_kv) of (n_slots), for accumulating rankers
  std::vector<Compensation> compensation_;      // (n_layer * n_head_kv)
  std::vector<TextBreak> text_breaks_;          // by position, for the rankers that cut at them
  std::unique_ptr<KvReadFilter> read_filter_;
  bool key_summaries_ = false;
  int32_t page_tokens_ = 0;
};

// PyramidKV ("PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"): attention
// spreads widely in low layers and narrows in high ones, so the selected tokens fall linearly with depth while the
// n_window most recent tokens (the observation window) stay in every layer on top of them. With S = budget -
// n_window, the last layer selects S / beta, the first 2 S - S / beta, the mean is S; so the mean of the returned
// totals is `budget`, as with a uniform budget. Returns (n_layer) totals (selected + n_window, at least 1).
std::vector<int32_t> pyramid_budgets(int32_t budget, int32_t n_window, double beta, int32_t n_layer);

// AdaKV ("Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference"), the
// allocation: each head first keeps its floor(alpha * budget) best slots (at least one when alpha > 0), then the
// rest of the layer's budget goes to the best remaining slots of all heads together. scores, positions: (n_head)
// of (n_slots); budgets: (n_head). Ties: the earlier head, then the earlier position. Returns (n_head) budgets.
std::vector<int32_t> adakv_budgets(const std::vector<std::vector<float>>& scores,
                                   const std::vector<std::vector<int32_t>>& positions,
                                   const std::vector<int32_t>& budgets, double alpha);

}  // namespace longctx::kv
