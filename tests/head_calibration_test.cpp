// Retrieval-head calibration (RazorAttention's echo and induction scores): the scoring against the plain loop of
// the definition on small synthetic attention, the head pick, and the roles file read back by the heads policy.
#include "kv/head_calibration.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "kv/composed_policy.h"
#include "kv/policy.h"

namespace longctx::kv {
namespace {

TEST(HeadCalibration, RepeatedTokensAreTwoEqualCopiesAfterBos) {
  const auto t = repeated_random_tokens(50, 10, 20, 7, 1);
  ASSERT_EQ(t.size(), 101u);
  EXPECT_EQ(t[0], 1);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(t[1 + i], t[51 + i]);
    EXPECT_GE(t[1 + i], 10);
    EXPECT_LT(t[1 + i], 20);
  }
  EXPECT_EQ(t, repeated_random_tokens(50, 10, 20, 7, 1));
  EXPECT_NE(t, repeated_random_tokens(50, 10, 20, 8, 1));
  EXPECT_EQ(repeated_random_tokens(5, 10, 20, 7, -1).size(), 10u);
}

// Synthetic attention: every (layer, kv-head, query) a random distribution over the slots, slots shuffled so the
// scoring cannot rely on slot == position; the reference is the definition written out over (query, position).
TEST(HeadCalibration, ScoresMatchThePlainLoop) {
  const int32_t n_layer = 3, n_head_kv = 2, n_group = 3, length = 9, first = 1, n = first + 2 * length;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  HeadCalibration cal(n_layer, n_head_kv, first, length);
  std::vector<double> ref_echo(n_layer * n_head_kv, 0), ref_ind(n_layer * n_head_kv, 0);
  for (int32_t q = first + length; q < n; ++q)
    for (int32_t l = 0; l < n_layer; ++l)
      for (int32_t g = 0; g < n_head_kv; ++g) {
        // p[pos]: the group's summed probability on each position <= q.
        std::vector<float> p(static_cast<size_t>(q + 1));
        for (int32_t h = 0; h < n_group; ++h) {
          std::vector<float> w(p.size());
          float z = 0;
          for (auto& x : w) z += (x = u(rng));
          for (size_t i = 0; i < p.size(); ++i) p[i] += w[i] / z;
        }
        std::vector<int32_t> positions(p.size());
        for (size_t i = 0; i < p.size(); ++i) positions[i] = static_cast<int32_t>(i);
        std::shuffle(positions.begin(), positions.end(), rng);
        std::vector<float> by_slot(p.size());
        for (size_t s = 0; s < p.size(); ++s) by_slot[s] = p[static_cast<size_t>(positions[s])];
        cal.add_query(l, g, q, by_slot.data(), positions, n_group);
        // Query q holds the token at q - length; the echo head looks there, the induction head one further.
        const size_t i = static_cast<size_t>(l * n_head_kv + g);
        ref_echo[i] += static_cast<double>(p[static_cast<size_t>(q - length)]) / n_group / length;
        ref_ind[i] += static_cast<double>(p[static_cast<size_t>(q - length + 1)]) / n_group / length;
      }
  const auto echo = cal.echo_scores(), ind = cal.induction_scores();
  for (size_t i = 0; i < echo.size(); ++i) {
    EXPECT_NEAR(echo[i], ref_echo[i], 1e-12) << i;
    EXPECT_NEAR(ind[i], ref_ind[i], 1e-12) << i;
    EXPECT_GE(echo[i], 0.0);
    EXPECT_LE(ind[i], 1.0);
  }
}

TEST(HeadCalibration, QueryOutsideTheSecondCopyIsAnError) {
  HeadCalibration cal(1, 1, 1, 4);
  const std::vector<int32_t> pos = {0, 1, 2, 3};
  const float p[4] = {0.25f, 0.25f, 0.25f, 0.25f};
  EXPECT_ANY_THROW(cal.add_query(0, 0, 3, p, pos, 1));
  EXPECT_ANY_THROW(cal.add_query(0, 0, 9, p, pos, 1));
}

TEST(HeadCalibration, PickIsTopInductionUnionTopEcho) {
  const std::vector<double> ind = {0.1, 0.9, 0.5, 0.9, 0.0, 0.3};
  const std::vector<double> echo = {0.0, 0.0, 0.0, 0.0, 0.8, 0.7};
  EXPECT_EQ(pick_retrieval_heads(echo, ind, 2, 1), (std::vector<int32_t>{1, 3, 4}));
  EXPECT_EQ(pick_retrieval_heads(echo, ind, 3, 0), (std::vector<int32_t>{1, 2, 3}));
  // The same head picked twice counts once.
  EXPECT_EQ(pick_retrieval_heads(ind, ind, 1, 1), (std::vector<int32_t>{1}));
  EXPECT_EQ(pick_retrieval_heads(echo, ind, 100, 0).size(), 6u);
}

TEST(HeadCalibration, RolesFileRoundTripsIntoTheHeadsPolicy) {
  const int32_t n_layer = 4, n_head_kv = 3;
  HeadCalibration cal(n_layer, n_head_kv, 0, 2);
  const std::vector<int32_t> retrieval = {1, 5, 11};  // [0,1], [1,2], [3,2]
  const std::string path = ::testing::TempDir() + "/heads_roundtrip.json";
  {
    std::ofstream out(path);
    out << retrieval_heads_json(cal, retrieval, "synthetic", 2, 1);
  }
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["retrieval"], nlohmann::json::parse("[[0,1],[1,2],[3,2]]"));
  EXPECT_EQ(j["scores"]["induction"].size(), 4u);
  EXPECT_EQ(j["scores"]["echo"][0].size(), 3u);

  auto policy = make_kv_policy("heads:file=" + path + ",sink=4,window=60", n_layer, n_head_kv);
  const auto* composed = dynamic_cast<const ComposedPolicy*>(policy.get());
  ASSERT_NE(composed, nullptr);
  const std::set<int32_t> r(retrieval.begin(), retrieval.end());
  for (int32_t l = 0; l < n_layer; ++l)
    for (int32_t g = 0; g < n_head_kv; ++g) {
      const HeadPlan& p = composed->plan(l, g);
      if (r.count(l * n_head_kv + g)) {
        EXPECT_EQ(p.ranker, nullptr) << l << "," << g;
        EXPECT_EQ(p.budget, kKeepAll);
      } else {
        EXPECT_NE(p.ranker, nullptr) << l << "," << g;
        EXPECT_EQ(p.budget, 64);
      }
    }
  // The file names its shape: a model of another shape refuses it.
  EXPECT_ANY_THROW(make_kv_policy("heads:file=" + path, n_layer + 1, n_head_kv));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace longctx::kv
