// The query-agnostic token policies against plain loops of their papers' rules:
//   - KVzip ("KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"): each head keeps its sinks
//     and its top tokens by the most attention any reconstruction query paid them (the max reduction of the scores
//     is checked against its reference in attention_test; here the selection, through the policy's hooks);
//   - Expected Attention ("Expected Attention: KV Cache Compression by Estimating Attention from Future Queries
//     Distribution"): its closed form against a Monte Carlo estimate on Gaussian queries, its per-head scores against
//     a double-precision loop that turns the statistics by averaging cpu::rope itself over the future positions
//     (both RoPE orders, partial rotation), and the query statistics the forward gathers against the attention the
//     same forward computed;
//   - their registry entries and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "backend/cpu/ops.h"
#include "core/error.h"
#include "kv/composed_policy.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"
#include "model/forward.h"
#include "model/model.h"

namespace longctx::kv {
namespace {

// A cache of n tokens at positions 0..n-1 in every (layer, kv-head), random keys and values.
struct RandomCache {
  RandomCache(int32_t n_layer, int32_t n_head_kv, int32_t dim, int32_t n, uint32_t seed, int32_t page_tokens = 16)
      : geo{n_layer, n_head_kv, dim, page_tokens, KvFormat::F32, KvFormat::F32},
        pool(page_tokens, dim, size_t{1} << 26),
        seq(geo, pool) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    std::vector<int32_t> pos(static_cast<size_t>(n));
    std::iota(pos.begin(), pos.end(), 0);
    for (int32_t l = 0; l < n_layer; ++l) {
      std::vector<float> k(static_cast<size_t>(n) * n_head_kv * dim), v(k.size());
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng) * (1.0f + 0.5f * static_cast<float>(rng() % 4));  // value norms that differ
      seq.append(l, k.data(), v.data(), pos.data(), n);
    }
  }
  std::vector<float> row(bool key, int32_t l, int32_t g, int32_t slot) const {
    std::vector<float> r(static_cast<size_t>(geo.head_dim));
    key ? seq.read_keys(l, g, slot, 1, r.data()) : seq.read_values(l, g, slot, 1, r.data());
    return r;
  }
  KvGeometry geo;
  KvPagePool pool;
  KvSequence seq;
};

std::set<int32_t> positions_of(const KvSequence& seq, int32_t l, int32_t g) {
  const auto& p = seq.head(l, g).positions;
  return {p.begin(), p.end()};
}

// The n_sink earliest positions and the (budget - n_sink) highest-scored others, ties to the earlier position.
std::set<int32_t> sinks_and_top_reference(const std::map<int32_t, double>& score, int32_t budget, int32_t n_sink) {
  std::set<int32_t> keep;
  std::vector<int32_t> rest;
  for (const auto& [p, s] : score) {
    if (static_cast<int32_t>(keep.size()) < n_sink) {
      keep.insert(p);
    } else {
      rest.push_back(p);
    }
  }
  std::stable_sort(rest.begin(), rest.end(), [&](int32_t a, int32_t b) { return score.at(a) > score.at(b); });
  for (int32_t i = 0; i < budget - n_sink && i < static_cast<int32_t>(rest.size()); ++i) keep.insert(rest[static_cast<size_t>(i)]);
  return keep;
}

// ---- KVzip ----

TEST(KvzipPolicy, KeepsSinksAndTheTokensReconstructionAttendedMost) {
  const int32_t n_layer = 3, n_head_kv = 2, n = 90;
  for (const auto& [budget, sink] : std::vector<std::pair<int32_t, int32_t>>{{30, 4}, {10, 0}, {5, 4}, {200, 4}}) {
    RandomCache cache(n_layer, n_head_kv, 8, n, 5);
    auto policy = make_kv_policy("kvzip:budget=" + std::to_string(budget) + ",sink=" + std::to_string(sink) +
                                     ",chunk=64", n_layer, n_head_kv);
    // The reconstruction pass the engine is asked for.
    const KvReconstruction rec = policy->reconstruction();
    EXPECT_EQ(rec.chunk, 64);
    EXPECT_FALSE(rec.first_instruction.empty());
    EXPECT_GT(rec.n_overlap, 0);
    EXPECT_EQ(policy->prefill_score_from(n), INT_MAX) << "the prompt's own attention is not what kvzip ranks";
    // Max-reduced probabilities, as the reconstruction leaves them: in [0, 1], many ties at 0.
    KvScores scores;
    scores.reset(n_layer, n_head_kv, n + 1, n + 1);
    scores.first_pos = n;
    scores.reduce = ScoreReduce::Max;
    std::mt19937 rng(budget);
    std::map<std::pair<int32_t, int32_t>, std::map<int32_t, double>> ref_scores;
    for (int32_t l = 0; l < n_layer; ++l)
      for (int32_t g = 0; g < n_head_kv; ++g)
        for (int32_t s = 0; s < n; ++s) {
          const float v = rng() % 3 == 0 ? 0.0f : static_cast<float>(rng() % 1000) / 1000.0f;
          scores.layers[static_cast<size_t>(l)][static_cast<size_t>(g) * scores.stride + s] = v;
          ref_scores[{l, g}][s] = v;  // slot s holds position s
        }
    policy->after_prefill(cache.seq, scores);
    for (int32_t l = 0; l < n_layer; ++l)
      for (int32_t g = 0; g < n_head_kv; ++g) {
        const std::set<int32_t> want =
            budget >= n ? positions_of(cache.seq, l, g) : sinks_and_top_reference(ref_scores[{l, g}], budget, sink);
        EXPECT_EQ(positions_of(cache.seq, l, g), want) << "layer " << l << " head " << g << " budget " << budget;
        EXPECT_EQ(cache.seq.head(l, g).n_tokens(), std::min(budget, n));
      }
  }
}

// alloc=global (the paper's non-uniform heads): all heads share budget x heads tokens, each keeping its sinks, the
// rest going to the highest scores of all heads together.
TEST(KvzipPolicy, GlobalAllocationSharesOneThresholdOverAllHeads) {
  const int32_t n_layer = 4, n_head_kv = 3, n = 80, budget = 20, sink = 4;
  RandomCache cache(n_layer, n_head_kv, 8, n, 9);
  auto policy = make_kv_policy("kvzip:budget=20,sink=4,alloc=global", n_layer, n_head_kv);
  KvScores scores;
  scores.reset(n_layer, n_head_kv, n, n);
  scores.first_pos = n;
  scores.reduce = ScoreReduce::Max;
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  struct Entry {
    float score;
    int32_t l, g, pos;
  };
  std::vector<Entry> rest;
  std::map<std::pair<int32_t, int32_t>, std::set<int32_t>> want;
  for (int32_t l = 0; l < n_layer; ++l)
    for (int32_t g = 0; g < n_head_kv; ++g)
      for (int32_t s = 0; s < n; ++s) {
        // Heads of very different spreads, so that the shares differ: head (l, g) scores up to (1 + l * 3 + g) / 12.
        const float v = u(rng) * static_cast<float>(1 + l * n_head_kv + g) / 12.0f;
        scores.layers[static_cast<size_t>(l)][static_cast<size_t>(g) * n + s] = v;
        if (s < sink) {
          want[{l, g}].insert(s);
        } else {
          rest.push_back({v, l, g, s});
        }
      }
  std::sort(rest.begin(), rest.end(), [](const Entry& a, const Entry& b) { return a.score > b.score; });
  const int32_t n_take = n_layer * n_head_kv * (budget - sink);
  for (int32_t i = 0; i < n_take; ++i) want[{rest[static_cast<size_t>(i)].l, rest[static_cast<size_t>(i)].g}].insert(rest[static_cast<size_t>(i)].pos);
  policy->after_prefill(cache.seq, scores);
  int32_t total = 0, n_heads_off_uniform = 0;
  for (int32_t l = 0; l < n_layer; ++l)
    for (int32_t g = 0; g < n_head_kv; ++g) {
      EXPECT_EQ(positions_of(cache.seq, l, g), want[std::make_pair(l, g)]) << "layer " << l << " head " << g;
      total += cache.seq.head(l, g).n_tokens();
      n_heads_off_uniform += cache.seq.head(l, g).n_tokens() != budget;
    }
  EXPECT_EQ(total, n_layer * n_head_kv * budget);
  EXPECT_GT(n_heads_off_uniform, 0) << "the shares must differ from the uniform budget in this case";
}

TEST(KvzipPolicy, RefusesToCutWithoutReconstructionScores) {
  RandomCache cache(1, 1, 8, 40, 1);
  auto policy = make_kv_policy("kvzip:budget=10", 1, 1);
  KvScores none;  // not gathered: between prefill chunks, where no reconstruction has run
  try {
    policy->after_prefill_chunk(cache.seq, none);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reconstruct"), std::string::npos) << e.what();
  }
}

// ---- Expected Attention ----

// A random symmetric positive definite (d, d) matrix and its Cholesky factor L (cov = L L^T).
void random_spd(int32_t d, std::mt19937& rng, double scale, std::vector<double>& cov, std::vector<double>& chol) {
  std::normal_distribution<double> nd;
  std::vector<double> a(static_cast<size_t>(d) * d);
  for (auto& x : a) x = nd(rng);
  cov.assign(a.size(), 0.0);
  for (int32_t i = 0; i < d; ++i)
    for (int32_t j = 0; j < d; ++j) {
      double s = i == j ? 0.2 : 0.0;
      for (int32_t k = 0; k < d; ++k) s += a[static_cast<size_t>(i) * d + k] * a[static_cast<size_t>(j) * d + k];
      cov[static_cast<size_t>(i) * d + j] = s * scale / d;
    }
  chol.assign(a.size(), 0.0);
  for (int32_t i = 0; i < d; ++i)
    for (int32_t j = 0; j <= i; ++j) {
      double s = cov[static_cast<size_t>(i) * d + j];
      for (int32_t k = 0; k < j; ++k) s -= chol[static_cast<size_t>(i) * d + k] * chol[static_cast<size_t>(j) * d + k];
      chol[static_cast<size_t>(i) * d + j] = i == j ? std::sqrt(s) : s / chol[static_cast<size_t>(j) * d + j];
    }
}

TEST(ExpectedAttention, ClosedFormMatchesMonteCarlo) {
  // E[exp(s q.k)] for q ~ N(mu, Sigma), estimated from 200,000 draws, against exp(expected_attention_logit). The
  // tolerance is 5 standard errors of the estimate (measured from the draws themselves), and at most 3%.
  const int32_t d = 16, n_draws = 200000;
  std::mt19937 rng(2024);
  std::normal_distribution<double> nd;
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<double> mu(static_cast<size_t>(d)), cov, chol;
    for (auto& x : mu) x = nd(rng) * 0.7;
    random_spd(d, rng, 0.5 + trial * 0.3, cov, chol);
    std::vector<float> k(static_cast<size_t>(d));
    for (auto& x : k) x = static_cast<float>(nd(rng));
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    double sum = 0, sum_sq = 0;
    std::vector<double> z(static_cast<size_t>(d)), q(static_cast<size_t>(d));
    for (int32_t s = 0; s < n_draws; ++s) {
      for (auto& x : z) x = nd(rng);
      double dot = 0;
      for (int32_t i = 0; i < d; ++i) {
        double qi = mu[static_cast<size_t>(i)];
        for (int32_t j = 0; j <= i; ++j) qi += chol[static_cast<size_t>(i) * d + j] * z[static_cast<size_t>(j)];
        dot += qi * k[static_cast<size_t>(i)];
      }
      const double e = std::exp(scale * dot);
      sum += e;
      sum_sq += e * e;
    }
    const double mc = sum / n_draws;
    const double se = std::sqrt(std::max(0.0, sum_sq / n_draws - mc * mc) / n_draws);
    const double closed = std::exp(expected_attention_logit(mu.data(), cov.data(), k.data(), d, scale));
    EXPECT_NEAR(mc, closed, 5 * se) << "trial " << trial << ": Monte Carlo " << mc << " +- " << se;
    EXPECT_LT(std::abs(mc / closed - 1), 0.03) << "trial " << trial;
    // The mean alone (no covariance) is a different, lower value: the check can fail.
    std::vector<double> zero(cov.size(), 0.0);
    EXPECT_LT(std::exp(expected_attention_logit(mu.data(), zero.data(), k.data(), d, scale)), mc - 5 * se);
  }
}

struct EaCase {
  int32_t dim, n_rot;
  cpu::RopeOrder order;
  float base, scale;
  std::string args;  // after "expected:budget=..,"
  bool cov = true, vnorm = true;
  double eps = 0;
};

// The paper's score of every slot of one kv-head, in double, from the raw queries: mean and covariance per query
// head, the future rotation averaged by applying cpu::rope itself to the basis vectors at each future position,
// the Gaussian expectation, a softmax over the non-sink tokens, the mean over the group, (p + eps) |v|.
std::vector<double> expected_reference(const RandomCache& cache, int32_t g, const std::vector<std::vector<float>>& queries,
                                       int32_t group, const EaCase& c, int32_t n_future, int32_t n_sink, int32_t p0) {
  const int32_t D = c.dim, n = cache.seq.head(0, g).n_tokens();
  // R: column j is the mean over the future positions of rope(e_j).
  std::vector<double> R(static_cast<size_t>(D) * D, 0.0);
  for (int32_t p = p0; p < p0 + n_future; ++p)
    for (int32_t j = 0; j < D; ++j) {
      std::vector<float> e(static_cast<size_t>(D), 0.0f);
      e[static_cast<size_t>(j)] = 1.0f;
      cpu::rope(e.data(), &p, 1, 1, D, c.n_rot, c.base, c.order);
      for (int32_t i = 0; i < D; ++i) R[static_cast<size_t>(i) * D + j] += e[static_cast<size_t>(i)] / n_future;
    }
  std::vector<double> out(static_cast<size_t>(n), 0.0);
  for (int32_t qh = g * group; qh < (g + 1) * group; ++qh) {
    const std::vector<float>& qs = queries[static_cast<size_t>(qh)];  // (n_q, D)
    const int32_t n_q = static_cast<int32_t>(qs.size()) / D;
    std::vector<double> mu(static_cast<size_t>(D), 0.0), cov(static_cast<size_t>(D) * D, 0.0);
    for (int32_t t = 0; t < n_q; ++t)
      for (int32_t i = 0; i < D; ++i) mu[static_cast<size_t>(i)] += qs[static_cast<size_t>(t) * D + i] / n_q;
    for (int32_t t = 0; t < n_q; ++t)
      for (int32_t i = 0; i < D; ++i)
        for (int32_t j = 0; j < D; ++j)
          cov[static_cast<size_t>(i) * D + j] += (qs[static_cast<size_t>(t) * D + i] - mu[static_cast<size_t>(i)]) *
                                                 (qs[static_cast<size_t>(t) * D + j] - mu[static_cast<size_t>(j)]) / n_q;
    std::vector<double> m2(static_cast<size_t>(D), 0.0), c2(cov.size(), 0.0);
    for (int32_t i = 0; i < D; ++i)
      for (int32_t j = 0; j < D; ++j) m2[static_cast<size_t>(i)] += R[static_cast<size_t>(i) * D + j] * mu[static_cast<size_t>(j)];
    for (int32_t i = 0; i < D; ++i)
      for (int32_t j = 0; j < D; ++j)
        for (int32_t a = 0; a < D; ++a)
          for (int32_t b = 0; b < D; ++b)
            c2[static_cast<size_t>(i) * D + j] += R[static_cast<size_t>(i) * D + a] * cov[static_cast<size_t>(a) * D + b] *
                                                  R[static_cast<size_t>(j) * D + b];
    std::vector<double> logit(static_cast<size_t>(n), 0.0);
    double mx = -INFINITY;
    for (int32_t t = n_sink; t < n; ++t) {
      const std::vector<float> k = cache.row(true, 0, g, t);
      double lin = 0, quad = 0;
      for (int32_t i = 0; i < D; ++i) {
        lin += m2[static_cast<size_t>(i)] * k[static_cast<size_t>(i)];
        for (int32_t j = 0; j < D; ++j)
          quad += k[static_cast<size_t>(i)] * c2[static_cast<size_t>(i) * D + j] * k[static_cast<size_t>(j)];
      }
      logit[static_cast<size_t>(t)] = c.scale * lin + (c.cov ? c.scale * c.scale * quad / 2 : 0.0);
      mx = std::max(mx, logit[static_cast<size_t>(t)]);
    }
    double z = 0;
    for (int32_t t = n_sink; t < n; ++t) z += std::exp(logit[static_cast<size_t>(t)] - mx);
    for (int32_t t = n_sink; t < n; ++t) out[static_cast<size_t>(t)] += std::exp(logit[static_cast<size_t>(t)] - mx) / z / group;
  }
  for (int32_t t = n_sink; t < n; ++t) {
    if (!c.vnorm) continue;
    const std::vector<float> v = cache.row(false, 0, g, t);
    double sq = 0;
    for (float x : v) sq += static_cast<double>(x) * x;
    out[static_cast<size_t>(t)] = (out[static_cast<size_t>(t)] + c.eps) * std::sqrt(sq);
  }
  for (int32_t t = 0; t < n_sink; ++t) out[static_cast<size_t>(t)] = 0;
  return out;
}

TEST(ExpectedAttention, ScoresMatchThePapersLoop) {
  const int32_t n = 120, n_head = 6, n_head_kv = 2, group = n_head / n_head_kv, n_q = 50, budget = 40;
  for (const EaCase& c : {EaCase{32, 32, cpu::RopeOrder::Adjacent, 10000.0f, 1.0f / std::sqrt(32.0f), "future=64,sink=4"},
                          EaCase{32, 32, cpu::RopeOrder::Halves, 1000000.0f, 0.0625f, "future=16,sink=0"},
                          EaCase{64, 32, cpu::RopeOrder::Halves, 10000.0f, 0.125f, "future=100,sink=2"},  // partial rotation
                          EaCase{32, 32, cpu::RopeOrder::Adjacent, 10000.0f, 0.17f, "future=32,sink=4,cov=0", false},
                          EaCase{32, 32, cpu::RopeOrder::Adjacent, 500.0f, 0.17f, "future=8,sink=4,vnorm=0", true, false},
                          EaCase{32, 32, cpu::RopeOrder::Adjacent, 10000.0f, 0.17f, "future=32,sink=4,eps=0.02", true, true, 0.02}}) {
    SCOPED_TRACE(c.args + ", dim " + std::to_string(c.dim) + ", n_rot " + std::to_string(c.n_rot));
    RandomCache cache(1, n_head_kv, c.dim, n, 11, 16);
    const int32_t n_sink = c.args.find("sink=0") != std::string::npos ? 0 : c.args.find("sink=2") != std::string::npos ? 2 : 4;
    const int32_t n_future = std::stoi(c.args.substr(c.args.find("future=") + 7));
    // Queries of the prompt, before RoPE: a mean that differs per head and correlated channels.
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    std::vector<std::vector<float>> per_head(static_cast<size_t>(n_head));
    std::vector<float> q(static_cast<size_t>(n_q) * n_head * c.dim);
    for (int32_t h = 0; h < n_head; ++h) {
      std::vector<float> mean(static_cast<size_t>(c.dim));
      for (auto& x : mean) x = nd(rng);
      for (int32_t t = 0; t < n_q; ++t) {
        const float shared = nd(rng);
        for (int32_t i = 0; i < c.dim; ++i)
          q[(static_cast<size_t>(t) * n_head + h) * c.dim + i] = mean[static_cast<size_t>(i)] + 0.6f * nd(rng) + (i % 3 == 0 ? shared : 0.0f);
      }
    }
    for (int32_t h = 0; h < n_head; ++h)
      for (int32_t t = 0; t < n_q; ++t)
        per_head[static_cast<size_t>(h)].insert(per_head[static_cast<size_t>(h)].end(), q.begin() + (static_cast<ptrdiff_t>(t) * n_head + h) * c.dim,
                                                q.begin() + (static_cast<ptrdiff_t>(t) * n_head + h + 1) * c.dim);
    KvScores gathered;  // what the forward hands the policy: statistics only
    gathered.queries.first_pos = 0;
    gathered.queries.reset(1, n_head, c.dim);
    std::vector<int32_t> q_pos(static_cast<size_t>(n_q));
    std::iota(q_pos.begin(), q_pos.end(), n - n_q);
    ThreadPool tp(2);
    // In two chunks, as prefill adds them.
    gathered.queries.add(tp, 0, q.data(), q_pos.data(), 20);
    gathered.queries.add(tp, 0, q.data() + static_cast<size_t>(20) * n_head * c.dim, q_pos.data() + 20, n_q - 20);
    KvQueryStats::Layer& L = gathered.queries.layers[0];
    ASSERT_EQ(L.count, n_q);
    L.rope_base = c.base;
    L.n_rot = c.n_rot;
    L.rope_order = c.order;
    L.scale = c.scale;

    const std::string spec = "expected:budget=" + std::to_string(budget) + "," + c.args;
    std::vector<std::string> keys;
    for (const SpecArg& a : find_kv_component("expected")->args) keys.push_back(a.name);
    const auto ranker = make_expected_attention_ranker(SpecArgs(spec, keys));
    for (int32_t g = 0; g < n_head_kv; ++g) {
      std::vector<float> got;
      ASSERT_TRUE(ranker->score_from_cache(cache.seq, 0, g, gathered, got));
      const std::vector<double> want = expected_reference(cache, g, per_head, group, c, n_future, n_sink, n);
      ASSERT_EQ(got.size(), want.size());
      const double top = *std::max_element(want.begin(), want.end());
      // f32 logits over d <= 64 channels against double: ~1e-5 relative per probability.
      for (int32_t t = 0; t < n; ++t)
        ASSERT_NEAR(got[static_cast<size_t>(t)], want[static_cast<size_t>(t)], 1e-4 * want[static_cast<size_t>(t)] + 1e-6 * top)
            << "slot " << t << " head " << g;
    }
    // Through the policy's hook: each head keeps its sinks and the top of those scores.
    auto policy = make_kv_policy(spec, 1, n_head_kv);
    EXPECT_EQ(policy->prefill_query_stats_from(n), n_sink > 0 ? n_sink : 0);
    std::vector<std::map<int32_t, double>> ref(static_cast<size_t>(n_head_kv));
    for (int32_t g = 0; g < n_head_kv; ++g) {
      const std::vector<double> want = expected_reference(cache, g, per_head, group, c, n_future, n_sink, n);
      for (int32_t t = 0; t < n; ++t) ref[static_cast<size_t>(g)][t] = want[static_cast<size_t>(t)];
    }
    policy->after_prefill(cache.seq, gathered);
    for (int32_t g = 0; g < n_head_kv; ++g)
      EXPECT_EQ(positions_of(cache.seq, 0, g), sinks_and_top_reference(ref[static_cast<size_t>(g)], budget, n_sink)) << "head " << g;
  }
}

TEST(ExpectedAttention, WindowLimitsTheQueriesGathered) {
  auto all = make_kv_policy("expected:budget=64,sink=4", 1, 1);
  auto last = make_kv_policy("expected:budget=64,window=100", 1, 1);
  EXPECT_EQ(all->prefill_query_stats_from(1000), 4);
  EXPECT_EQ(all->prefill_query_stats_from(3), 0);  // a prompt of sinks only: every query
  EXPECT_EQ(last->prefill_query_stats_from(1000), 900);
  EXPECT_EQ(last->prefill_query_stats_from(50), 0);
  EXPECT_EQ(all->prefill_score_from(1000), INT_MAX) << "no attention scores are gathered for it";
}

TEST(KvQueryStats, AddsTheRowsFromFirstPos) {
  const int32_t n_head = 3, D = 8, n_tok = 10;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> q(static_cast<size_t>(n_tok) * n_head * D);
  for (auto& x : q) x = nd(rng);
  std::vector<int32_t> pos(static_cast<size_t>(n_tok));
  std::iota(pos.begin(), pos.end(), 100);
  KvQueryStats s;
  s.first_pos = 104;
  s.reset(2, n_head, D);
  ThreadPool tp(2);
  s.add(tp, 1, q.data(), pos.data(), n_tok);
  EXPECT_EQ(s.layers[0].count, 0);
  ASSERT_EQ(s.layers[1].count, 6);
  for (int32_t h = 0; h < n_head; ++h)
    for (int32_t i = 0; i < D; ++i) {
      double sum = 0;
      for (int32_t t = 4; t < n_tok; ++t) sum += q[(static_cast<size_t>(t) * n_head + h) * D + i];
      EXPECT_NEAR(s.layers[1].sum[static_cast<size_t>(h) * D + i], sum, 1e-5);
      for (int32_t j = 0; j < D; ++j) {
        double o = 0;
        for (int32_t t = 4; t < n_tok; ++t)
          o += double(q[(static_cast<size_t>(t) * n_head + h) * D + i]) * q[(static_cast<size_t>(t) * n_head + h) * D + j];
        EXPECT_NEAR(s.layers[1].outer[(static_cast<size_t>(h) * D + i) * D + j], o, 1e-5);
      }
    }
}

// The statistics the forward gathers are the queries its attention used: gathering only the last query of a prompt
// (count 1, so the sum is that query before RoPE), turning it with the RoPE the forward recorded, and taking its
// softmax against the cached keys gives the attention scores the same forward gathered for that query.
TEST(KvQueryStats, ForwardGathersThePreRopeQueriesItAttendsWith) {
  const auto model = Model::synthetic("tiny:7");
  const ModelConfig& c = model->config();
  ThreadPool tp(2);
  Forward fwd(*model, tp, 32);
  KvGeometry geo{c.n_layer, c.n_head_kv, c.head_dim, 16, KvFormat::F32, KvFormat::F32};
  KvPagePool pages(geo.page_tokens, geo.head_dim, size_t{1} << 26);
  KvSequence seq(geo, pages);
  const int32_t n = 29;
  std::mt19937 rng(4);
  std::vector<int32_t> tokens(static_cast<size_t>(n)), pos(static_cast<size_t>(n));
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.n_vocab));
  std::iota(pos.begin(), pos.end(), 0);
  KvScores scores;
  scores.reset(c.n_layer, c.n_head_kv, n, n);
  scores.first_pos = n - 1;
  scores.queries.first_pos = n - 1;
  scores.queries.reset(c.n_layer, c.n_head, c.head_dim);
  fwd.run(seq, tokens.data(), pos.data(), n, {}, nullptr, &scores);
  const int32_t D = c.head_dim, group = c.n_head / c.n_head_kv;
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const KvQueryStats::Layer& L = scores.queries.layers[static_cast<size_t>(l)];
    ASSERT_EQ(L.count, 1);
    EXPECT_EQ(L.n_rot, c.n_rot);
    for (int32_t g = 0; g < c.n_head_kv; ++g) {
      std::vector<double> want(static_cast<size_t>(n), 0.0);
      for (int32_t h = g * group; h < (g + 1) * group; ++h) {
        std::vector<float> q(static_cast<size_t>(D));
        for (int32_t i = 0; i < D; ++i) q[static_cast<size_t>(i)] = static_cast<float>(L.sum[static_cast<size_t>(h) * D + i]);
        const int32_t p = n - 1;
        cpu::rope(q.data(), &p, 1, 1, D, L.n_rot, L.rope_base, L.rope_order);
        std::vector<double> logit(static_cast<size_t>(n));
        double mx = -INFINITY, z = 0;
        for (int32_t t = 0; t < n; ++t) {
          std::vector<float> k(static_cast<size_t>(D));
          seq.read_keys(l, g, t, 1, k.data());
          double dot = 0;
          for (int32_t i = 0; i < D; ++i) dot += double(q[static_cast<size_t>(i)]) * k[static_cast<size_t>(i)];
          logit[static_cast<size_t>(t)] = dot * L.scale;
          mx = std::max(mx, logit[static_cast<size_t>(t)]);
        }
        for (double x : logit) z += std::exp(x - mx);
        for (int32_t t = 0; t < n; ++t) want[static_cast<size_t>(t)] += std::exp(logit[static_cast<size_t>(t)] - mx) / z;
      }
      for (int32_t t = 0; t < n; ++t)
        EXPECT_NEAR(scores.head(l, g)[t], want[static_cast<size_t>(t)], 1e-4) << "layer " << l << " head " << g << " slot " << t;
    }
  }
}

// ---- registry ----

TEST(QueryAgnosticRegistry, SpecsParseDescribeAndRefuseBadArguments) {
  EXPECT_NE(make_kv_policy("kvzip:budget=256", 30, 3)->describe().find("kvzip(budget=256"), std::string::npos);
  EXPECT_NE(make_kv_policy("expected:budget=256,window=64", 30, 3)->describe().find("expected(budget=256"), std::string::npos);
  EXPECT_NE(make_kv_policy("kvzip:budget=256+kivi:bits=4", 30, 3)->describe().find("kivi"), std::string::npos);
  EXPECT_NE(kv_policy_help().find("kvzip["), std::string::npos);
  EXPECT_NE(kv_policy_help().find("expected["), std::string::npos);
  for (const char* bad : {"kvzip:budget=4,sink=4", "kvzip:chunk=2", "kvzip:bogus=1", "kvzip:alloc=layer", "expected:cov=2", "expected:future=0",
                          "expected:budget=2,sink=4", "kvzip+expected"}) {
    try {
      (void)make_kv_policy(bad, 30, 3);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_FALSE(std::string(e.what()).empty());
    }
  }
}

}  // namespace
}  // namespace longctx::kv
