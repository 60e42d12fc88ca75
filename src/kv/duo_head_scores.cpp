// DuoAttention ("DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads"), measured
// forward-only: see duo_head_scores.h.
#include "kv/duo_head_scores.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "core/error.h"

namespace longctx::kv {

KvHeadView streaming_head_view(const KvHeadView& head, int32_t sink, int32_t window, int32_t q_first,
                                    std::vector<int32_t>& positions) {
  if (sink < 0 || window < 0) fail("streaming view: sink {} and window {} must be >= 0", sink, window);
  KvHeadView out;
  positions.clear();
  out.slot0.push_back(0);
  const int64_t recent_from = static_cast<int64_t>(q_first) - window;
  for (int32_t p = 0; p < head.n_pages(); ++p) {
    const int32_t s0 = head.slot0[static_cast<size_t>(p)], rows = head.page_rows(p);
    if (rows == 0) continue;
    const bool recent = head.positions[s0 + rows - 1] >= recent_from;  // slots are in position order
    const int32_t take = recent ? rows : (p == 0 ? std::min(sink, rows) : 0);
    if (take == 0) continue;
    out.pages.push_back(head.pages[static_cast<size_t>(p)]);
    out.formats.push_back(head.formats[static_cast<size_t>(p)]);
    positions.insert(positions.end(), head.positions + s0, head.positions + s0 + take);  // a page's first rows
    out.slot0.push_back(out.slot0.back() + take);
  }
  out.positions = positions.data();
  out.n_tokens = out.slot0.back();
  return out;
}

namespace {

// log of the sum of exp(x), and the row's maximum, in double.
double log_sum_exp(const float* x, int32_t n) {
  double m = -INFINITY;
  for (int32_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double s = 0;
  for (int32_t i = 0; i < n; ++i) s += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(s);
}

}  // namespace

double logits_kl(const float* ref, const float* test, int32_t n) {
  if (n <= 0) fail("internal: KL over {} logits", n);
  const double zr = log_sum_exp(ref, n), zt = log_sum_exp(test, n);
  double kl = 0;
  for (int32_t i = 0; i < n; ++i) {
    const double lr = ref[i] - zr, lt = test[i] - zt;
    kl += std::exp(lr) * (lr - lt);
  }
  return std::max(0.0, kl);  // rounding can leave a tiny negative for equal distributions
}

double log_prob(const float* logits, int32_t n, int32_t target) {
  if (target < 0 || target >= n) fail("internal: target {} outside {} logits", target, n);
  return static_cast<double>(logits[target]) - log_sum_exp(logits, n);
}

const char* duo_score_name(DuoScore s) { return s == DuoScore::Kl ? "kl" : "answer"; }

DuoScore parse_duo_score(const std::string& s) {
  if (s == "kl") return DuoScore::Kl;
  if (s == "answer") return DuoScore::Answer;
  fail("unknown duo score '{}'; give kl (KL of the answer's logits) or answer (drop of its log-probability)", s);
}

DuoHeadScores::DuoHeadScores(int32_t n_layer, int32_t n_head_kv)
    : n_layer_(n_layer),
      n_head_kv_(n_head_kv),
      kl_(static_cast<size_t>(n_layer) * n_head_kv, 0.0),
      drop_(kl_.size(), 0.0),
      n_(kl_.size(), 0) {
  if (n_layer <= 0 || n_head_kv <= 0) fail("duo scores: {} layers x {} kv-heads", n_layer, n_head_kv);
}

void DuoHeadScores::add(int32_t layer, int32_t kv_head, const float* ref, const float* test, const int32_t* targets,
                        int32_t n_rows, int32_t n_vocab) {
  if (layer < 0 || layer >= n_layer_ || kv_head < 0 || kv_head >= n_head_kv_)
    fail("duo scores: head [{}, {}] outside {} x {}", layer, kv_head, n_layer_, n_head_kv_);
  if (n_rows <= 0) fail("duo scores: an answer span of {} rows", n_rows);
  double kl = 0, drop = 0;
  for (int32_t r = 0; r < n_rows; ++r) {
    const size_t off = static_cast<size_t>(r) * n_vocab;
    kl += logits_kl(ref + off, test + off, n_vocab);
    drop += log_prob(ref + off, n_vocab, targets[r]) - log_prob(test + off, n_vocab, targets[r]);
  }
  const size_t i = static_cast<size_t>(layer) * n_head_kv_ + kv_head;
  kl_[i] += kl / n_rows;
  drop_[i] += drop;
  n_[i] += 1;
}

static std::vector<double> means(const std::vector<double>& sums, const std::vector<int32_t>& n) {
  std::vector<double> m(sums.size());
  for (size_t i = 0; i < sums.size(); ++i) m[i] = n[i] > 0 ? sums[i] / n[i] : 0.0;
  return m;
}

std::vector<double> DuoHeadScores::kl() const { return means(kl_, n_); }
std::vector<double> DuoHeadScores::answer_drop() const { return means(drop_, n_); }

std::vector<int32_t> top_heads(const std::vector<double>& score, int32_t count) {
  std::vector<int32_t> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
  idx.resize(static_cast<size_t>(std::clamp<int64_t>(count, 0, static_cast<int64_t>(idx.size()))));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::string duo_roles_json(const DuoHeadScores& s, const std::vector<int32_t>& retrieval,
                           const DuoCalibrationInfo& info) {
  nlohmann::json j;
  j["n_layer"] = s.n_layer();
  j["n_head_kv"] = s.n_head_kv();
  j["retrieval"] = nlohmann::json::array();
  for (int32_t i : retrieval) {
    if (i < 0 || i >= s.n_layer() * s.n_head_kv()) fail("internal: retrieval head {} out of range", i);
    j["retrieval"].push_back({i / s.n_head_kv(), i % s.n_head_kv()});
  }
  j["method"] = "DuoAttention, forward-only: each kv-head alone made streaming (sinks + recent window) on passkey "
                "prompts, ranked by the change of the answer's logits";
  j["model"] = info.model;
  j["task"] = info.task;
  j["score"] = duo_score_name(info.score);
  j["length"] = info.length;
  j["n_prompts"] = info.n_prompts;
  j["sink"] = info.sink;
  j["window"] = info.window;
  j["seed"] = info.seed;
  const auto kl = s.kl(), drop = s.answer_drop();
  for (const char* key : {"kl", "answer"}) {
    const auto& v = key[0] == 'k' ? kl : drop;
    nlohmann::json rows = nlohmann::json::array();
    for (int32_t l = 0; l < s.n_layer(); ++l) {
      nlohmann::json row = nlohmann::json::array();
      for (int32_t g = 0; g < s.n_head_kv(); ++g) row.push_back(v[static_cast<size_t>(l) * s.n_head_kv() + g]);
      rows.push_back(row);
    }
    j["scores"][key] = rows;
  }
  return j.dump(1) + "\n";
}

}  // namespace longctx::kv
