// Token rankers: which tokens of one (layer, kv-head) stay when it holds more than its budget. One method per
// file (policy_streaming.cpp, policy_h2o.cpp, policy_snapkv.cpp, policy_chunkkv.cpp, policy_tova.cpp); each cites
// its paper.
#pragma once
#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/policy.h"
#include "kv/spec_args.h"

namespace longctx::kv {

// Whose attention ranks a head's tokens: its own (the query heads of the kv-head, summed), or the mean over every
// head of the layer that the same ranker manages, so that those heads keep one token set.
enum class KvScoreScope { KvHead, Layer };

class TokenRanker {
 public:
  virtual ~TokenRanker() = default;
  virtual std::string describe() const = 0;
  // The budget the spec gave (budget=N), -1 if none; the composed policy may override it per layer and head.
  virtual int32_t budget() const = 0;
  // Queries at positions >= this vote at prefill end (n_prompt: the prompt's length); INT_MAX: scores unused.
  virtual int32_t prefill_score_from(int32_t n_prompt) const { return INT_MAX; }
  // Queries at positions >= this are gathered into KvScores::queries (KvPolicy::prefill_query_stats_from).
  virtual int32_t prefill_query_stats_from(int32_t n_prompt) const { return INT_MAX; }
  // The reconstruction pass that scores the cache after prefill (KvPolicy::reconstruction); chunk 0: none.
  virtual KvReconstruction reconstruction() const { return {}; }
  // A ranker that scores a head's tokens itself, from what the cache holds (keys, values) and what the forward
  // gathered (query statistics), rather than ranking the gathered attention as it is: fills out (n_slots of the
  // head) and returns true. The default scores nothing and returns false.
  virtual bool score_from_cache(const KvSequence& seq, int32_t layer, int32_t kv_head, const KvScores& gathered,
                                std::vector<float>& out) const {
    return false;
  }
  virtual bool wants_decode_scores() const { return false; }
  // A ranker that cuts at text boundaries reads them, by position, from `breaks` (owned by its policy, which fills
  // it from KvPolicy::on_text; positions past its end have no known boundary) during select() and
  // selection_scores(). Called once, when the policy takes the ranker.
  virtual bool wants_text_breaks() const { return false; }
  virtual void read_text_breaks_from(const std::vector<TextBreak>* breaks) {}
  // Keeps the cache at its budget as decoding goes on (else the cache is cut once, after prefill, and grows).
  virtual bool evicts_during_decode() const { return false; }
  // Positions within the cache (StreamingLLM) rather than original ones; a policy uses them only when every head's
  // ranker does.
  virtual KvPositions positions() const { return KvPositions::Original; }
  // Scores add up over all steps (H2O) rather than being the latest step's alone (TOVA).
  virtual bool accumulates_scores() const { return false; }
  virtual KvScoreScope score_scope() const { return KvScoreScope::KvHead; }
  // Tokens kept on top of the scored selection whatever their scores (SnapKV's observation window). A budget
  // shape gives them to every layer before it shares out the rest (PyramidKV).
  virtual int32_t n_window() const { return 0; }
  // Whether the heads this ranker manages share one budget at prefill end (KVzip's non-uniform heads): share_budget
  // then divides `total` tokens among them from their scores, returning each head's budget (its select() gets it).
  // positions and scores: (n_heads) of each head's (n_slots).
  virtual bool shares_budget() const { return false; }
  virtual std::vector<int32_t> share_budget(const std::vector<const std::vector<int32_t>*>& positions,
                                            const std::vector<const float*>& scores, int64_t total) const {
    return {};
  }
  // The slots to keep, sorted ascending, at most `budget` of them. positions: (n_slots); scores: (n_slots),
  // the attention gathered for this head (null when the ranker asks for none).
  virtual std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores,
                                      int32_t budget) const = 0;
  // Whether selection_scores() gives select()'s order, so that a budget shape may share a layer's budget among its
  // kv-heads by their scores (AdaKV).
  virtual bool has_selection_scores() const { return false; }
  // Each slot's score in select()'s order, comparable across the kv-heads of a layer: select(budget = b) keeps the
  // b best by it (ties to the earlier position), once b covers the slots it keeps whatever their scores (the
  // window), which get +infinity. (n_slots); positions and scores as for select(). Empty unless
  // has_selection_scores().
  virtual std::vector<float> selection_scores(const std::vector<int32_t>& positions, const float* scores) const {
    return {};
  }
};

std::unique_ptr<TokenRanker> make_streaming_ranker(const SpecArgs& args);
std::unique_ptr<TokenRanker> make_h2o_ranker(const SpecArgs& args);
std::unique_ptr<TokenRanker> make_snapkv_ranker(const SpecArgs& args);
std::unique_ptr<TokenRanker> make_tova_ranker(const SpecArgs& args);
std::unique_ptr<TokenRanker> make_chunkkv_ranker(const SpecArgs& args);
std::unique_ptr<TokenRanker> make_kvzip_ranker(const SpecArgs& args);
std::unique_ptr<TokenRanker> make_expected_attention_ranker(const SpecArgs& args);

// Expected Attention's closed form (policy_expected_attention.cpp): log E[exp(scale q.k)] for q ~ N(mean, cov),
// = scale mean.k + scale^2 k^T cov k / 2. mean (d), cov (d, d) row-major, k (d).
double expected_attention_logit(const double* mean, const double* cov, const float* k, int32_t d, double scale);

// Helpers shared by the rankers.
// Slots sorted by position, ascending.
std::vector<int32_t> slots_by_position(const std::vector<int32_t>& positions);
// How a score is spread over neighbouring positions (SnapKV's pooling).
enum class KvPooling { Max, Avg };
// scores pooled along positions: for i < n_rest, slot order[i] gets the max or mean of the scores of order[j],
// |j - i| <= kernel / 2, j < n_rest (the mean over the neighbours that exist). (n_slots); 0 for the other slots.
std::vector<float> pool_along_positions(const std::vector<int32_t>& order, int32_t n_rest, const float* scores,
                                        int32_t kernel, KvPooling pooling);
// The `count` slots with the highest score among `candidates` (ties to the earlier position), sorted ascending.
std::vector<int32_t> top_slots(const std::vector<int32_t>& candidates, const std::vector<float>& score, int32_t count,
                               const std::vector<int32_t>& positions);
// The n_sink earliest tokens (attention sinks) and the (budget - those) highest-scored others, sorted ascending:
// scores (n_slots).
std::vector<int32_t> sinks_and_top_slots(const std::vector<int32_t>& positions, const float* scores, int32_t budget,
                                         int32_t n_sink);

}  // namespace longctx::kv
