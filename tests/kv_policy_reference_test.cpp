// Every token policy against the plain loop of its paper's rule, driven through the policy hooks as the generator
// drives them (after_prefill_chunk, after_prefill, after_decode_step) on small synthetic caches with hand-made
// attention: StreamingLLM (sinks + recent), H2O (attention accumulated over every step + recent), TOVA (each step
// drops the token with the lowest attention averaged over the layer's heads), SnapKV (window votes, max-pooled,
// top-k plus the window), PyramidKV (per-layer budgets, the window on top), RazorAttention's compensation token.
// SnapKV is also checked end to end (votes from the attention kernel) against one double-precision loop, and so
// is KIVI packing after eviction.
//
// The votes are small integers, so sums are exact and ties happen; every rule keeps, among equal scores, the
// token at the earlier position (the papers leave ties open; this is the engine's choice, stated once here).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "backend/cpu/attention.h"
#include "backend/cpu/kv_page_codec.h"
#include "kv/composed_policy.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

// ---- the synthetic cache and hand-made attention ----

constexpr int32_t kDim = 32;  // KIVI packs channels in groups of 32

// A vote in [0, 20] for one (layer, kv-head, position) at one scoring round: the attention a round's queries paid.
float vote(uint64_t seed, int32_t layer, int32_t kv_head, int32_t pos, int32_t round) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(layer) * 1000003u +
               static_cast<uint64_t>(kv_head) * 7919u + static_cast<uint64_t>(pos) * 104729u +
               static_cast<uint64_t>(round) * 15485863u;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<float>(x % 21);
}

// The key and value rows of a token: distinct per (layer, kv-head, position), so a moved row is noticed.
float key_of(int32_t layer, int32_t kv_head, int32_t pos, int32_t c) {
  return 0.125f * static_cast<float>(pos) + 0.01f * c + 3.0f * layer + 7.0f * kv_head;  // within f16's range
}
float value_of(int32_t layer, int32_t kv_head, int32_t pos, int32_t c) { return -key_of(layer, kv_head, pos, c) - 0.5f; }

struct Cache {
  Cache(int32_t n_layer, int32_t n_head_kv, KvFormat sealed = KvFormat::F32, int32_t page_tokens = 16)
      : geo{n_layer, n_head_kv, kDim, page_tokens, KvFormat::F32, sealed},
        pool(page_tokens, kDim, size_t{1} << 26),
        seq(geo, pool) {}
  // Appends positions [first, first + n) to every (layer, kv-head).
  void append(int32_t first, int32_t n) {
    for (int32_t l = 0; l < geo.n_layer; ++l) {
      std::vector<float> k(static_cast<size_t>(n) * geo.n_head_kv * kDim), v(k.size());
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int32_t t = 0; t < n; ++t) {
        pos[static_cast<size_t>(t)] = first + t;
        for (int32_t g = 0; g < geo.n_head_kv; ++g)
          for (int32_t c = 0; c < kDim; ++c) {
            k[(static_cast<size_t>(t) * geo.n_head_kv + g) * kDim + c] = key_of(l, g, first + t, c);
            v[(static_cast<size_t>(t) * geo.n_head_kv + g) * kDim + c] = value_of(l, g, first + t, c);
          }
      }
      seq.append(l, k.data(), v.data(), pos.data(), n);
    }
  }
  // The scores a scoring round gathers: each slot gets vote(seed, layer, head, its position, round).
  KvScores scores(uint64_t seed, int32_t round) const {
    KvScores s;
    s.first_pos = 0;
    const int32_t stride = seq.n_tokens_max() + 1;
    s.reset(geo.n_layer, geo.n_head_kv, stride, stride);
    for (int32_t l = 0; l < geo.n_layer; ++l)
      for (int32_t g = 0; g < geo.n_head_kv; ++g) {
        const KvHeadCache& h = seq.head(l, g);
        float* out = s.layers[static_cast<size_t>(l)].data() + static_cast<size_t>(g) * stride;
        for (int32_t i = 0; i < h.n_tokens(); ++i) out[i] = vote(seed, l, g, h.positions[static_cast<size_t>(i)], round);
      }
    return s;
  }
  std::set<int32_t> kept(int32_t layer, int32_t kv_head) const {
    const auto& p = seq.head(layer, kv_head).positions;
    return {p.begin(), p.end()};
  }
  KvGeometry geo;
  KvPagePool pool;
  KvSequence seq;
};

// The `count` positions of `from` with the highest score, ties to the earlier position.
std::set<int32_t> top_by_score(const std::set<int32_t>& from, const std::map<int32_t, double>& score, int32_t count) {
  std::vector<int32_t> v(from.begin(), from.end());
  std::stable_sort(v.begin(), v.end(), [&](int32_t a, int32_t b) { return score.at(a) > score.at(b); });
  v.resize(static_cast<size_t>(std::max(0, std::min<int32_t>(count, static_cast<int32_t>(v.size())))));
  return {v.begin(), v.end()};
}

// The `count` most recent positions of `from`.
std::set<int32_t> most_recent(const std::set<int32_t>& from, int32_t count) {
  std::set<int32_t> r;
  for (auto it = from.rbegin(); it != from.rend() && static_cast<int32_t>(r.size()) < count; ++it) r.insert(*it);
  return r;
}

std::set<int32_t> range(int32_t first, int32_t end) {
  std::set<int32_t> r;
  for (int32_t p = first; p < end; ++p) r.insert(p);
  return r;
}

// ---- StreamingLLM ----

// "Efficient Streaming Language Models with Attention Sinks": the first `sink` tokens and the most recent ones.
std::set<int32_t> streaming_reference(const std::set<int32_t>& held, int32_t budget, int32_t sink) {
  if (static_cast<int32_t>(held.size()) <= budget) return held;
  std::set<int32_t> keep(held.begin(), std::next(held.begin(), sink));
  const std::set<int32_t> recent = most_recent(held, budget - sink);
  keep.insert(recent.begin(), recent.end());
  return keep;
}

TEST(KvPolicyReference, StreamingSelectKeepsSinksAndTheRecentWindowInAnySlotOrder) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> positions(50);
    std::iota(positions.begin(), positions.end(), 100);
    std::shuffle(positions.begin(), positions.end(), rng);  // slot order is not position order after eviction
    const int32_t budget = 5 + static_cast<int32_t>(seed), sink = static_cast<int32_t>(seed % 4);
    auto r = make_streaming_ranker(
        SpecArgs("streaming:budget=" + std::to_string(budget) + ",sink=" + std::to_string(sink), {"budget", "sink"}));
    std::set<int32_t> got;
    for (int32_t slot : r->select(positions, nullptr, budget)) got.insert(positions[static_cast<size_t>(slot)]);
    EXPECT_EQ(got, streaming_reference({positions.begin(), positions.end()}, budget, sink)) << seed;
  }
}

TEST(KvPolicyReference, StreamingEvictsEveryDecodeStep) {
  const int32_t budget = 12, sink = 3, n_prompt = 30;
  Cache c(2, 2);
  auto policy = make_kv_policy("streaming:budget=12,sink=3", 2, 2);
  c.append(0, n_prompt);
  policy->after_prefill(c.seq, KvScores{});
  std::set<int32_t> ref = streaming_reference(range(0, n_prompt), budget, sink);
  for (int32_t step = 0; step <= 20; ++step) {
    for (int32_t l = 0; l < 2; ++l)
      for (int32_t g = 0; g < 2; ++g) ASSERT_EQ(c.kept(l, g), ref) << "step " << step;
    const int32_t pos = n_prompt + step;
    c.append(pos, 1);
    policy->after_decode_step(c.seq, KvScores{});
    ref.insert(pos);
    ref = streaming_reference(ref, budget, sink);
  }
}

// ---- H2O ----

// "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models", as a loop over rounds:
// every held token adds the round's attention to its running total (the prompt is round 0, each decode step a
// round); over budget, the `recent` newest tokens stay and the rest of the budget goes to the heaviest totals.
struct H2oReference {
  int32_t budget, recent;
  std::set<int32_t> held;
  std::map<int32_t, double> total;
  void round(const std::function<float(int32_t)>& attention) {
    for (int32_t p : held) total[p] += attention(p);
    if (static_cast<int32_t>(held.size()) <= budget) return;
    std::set<int32_t> keep = most_recent(held, recent);
    std::set<int32_t> rest;
    std::set_difference(held.begin(), held.end(), keep.begin(), keep.end(), std::inserter(rest, rest.end()));
    const std::set<int32_t> heavy = top_by_score(rest, total, budget - recent);
    keep.insert(heavy.begin(), heavy.end());
    held = keep;
  }
};

// Prompt of n_prompt tokens, then decode steps, all rounds scored with `seed`; one reference per (layer, head).
void run_h2o(const std::string& spec, int32_t budget, int32_t recent, int32_t n_prompt, int32_t n_steps,
             uint64_t seed, KvPolicy& policy, Cache& c) {
  const int32_t n_layer = c.geo.n_layer, n_head_kv = c.geo.n_head_kv;
  std::vector<H2oReference> ref(static_cast<size_t>(n_layer * n_head_kv), H2oReference{budget, recent, {}, {}});
  c.append(0, n_prompt);
  for (auto& r : ref) r.held = range(0, n_prompt);
  for (int32_t round = 0; round <= n_steps; ++round) {
    if (round == 0) {
      policy.after_prefill(c.seq, c.scores(seed, 0));
    } else {
      c.append(n_prompt + round - 1, 1);
      for (auto& r : ref) r.held.insert(n_prompt + round - 1);
      policy.after_decode_step(c.seq, c.scores(seed, round));
    }
    for (int32_t l = 0; l < n_layer; ++l)
      for (int32_t g = 0; g < n_head_kv; ++g) {
        H2oReference& r = ref[static_cast<size_t>(l * n_head_kv + g)];
        r.round([&](int32_t p) { return vote(seed, l, g, p, round); });
        ASSERT_EQ(c.kept(l, g), r.held) << spec << " seed " << seed << " round " << round << " head " << l << "," << g;
      }
  }
}

TEST(KvPolicyReference, H2oAccumulatesAttentionOverEveryDecodeStep) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const int32_t budget = 10 + static_cast<int32_t>(seed), recent = static_cast<int32_t>(seed % 4);
    const std::string spec = "h2o:budget=" + std::to_string(budget) + ",recent=" + std::to_string(recent);
    Cache c(2, 2);
    auto policy = make_kv_policy(spec, 2, 2);
    run_h2o(spec, budget, recent, 40, 30, seed, *policy, c);
  }
}

TEST(KvPolicyReference, H2oForgetsTheLastSequenceOnReset) {
  // One policy object over two prompts, as the generator reuses it (it calls reset() before each prompt): the
  // second must select as a fresh policy does, with none of the first prompt's attention.
  auto policy = make_kv_policy("h2o:budget=12,recent=2", 2, 2);
  {
    Cache first(2, 2);
    run_h2o("first", 12, 2, 50, 10, 101, *policy, first);
  }
  policy->reset();
  Cache second(2, 2);
  run_h2o("second", 12, 2, 40, 10, 202, *policy, second);
}

// ---- TOVA ----

// "Transformers are Multi-State RNNs": at each round the current query's attention, averaged over all the
// layer's heads, ranks the layer's tokens; over budget, the lowest go, the same in every head. Here the mean is
// sum over kv-heads of the votes / n_head (the votes stand for each kv-head's query heads summed).
TEST(KvPolicyReference, TovaDropsTheLowestLayerMeanAttentionEachStep) {
  const int32_t n_layer = 2, n_head_kv = 3, n_head = 6, budget = 15, n_prompt = 40;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    Cache c(n_layer, n_head_kv);
    auto policy = make_kv_policy("tova:budget=15", n_layer, n_head_kv);
    c.append(0, n_prompt);
    std::vector<std::set<int32_t>> held(n_layer, range(0, n_prompt));
    for (int32_t round = 0; round <= 25; ++round) {
      if (round == 0) {
        policy->after_prefill(c.seq, c.scores(seed, 0));
      } else {
        c.append(n_prompt + round - 1, 1);
        for (auto& h : held) h.insert(n_prompt + round - 1);
        policy->after_decode_step(c.seq, c.scores(seed, round));
      }
      for (int32_t l = 0; l < n_layer; ++l) {
        std::map<int32_t, double> mean;
        for (int32_t p : held[l]) {
          double sum = 0;
          for (int32_t g = 0; g < n_head_kv; ++g) sum += vote(seed, l, g, p, round);
          mean[p] = sum / n_head;
        }
        while (static_cast<int32_t>(held[l].size()) > budget) {
          // The lowest mean goes; among equals, the later position (the earlier one is kept).
          int32_t worst = *held[l].begin();
          for (int32_t p : held[l])
            if (mean[p] <= mean[worst]) worst = p;
          held[l].erase(worst);
        }
        for (int32_t g = 0; g < n_head_kv; ++g)
          ASSERT_EQ(c.kept(l, g), held[l]) << "seed " << seed << " round " << round << " head " << l << "," << g;
      }
    }
  }
}

// top_slots drops a few candidates in one pass and more by partitioning: both give the top `count` by score, ties
// to the earlier position, sorted by slot, from candidates in any order (H2O's and SnapKV's come in position order,
// which is not slot order once slots were reordered).
TEST(KvPolicyReference, TopSlotsKeepsTheBestWhetherFewOrManyAreDropped) {
  std::mt19937 rng(7);
  for (int32_t trial = 0; trial < 200; ++trial) {
    const int32_t n = 1 + static_cast<int32_t>(rng() % 40);
    std::vector<int32_t> positions(static_cast<size_t>(n));
    std::iota(positions.begin(), positions.end(), 100);
    std::shuffle(positions.begin(), positions.end(), rng);
    std::vector<float> score(static_cast<size_t>(n));
    for (float& x : score) x = static_cast<float>(rng() % 5);  // many ties
    std::vector<int32_t> candidates;
    for (int32_t i = 0; i < n; ++i)
      if (rng() % 4 != 0) candidates.push_back(i);
    if (trial % 2 == 1) std::shuffle(candidates.begin(), candidates.end(), rng);
    const int32_t m = static_cast<int32_t>(candidates.size());
    for (int32_t count : {0, 1, m / 2, m - 12, m - 9, m - 8, m - 3, m - 1, m, m + 2}) {
      if (count < 0) continue;
      std::vector<int32_t> want(candidates);
      std::sort(want.begin(), want.end(), [&](int32_t a, int32_t b) {
        return score[a] != score[b] ? score[a] > score[b] : positions[a] < positions[b];
      });
      want.resize(static_cast<size_t>(std::min(count, m)));
      std::sort(want.begin(), want.end());
      ASSERT_EQ(top_slots(candidates, score, count, positions), want) << "trial " << trial << " count " << count;
    }
  }
}

// ---- SnapKV and PyramidKV on hand-made votes ----

// "SnapKV: LLM Knows What You are Looking for Before Generation": the tokens before the window (the last `window`
// held tokens) are ranked by their votes max-pooled over `pool` neighbours in position order; the top
// (budget - window) stay with the window.
std::set<int32_t> snapkv_reference(const std::set<int32_t>& held, const std::function<float(int32_t)>& votes,
                                   int32_t budget, int32_t window, int32_t pool) {
  if (static_cast<int32_t>(held.size()) <= budget) return held;
  const std::vector<int32_t> order(held.begin(), held.end());
  const int32_t n_rest = static_cast<int32_t>(order.size()) - window;
  std::map<int32_t, double> pooled;
  for (int32_t i = 0; i < n_rest; ++i) {
    double m = 0;
    for (int32_t j = std::max(0, i - pool / 2); j <= std::min(n_rest - 1, i + pool / 2); ++j)
      m = std::max<double>(m, votes(order[static_cast<size_t>(j)]));
    pooled[order[static_cast<size_t>(i)]] = m;
  }
  std::set<int32_t> keep = top_by_score({order.begin(), order.begin() + n_rest}, pooled, budget - window);
  keep.insert(order.begin() + n_rest, order.end());
  return keep;
}

// PyramidKV's budgets as the paper's arithmetic sequence: the window W stays in every layer; the rest, S = budget
// - W on average, runs from 2 S - S / beta in the first layer down to S / beta in the last.
std::vector<int32_t> pyramid_reference(int32_t budget, int32_t window, double beta, int32_t n_layer) {
  const double s = budget - window, lo = s / beta, hi = 2 * s - lo;
  std::vector<int32_t> b;
  for (int32_t l = 0; l < n_layer; ++l)
    b.push_back(window + static_cast<int32_t>(std::lround(hi - (hi - lo) * l / (n_layer - 1))));
  return b;
}

TEST(KvPolicyReference, PyramidKeepsTheWindowOnTopOfEveryLayersShare) {
  const auto b = pyramid_budgets(1024, 32, 20.0, 30);
  EXPECT_EQ(b, pyramid_reference(1024, 32, 20.0, 30));
  EXPECT_EQ(b.back(), 32 + std::lround(992 / 20.0));  // the top layer still selects ~50 tokens beyond its window
  EXPECT_EQ(b.front(), 32 + std::lround(2 * 992 - 992 / 20.0));
  EXPECT_NEAR(std::accumulate(b.begin(), b.end(), 0.0) / b.size(), 1024, 1.0);  // the memory of uniform SnapKV
}

TEST(KvPolicyReference, PyramidBudgetsEndToEndThroughTheSpec) {
  const int32_t n_layer = 6, n_head_kv = 2, n_prompt = 200, window = 16, budget = 40, pool = 3;
  const std::vector<int32_t> totals = pyramid_reference(budget, window, 4.0, n_layer);
  ASSERT_EQ(totals.back(), 16 + 6);  // 24 / 4: a window of 16 inside a budget of 22 would leave 6; on top, 6 + 16
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    Cache c(n_layer, n_head_kv);
    auto policy = make_kv_policy("pyramid:budget=40,beta=4+snapkv:window=16,pool=3", n_layer, n_head_kv);
    c.append(0, n_prompt);
    policy->after_prefill(c.seq, c.scores(seed, 0));
    for (int32_t l = 0; l < n_layer; ++l)
      for (int32_t g = 0; g < n_head_kv; ++g) {
        const auto ref = snapkv_reference(range(0, n_prompt), [&](int32_t p) { return vote(seed, l, g, p, 0); },
                                          totals[static_cast<size_t>(l)], window, pool);
        EXPECT_EQ(c.kept(l, g), ref) << "seed " << seed << " layer " << l << " head " << g;
        EXPECT_EQ(c.seq.head(l, g).n_tokens(), totals[static_cast<size_t>(l)]);
      }
  }
  // Without a token policy PyramidKV selects the SnapKV way, with SnapKV's default window.
  const auto policy = make_kv_policy("pyramid:budget=100", 4, 1);
  const auto* p = dynamic_cast<const ComposedPolicy*>(policy.get());
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->plan(3, 0).budget, pyramid_reference(100, 32, 20.0, 4).back());
}

// ---- --kv-prefill-compress: the policy cuts after every chunk of the prompt ----

TEST(KvPolicyReference, PrefillCompressCutsAfterEveryChunk) {
  const int32_t n_prompt = 100, chunk = 16, budget = 20;
  for (const std::string spec : {"h2o:budget=20,recent=5", "streaming:budget=20,sink=4", "snapkv:budget=20,window=6,pool=3"}) {
    const uint64_t seed = 9;
    Cache c(2, 2);
    auto policy = make_kv_policy(spec, 2, 2);
    std::vector<H2oReference> h2o(4, H2oReference{budget, 5, {}, {}});
    std::vector<std::set<int32_t>> held(4);
    for (int32_t start = 0, round = 0; start < n_prompt; start += chunk, ++round) {
      const int32_t len = std::min(chunk, n_prompt - start);
      c.append(start, len);
      const KvScores s = c.scores(seed, round);
      if (start + len < n_prompt) {
        policy->after_prefill_chunk(c.seq, s);
      } else {
        policy->after_prefill(c.seq, s);
      }
      for (int32_t l = 0; l < 2; ++l)
        for (int32_t g = 0; g < 2; ++g) {
          const size_t i = static_cast<size_t>(l * 2 + g);
          auto v = [&](int32_t p) { return vote(seed, l, g, p, round); };
          const std::set<int32_t> added = range(start, start + len);
          held[i].insert(added.begin(), added.end());
          h2o[i].held.insert(added.begin(), added.end());
          if (spec[0] == 'h') {
            h2o[i].round(v);
            held[i] = h2o[i].held;
          } else if (spec[0] == 's' && spec[1] == 't') {
            held[i] = streaming_reference(held[i], budget, 4);
          } else {
            held[i] = snapkv_reference(held[i], v, budget, 6, 3);  // each chunk scored as if the prompt ended there
          }
          ASSERT_EQ(c.kept(l, g), held[i]) << spec << " after the chunk at " << start;
          ASSERT_LE(c.seq.head(l, g).n_tokens(), budget);  // memory stays within the budget while reading
        }
    }
  }
}

// ---- RazorAttention's compensation token ----

std::string write_roles(const std::string& name, int32_t n_layer, int32_t n_head_kv, const std::string& retrieval) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << "{\"n_layer\": " << n_layer << ", \"n_head_kv\": " << n_head_kv
                      << ", \"retrieval\": " << retrieval << "}";
  return path;
}

// The non-retrieval heads keep sinks + window and one more token whose key and value are the means of every key
// and value they dropped so far; the retrieval heads keep every token, row for row.
TEST(KvPolicyReference, HeadsFoldWhatStreamingHeadsDropIntoOneCompensationToken) {
  const int32_t n_layer = 2, n_head_kv = 3, sink = 2, window = 6, n_prompt = 30;
  const std::string roles = write_roles("compensation_roles.json", n_layer, n_head_kv, "[[0, 1], [1, 0], [1, 2]]");
  const std::set<std::pair<int32_t, int32_t>> retrieval{{0, 1}, {1, 0}, {1, 2}};
  for (KvFormat sealed : {KvFormat::F32, KvFormat::Kivi4}) {
    Cache c(n_layer, n_head_kv, sealed, 16);
    Cache plain(n_layer, n_head_kv, sealed, 16);  // the same tokens with no policy: what retrieval heads must read
    auto policy = make_kv_policy("heads:file=" + roles + ",sink=2,window=6", n_layer, n_head_kv);
    c.seq.set_auto_seal(false);
    c.append(0, n_prompt);
    plain.append(0, n_prompt);
    policy->after_prefill(c.seq, KvScores{});
    // As the generator: pack the full pages once the prompt's selection is done, then seal as tokens come.
    for (Cache* x : {&c, &plain}) {
      x->seq.seal_full_pages();
      x->seq.set_auto_seal(true);
    }
    for (int32_t step = 0; step <= 12; ++step) {
      const int32_t n = n_prompt + step;  // tokens seen so far
      for (int32_t l = 0; l < n_layer; ++l)
        for (int32_t g = 0; g < n_head_kv; ++g) {
          const KvHeadCache& h = c.seq.head(l, g);
          std::vector<float> k(static_cast<size_t>(h.n_tokens()) * kDim), v(k.size());
          for (int32_t s = 0; s < h.n_tokens(); ++s) {
            c.seq.read_keys(l, g, s, 1, &k[static_cast<size_t>(s) * kDim]);
            c.seq.read_values(l, g, s, 1, &v[static_cast<size_t>(s) * kDim]);
          }
          if (retrieval.count({l, g})) {
            ASSERT_EQ(c.kept(l, g), range(0, n));
            std::vector<float> k_ref(k.size()), v_ref(v.size());
            for (int32_t s = 0; s < h.n_tokens(); ++s) {
              plain.seq.read_keys(l, g, s, 1, &k_ref[static_cast<size_t>(s) * kDim]);
              plain.seq.read_values(l, g, s, 1, &v_ref[static_cast<size_t>(s) * kDim]);
            }
            ASSERT_EQ(k, k_ref) << kv_format_name(sealed) << " step " << step << " head " << l << "," << g;
            ASSERT_EQ(v, v_ref) << kv_format_name(sealed) << " step " << step << " head " << l << "," << g;
            continue;
          }
          // Dropped so far: positions [sink, n - window); the compensation token stands at the newest of them.
          const int32_t newest_dropped = n - window - 1;
          std::set<int32_t> expected = range(0, sink);
          const std::set<int32_t> recent = range(n - window, n);
          expected.insert(recent.begin(), recent.end());
          expected.insert(newest_dropped);
          ASSERT_EQ(c.kept(l, g), expected) << kv_format_name(sealed) << " step " << step << " head " << l << "," << g;
          for (int32_t s = 0; s < h.n_tokens(); ++s) {
            const int32_t p = h.positions[static_cast<size_t>(s)];
            for (int32_t ch = 0; ch < kDim; ++ch) {
              double k_ref = key_of(l, g, p, ch), v_ref = value_of(l, g, p, ch);
              if (p == newest_dropped) {
                k_ref = v_ref = 0;
                for (int32_t q = sink; q <= newest_dropped; ++q) {
                  k_ref += key_of(l, g, q, ch) / (newest_dropped - sink + 1);
                  v_ref += value_of(l, g, q, ch) / (newest_dropped - sink + 1);
                }
              }
              // The streaming heads hold fewer tokens than a page: every row stays plain, exact up to f32 means.
              EXPECT_NEAR(k[static_cast<size_t>(s) * kDim + ch], k_ref, 1e-3) << "position " << p;
              EXPECT_NEAR(v[static_cast<size_t>(s) * kDim + ch], v_ref, 1e-3) << "position " << p;
            }
          }
        }
      c.append(n, 1);
      plain.append(n, 1);
      policy->after_decode_step(c.seq, KvScores{});
    }
  }
  // compensation=none: the dropped tokens are only dropped.
  Cache c(n_layer, n_head_kv);
  auto none = make_kv_policy("heads:file=" + roles + ",sink=2,window=6,compensation=none", n_layer, n_head_kv);
  c.append(0, n_prompt);
  none->after_prefill(c.seq, KvScores{});
  EXPECT_EQ(c.seq.head(0, 0).n_tokens(), sink + window);
  std::remove(roles.c_str());
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

// ---- ChunkKV and AdaKV on hand-made votes ----

// Max-pooled votes of the tokens before the window (SnapKV's pooling, `pool` neighbours in position order); the
// window's tokens get +infinity: whatever else ranks, they stay.
std::map<int32_t, double> pooled_votes(const std::set<int32_t>& held, const std::function<double(int32_t)>& votes,
                                       int32_t window, int32_t pool) {
  const std::vector<int32_t> order(held.begin(), held.end());
  const int32_t n = static_cast<int32_t>(order.size()), n_rest = n - std::min(window, n);
  std::map<int32_t, double> out;
  for (int32_t i = 0; i < n_rest; ++i) {
    double m = 0;
    for (int32_t j = std::max(0, i - pool / 2); j <= std::min(n_rest - 1, i + pool / 2); ++j)
      m = std::max(m, votes(order[static_cast<size_t>(j)]));
    out[order[static_cast<size_t>(i)]] = m;
  }
  for (int32_t i = n_rest; i < n; ++i) out[order[static_cast<size_t>(i)]] = INFINITY;
  return out;
}

// "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference": the tokens before
// the window are tiled into chunks of `chunk` from the oldest (the last one may be shorter); a chunk scores the
// mean of its (pooled) votes; the chunks, best first (ties: the earlier chunk), stay whole while each fits in
// budget - window (one that does not is passed over), with the window. Also returns each token's chunk score
// (+infinity in the window) in `chunk_score`.
//
// With text boundaries (`breaks`: position -> 0 none, 1 between words, 2 between sentences, already capped at what
// align= allows), a chunk starting at token i of the tiling ends
// before the token j in [i + chunk/2 (at least i + 1), i + chunk + chunk/2] that has the strongest boundary, the
// nearest to i + chunk among equals, the earlier among equally near; at i + chunk where none of them has one; at
// the window when i + chunk reaches it.
std::set<int32_t> chunkkv_reference(const std::set<int32_t>& held, const std::function<double(int32_t)>& votes,
                                    int32_t budget, int32_t window, int32_t chunk, int32_t pool,
                                    std::map<int32_t, double>* chunk_score = nullptr,
                                    const std::function<int(int32_t)>& breaks = nullptr) {
  const std::vector<int32_t> order(held.begin(), held.end());
  const int32_t n = static_cast<int32_t>(order.size()), n_rest = n - std::min(window, n);
  const std::map<int32_t, double> pooled = pooled_votes(held, votes, window, pool);
  std::vector<std::pair<int32_t, int32_t>> spans;  // [first, end) in order
  for (int32_t i = 0; i < n_rest;) {
    int32_t end = std::min(i + chunk, n_rest);
    if (breaks && i + chunk < n_rest) {
      std::tuple<int, int32_t, int32_t> best{0, 0, 0};  // (-strength, distance, j)
      for (int32_t j = i + std::max(1, chunk / 2); j <= i + chunk + chunk / 2 && j <= n_rest; ++j) {
        const int strength = breaks(order[static_cast<size_t>(j)]);
        best = std::min(best, std::tuple<int, int32_t, int32_t>{-strength, std::abs(j - i - chunk), j});
      }
      if (std::get<0>(best) < 0) end = std::get<2>(best);
    }
    spans.push_back({i, end});
    i = end;
  }
  std::vector<std::pair<double, int32_t>> chunks;  // (-mean, index into spans)
  for (size_t k = 0; k < spans.size(); ++k) {
    const auto [i, end] = spans[k];
    double sum = 0;
    for (int32_t j = i; j < end; ++j) sum += pooled.at(order[static_cast<size_t>(j)]);
    chunks.push_back({-sum / (end - i), static_cast<int32_t>(k)});
    if (chunk_score)
      for (int32_t j = i; j < end; ++j) (*chunk_score)[order[static_cast<size_t>(j)]] = sum / (end - i);
  }
  if (chunk_score)
    for (int32_t i = n_rest; i < n; ++i) (*chunk_score)[order[static_cast<size_t>(i)]] = INFINITY;
  if (n <= budget) return held;
  std::sort(chunks.begin(), chunks.end());
  std::set<int32_t> keep(order.begin() + n_rest, order.end());
  int32_t room = budget - window;
  for (const auto& [score, k] : chunks) {
    const auto [i, end] = spans[static_cast<size_t>(k)];
    if (end - i > room) continue;
    room -= end - i;
    for (int32_t j = i; j < end; ++j) keep.insert(order[static_cast<size_t>(j)]);
  }
  return keep;
}

TEST(KvPolicyReference, ChunkKvKeepsTheBestChunksWholeWithTheWindow) {
  const int32_t n_layer = 2, n_head_kv = 3, n_prompt = 157, window = 16, chunk = 10;  // 141 = 14 chunks + 1 token
  for (const int32_t pool : {1, 3})
    for (const int32_t budget : {66, 71, 150})  // 5 chunks; 5 chunks and 5 tokens unused; 13 chunks, the short one
      for (const bool per_head : {false, true})
        for (uint64_t seed = 1; seed <= 3; ++seed) {
          Cache c(n_layer, n_head_kv);
          const std::string spec = "chunkkv:budget=" + std::to_string(budget) + ",window=16,chunk=10,pooling=max,pool=" +
                                   std::to_string(pool) + (per_head ? ",scope=head" : "");
          auto policy = make_kv_policy(spec, n_layer, n_head_kv);
          c.append(0, n_prompt);
          policy->after_prefill(c.seq, c.scores(seed, 0));
          for (int32_t l = 0; l < n_layer; ++l)
            for (int32_t g = 0; g < n_head_kv; ++g) {
              // scope=layer: every kv-head ranks the votes of all the layer's kv-heads, summed.
              auto votes = [&](int32_t p) {
                if (per_head) return static_cast<double>(vote(seed, l, g, p, 0));
                double sum = 0;
                for (int32_t h = 0; h < n_head_kv; ++h) sum += vote(seed, l, h, p, 0);
                return sum;
              };
              const auto ref = chunkkv_reference(range(0, n_prompt), votes, budget, window, chunk, pool);
              EXPECT_EQ(c.kept(l, g), ref) << spec << " seed " << seed << " layer " << l << " head " << g;
              EXPECT_LE(c.seq.head(l, g).n_tokens(), budget);
              if (!per_head) {
                EXPECT_EQ(c.kept(l, g), c.kept(l, 0)) << "one set per layer";
              }
            }
        }
}

// align=word|sentence: the policy is told the text's boundaries (KvPolicy::on_text) and its chunks end there.
TEST(KvPolicyReference, ChunkKvAlignedCutsAtTheTextsBoundaries) {
  const int32_t n_layer = 2, n_head_kv = 2, n_prompt = 301, window = 16, chunk = 20;
  for (const char* align : {"word", "sentence"})
    for (const int32_t budget : {76, 131, 200})
      for (uint64_t seed = 1; seed <= 3; ++seed) {
        // Words of 1-9 tokens (some long like a number read a digit a token), sentences of a few words.
        std::vector<kv::TextBreak> text(static_cast<size_t>(n_prompt), kv::TextBreak::None);
        uint64_t r = seed * 0x9E3779B97F4A7C15ull;
        auto next = [&r] { r ^= r << 13; r ^= r >> 7; r ^= r << 17; return r; };
        for (int32_t p = 0, word = 0; p < n_prompt; p += 1 + static_cast<int32_t>(next() % 9), ++word)
          text[static_cast<size_t>(p)] = next() % 5 == 0 ? kv::TextBreak::Sentence : kv::TextBreak::Word;
        const int cap = std::string(align) == "word" ? 1 : 2;
        auto breaks = [&](int32_t p) { return std::min(cap, static_cast<int>(text[static_cast<size_t>(p)])); };
        Cache c(n_layer, n_head_kv);
        const std::string spec = "chunkkv:budget=" + std::to_string(budget) + ",window=16,chunk=20,align=" + align;
        auto policy = make_kv_policy(spec, n_layer, n_head_kv);
        ASSERT_TRUE(policy->wants_text_breaks());
        c.append(0, n_prompt);
        policy->on_text(0, text);
        policy->after_prefill(c.seq, c.scores(seed, 0));
        for (int32_t l = 0; l < n_layer; ++l) {
          auto votes = [&](int32_t p) {
            double sum = 0;
            for (int32_t h = 0; h < n_head_kv; ++h) sum += vote(seed, l, h, p, 0);
            return sum;
          };
          const auto ref = chunkkv_reference(range(0, n_prompt), votes, budget, window, chunk, 1, nullptr, breaks);
          for (int32_t g = 0; g < n_head_kv; ++g) EXPECT_EQ(c.kept(l, g), ref) << spec << " seed " << seed << " layer " << l;
          EXPECT_LE(c.seq.head(l, 0).n_tokens(), budget);
          // No kept run of tokens ends inside a word: what follows a kept token is kept, or has a boundary before it.
          const std::set<int32_t> kept = c.kept(l, 0);
          for (int32_t p : kept)
            if (p + 1 < n_prompt - window && !kept.count(p + 1))
              EXPECT_NE(text[static_cast<size_t>(p + 1)], kv::TextBreak::None) << spec << ": a word cut after " << p;
        }
        // Told nothing (no tokenizer), the same spec tiles by counts alone, as align=none.
        Cache plain(n_layer, n_head_kv), none(n_layer, n_head_kv);
        plain.append(0, n_prompt);
        none.append(0, n_prompt);
        make_kv_policy(spec, n_layer, n_head_kv)->after_prefill(plain.seq, plain.scores(seed, 0));
        make_kv_policy("chunkkv:budget=" + std::to_string(budget) + ",window=16,chunk=20", n_layer, n_head_kv)
            ->after_prefill(none.seq, none.scores(seed, 0));
        EXPECT_EQ(plain.kept(0, 0), none.kept(0, 0)) << spec;
      }
}

// "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference": a layer's
// budget, `budget` per head, is shared among its heads: each head first takes its floor(alpha * budget) (at least
// one) best tokens by its score, then the rest of the layer's budget goes to the best remaining tokens of all heads
// together (ties: the earlier head, then the earlier position). score: (n_head) of position -> score. Returns each
// head's share.
std::vector<int32_t> adakv_reference(const std::vector<std::map<int32_t, double>>& score, int32_t budget, double alpha) {
  const int32_t n_head = static_cast<int32_t>(score.size());
  const int32_t n_safe = std::max(1, static_cast<int32_t>(std::floor(alpha * budget)));
  std::vector<int32_t> share(static_cast<size_t>(n_head), 0);
  std::vector<std::tuple<double, int32_t, int32_t>> rest;  // (-score, head, position)
  for (int32_t g = 0; g < n_head; ++g) {
    std::vector<std::pair<double, int32_t>> mine;  // (-score, position)
    for (const auto& [p, v] : score[static_cast<size_t>(g)]) mine.push_back({-v, p});
    std::sort(mine.begin(), mine.end());
    share[static_cast<size_t>(g)] = std::min<int32_t>(n_safe, static_cast<int32_t>(mine.size()));
    for (size_t i = static_cast<size_t>(share[static_cast<size_t>(g)]); i < mine.size(); ++i)
      rest.emplace_back(mine[i].first, g, mine[i].second);
  }
  std::sort(rest.begin(), rest.end());
  int32_t left = n_head * budget;
  for (int32_t s : share) left -= s;
  for (int32_t i = 0; i < left && i < static_cast<int32_t>(rest.size()); ++i)
    ++share[static_cast<size_t>(std::get<1>(rest[static_cast<size_t>(i)]))];
  return share;
}

TEST(KvPolicyReference, AdaKvSharesEachLayersBudgetAmongItsHeadsByScore) {
  const int32_t n_layer = 3, n_head_kv = 4, n_prompt = 180, window = 8, pool = 3, chunk = 6;
  int n_uneven = 0;
  for (const double alpha : {0.0, 0.2, 0.5})
    for (const bool chunks : {false, true})
      for (uint64_t seed = 1; seed <= 3; ++seed) {
        // With pyramid the layer budgets fall with depth; AdaKV shares each layer's among its heads.
        const std::vector<int32_t> budgets = pyramid_reference(60, window, 4.0, n_layer);
        const std::string ranker = chunks ? "chunkkv:budget=60,window=8,chunk=6,pool=3,pooling=max,scope=head"
                                          : "snapkv:budget=60,window=8,pool=3";
        const std::string spec = ranker + "+pyramid:beta=4+adakv:alpha=" + std::to_string(alpha);
        Cache c(n_layer, n_head_kv);
        auto policy = make_kv_policy(spec, n_layer, n_head_kv);
        c.append(0, n_prompt);
        policy->after_prefill(c.seq, c.scores(seed, 0));
        for (int32_t l = 0; l < n_layer; ++l) {
          const int32_t budget = budgets[static_cast<size_t>(l)];
          std::vector<std::map<int32_t, double>> score(static_cast<size_t>(n_head_kv));
          for (int32_t g = 0; g < n_head_kv; ++g) {
            auto votes = [&](int32_t p) { return static_cast<double>(vote(seed, l, g, p, 0)); };
            if (chunks) {
              chunkkv_reference(range(0, n_prompt), votes, budget, window, chunk, pool, &score[static_cast<size_t>(g)]);
            } else {
              score[static_cast<size_t>(g)] = pooled_votes(range(0, n_prompt), votes, window, pool);
            }
          }
          const std::vector<int32_t> share = adakv_reference(score, budget, alpha);
          int32_t total = 0;
          for (int32_t g = 0; g < n_head_kv; ++g) {
            auto votes = [&](int32_t p) { return static_cast<double>(vote(seed, l, g, p, 0)); };
            const int32_t b = share[static_cast<size_t>(g)];
            const auto ref = chunks ? chunkkv_reference(range(0, n_prompt), votes, b, window, chunk, pool)
                                    : snapkv_reference(range(0, n_prompt), votes, b, window, pool);
            EXPECT_EQ(c.kept(l, g), ref) << spec << " seed " << seed << " layer " << l << " head " << g;
            total += c.seq.head(l, g).n_tokens();
            n_uneven += share[static_cast<size_t>(g)] != budget;
            EXPECT_GE(b, std::max(1, static_cast<int32_t>(alpha * budget)));  // the safeguard
          }
          // SnapKV spends the layer's budget exactly; ChunkKV drops a chunk a share splits.
          if (!chunks) EXPECT_EQ(total, n_head_kv * budget) << spec << " layer " << l;
          else EXPECT_LE(total, n_head_kv * budget) << spec << " layer " << l;
        }
      }
  EXPECT_GT(n_uneven, 0) << "the shares never differed from the uniform budget: the test shows nothing";
}

// ---- the bound the server admits a prompt by (--kv-prefill-compress) ----

// After every cut, per prefill chunk and at the prompt's end, the whole cache holds at most max_tokens_after_cut of
// the tokens it held per head; a uniform budget spends it exactly, and a policy that cuts nothing says so (-1).
TEST(KvPolicyReference, EveryCutStaysWithinTheBoundAdmissionCounts) {
  const int32_t n_layer = 3, n_head_kv = 2, n_prompt = 150, chunk = 32;
  const std::string roles = write_roles("bound_roles.json", n_layer, n_head_kv, "[[0, 1], [2, 0]]");
  struct Case {
    std::string spec;
    bool exact;  // every head keeps exactly its budget once it held more
  };
  const std::vector<Case> cases = {
      {"snapkv:budget=40,window=6,pool=3", true},
      {"streaming:budget=24,sink=4", true},
      {"h2o:budget=30,recent=5", true},
      {"tova:budget=30", true},
      {"snapkv:budget=40,window=8,pool=3+pyramid:beta=4", false},
      {"snapkv:budget=40,window=8,pool=3+adakv:alpha=0.2", false},
      {"chunkkv:budget=40,window=8,chunk=6,pool=3,scope=head+adakv:alpha=0.2", false},
      {"heads:file=" + roles + ",sink=2,window=6", false},
      {"snapkv:budget=40,window=6+kivi:bits=4", true},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.spec);
    Cache c(n_layer, n_head_kv);
    auto policy = make_kv_policy(k.spec, n_layer, n_head_kv);
    for (int32_t start = 0, round = 0; start < n_prompt; start += chunk, ++round) {
      const int32_t len = std::min(chunk, n_prompt - start);
      c.append(start, len);
      // Heads cut to uneven budgets (pyramid, adakv, heads) hold different counts: the most any holds bounds them.
      int64_t before = 0;
      for (int32_t l = 0; l < n_layer; ++l)
        for (int32_t g = 0; g < n_head_kv; ++g) before = std::max<int64_t>(before, c.seq.head(l, g).n_tokens());
      const KvScores s = c.scores(5, round);
      if (start + len < n_prompt) {
        policy->after_prefill_chunk(c.seq, s);
      } else {
        policy->after_prefill(c.seq, s);
      }
      int64_t held = 0;
      for (int32_t l = 0; l < n_layer; ++l)
        for (int32_t g = 0; g < n_head_kv; ++g) held += c.seq.head(l, g).n_tokens();
      const int64_t bound = policy->max_tokens_after_cut(before);
      ASSERT_GT(bound, 0);
      EXPECT_LE(held, bound) << "after the chunk at " << start;
      if (k.exact) EXPECT_EQ(held, bound) << "after the chunk at " << start;
    }
  }
  for (const std::string spec : {"full", "kivi:bits=4", "quest:budget=32,dense_layers=1"})
    EXPECT_EQ(make_kv_policy(spec, n_layer, n_head_kv)->max_tokens_after_cut(100), -1) << spec;
}

}  // namespace
}  // namespace longctx::kv
