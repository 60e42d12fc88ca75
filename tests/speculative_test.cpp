// Lossless self-speculation (speculative.h) on the tiny synthetic llama and on the rule alone:
//   - greedy outputs identical token for token to a plain full-cache decode (the Generator's loop: one token per
//     forward, argmax), over several prompt lengths, gamma values and the three drafts (streaming's and snapkv's
//     pages, and quest's pages of highest bound for each draft step);
//   - the speculative sampling rule: for fixed p and q, draft tokens drawn from q and passed through the rule are
//     distributed as p (chi-square goodness of fit at significance 0.001, 200000 seeded draws per case);
//   - a draft round leaves the full cache exactly as it was (hash of every kept row's bytes, positions and pages);
//   - the draft view's pages for StreamingLLM are the sinks' page and the window's;
//   - --spec parsing and the combinations that cannot work fail with clear errors.
#include "engine/speculative.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/kv_page_codec.h"
#include "core/error.h"

namespace longctx {
namespace {

std::vector<int32_t> random_prompt(int32_t n, int32_t n_vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, n_vocab - 1);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = d(rng);
  return p;
}

// The plain decode: the Generator's prefill chunks and decode steps over a full f16 cache, greedy.
std::vector<int32_t> plain_greedy(const Model& m, ThreadPool& pool, const std::vector<int32_t>& prompt, int32_t n_batch,
                                  int32_t n_predict) {
  const ModelConfig& c = m.config();
  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  kv::KvPagePool pages(geo.page_tokens, geo.head_dim, size_t{1} << 30);
  kv::KvSequence seq(geo, pages);
  Forward fwd(m, pool, n_batch);
  const int32_t n = static_cast<int32_t>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(c.n_vocab));
  std::vector<int32_t> pos(static_cast<size_t>(n_batch));
  for (int32_t s = 0; s < n; s += n_batch) {
    const int32_t len = std::min(n_batch, n - s);
    for (int32_t i = 0; i < len; ++i) pos[static_cast<size_t>(i)] = s + i;
    std::vector<int32_t> rows;
    if (s + len == n) rows.push_back(len - 1);
    fwd.run(seq, prompt.data() + s, pos.data(), len, rows, logits.data());
  }
  SamplerParams sp;
  sp.temperature = 0;
  Sampler sampler(sp);
  std::vector<int32_t> out;
  for (int32_t i = 0; i < n_predict; ++i) {
    const int32_t id = sampler.sample(logits.data(), c.n_vocab);
    out.push_back(id);
    if (i + 1 == n_predict) break;
    const int32_t p = n + i;
    fwd.run(seq, &id, &p, 1, {0}, logits.data());
  }
  return out;
}

GenerateParams greedy_params(int32_t n_predict) {
  GenerateParams gp;
  gp.n_predict = n_predict;
  gp.n_ctx = 4096;
  gp.n_batch = 64;
  gp.sampling.temperature = 0;
  return gp;
}

std::vector<int32_t> spec_tokens(SpeculativeGenerator& sg, const std::vector<int32_t>& prompt) {
  const GenerateStats st = sg.generate_tokens(prompt, [](int32_t, StopReason*) { return true; }, {});
  return st.tokens;
}

// The tiny model has two layers: Quest's default keeps the first two dense, so none would be narrowed.
constexpr const char* kQuestDraft = "quest:budget=64,dense_layers=0,page=16";

TEST(Speculative, GreedyIsThePlainDecodeOnTheTinyModel) {
  const auto m = Model::synthetic("tiny:7");
  ThreadPool pool(2);
  const int32_t n_predict = 40;
  int64_t n_drafted = 0, n_accepted = 0;
  for (const int32_t n_prompt : {70, 300, 700}) {
    const auto prompt = random_prompt(n_prompt, m->config().n_vocab, 100 + n_prompt);
    const std::vector<int32_t> want = plain_greedy(*m, pool, prompt, 64, n_predict);
    for (const char* draft : {"streaming:budget=64,sink=4", "snapkv:budget=128,window=16", kQuestDraft})
      for (const int32_t gamma : {1, 3, 6}) {
        SpecParams sp;
        sp.gamma = gamma;
        sp.draft = draft;
        SpeculativeGenerator sg(*m, pool, greedy_params(n_predict), sp);
        const std::vector<int32_t> got = spec_tokens(sg, prompt);
        EXPECT_EQ(got, want) << "prompt " << n_prompt << ", draft " << draft << ", gamma " << gamma;
        const SpecStats& s = sg.spec_stats();
        EXPECT_EQ(s.n_emitted, n_predict - 1);  // the first token comes from the prefill's logits
        EXPECT_LE(s.n_accepted, s.n_drafted);
        n_drafted += s.n_drafted;
        n_accepted += s.n_accepted;
        if (n_prompt > 300) {
          EXPECT_LT(s.draft_read_fraction, 0.5) << "the draft must read a part of the cache";
        }
      }
  }
  // Not the point of the test, but a draft that never agrees would make it vacuous for the accept path.
  EXPECT_GT(n_accepted, 0);
  EXPECT_LT(n_accepted, n_drafted);
}

// decode() repeated on one prefill (bench --spec's use): plain and speculative alternate on the same cache and each
// gives the plain decode's tokens.
TEST(Speculative, DecodesRepeatOnOnePrefill) {
  const auto m = Model::synthetic("tiny:7");
  ThreadPool pool(2);
  const auto prompt = random_prompt(400, m->config().n_vocab, 77);
  const std::vector<int32_t> want = plain_greedy(*m, pool, prompt, 64, 30);
  SpecParams sp;
  sp.gamma = 3;
  sp.draft = "snapkv:budget=128,window=16";
  SpeculativeGenerator sg(*m, pool, greedy_params(30), sp);
  std::vector<float> logits;
  sg.prefill(prompt, {}, logits);
  const TokenFn all = [](int32_t, StopReason*) { return true; };
  using Mode = SpeculativeGenerator::DecodeMode;
  for (Mode mode : {Mode::Plain, Mode::Speculative, Mode::Plain, Mode::Speculative}) {
    const GenerateStats st = sg.decode(prompt, logits, all, mode);
    EXPECT_EQ(st.tokens, want) << (mode == Mode::Plain ? "plain" : "speculative");
    EXPECT_EQ(sg.spec_stats().n_steps > 0 && sg.spec_stats().n_drafted > 0, mode == Mode::Speculative);
  }
  EXPECT_EQ(sg.sequence().n_tokens_max(), 400 + 29);  // the last decode's tokens, the final one never run
}

// Chi-square's upper quantile at significance 0.001 (Wilson-Hilferty: within 1% for df >= 3).
double chi_square_critical_001(int32_t df) {
  const double z = 3.0902, a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

// The engine's speculative sampling end to end on the tiny model: the second generated token (the first a
// speculative step emits; gamma 1, a streaming draft over a quarter of the cache, so q != p) drawn over many seeds on
// one prefill, among the draws whose first token was the most frequent one, against the verifier's distribution
// given that first token (a plain full-cache forward). Chi-square at significance 0.001, categories of expected
// count < 5 pooled.
TEST(Speculative, SampledTokensFollowTheVerifiersDistribution) {
  const auto m = Model::synthetic("tiny:7");
  const ModelConfig& c = m->config();
  ThreadPool pool(2);
  const auto prompt = random_prompt(256, c.n_vocab, 21);
  GenerateParams gp;
  gp.n_predict = 3;  // t1 from the prompt's logits; one step of gamma 1 emits t2 (and t3 when d1 is accepted)
  gp.n_ctx = 512;
  gp.n_batch = 64;
  gp.sampling.temperature = 0.7f;
  gp.sampling.top_k = 0;
  gp.sampling.top_p = 1.0f;
  gp.sampling.min_p = 0.0f;
  SpecParams sp;
  sp.gamma = 1;
  sp.draft = "streaming:budget=64,sink=4";
  SpeculativeGenerator sg(*m, pool, gp, sp);
  std::vector<float> logits;
  sg.prefill(prompt, {}, logits);
  const int32_t n_draws = 6000;
  std::vector<std::pair<int32_t, int32_t>> draws;  // (t1, t2)
  int64_t n_drafted = 0, n_accepted = 0;
  for (int32_t i = 0; i < n_draws; ++i) {
    sg.set_seed(1000 + static_cast<uint64_t>(i));
    const GenerateStats st = sg.decode(prompt, logits, [](int32_t, StopReason*) { return true; },
                                       SpeculativeGenerator::DecodeMode::Speculative);
    ASSERT_GE(st.tokens.size(), 2u);
    draws.emplace_back(st.tokens[0], st.tokens[1]);
    n_drafted += sg.spec_stats().n_drafted;
    n_accepted += sg.spec_stats().n_accepted;
  }
  // Both branches of the rule ran.
  EXPECT_GT(n_accepted, 0);
  EXPECT_LT(n_accepted, n_drafted);
  std::vector<int32_t> count1(static_cast<size_t>(c.n_vocab), 0);
  for (const auto& d : draws) ++count1[static_cast<size_t>(d.first)];
  const int32_t t1 = static_cast<int32_t>(std::max_element(count1.begin(), count1.end()) - count1.begin());
  const int64_t n = count1[static_cast<size_t>(t1)];
  ASSERT_GE(n, 400) << "too few draws share a first token for the test to mean anything";

  // The verifier's distribution of t2 given prompt + t1: a plain forward over a full cache.
  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  kv::KvPagePool pages(geo.page_tokens, geo.head_dim, size_t{1} << 28);
  kv::KvSequence seq(geo, pages);
  Forward fwd(*m, pool, 64);
  std::vector<int32_t> toks = prompt;
  toks.push_back(t1);
  std::vector<int32_t> pos(64);
  std::vector<float> row(static_cast<size_t>(c.n_vocab));
  const int32_t n_tok = static_cast<int32_t>(toks.size());
  for (int32_t s = 0; s < n_tok; s += 64) {
    const int32_t len = std::min(64, n_tok - s);
    for (int32_t i = 0; i < len; ++i) pos[static_cast<size_t>(i)] = s + i;
    std::vector<int32_t> rows;
    if (s + len == n_tok) rows.push_back(len - 1);
    fwd.run(seq, toks.data() + s, pos.data(), len, rows, row.data());
  }
  Sampler sampler(gp.sampling);
  std::vector<float> p;
  sampler.probabilities(row.data(), c.n_vocab, p);

  std::vector<int64_t> count2(static_cast<size_t>(c.n_vocab), 0);
  for (const auto& d : draws)
    if (d.first == t1) ++count2[static_cast<size_t>(d.second)];
  // Pool the categories expected below 5 into one.
  double x2 = 0, pooled_e = 0;
  int64_t pooled_o = 0;
  int32_t n_cat = 0;
  for (int32_t t = 0; t < c.n_vocab; ++t) {
    const double e = static_cast<double>(n) * p[static_cast<size_t>(t)];
    const int64_t o = count2[static_cast<size_t>(t)];
    if (e < 5) {
      pooled_e += e;
      pooled_o += o;
      continue;
    }
    x2 += (o - e) * (o - e) / e;
    ++n_cat;
  }
  if (pooled_e > 0) {
    x2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++n_cat;
  }
  ASSERT_GE(n_cat, 4) << "the distribution is too peaked to test";
  const double critical = chi_square_critical_001(n_cat - 1);
  std::printf("  t1 = %d in %lld draws, %d categories, chi-square %.2f (critical %.2f), %lld of %lld drafts accepted\n",
              t1, static_cast<long long>(n), n_cat, x2, critical, static_cast<long long>(n_accepted),
              static_cast<long long>(n_drafted));
  EXPECT_LT(x2, critical);
}

// The cache's content: every kept row's keys and values as the page codec reads them (f16 -> f32 is one-to-one),
// positions, page ids and row counts, for every (layer, kv-head).
uint64_t cache_hash(const kv::KvSequence& kv) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  const kv::KvGeometry& g = kv.geometry();
  std::vector<float> rows(static_cast<size_t>(g.page_tokens) * g.head_dim);
  for (int32_t il = 0; il < g.n_layer; ++il)
    for (int32_t kh = 0; kh < g.n_head_kv; ++kh) {
      const kv::KvHeadCache& head = kv.head(il, kh);
      mix(head.positions.data(), head.positions.size() * sizeof(int32_t));
      int32_t slot = 0;
      for (const kv::KvPage& p : head.pages) {
        mix(&p.id, sizeof p.id);
        mix(&p.n_rows, sizeof p.n_rows);
        kv.read_keys(il, kh, slot, p.n_rows, rows.data());
        mix(rows.data(), static_cast<size_t>(p.n_rows) * g.head_dim * sizeof(float));
        kv.read_values(il, kh, slot, p.n_rows, rows.data());
        mix(rows.data(), static_cast<size_t>(p.n_rows) * g.head_dim * sizeof(float));
        slot += p.n_rows;
      }
    }
  return h;
}

TEST(Speculative, DraftLeavesTheFullCacheUnchanged) {
  const auto m = Model::synthetic("tiny:7");
  ThreadPool pool(2);
  const auto prompt = random_prompt(300, m->config().n_vocab, 5);
  for (const char* draft : {"streaming:budget=64,sink=4", "snapkv:budget=128,window=16", kQuestDraft}) {
    SpecParams sp;
    sp.gamma = 6;
    sp.draft = draft;
    GenerateParams gp = greedy_params(8);
    gp.sampling.temperature = 0.9f;  // drafts drawn, not argmax
    SpeculativeGenerator sg(*m, pool, gp, sp);
    std::vector<float> logits;
    sg.prefill(prompt, {}, logits);
    const uint64_t before = cache_hash(sg.sequence());
    const int64_t n_before = sg.sequence().n_tokens_total();
    Sampler sampler(gp.sampling);
    const std::vector<int32_t> d = sg.draft(prompt.back() % 7, 300, 6, sampler);
    EXPECT_EQ(d.size(), 6u);
    EXPECT_EQ(cache_hash(sg.sequence()), before) << draft;
    EXPECT_EQ(sg.sequence().n_tokens_total(), n_before);
    EXPECT_LT(sg.draft_view().n_tokens_read(), sg.draft_view().n_tokens_full());
    // The hash sees a change: one more row changes it.
    const int32_t p = 300, t = 1;
    Forward fwd(*m, pool, 1);
    std::vector<float> l(static_cast<size_t>(m->config().n_vocab));
    fwd.run(sg.sequence(), &t, &p, 1, {0}, l.data());
    EXPECT_NE(cache_hash(sg.sequence()), before);
  }
}

TEST(Speculative, DraftAcrossAPageEdgeLeavesTheCacheUnchanged) {
  const auto m = Model::synthetic("tiny:7");
  ThreadPool pool(2);
  const auto prompt = random_prompt(317, m->config().n_vocab, 6);  // 317 + 6 drafts cross the edge at 320
  SpecParams sp;
  sp.gamma = 6;
  SpeculativeGenerator sg(*m, pool, greedy_params(8), sp);
  std::vector<float> logits;
  sg.prefill(prompt, {}, logits);
  const uint64_t before = cache_hash(sg.sequence());
  Sampler sampler(greedy_params(8).sampling);
  sg.draft(3, 317, 6, sampler);
  EXPECT_EQ(cache_hash(sg.sequence()), before);
}

TEST(Speculative, StreamingViewIsTheSinksAndTheWindowPages) {
  const auto m = Model::synthetic("tiny:7");
  ThreadPool pool(2);
  SpecParams sp;
  sp.draft = "streaming:budget=64,sink=4";
  SpeculativeGenerator sg(*m, pool, greedy_params(4), sp);
  std::vector<float> logits;
  sg.prefill(random_prompt(300, m->config().n_vocab, 9), {}, logits);
  // Slots 0..3 (page 0) and 240..299 (pages 3 and 4) are selected; pages of 64 rows.
  for (int32_t il = 0; il < m->config().n_layer; ++il)
    for (int32_t g = 0; g < m->config().n_head_kv; ++g)
      EXPECT_EQ(sg.draft_view().pages(sg.sequence(), il, g), (std::vector<int32_t>{0, 3, 4}));
}

// Chi-square of counts against probabilities p over the tokens with p > 0; tokens with p == 0 must get no count.
double chi_square(const std::vector<int64_t>& counts, const std::vector<float>& p, int64_t n, int32_t* df) {
  double x2 = 0;
  *df = -1;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0f) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has p = 0";
      continue;
    }
    const double e = static_cast<double>(n) * p[i];
    x2 += (counts[i] - e) * (counts[i] - e) / e;
    ++*df;
  }
  return x2;
}

TEST(Speculative, SamplingRuleGivesTheVerifiersDistribution) {
  // Each case: p (the verifier's) and q (the draft's) over 6 tokens: q wider than p, q missing a token p has, q
  // putting mass where p has none, q == p, and q a point mass elsewhere.
  struct Case {
    std::vector<float> p, q;
    double critical;  // chi-square at significance 0.001 for the case's degrees of freedom
  };
  // Upper 0.001 quantiles of chi-square: df 3: 16.266, df 4: 18.467, df 5: 20.515.
  const std::vector<Case> cases = {
      {{0.40f, 0.25f, 0.15f, 0.10f, 0.05f, 0.05f}, {0.20f, 0.20f, 0.20f, 0.20f, 0.10f, 0.10f}, 20.515},
      {{0.30f, 0.30f, 0.20f, 0.20f, 0.00f, 0.00f}, {0.50f, 0.00f, 0.10f, 0.10f, 0.20f, 0.10f}, 16.266},
      {{0.05f, 0.10f, 0.15f, 0.20f, 0.50f, 0.00f}, {0.05f, 0.10f, 0.15f, 0.20f, 0.50f, 0.00f}, 18.467},
      {{0.10f, 0.20f, 0.30f, 0.40f, 0.00f, 0.00f}, {0.00f, 0.00f, 0.00f, 0.00f, 0.00f, 1.00f}, 16.266},
  };
  const int64_t n_draws = 200000;
  std::vector<float> residual;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    const int32_t n = static_cast<int32_t>(c.p.size());
    std::mt19937_64 rng(1000 + ci);
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    std::vector<int64_t> counts(c.p.size(), 0);
    int64_t n_accepted = 0;
    for (int64_t k = 0; k < n_draws; ++k) {
      const int32_t d = sample_from(c.q.data(), n, u01(rng));
      const double ua = u01(rng), ur = u01(rng);
      const SpecVerdict v = speculative_verify_token(c.p.data(), c.q.data(), n, d, ua, ur, residual);
      ++counts[static_cast<size_t>(v.token)];
      n_accepted += v.accepted;
    }
    int32_t df = 0;
    const double x2 = chi_square(counts, c.p, n_draws, &df);
    EXPECT_LT(x2, c.critical) << "case " << ci << " (df " << df << ")";
    // The acceptance rate is sum_i min(p_i, q_i) (Leviathan et al.); binomial sd <= 0.0012 at this n: 5 sd.
    double want_acc = 0;
    for (int32_t i = 0; i < n; ++i) want_acc += std::min(c.p[static_cast<size_t>(i)], c.q[static_cast<size_t>(i)]);
    EXPECT_NEAR(static_cast<double>(n_accepted) / n_draws, want_acc, 0.006) << "case " << ci;
  }
  // The test can fail: the draft's own distribution q (no rule) is rejected for case 0 at the same threshold.
  {
    const Case& c = cases[0];
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    std::vector<int64_t> counts(c.p.size(), 0);
    for (int64_t k = 0; k < n_draws; ++k) ++counts[static_cast<size_t>(sample_from(c.q.data(), 6, u01(rng)))];
    int32_t df = 0;
    EXPECT_GT(chi_square(counts, c.p, n_draws, &df), c.critical);
  }
}

TEST(Speculative, GreedyRuleIsArgmax) {
  std::vector<float> residual;
  const std::vector<float> p = {0, 0, 1, 0}, q_same = {0, 0, 1, 0}, q_other = {0, 1, 0, 0};
  for (double u : {0.0, 0.5, 0.999999}) {
    EXPECT_TRUE(speculative_verify_token(p.data(), q_same.data(), 4, 2, u, u, residual).accepted);
    const SpecVerdict v = speculative_verify_token(p.data(), q_other.data(), 4, 1, u, u, residual);
    EXPECT_FALSE(v.accepted);
    EXPECT_EQ(v.token, 2);
  }
}

TEST(Speculative, SpecParsing) {
  SpecParams d = parse_spec("self");
  EXPECT_EQ(d.gamma, 4);
  EXPECT_EQ(d.draft, "streaming:budget=512,sink=4");
  SpecParams s = parse_spec("self:gamma=6,draft=snapkv:budget=1024,window=32");
  EXPECT_EQ(s.gamma, 6);
  EXPECT_EQ(s.draft, "snapkv:budget=1024,window=32");
  EXPECT_EQ(parse_spec("self:draft=streaming:budget=256").draft, "streaming:budget=256");
  EXPECT_EQ(parse_spec("self:gamma=2").gamma, 2);
  auto error_of = [](const std::string& spec) {
    try {
      parse_spec(spec);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("medusa").find("unknown method"), std::string::npos);
  EXPECT_NE(error_of("self:gamma=0").find("gamma must be"), std::string::npos);
  EXPECT_NE(error_of("self:gamma=x").find("gamma must be"), std::string::npos);
  EXPECT_NE(error_of("self:beta=2").find("unknown argument"), std::string::npos);
  EXPECT_NE(error_of("self:draft=h2o:budget=64").find("every decode step"), std::string::npos);
  EXPECT_NE(error_of("self:draft=kivi:bits=2").find("not a token policy"), std::string::npos);
  EXPECT_NE(error_of("self:draft=snapkv:budget=64+kivi:bits=2").find("not a composition"), std::string::npos);
  EXPECT_NE(error_of("self:draft=nosuchpolicy").find("unknown policy"), std::string::npos);
  EXPECT_EQ(parse_spec("self:gamma=3,draft=quest:budget=512,page=16").draft, "quest:budget=512,page=16");
  EXPECT_NE(error_of("self:draft=quest:budget=64+kivi:bits=2").find("not a composition"), std::string::npos);
  EXPECT_NE(error_of("self:draft=quest:page=20").find("page must be 16, 32 or 64"), std::string::npos);
  EXPECT_NE(error_of("self:draft=shadowkv").find("not a token policy"), std::string::npos);
  EXPECT_NE(error_of("self:draft=streaming:budget=64,nope=1").find("nope"), std::string::npos);

  EXPECT_NO_THROW(make_verifier_policy("full", 2, 2));
  EXPECT_NO_THROW(make_verifier_policy("full:type=f32", 2, 2));
  EXPECT_NO_THROW(make_verifier_policy("lossless", 2, 2));
  // A Quest draft adds its summaries (and page size) to the full cache, nothing that changes what it holds.
  const auto with_quest = make_verifier_policy("full", 2, 2, "quest:budget=64,page=16");
  EXPECT_NE(with_quest->read_filter(), nullptr);  // what the draft narrows by; the verify passes none
  EXPECT_TRUE(with_quest->wants_key_summaries());
  EXPECT_EQ(with_quest->page_tokens(), 16);
  EXPECT_EQ(with_quest->page_format(), with_quest->sealed_format());
  for (const char* bad : {"snapkv:budget=64", "full+kivi:bits=2", "compact", "streaming"}) {
    try {
      make_verifier_policy(bad, 2, 2);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("verifies against the full cache"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace longctx
