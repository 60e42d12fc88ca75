// RazorAttention ("RazorAttention: Efficient KV Cache Compression Through Retrieval Heads"): echo and induction
// scores on a repeated random sequence; see head_calibration.h.
#include "kv/head_calibration.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/error.h"

namespace longctx::kv {

std::vector<int32_t> repeated_random_tokens(int32_t length, int32_t token_lo, int32_t token_hi, uint64_t seed,
                                            int32_t bos) {
  if (length <= 0 || token_hi <= token_lo) fail("calibration: bad length {} or token range [{}, {})", length, token_lo, token_hi);
  // mt19937_64 and a plain modulo, so a seed gives the same tokens on every platform and standard library
  // (std::uniform_int_distribution is not specified bit for bit).
  std::mt19937_64 rng(seed);
  std::vector<int32_t> copy(static_cast<size_t>(length));
  for (auto& t : copy) t = token_lo + static_cast<int32_t>(rng() % static_cast<uint64_t>(token_hi - token_lo));
  std::vector<int32_t> out;
  if (bos >= 0) out.push_back(bos);
  out.insert(out.end(), copy.begin(), copy.end());
  out.insert(out.end(), copy.begin(), copy.end());
  return out;
}

HeadCalibration::HeadCalibration(int32_t n_layer, int32_t n_head_kv, int32_t first_copy, int32_t length)
    : n_layer_(n_layer),
      n_head_kv_(n_head_kv),
      first_copy_(first_copy),
      length_(length),
      echo_(static_cast<size_t>(n_layer) * n_head_kv, 0.0),
      induction_(echo_.size(), 0.0),
      n_queries_(echo_.size(), 0) {}

void HeadCalibration::add_query(int32_t layer, int32_t kv_head, int32_t query_pos, const float* probs,
                                const std::vector<int32_t>& positions, int32_t n_group) {
  const int32_t second = first_copy_ + length_;
  if (query_pos < second || query_pos >= second + length_)
    fail("calibration: query at {} is not in the second copy [{}, {})", query_pos, second, second + length_);
  // The query holds token i of the copy; its earlier occurrence sits one copy back, and the token that followed
  // it one further. The last query of the copy has an echo target and an induction target (the second copy's
  // first token) both in the past, so every query counts for both.
  const int32_t echo_pos = query_pos - length_, induction_pos = echo_pos + 1;
  double echo = 0, induction = 0;
  for (size_t s = 0; s < positions.size(); ++s) {
    if (positions[s] == echo_pos) echo += probs[s];
    if (positions[s] == induction_pos) induction += probs[s];
  }
  const size_t i = static_cast<size_t>(layer) * n_head_kv_ + kv_head;
  echo_[i] += echo / n_group;
  induction_[i] += induction / n_group;
  n_queries_[i] += 1;
}

static std::vector<double> means(const std::vector<double>& sums, const std::vector<int32_t>& n) {
  std::vector<double> m(sums.size());
  for (size_t i = 0; i < sums.size(); ++i) m[i] = n[i] > 0 ? sums[i] / n[i] : 0.0;
  return m;
}

std::vector<double> HeadCalibration::echo_scores() const { return means(echo_, n_queries_); }
std::vector<double> HeadCalibration::induction_scores() const { return means(induction_, n_queries_); }

std::vector<int32_t> pick_retrieval_heads(const std::vector<double>& echo, const std::vector<double>& induction,
                                          int32_t n_induction, int32_t n_echo) {
  const int32_t n = static_cast<int32_t>(induction.size());
  auto top = [n](const std::vector<double>& score, int32_t count) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
    idx.resize(static_cast<size_t>(std::clamp(count, 0, n)));
    return idx;
  };
  std::vector<int32_t> out = top(induction, n_induction);
  const std::vector<int32_t> e = top(echo, n_echo);
  out.insert(out.end(), e.begin(), e.end());
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string retrieval_heads_json(const HeadCalibration& cal, const std::vector<int32_t>& retrieval,
                                 const std::string& model, int32_t length, uint64_t seed) {
  nlohmann::json j;
  j["n_layer"] = cal.n_layer();
  j["n_head_kv"] = cal.n_head_kv();
  j["retrieval"] = nlohmann::json::array();
  for (int32_t i : retrieval) j["retrieval"].push_back({i / cal.n_head_kv(), i % cal.n_head_kv()});
  j["method"] = "RazorAttention echo + induction scores on a repeated random sequence";
  j["model"] = model;
  j["length"] = length;
  j["seed"] = seed;
  // Scores as (n_layer) rows of (n_head_kv), mean attention probability on the target over second-copy queries.
  const auto echo = cal.echo_scores(), induction = cal.induction_scores();
  for (const char* key : {"echo", "induction"}) {
    const auto& s = key[0] == 'e' ? echo : induction;
    nlohmann::json rows = nlohmann::json::array();
    for (int32_t l = 0; l < cal.n_layer(); ++l) {
      nlohmann::json row = nlohmann::json::array();
      for (int32_t g = 0; g < cal.n_head_kv(); ++g) row.push_back(s[static_cast<size_t>(l) * cal.n_head_kv() + g]);
      rows.push_back(row);
    }
    j["scores"][key] = rows;
  }
  return j.dump(1) + "\n";
}

}  // namespace longctx::kv
