// TOVA ("Transformers are Multi-State RNNs"): Token Omission Via Attention. When the cache is over its budget,
// drop the token that the current query attends to least (its attention summed over the query heads of the
// kv-head). No accumulated history: only the latest step's attention counts. At prefill end the last prompt
// query ranks the prompt.
#include <algorithm>

#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

class TovaRanker final : public TokenRanker {
 public:
  explicit TovaRanker(int32_t budget) : budget_(budget) {}
  std::string describe() const override { return "tova(budget=" + std::to_string(budget_) + ")"; }
  int32_t budget() const override { return budget_; }
  int32_t prefill_score_from(int32_t n_prompt) const override { return std::max(0, n_prompt - 1); }
  bool wants_decode_scores() const override { return true; }
  bool evicts_during_decode() const override { return true; }

  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    std::vector<int32_t> all(positions.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i);
    return top_slots(all, std::vector<float>(scores, scores + positions.size()), budget, positions);
  }

 private:
  int32_t budget_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_tova_ranker(const SpecArgs& args) {
  return std::make_unique<TovaRanker>(args.get_int("budget", 1024, 1, 1 << 30));
}

}  // namespace longctx::kv
