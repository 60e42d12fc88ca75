// Token rankers against the plain loop of each paper's rule on small synthetic caches: slots in shuffled order,
// random scores; the kept set must match exactly. (SnapKV's window vote and pooling are not covered here yet.)
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

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

}  // namespace
}  // namespace longctx::kv
