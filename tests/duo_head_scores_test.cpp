// DuoAttention's forward-only head measure (kv/duo_head_scores.h): the streaming view of a head against a cache that
// holds only the sinks and the window, the KL and answer log-probability against their written-out definitions,
// the accumulation over prompts, the pick, and the roles file read back by the heads policy.
#include "kv/duo_head_scores.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "backend/cpu/attention.h"
#include "core/error.h"
#include "kv/composed_policy.h"
#include "kv/kv_store.h"
#include "kv/policy.h"

namespace longctx::kv {
namespace {

// A head of n tokens at positions 0..n-1 in pages of T: the streaming view keeps the first `sink` rows of page 0
// and the pages that reach q_first - window, and attention over it equals attention over a store holding exactly
// those tokens (the same f32 values, so to summation order: 1e-6 absolute for outputs of order 1).
TEST(DuoHeadScores, StreamingViewEqualsACacheOfSinksAndWindow) {
  const int32_t H = 4, G = 2, D = 16, T = 8, n = 77, sink = 3, window = 20;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  KvGeometry geo{1, G, D, T, KvFormat::F32, KvFormat::F32};
  KvPagePool pool(T, D, size_t{1} << 24);
  KvSequence seq(geo, pool);
  std::vector<int32_t> pos(n);
  for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = i;
  std::vector<float> k(static_cast<size_t>(n) * G * D), v(k.size()), q(static_cast<size_t>(H) * D);
  for (auto* a : {&k, &v, &q})
    for (auto& x : *a) x = nd(rng);
  seq.append(0, k.data(), v.data(), pos.data(), n);
  const int32_t q_first = n - 1;  // the query's own key is cached
  // By the definition: positions < sink, and every page (of T consecutive positions) whose last position is
  // >= q_first - window: pages from (q_first - window) / T on.
  std::vector<int32_t> expected;
  for (int32_t p = 0; p < n; ++p)
    if (p < sink || p / T >= (q_first - window) / T) expected.push_back(p);
  cpu::KvLayerView view = seq.layer_view(0);
  std::vector<std::vector<int32_t>> scratch(G);
  for (int32_t g = 0; g < G; ++g) {
    auto& h = view.heads[static_cast<size_t>(g)];
    h = streaming_head_view(h, sink, window, q_first, scratch[static_cast<size_t>(g)]);
    ASSERT_EQ(std::vector<int32_t>(h.positions, h.positions + h.n_tokens), expected);
  }
  KvSequence only(geo, pool);
  for (int32_t s : expected)
    only.append(0, k.data() + static_cast<size_t>(s) * G * D, v.data() + static_cast<size_t>(s) * G * D,
                &pos[static_cast<size_t>(s)], 1);
  ThreadPool tp(2);
  const cpu::AttentionParams ap{H, G, D, 1.0f / std::sqrt(static_cast<float>(D)), 0};
  std::vector<float> out(q.size(), NAN), ref(q.size(), NAN), whole(q.size(), NAN);
  cpu::attention(tp, ap, q.data(), &q_first, 1, view, out.data());
  cpu::attention(tp, ap, q.data(), &q_first, 1, only.layer_view(0), ref.data());
  cpu::attention(tp, ap, q.data(), &q_first, 1, seq.layer_view(0), whole.data());
  double diff_from_whole = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_NEAR(out[i], ref[i], 1e-6f) << i;
    diff_from_whole += std::abs(out[i] - whole[i]);
  }
  EXPECT_GT(diff_from_whole, 1e-3);  // the restriction did change what the head reads

  // A window that reaches back past the start keeps everything; a sink beyond page 0 keeps page 0 whole.
  std::vector<int32_t> all;
  const auto h_all = streaming_head_view(seq.layer_view(0).heads[0], 0, n, q_first, all);
  EXPECT_EQ(h_all.n_tokens, n);
  EXPECT_EQ(h_all.n_pages(), seq.layer_view(0).heads[0].n_pages());
  std::vector<int32_t> big_sink;
  const auto h_sink = streaming_head_view(seq.layer_view(0).heads[0], 100, 1, q_first, big_sink);
  EXPECT_EQ(h_sink.page_rows(0), T);
  EXPECT_EQ(h_sink.n_tokens, T + (n - (n - 1) / T * T));  // page 0 and the last (part-full) page
  EXPECT_THROW(streaming_head_view(seq.layer_view(0).heads[0], -1, 1, q_first, big_sink), Error);
}

// The definitions written out with probabilities: KL(p || q) = sum p log(p / q), log p(target).
double kl_by_definition(const std::vector<float>& a, const std::vector<float>& b) {
  auto softmax = [](const std::vector<float>& x) {
    std::vector<long double> p(x.size());
    long double z = 0;
    for (size_t i = 0; i < x.size(); ++i) z += (p[i] = std::exp(static_cast<long double>(x[i])));
    for (auto& e : p) e /= z;
    return p;
  };
  const auto p = softmax(a), q = softmax(b);
  long double kl = 0;
  for (size_t i = 0; i < p.size(); ++i) kl += p[i] * std::log(p[i] / q[i]);
  return static_cast<double>(kl);
}

TEST(DuoHeadScores, KlAndLogProbMatchTheDefinitions) {
  // By hand: p = (1/4, 3/4), q = (1/2, 1/2).
  const float ref2[2] = {0.0f, std::log(3.0f)}, uni[2] = {5.0f, 5.0f};
  EXPECT_NEAR(logits_kl(ref2, uni, 2), 0.25 * std::log(0.5) + 0.75 * std::log(1.5), 1e-7);
  EXPECT_NEAR(log_prob(ref2, 2, 1), std::log(0.75), 1e-7);
  const float three[3] = {1.0f, 2.0f, 3.0f};
  EXPECT_NEAR(log_prob(three, 3, 2), 3.0 - std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)), 1e-12);
  EXPECT_THROW(log_prob(three, 3, 3), Error);

  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> a(257), b(257);
    for (auto& x : a) x = nd(rng);
    for (auto& x : b) x = nd(rng);
    EXPECT_NEAR(logits_kl(a.data(), b.data(), 257), kl_by_definition(a, b), 1e-9 * (1 + kl_by_definition(a, b)));
    EXPECT_EQ(logits_kl(a.data(), a.data(), 257), 0.0);
    // Softmax ignores a common shift of the logits.
    std::vector<float> shifted(a);
    for (auto& x : shifted) x += 40.0f;
    EXPECT_NEAR(logits_kl(a.data(), shifted.data(), 257), 0.0, 1e-9);
  }
}

TEST(DuoHeadScores, AccumulatesMeansOverPromptsOfRowMeansAndAnswerSums) {
  const int32_t n_layer = 2, n_head_kv = 2, V = 11;
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  DuoHeadScores s(n_layer, n_head_kv);
  // Two prompts of 3 and 2 answer rows, for head [1, 0] only.
  double ref_kl = 0, ref_drop = 0;
  for (int32_t rows : {3, 2}) {
    std::vector<float> ref(static_cast<size_t>(rows) * V), test(ref.size());
    for (auto& x : ref) x = nd(rng);
    for (auto& x : test) x = nd(rng);
    std::vector<int32_t> targets;
    double kl = 0, drop = 0;
    for (int32_t r = 0; r < rows; ++r) {
      targets.push_back((r * 5 + 2) % V);
      const std::vector<float> a(ref.begin() + r * V, ref.begin() + (r + 1) * V);
      const std::vector<float> b(test.begin() + r * V, test.begin() + (r + 1) * V);
      kl += kl_by_definition(a, b) / rows;
      auto lp = [&](const std::vector<float>& x) {
        long double z = 0;
        for (float e : x) z += std::exp(static_cast<long double>(e));
        return static_cast<double>(x[static_cast<size_t>(targets.back())] - std::log(z));
      };
      drop += lp(a) - lp(b);
    }
    ref_kl += kl / 2;
    ref_drop += drop / 2;
    s.add(1, 0, ref.data(), test.data(), targets.data(), rows, V);
  }
  const auto kl = s.kl(), drop = s.answer_drop();
  ASSERT_EQ(kl.size(), 4u);
  EXPECT_NEAR(kl[2], ref_kl, 1e-9);
  EXPECT_NEAR(drop[2], ref_drop, 1e-9);
  EXPECT_EQ(kl[0], 0.0);  // a head never measured scores 0
  EXPECT_EQ(s.scores(DuoScore::Answer), drop);
  std::vector<float> z(V);
  int32_t t = 0;
  EXPECT_THROW(s.add(2, 0, z.data(), z.data(), &t, 1, V), Error);
  EXPECT_THROW(s.add(0, 0, z.data(), z.data(), &t, 0, V), Error);
  EXPECT_THROW(parse_duo_score("l2"), Error);
  EXPECT_EQ(parse_duo_score("answer"), DuoScore::Answer);
}

TEST(DuoHeadScores, TopHeadsAreTheHighestScoresTiesToTheLowerIndex) {
  const std::vector<double> s = {0.1, 0.9, 0.5, 0.9, 0.0, 0.5};
  EXPECT_EQ(top_heads(s, 2), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(top_heads(s, 3), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(top_heads(s, 0), (std::vector<int32_t>{}));
  EXPECT_EQ(top_heads(s, 100).size(), 6u);
}

TEST(DuoHeadScores, RolesFileRoundTripsIntoTheHeadsPolicyWithoutCompensation) {
  const int32_t n_layer = 3, n_head_kv = 2, V = 4;
  DuoHeadScores s(n_layer, n_head_kv);
  const float ref[V] = {0, 1, 2, 3}, flat[V] = {0, 0, 0, 0};
  const int32_t target = 3;
  s.add(2, 1, ref, flat, &target, 1, V);  // the one head that matters
  const std::vector<int32_t> retrieval = top_heads(s.kl(), 1);
  ASSERT_EQ(retrieval, (std::vector<int32_t>{5}));
  const std::string path = ::testing::TempDir() + "/duo_roundtrip.json";
  {
    DuoCalibrationInfo info;
    info.model = "synthetic";
    info.task = "passkey";
    info.length = 100;
    info.n_prompts = 1;
    info.sink = 4;
    info.window = 60;
    std::ofstream out(path);
    out << duo_roles_json(s, retrieval, info);
  }
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["retrieval"], nlohmann::json::parse("[[2,1]]"));
  EXPECT_EQ(j["score"], "kl");
  ASSERT_EQ(j["scores"]["kl"].size(), 3u);
  EXPECT_NEAR(j["scores"]["kl"][2][1].get<double>(), s.kl()[5], 1e-12);
  EXPECT_NEAR(j["scores"]["answer"][2][1].get<double>(), s.answer_drop()[5], 1e-12);

  auto policy = make_kv_policy("heads:file=" + path + ",sink=4,window=60,compensation=none", n_layer, n_head_kv);
  const auto* composed = dynamic_cast<const ComposedPolicy*>(policy.get());
  ASSERT_NE(composed, nullptr);
  for (int32_t l = 0; l < n_layer; ++l)
    for (int32_t g = 0; g < n_head_kv; ++g) {
      const HeadPlan& p = composed->plan(l, g);
      if (l * n_head_kv + g == 5) {
        EXPECT_EQ(p.ranker, nullptr);
        EXPECT_EQ(p.budget, kKeepAll);
      } else {
        EXPECT_NE(p.ranker, nullptr);
        EXPECT_EQ(p.budget, 64);
        EXPECT_EQ(p.dropped, KvDropped::Forgotten);  // DuoAttention's streaming heads keep no summary
      }
    }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace longctx::kv
