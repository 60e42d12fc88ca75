// Expected Attention ("Expected Attention: KV Cache Compression by Estimating Attention from Future Queries
// Distribution"): a cache kept for questions not yet asked should hold the tokens that the queries still to come
// will attend to. Those queries are unknown, but their distribution is not: the queries a layer has produced
// (before RoPE, past the first n_sink tokens, or the last `window` of them) give a mean mu and covariance Sigma per
// query head. A future query at position p is that query turned by RoPE at p; averaging the rotation over the next
// n_future positions gives one matrix R, so the future query is modelled as q ~ N(R mu, R Sigma R^T). For a cached
// (rotated) key k, the unnormalised attention exp(s q.k) (s: the layer's scale, 1/sqrt(d) usually) then has the
// closed-form expectation exp(s (R mu).k + s^2 k^T R Sigma R^T k / 2) (the Gaussian moment generating function).
// Each query head's expectations are normalised over the head's tokens (a softmax), averaged over the query heads
// of the kv-head, and, as the paper does, weighted by the value's norm ((p + eps) |v|): a token matters as much as
// what it would add to the output. Each kv-head keeps its n_sink first tokens and its top (budget - n_sink).
//
// No extra pass: the forward adds each prompt query to running sums (KvQueryStats, d^2 per query and head) only
// when this policy asks, and the scoring costs d^2 per cached token and query head, once, at prefill end.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {

double expected_attention_logit(const double* mean, const double* cov, const float* k, int32_t d, double scale) {
  double lin = 0, quad = 0;
  for (int32_t i = 0; i < d; ++i) {
    lin += mean[i] * k[i];
    double row = 0;
    for (int32_t j = 0; j < d; ++j) row += cov[static_cast<size_t>(i) * d + j] * k[j];
    quad += k[i] * row;
  }
  return scale * lin + scale * scale * quad / 2;
}

namespace {

constexpr int32_t kDefaultBudget = 1024, kDefaultFuture = 512, kDefaultSink = 4;

// The mean over positions [p0, p0 + n_future) of the layer's RoPE rotation, as a (d, d) row-major matrix acting on
// vectors before RoPE: the identity on channels past n_rot, and on each rotated pair (a, b) [[C, -S], [S, C]], C and
// S the mean cosine and sine of the pair's angle (rope_rotate's convention).
std::vector<double> mean_rope_rotation(const KvQueryStats::Layer& l, int32_t d, int32_t p0, int32_t n_future) {
  std::vector<double> r(static_cast<size_t>(d) * d, 0.0);
  for (int32_t i = 0; i < d; ++i) r[static_cast<size_t>(i) * d + i] = 1.0;
  const int32_t half = l.n_rot / 2;
  std::vector<double> c(static_cast<size_t>(half), 0.0), s(c.size(), 0.0);
  std::vector<float> ct(c.size()), st(c.size());
  for (int32_t p = p0; p < p0 + n_future; ++p) {
    rope_angles(p, l.n_rot, l.rope_base, ct.data(), st.data());
    for (int32_t i = 0; i < half; ++i) {
      c[static_cast<size_t>(i)] += ct[static_cast<size_t>(i)];
      s[static_cast<size_t>(i)] += st[static_cast<size_t>(i)];
    }
  }
  for (int32_t i = 0; i < half; ++i) {
    const int32_t a = l.rope_order == RopeOrder::Adjacent ? 2 * i : i;
    const int32_t b = l.rope_order == RopeOrder::Adjacent ? 2 * i + 1 : i + half;
    const double ci = c[static_cast<size_t>(i)] / n_future, si = s[static_cast<size_t>(i)] / n_future;
    r[static_cast<size_t>(a) * d + a] = ci;
    r[static_cast<size_t>(a) * d + b] = -si;
    r[static_cast<size_t>(b) * d + a] = si;
    r[static_cast<size_t>(b) * d + b] = ci;
  }
  return r;
}

class ExpectedAttentionRanker final : public TokenRanker {
 public:
  ExpectedAttentionRanker(int32_t budget, int32_t future, int32_t sink, int32_t window, bool cov, bool vnorm,
                          double eps)
      : budget_(budget), future_(future), sink_(sink), window_(window), cov_(cov), vnorm_(vnorm), eps_(eps) {}
  std::string describe() const override {
    return "expected(budget=" + std::to_string(budget_) + ", future=" + std::to_string(future_) +
           ", sink=" + std::to_string(sink_) + ", window=" + (window_ > 0 ? std::to_string(window_) : "all") +
           (cov_ ? "" : ", no cov") + (vnorm_ ? "" : ", no vnorm") + ")";
  }
  int32_t budget() const override { return budget_; }
  int32_t prefill_query_stats_from(int32_t n_prompt) const override {
    if (window_ > 0) return std::max(0, n_prompt - window_);
    return n_prompt > sink_ ? sink_ : 0;
  }
  bool score_from_cache(const KvSequence& seq, int32_t layer, int32_t kv_head, const KvScores& gathered,
                        std::vector<float>& out) const override;
  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    if (scores == nullptr) fail("internal: expected attention selects without its scores");
    return sinks_and_top_slots(positions, scores, budget, sink_);
  }

 private:
  int32_t budget_, future_, sink_, window_;
  bool cov_, vnorm_;
  double eps_;
};

bool ExpectedAttentionRanker::score_from_cache(const KvSequence& seq, int32_t layer, int32_t kv_head,
                                               const KvScores& gathered, std::vector<float>& out) const {
  const KvQueryStats& qs = gathered.queries;
  if (!qs.wanted() || layer >= static_cast<int32_t>(qs.layers.size()) || qs.layers[static_cast<size_t>(layer)].count == 0)
    fail("internal: expected attention needs the prompt's query statistics, which were not gathered");
  const KvQueryStats::Layer& L = qs.layers[static_cast<size_t>(layer)];
  const KvHeadCache& h = seq.head(layer, kv_head);
  const int32_t n = h.n_tokens(), D = qs.head_dim, n_head_kv = seq.geometry().n_head_kv;
  if (D != seq.geometry().head_dim) fail("internal: query statistics of dim {} for keys of {}", D, seq.geometry().head_dim);
  const int32_t group = qs.n_head / n_head_kv;
  out.assign(static_cast<size_t>(n), 0.0f);
  if (n == 0) return true;
  // The sinks (the earliest tokens) are kept whatever they score, and left out of the normalisation.
  std::vector<uint8_t> is_sink(static_cast<size_t>(n), 0);
  {
    const std::vector<int32_t> order = slots_by_position(h.positions);
    for (int32_t i = 0; i < std::min(sink_, n); ++i) is_sink[static_cast<size_t>(order[static_cast<size_t>(i)])] = 1;
  }
  std::vector<float> keys(static_cast<size_t>(n) * D), values(keys.size());
  seq.read_keys(layer, kv_head, 0, n, keys.data());
  const int32_t p0 = *std::max_element(h.positions.begin(), h.positions.end()) + 1;
  const std::vector<double> R = mean_rope_rotation(L, D, p0, future_);
  const double s = L.scale;
  std::vector<double> mu(static_cast<size_t>(D)), cov(static_cast<size_t>(D) * D), tmp(cov.size());
  std::vector<float> mu_f(static_cast<size_t>(D)), cov_f(cov.size()), logit(static_cast<size_t>(n));
  for (int32_t qh = kv_head * group; qh < (kv_head + 1) * group; ++qh) {
    // mean and covariance before RoPE, then turned by R: R mu and R Sigma R^T.
    const double* sum = L.sum.data() + static_cast<size_t>(qh) * D;
    const double* outer = L.outer.data() + static_cast<size_t>(qh) * D * D;
    const double cnt = static_cast<double>(L.count);
    std::vector<double> m0(static_cast<size_t>(D)), c0(cov.size());
    for (int32_t i = 0; i < D; ++i) m0[static_cast<size_t>(i)] = sum[i] / cnt;
    for (int32_t i = 0; i < D; ++i)
      for (int32_t j = 0; j < D; ++j)
        c0[static_cast<size_t>(i) * D + j] = outer[static_cast<size_t>(i) * D + j] / cnt - m0[static_cast<size_t>(i)] * m0[static_cast<size_t>(j)];
    for (int32_t i = 0; i < D; ++i) {
      double acc = 0;
      for (int32_t j = 0; j < D; ++j) acc += R[static_cast<size_t>(i) * D + j] * m0[static_cast<size_t>(j)];
      mu[static_cast<size_t>(i)] = acc;
    }
    for (int32_t i = 0; i < D; ++i)  // tmp = R Sigma
      for (int32_t j = 0; j < D; ++j) {
        double acc = 0;
        for (int32_t k = 0; k < D; ++k) acc += R[static_cast<size_t>(i) * D + k] * c0[static_cast<size_t>(k) * D + j];
        tmp[static_cast<size_t>(i) * D + j] = acc;
      }
    for (int32_t i = 0; i < D; ++i)  // cov = tmp R^T
      for (int32_t j = 0; j < D; ++j) {
        double acc = 0;
        for (int32_t k = 0; k < D; ++k) acc += tmp[static_cast<size_t>(i) * D + k] * R[static_cast<size_t>(j) * D + k];
        cov[static_cast<size_t>(i) * D + j] = acc;
      }
    // The logits in f32 (d^2 per token): s mu'.k + s^2/2 k^T Sigma' k, the scale folded into the operands.
    for (int32_t i = 0; i < D; ++i) mu_f[static_cast<size_t>(i)] = static_cast<float>(s * mu[static_cast<size_t>(i)]);
    for (size_t i = 0; i < cov.size(); ++i) cov_f[i] = cov_ ? static_cast<float>(s * s / 2 * cov[i]) : 0.0f;
    float mx = -INFINITY;
    for (int32_t t = 0; t < n; ++t) {
      if (is_sink[static_cast<size_t>(t)]) continue;
      const float* k = keys.data() + static_cast<size_t>(t) * D;
      float lin = 0, quad = 0;
      for (int32_t i = 0; i < D; ++i) {
        lin += mu_f[static_cast<size_t>(i)] * k[i];
        if (!cov_) continue;
        const float* row = cov_f.data() + static_cast<size_t>(i) * D;
        float r = 0;
        for (int32_t j = 0; j < D; ++j) r += row[j] * k[j];
        quad += k[i] * r;
      }
      logit[static_cast<size_t>(t)] = lin + quad;
      mx = std::max(mx, lin + quad);
    }
    if (mx == -INFINITY) continue;  // every token is a sink
    double z = 0;
    for (int32_t t = 0; t < n; ++t)
      if (!is_sink[static_cast<size_t>(t)]) z += std::exp(static_cast<double>(logit[static_cast<size_t>(t)] - mx));
    for (int32_t t = 0; t < n; ++t)
      if (!is_sink[static_cast<size_t>(t)])
        out[static_cast<size_t>(t)] +=
            static_cast<float>(std::exp(static_cast<double>(logit[static_cast<size_t>(t)] - mx)) / z / group);
  }
  if (vnorm_) {
    seq.read_values(layer, kv_head, 0, n, values.data());
    for (int32_t t = 0; t < n; ++t) {
      const float* v = values.data() + static_cast<size_t>(t) * D;
      double sq = 0;
      for (int32_t i = 0; i < D; ++i) sq += static_cast<double>(v[i]) * v[i];
      out[static_cast<size_t>(t)] = static_cast<float>((out[static_cast<size_t>(t)] + eps_) * std::sqrt(sq));
    }
  }
  for (int32_t t = 0; t < n; ++t)
    if (is_sink[static_cast<size_t>(t)]) out[static_cast<size_t>(t)] = 0.0f;  // kept by select, whatever they score
  return true;
}

}  // namespace

std::unique_ptr<TokenRanker> make_expected_attention_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t future = args.get_int("future", kDefaultFuture, 1, 1 << 20);
  const int32_t sink = args.get_int("sink", kDefaultSink, 0, 1 << 20);
  const int32_t window = args.get_int("window", 0, 0, 1 << 30);
  const int32_t cov = args.get_int("cov", 1, 0, 1);
  const int32_t vnorm = args.get_int("vnorm", 1, 0, 1);
  const double eps = args.get_float("eps", 0.0, 0.0, 1e6);
  if (sink >= budget) fail("expected: sink={} must be below budget={}", sink, budget);
  return std::make_unique<ExpectedAttentionRanker>(budget, future, sink, window, cov != 0, vnorm != 0, eps);
}

KvComponent kv_component_expected_attention() {
  return {"expected",
          KvComponentKind::TokenPolicy,
          "Expected Attention (\"Expected Attention: KV Cache Compression by Estimating Attention from Future Queries "
          "Distribution\"): the tokens that queries drawn from the prompt's query distribution, turned to the next "
          "positions, would attend to, weighted by their values' norms; no extra pass",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), the sinks included"},
           {"future", std::to_string(kDefaultFuture), "future positions the RoPE rotation is averaged over"},
           {"sink", std::to_string(kDefaultSink), "first tokens always kept, and left out of the query statistics"},
           {"window", "0", "queries of the last N prompt tokens make the statistics; 0: all past the sinks"},
           {"cov", "1", "1: mean and covariance of the queries; 0: the mean only"},
           {"vnorm", "1", "1: weight by the value's norm, (p + eps) |v|; 0: the expected attention alone"},
           {"eps", "0", "added to the attention before the value-norm weighting"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_expected_attention_ranker(args)); }};
}

}  // namespace longctx::kv
