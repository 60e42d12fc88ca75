// A policy put together from a --kv spec: a token ranker (which tokens), budgets per (layer, kv-head) (uniform,
// PyramidKV's per-layer pyramid, or head roles), and the formats of open and sealed pages (f16/f32, KIVI).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kv/policy.h"
#include "kv/token_ranker.h"

namespace longctx::kv {

// Budget value for a head that keeps everything.
constexpr int32_t kKeepAll = -1;

struct HeadPlan {
  const TokenRanker* ranker = nullptr;  // null: keeps everything
  int32_t budget = kKeepAll;
};

class ComposedPolicy final : public KvPolicy {
 public:
  // plans: (n_layer * n_head_kv), each head's ranker and budget; rankers are owned here.
  ComposedPolicy(std::vector<std::unique_ptr<TokenRanker>> rankers, std::vector<HeadPlan> plans, int32_t n_head_kv,
                 KvFormat open, KvFormat sealed, std::string description);

  std::string describe() const override { return description_; }
  KvFormat page_format() const override { return open_; }
  KvFormat sealed_format() const override { return sealed_; }
  int32_t prefill_score_from(int32_t n_prompt) const override;
  bool wants_decode_scores() const override;
  KvPositions positions() const override;
  void after_prefill_chunk(KvSequence& seq, const KvScores& scores) override;
  void after_prefill(KvSequence& seq, const KvScores& scores) override;
  void after_decode_step(KvSequence& seq, const KvScores& scores) override;
  void on_slots_removed(int32_t layer, int32_t kv_head, int32_t n_before, const std::vector<int32_t>& slots) override;

  const HeadPlan& plan(int32_t layer, int32_t kv_head) const { return plans_[index(layer, kv_head)]; }

 private:
  size_t index(int32_t layer, int32_t kv_head) const { return static_cast<size_t>(layer) * n_head_kv_ + kv_head; }
  // Adds this round's scores to accumulating heads, then cuts every head over its budget.
  void compress(KvSequence& seq, const KvScores& scores, bool decode_step);

  std::vector<std::unique_ptr<TokenRanker>> rankers_;
  std::vector<HeadPlan> plans_;
  int32_t n_head_kv_;
  KvFormat open_, sealed_;
  std::string description_;
  std::vector<std::vector<float>> accumulated_;  // (n_layer * n_head_kv) of (n_slots), for accumulating rankers
};

// PyramidKV ("PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"): attention
// spreads widely in low layers and narrows in high ones, so budgets fall linearly with depth: the last layer gets
// budget / beta, the first 2 * budget - budget / beta, the mean is `budget`. Returns (n_layer) budgets.
std::vector<int32_t> pyramid_budgets(int32_t budget, double beta, int32_t n_layer);

}  // namespace longctx::kv
