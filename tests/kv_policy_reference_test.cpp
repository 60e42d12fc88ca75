// Token rankers against the plain loop of each paper's rule on small synthetic caches: slots in shuffled order,
// random scores; the kept set must match exactly. SnapKV is checked end to end (the window's votes from the
// attention kernel, pooling, top-k) against one double-precision loop, and so is KIVI packing after eviction.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/cpu/attention.h"
#include "backend/cpu/kv_page_codec.h"
#include "kv/composed_policy.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

struct Cache {
  std::vector<int32_t> positions;  // (n) shuffled: slot order is not position order after eviction
  std::vector<float> scores;       // (n)
};

Cache random_cache(int32_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Cache c;
  c.positions.resize(static_cast<size_t>(n));
  std::iota(c.positions.begin(), c.positions.end(), 100);
  std::shuffle(c.positions.begin(), c.positions.end(), rng);
  std::uniform_int_distribution<int> u(0, 20);  // few distinct values, so ties are exercised
  for (int32_t i = 0; i < n; ++i) c.scores.push_back(static_cast<float>(u(rng)));
  return c;
}

// Slots ranked by (score descending, position ascending): the order every score-based rule keeps in.
std::vector<int32_t> ranked(const Cache& c, const std::vector<int32_t>& slots) {
  std::vector<int32_t> r(slots);
  std::sort(r.begin(), r.end(), [&](int32_t a, int32_t b) {
    if (c.scores[a] != c.scores[b]) return c.scores[a] > c.scores[b];
    return c.positions[a] < c.positions[b];
  });
  return r;
}

std::vector<int32_t> by_position_rank(const Cache& c) {
  std::vector<int32_t> s(c.positions.size());
  std::iota(s.begin(), s.end(), 0);
  std::sort(s.begin(), s.end(), [&](int32_t a, int32_t b) { return c.positions[a] < c.positions[b]; });
  return s;
}

TEST(KvPolicyReference, StreamingKeepsSinksAndTheRecentWindow) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const Cache c = random_cache(50, seed);
    const int32_t budget = 5 + static_cast<int32_t>(seed), sink = static_cast<int32_t>(seed % 4);
    auto r = make_streaming_ranker(SpecArgs("streaming:budget=" + std::to_string(budget) + ",sink=" +
                                                std::to_string(sink), {"budget", "sink"}));
    const auto order = by_position_rank(c);
    std::vector<int32_t> ref;
    for (int32_t i = 0; i < 50; ++i)
      if (i < sink || i >= 50 - (budget - sink)) ref.push_back(order[static_cast<size_t>(i)]);
    std::sort(ref.begin(), ref.end());
    EXPECT_EQ(r->select(c.positions, nullptr, budget), ref) << seed;
  }
}

TEST(KvPolicyReference, TovaKeepsTheHighestCurrentAttention) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const Cache c = random_cache(40, seed);
    const int32_t budget = 3 + static_cast<int32_t>(seed);
    auto r = make_tova_ranker(SpecArgs("tova:budget=" + std::to_string(budget), {"budget"}));
    std::vector<int32_t> all(40);
    std::iota(all.begin(), all.end(), 0);
    std::vector<int32_t> ref = ranked(c, all);
    ref.resize(static_cast<size_t>(budget));
    std::sort(ref.begin(), ref.end());
    EXPECT_EQ(r->select(c.positions, c.scores.data(), budget), ref) << seed;
  }
}

TEST(KvPolicyReference, H2oKeepsRecentPlusHeavyHitters) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const Cache c = random_cache(60, seed);
    const int32_t budget = 10 + static_cast<int32_t>(seed), recent = budget / 2;
    auto r = make_h2o_ranker(SpecArgs("h2o:budget=" + std::to_string(budget), {"budget", "recent"}));
    const auto order = by_position_rank(c);
    std::vector<int32_t> ref(order.end() - recent, order.end());
    std::vector<int32_t> rest = ranked(c, std::vector<int32_t>(order.begin(), order.end() - recent));
    rest.resize(static_cast<size_t>(budget - recent));
    ref.insert(ref.end(), rest.begin(), rest.end());
    std::sort(ref.begin(), ref.end());
    EXPECT_EQ(r->select(c.positions, c.scores.data(), budget), ref) << seed;
  }
}

TEST(KvPolicyReference, PyramidBudgetsFallLinearlyAroundTheMean) {
  const auto b = pyramid_budgets(1024, 20.0, 30);
  ASSERT_EQ(b.size(), 30u);
  EXPECT_EQ(b.back(), std::lround(1024 / 20.0));
  EXPECT_EQ(b.front(), std::lround(2 * 1024 - 1024 / 20.0));
  for (size_t l = 1; l < b.size(); ++l) EXPECT_LE(b[l], b[l - 1]);
  const double mean = std::accumulate(b.begin(), b.end(), 0.0) / b.size();
  EXPECT_NEAR(mean, 1024, 1.0);
}

// A one-layer cache of n tokens at positions 0..n-1 with random keys and values, and random queries for them.
struct Prompt {
  int32_t n, n_head, n_head_kv, d;
  std::vector<float> q, k, v;  // (n, n_head, d), (n, n_head_kv, d) x 2
  std::vector<int32_t> pos;
};

Prompt random_prompt(int32_t n, int32_t n_head, int32_t n_head_kv, int32_t d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  Prompt p{n, n_head, n_head_kv, d, {}, {}, {}, {}};
  for (size_t i = 0; i < size_t(n) * n_head * d; ++i) p.q.push_back(nd(rng));
  for (size_t i = 0; i < size_t(n) * n_head_kv * d; ++i) p.k.push_back(nd(rng)), p.v.push_back(nd(rng));
  for (int32_t i = 0; i < n; ++i) p.pos.push_back(i);
  return p;
}

// SnapKV's rule as one loop, in double: the window's queries (the last `window` tokens, every query head of the
// kv-head) vote with their softmax over the keys they see; the votes of the other tokens are max-pooled over
// `pool` neighbouring positions; the top (budget - window) of them by (pooled vote desc, position asc) stay,
// with the window. Returns the kept positions of kv-head g, ascending.
std::vector<int32_t> snapkv_reference(const Prompt& p, int32_t g, int32_t budget, int32_t window, int32_t pool) {
  const int32_t group = p.n_head / p.n_head_kv, n_rest = p.n - window;
  std::vector<double> vote(static_cast<size_t>(p.n), 0.0);
  for (int32_t t = n_rest; t < p.n; ++t)
    for (int32_t h = g * group; h < (g + 1) * group; ++h) {
      std::vector<double> logit(static_cast<size_t>(t + 1));
      double mx = -INFINITY, sum = 0;
      for (int32_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int32_t c = 0; c < p.d; ++c)
          dot += double(p.q[(size_t(t) * p.n_head + h) * p.d + c]) * p.k[(size_t(j) * p.n_head_kv + g) * p.d + c];
        logit[size_t(j)] = dot / std::sqrt(double(p.d));
        mx = std::max(mx, logit[size_t(j)]);
      }
      for (double& x : logit) sum += (x = std::exp(x - mx));
      for (int32_t j = 0; j <= t; ++j) vote[size_t(j)] += logit[size_t(j)] / sum;
    }
  std::vector<std::pair<double, int32_t>> pooled;  // (-pooled vote, position): sorts as the rule ranks
  for (int32_t i = 0; i < n_rest; ++i) {
    double m = 0;
    for (int32_t j = std::max(0, i - pool / 2); j <= std::min(n_rest - 1, i + pool / 2); ++j) m = std::max(m, vote[size_t(j)]);
    pooled.push_back({-m, i});
  }
  std::sort(pooled.begin(), pooled.end());
  std::vector<int32_t> keep;
  for (int32_t i = 0; i < budget - window; ++i) keep.push_back(pooled[size_t(i)].second);
  for (int32_t t = n_rest; t < p.n; ++t) keep.push_back(t);
  std::sort(keep.begin(), keep.end());
  return keep;
}

// Fills a sequence with the prompt, gathers the window's votes through the attention kernel, and runs the policy
// of `spec` at prefill end, as the forward pass and the generator do.
void prefill_with_policy(const Prompt& p, const std::string& spec, int32_t window, kv::KvSequence& seq) {
  ThreadPool pool(1);
  auto policy = make_kv_policy(spec, 1, p.n_head_kv);
  seq.set_auto_seal(false);
  seq.append(0, p.k.data(), p.v.data(), p.pos.data(), p.n);
  KvScores scores;
  scores.first_pos = p.n - window;
  scores.reset(1, p.n_head_kv, p.n, p.n);
  cpu::AttentionParams ap{p.n_head, p.n_head_kv, p.d, 1.0f / std::sqrt(float(p.d)), 0};
  cpu::attention_scores(pool, ap, p.q.data(), p.pos.data(), p.n, p.n - window, seq.layer_view(0),
                        scores.layers[0].data(), scores.stride);
  policy->after_prefill(seq, scores);
  seq.seal_full_pages();
}

std::vector<int32_t> sorted_positions(const kv::KvHeadCache& h) {
  std::vector<int32_t> v(h.positions);
  std::sort(v.begin(), v.end());
  return v;
}

TEST(KvPolicyReference, SnapKvKeepsTheWindowAndTheTopPooledVotes) {
  for (uint32_t seed = 0; seed < 6; ++seed) {
    const int32_t budget = 30 + 5 * static_cast<int32_t>(seed), window = 8, pool_k = seed % 2 ? 7 : 3;
    const Prompt p = random_prompt(150, 6, 2, 32, seed);
    KvGeometry geo{1, p.n_head_kv, p.d, 16, KvFormat::F32, KvFormat::F32};
    KvPagePool pages(16, p.d, size_t{1} << 24);
    KvSequence seq(geo, pages);
    prefill_with_policy(p, "snapkv:budget=" + std::to_string(budget) + ",window=8,pool=" + std::to_string(pool_k),
                        window, seq);
    for (int32_t g = 0; g < p.n_head_kv; ++g)
      EXPECT_EQ(sorted_positions(seq.head(0, g)), snapkv_reference(p, g, budget, window, pool_k))
          << "seed " << seed << " kv-head " << g;
  }
}

TEST(KvPolicyReference, KiviPacksExactlyTheTokensEvictionKept) {
  // snapkv + kivi: after the cut, each sealed page must hold exactly what the codec makes of the kept tokens'
  // original rows, in the store's slot order (bit for bit: the same rows through the same codec).
  const Prompt p = random_prompt(200, 4, 2, 64, 7);
  for (KvFormat f : {KvFormat::Kivi2, KvFormat::Kivi4}) {
    const int32_t T = 16;
    KvGeometry geo{1, p.n_head_kv, p.d, T, KvFormat::F32, f};
    KvPagePool pages(T, p.d, size_t{1} << 24);
    KvSequence seq(geo, pages);
    prefill_with_policy(p, std::string("snapkv:budget=70,window=8+kivi:bits=") + (f == KvFormat::Kivi2 ? "2" : "4"), 8, seq);
    for (int32_t g = 0; g < p.n_head_kv; ++g) {
      const KvHeadCache& h = seq.head(0, g);
      ASSERT_EQ(h.n_tokens(), 70);
      EXPECT_EQ(sorted_positions(h), snapkv_reference(p, g, 70, 8, 7));
      for (size_t pi = 0; pi < h.pages.size(); ++pi) {
        const int32_t n_rows = std::min<int32_t>(T, h.n_tokens() - int32_t(pi) * T);
        std::vector<float> k_orig(size_t(n_rows) * p.d), v_orig(k_orig.size());
        for (int32_t r = 0; r < n_rows; ++r) {
          const int32_t pos = h.positions[pi * T + size_t(r)];
          std::copy_n(&p.k[(size_t(pos) * p.n_head_kv + g) * p.d], p.d, &k_orig[size_t(r) * p.d]);
          std::copy_n(&p.v[(size_t(pos) * p.n_head_kv + g) * p.d], p.d, &v_orig[size_t(r) * p.d]);
        }
        std::vector<float> k_ref(k_orig), v_ref(v_orig);  // a partial page stays plain (f32): exact
        if (n_rows == T) {
          ASSERT_EQ(h.pages[pi].format, f);
          std::vector<uint8_t> page(cpu::kv_page_bytes(f, T, p.d));
          cpu::kv_page_write(f, T, p.d, k_orig.data(), v_orig.data(), 0, T, page.data());
          cpu::kv_page_read_keys(f, T, p.d, page.data(), 0, T, k_ref.data());
          cpu::kv_page_read_values(f, T, p.d, page.data(), 0, T, v_ref.data());
        }
        std::vector<float> k_got(k_orig.size()), v_got(v_orig.size());
        seq.read_keys(0, g, int32_t(pi) * T, n_rows, k_got.data());
        seq.read_values(0, g, int32_t(pi) * T, n_rows, v_got.data());
        EXPECT_EQ(k_got, k_ref) << kv_format_name(f) << " head " << g << " page " << pi;
        EXPECT_EQ(v_got, v_ref) << kv_format_name(f) << " head " << g << " page " << pi;
      }
    }
  }
}

}  // namespace
}  // namespace longctx::kv
