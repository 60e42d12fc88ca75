// Retrieval-head calibration without training, after "RazorAttention: Efficient KV Cache Compression Through
// Retrieval Heads": on a sequence of random tokens repeated twice, a query in the second copy can only predict its
// next token by looking back at the first copy. Echo heads attend to the earlier occurrence of the current token,
// induction heads to the token that followed it; both reach arbitrarily far back, so they are the heads that must
// keep the whole cache (`heads` in a --kv spec). Everything else here is plain host code over attention
// probabilities; the command that runs the model and feeds them in is apps/cli/calibrate_heads_command.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace longctx::kv {

// The calibration input: bos (or nothing when bos < 0), then `length` tokens drawn uniformly from
// [token_lo, token_hi) with the given seed, then the same `length` tokens again. (1 + 2 * length) or (2 * length).
std::vector<int32_t> repeated_random_tokens(int32_t length, int32_t token_lo, int32_t token_hi, uint64_t seed,
                                            int32_t bos);

// Accumulates, per (layer, kv-head), the attention that second-copy queries pay to the echo and induction
// targets. first_copy: the position of the first copy's first token (1 after a bos); length: one copy's length.
class HeadCalibration {
 public:
  HeadCalibration(int32_t n_layer, int32_t n_head_kv, int32_t first_copy, int32_t length);

  // One query's attention in one (layer, kv-head). query_pos is in the second copy, at
  // [first_copy + length, first_copy + 2 * length); probs: (n_slots) the query's probabilities summed over the
  // kv-head's n_group query heads; positions: (n_slots) the position each slot holds (any order).
  void add_query(int32_t layer, int32_t kv_head, int32_t query_pos, const float* probs,
                 const std::vector<int32_t>& positions, int32_t n_group);

  // Means over the queries seen, each in [0, 1]: (n_layer * n_head_kv), layer-major.
  std::vector<double> echo_scores() const;
  std::vector<double> induction_scores() const;
  int32_t n_layer() const { return n_layer_; }
  int32_t n_head_kv() const { return n_head_kv_; }

 private:
  int32_t n_layer_, n_head_kv_, first_copy_, length_;
  std::vector<double> echo_, induction_;  // (n_layer * n_head_kv) sums
  std::vector<int32_t> n_queries_;        // (n_layer * n_head_kv)
};

// RazorAttention protects the top heads by induction score and, separately, a few top heads by echo score. The
// counts: n_induction and n_echo heads (ties to the lower index). Returns flat head indices (layer * n_head_kv +
// kv_head), sorted ascending, unique.
std::vector<int32_t> pick_retrieval_heads(const std::vector<double>& echo, const std::vector<double>& induction,
                                          int32_t n_induction, int32_t n_echo);

// The roles file that `heads:file=` reads (composed_policy.cpp): n_layer, n_head_kv, retrieval: [[layer, kv_head],
// ...], plus the scores and how they were made (method, length, seed) for whoever reads it.
std::string retrieval_heads_json(const HeadCalibration& cal, const std::vector<int32_t>& retrieval,
                                 const std::string& model, int32_t length, uint64_t seed);

}  // namespace longctx::kv
