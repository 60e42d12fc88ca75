// StreamingLLM's positions within the cache ("Efficient Streaming Language Models with Attention Sinks"), checked
// against plain references that apply the paper's rule literally: every cached token at its rank in the cache and
// the query after them, keys rotated from their pre-RoPE values at those positions.
//   - kv_in_cache_shifts against ranks computed by sorting, on the paper's own example and random caches;
//   - one layer's attention with KvInCacheRotation against attention over keys written at in-cache positions, in
//     f32, f16 and KIVI pages, also with original positions past a million (RoPE's angle precision);
//   - the tiny synthetic llama decoding four times its budget under `streaming` against a plain decoder that keeps
//     pre-RoPE keys and re-positions the whole cache every step;
//   - which policies give in-cache positions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/synthetic_weights.h"
#include "kv/policy.h"
#include "model/forward.h"
#include "model/model.h"
#include "synthetic_llama_reference.h"

namespace longctx {
namespace {

// The paper's rule for one head: the key of rank r among the n cached (the query's own included) sits at r, the
// query at n - 1; moved into the query's original frame, rank r goes to q_pos - (n - 1) + r. Returns the keys whose
// position that changes, by slot.
std::vector<KvKeyShift> shifts_by_sorting(const std::vector<int32_t>& positions, int32_t q_pos) {
  const int32_t n = static_cast<int32_t>(positions.size());
  std::vector<int32_t> order(positions.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return positions[a] < positions[b]; });
  std::vector<KvKeyShift> out;
  for (int32_t r = 0; r < n; ++r) {
    const int32_t target = q_pos - (n - 1) + r;
    if (target != positions[order[r]]) out.push_back({order[r], target});
  }
  std::sort(out.begin(), out.end(), [](const KvKeyShift& a, const KvKeyShift& b) { return a.slot < b.slot; });
  return out;
}

void expect_same(const std::vector<KvKeyShift>& got, const std::vector<KvKeyShift>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].slot, want[i].slot) << i;
    EXPECT_EQ(got[i].target, want[i].target) << i;
  }
}

TEST(InCacheShifts, ThePapersExample) {
  // The paper's figure: cache [0, 1, 2, 3, 6, 7, 8] decoding the next token (position 9) uses positions 0..7. Its
  // key is cached before attention, so the cache is [0, 1, 2, 3, 6, 7, 8, 9], the query at in-cache 7: the window
  // keys 6, 7, 8 sit at 4, 5, 6, distances 3, 2, 1 as in the text; the sinks 0..3 at distances 7..4, which in the
  // query's original frame are positions 2..5.
  const std::vector<int32_t> pos{0, 1, 2, 3, 6, 7, 8, 9};
  const auto s = kv_in_cache_shifts(pos, 9);
  expect_same(s, {{0, 2}, {1, 3}, {2, 4}, {3, 5}});
  for (const KvKeyShift& k : s) EXPECT_EQ(9 - k.target, 7 - pos[static_cast<size_t>(k.slot)]);  // in-cache distance
  // Nothing evicted: positions are already ranks.
  EXPECT_TRUE(kv_in_cache_shifts({0, 1, 2, 3, 4}, 4).empty());
  // No sinks (sink=0): a pure window needs no moves either.
  EXPECT_TRUE(kv_in_cache_shifts({7, 8, 9, 10}, 10).empty());
}

TEST(InCacheShifts, MatchRanksOnRandomCaches) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 400; ++trial) {
    const int32_t q_pos = 1 + static_cast<int32_t>(rng() % 5000);
    std::vector<int32_t> pos{q_pos};
    if (trial % 2 == 0) {
      // Sinks plus a window, as the streaming ranker keeps.
      const int32_t n_sink = static_cast<int32_t>(rng() % 6), n_win = static_cast<int32_t>(rng() % 300);
      for (int32_t p = 0; p < std::min(n_sink, q_pos); ++p) pos.push_back(p);
      for (int32_t p = std::max(n_sink, q_pos - n_win); p < q_pos; ++p) pos.push_back(p);
    } else {
      // Any kept set (another ranker's): the rule is the same.
      for (int32_t p = 0; p < q_pos; ++p)
        if (rng() % 7 == 0) pos.push_back(p);
    }
    std::shuffle(pos.begin(), pos.end(), rng);  // slots are in no particular order after removals
    expect_same(kv_in_cache_shifts(pos, q_pos), shifts_by_sorting(pos, q_pos));
  }
}

TEST(InCacheShifts, RefuseAKeyAfterTheQuery) {
  EXPECT_THROW(kv_in_cache_shifts({0, 1, 5}, 4), Error);
  EXPECT_THROW(kv_in_cache_shifts({0, 3, 3, 4}, 4), Error);
}

// RoPE's angle pos * base^(-2i/d) is formed in double: in f32, a position of 10^6 carries an absolute angle error
// near 0.03 rad, enough to move a score, while the double angle's error is far below f32's own rounding.
TEST(Rope, PreciseAtLargePositions) {
  const int32_t D = 64;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> x0(D);
  for (float& v : x0) v = nd(rng);
  for (int32_t pos : {32768, 1 << 20, 123456789, 2000000000}) {
    std::vector<float> x = x0;
    cpu::rope(x.data(), &pos, 1, 1, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
    double worst = 0;
    for (int32_t i = 0; i < D / 2; ++i) {
      const long double a = static_cast<long double>(pos) * std::pow(10000.0L, -2.0L * i / D);
      const long double c = std::cos(a), s = std::sin(a);
      const long double r0 = x0[2 * i] * c - x0[2 * i + 1] * s, r1 = x0[2 * i] * s + x0[2 * i + 1] * c;
      worst = std::max({worst, static_cast<double>(std::fabs(r0 - x[2 * i])), static_cast<double>(std::fabs(r1 - x[2 * i + 1]))});
    }
    EXPECT_LT(worst, 2e-6) << "position " << pos;  // a few f32 ulps of unit-scale values
  }
}

struct AttnCase {
  KvFormat open, sealed;
  int32_t first_window;  // the original position where the window starts (the query is the window's last token)
  double tol;            // of the output, whose values are of unit scale
};

// One layer, two kv-heads of 64 channels, pages of 16: four sinks and a window of 41 ending at the query.
// The engine's way: keys stored rotated at their original positions, the view re-rotated by KvInCacheRotation.
// The reference: the same pre-RoPE keys rotated at positions 0..n-1 and the query at n-1, in an f32 store,
// attention_reference in double. The control: the view left at original positions differs by far more.
void run_attention_case(const AttnCase& c) {
  const int32_t n_head = 4, n_head_kv = 2, D = 64, T = 16, n_sink = 4, n_win = 41;
  const int32_t q_pos = c.first_window + n_win - 1;
  std::mt19937 rng(11 + c.first_window);
  std::normal_distribution<float> nd;
  std::vector<int32_t> pos;
  for (int32_t p = 0; p < n_sink; ++p) pos.push_back(p);
  for (int32_t p = c.first_window; p <= q_pos; ++p) pos.push_back(p);
  const int32_t n = static_cast<int32_t>(pos.size());
  std::vector<float> k_pre(static_cast<size_t>(n) * n_head_kv * D), v(k_pre.size()), q(static_cast<size_t>(n_head) * D);
  for (float& x : k_pre) x = nd(rng) * 1.5f;
  for (float& x : v) x = nd(rng);
  for (float& x : q) x = nd(rng) * 1.5f;  // scores spread, so the sinks' weight depends on their rotation

  // The engine: the kept tokens appended at their original positions. Appending only the kept ones is what
  // eviction leaves, and the helper reads nothing but the store.
  std::vector<float> k_rot = k_pre;
  cpu::rope(k_rot.data(), pos.data(), n, n_head_kv, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
  kv::KvGeometry geo{1, n_head_kv, D, T, c.open, c.sealed};
  kv::KvPagePool pages(T, D, size_t{1} << 26);
  kv::KvSequence seq(geo, pages);
  seq.append(0, k_rot.data(), v.data(), pos.data(), n);
  seq.seal_full_pages();
  std::vector<float> q_rot = q;
  cpu::rope(q_rot.data(), &q_pos, 1, n_head, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
  cpu::AttentionParams ap{n_head, n_head_kv, D, 1.0f / std::sqrt(static_cast<float>(D)), 0};
  ThreadPool tp(2);
  cpu::KvLayerView view = seq.layer_view(0);
  std::vector<float> original(q.size()), out(q.size());
  cpu::attention(tp, ap, q_rot.data(), &q_pos, 1, view, original.data());
  KvInCacheRotation rot;
  EXPECT_EQ(rot.apply(seq, 0, q_pos, 10000.0f, D, cpu::RopeOrder::Adjacent, view), n_sink * n_head_kv);
  cpu::attention(tp, ap, q_rot.data(), &q_pos, 1, view, out.data());

  // The reference at in-cache positions 0..n-1.
  std::vector<int32_t> rank(static_cast<size_t>(n));
  std::iota(rank.begin(), rank.end(), 0);
  std::vector<float> k_ref = k_pre, q_ref = q;
  cpu::rope(k_ref.data(), rank.data(), n, n_head_kv, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
  const int32_t q_ref_pos = n - 1;
  cpu::rope(q_ref.data(), &q_ref_pos, 1, n_head, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
  kv::KvGeometry ref_geo{1, n_head_kv, D, T, KvFormat::F32, KvFormat::F32};
  kv::KvSequence ref_seq(ref_geo, pages);
  ref_seq.append(0, k_ref.data(), v.data(), rank.data(), n);
  std::vector<float> ref(q.size());
  cpu::attention_reference(ap, q_ref.data(), &q_ref_pos, 1, ref_seq.layer_view(0), ref.data());

  double err = 0, err_original = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(out[i]) - ref[i]));
    err_original = std::max(err_original, std::fabs(static_cast<double>(original[i]) - ref[i]));
  }
  std::printf("  %s/%s, window from %d: max error %.2e (original positions: %.2e)\n", kv_format_name(c.open),
              kv_format_name(c.sealed), c.first_window, err, err_original);
  EXPECT_LE(err, c.tol);
  EXPECT_GT(err_original, 20 * c.tol);  // the check can tell the two rules apart
}

// Tolerances: f32 pages leave f32 rotation and accumulation (a few 1e-7 on unit-scale outputs); f16 pages round
// every key once to 11 bits (relative 2^-11 on scores of a few units: a few 1e-3 at most); KIVI-4 keys carry their
// quantization step, the same in both runs except the reference's exact f32 keys.
TEST(InCacheRotation, AttentionEqualsAttentionAtInCachePositions) {
  for (int32_t first_window : {60, 40000, 1000000, 300000000})
    run_attention_case({KvFormat::F32, KvFormat::F32, first_window, 1e-5});
  for (int32_t first_window : {60, 1000000}) run_attention_case({KvFormat::F16, KvFormat::F16, first_window, 5e-3});
  run_attention_case({KvFormat::F16, KvFormat::Kivi8, 60, 2e-2});
}

// The tiny synthetic llama (2 layers, 4 q / 2 kv heads of 64) under streaming:budget=16,sink=4 with an f32 cache,
// decoding four times its budget token by token, against a plain decoder that follows the paper step by step: it
// keeps every cached token's pre-RoPE key and value, rotates them at their ranks 0..n-1 and the query at n-1 each
// step, then evicts the oldest non-sink token when over budget.
struct StreamingReference {
  test::SyntheticLlamaReference& w;
  int32_t budget, n_sink;
  kv::KvPositions rule;  // InCache: the paper; Original: keys at the text's positions (the control)
  struct Cached {
    int32_t pos;
    std::vector<double> k;  // (kv_dim) pre-RoPE
    std::vector<float> v;   // (kv_dim)
  };
  std::vector<std::vector<Cached>> layers;

  std::vector<float> forward(int32_t token, int32_t pos) {
    const ModelShape& m = w.m;
    const size_t E = m.n_embd, Q = m.q_dim(), KV = m.kv_dim(), F = m.n_ff, D = m.head_dim;
    layers.resize(static_cast<size_t>(m.n_layer));
    std::vector<float> x(w.tok_embd.begin() + static_cast<std::ptrdiff_t>(token * E),
                         w.tok_embd.begin() + static_cast<std::ptrdiff_t>((token + 1) * E));
    for (int32_t il = 0; il < m.n_layer; ++il) {
      auto& L = w.layers[static_cast<size_t>(il)];
      auto& cache = layers[static_cast<size_t>(il)];
      const std::vector<float> xn = w.rmsnorm(x, L.attn_norm);
      std::vector<double> q = w.matvec(L.wq, xn, Q), k = w.matvec(L.wk, xn, KV), vv = w.matvec(L.wv, xn, KV);
      Cached self{pos, std::vector<double>(k.begin(), k.end()), {}};
      for (size_t i = 0; i < KV; ++i) self.v.push_back(static_cast<float>(vv[i]));
      cache.push_back(std::move(self));
      const int32_t n = static_cast<int32_t>(cache.size());
      // Positions: ranks in the cache (kept in position order), or the original ones.
      std::vector<double> keys;
      for (int32_t t = 0; t < n; ++t) {
        std::vector<double> kt = cache[static_cast<size_t>(t)].k;
        w.rope(kt, 0, m.n_head_kv, rule == kv::KvPositions::InCache ? t : cache[static_cast<size_t>(t)].pos);
        keys.insert(keys.end(), kt.begin(), kt.end());
      }
      w.rope(q, 0, m.n_head, rule == kv::KvPositions::InCache ? n - 1 : pos);
      const int32_t group = m.n_head / m.n_head_kv;
      std::vector<float> attn(Q);
      for (int32_t h = 0; h < m.n_head; ++h) {
        const size_t kvh = static_cast<size_t>(h / group);
        std::vector<double> sc(static_cast<size_t>(n));
        double mx = -INFINITY;
        for (int32_t t = 0; t < n; ++t) {
          double dot = 0;
          for (size_t i = 0; i < D; ++i) dot += q[h * D + i] * keys[static_cast<size_t>(t) * KV + kvh * D + i];
          sc[static_cast<size_t>(t)] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, sc[static_cast<size_t>(t)]);
        }
        double sum = 0;
        for (double& s : sc) sum += (s = std::exp(s - mx));
        for (size_t i = 0; i < D; ++i) {
          double acc = 0;
          for (int32_t t = 0; t < n; ++t) acc += sc[static_cast<size_t>(t)] * cache[static_cast<size_t>(t)].v[kvh * D + i];
          attn[h * D + i] = static_cast<float>(acc / sum);
        }
      }
      const std::vector<double> o = w.matvec(L.wo, attn, E);
      for (size_t i = 0; i < E; ++i) x[i] = static_cast<float>(x[i] + o[i]);
      const std::vector<float> xn2 = w.rmsnorm(x, L.ffn_norm);
      const std::vector<double> g = w.matvec(L.w_gate, xn2, F), u = w.matvec(L.w_up, xn2, F);
      std::vector<float> hh(F);
      for (size_t i = 0; i < F; ++i) hh[i] = static_cast<float>(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
      const std::vector<double> dn = w.matvec(L.w_down, hh, E);
      for (size_t i = 0; i < E; ++i) x[i] = static_cast<float>(x[i] + dn[i]);
      // The paper's eviction: sinks stay, the oldest of the rest goes.
      if (n > budget) cache.erase(cache.begin() + n_sink);
    }
    const std::vector<float> xn = w.rmsnorm(x, w.output_norm);
    const std::vector<double> l = w.matvec(w.output, xn, static_cast<size_t>(m.n_vocab));
    return std::vector<float>(l.begin(), l.end());
  }
};

double rel_l2(const float* a, const std::vector<float>& ref) {
  double e2 = 0, r2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double e = static_cast<double>(a[i]) - ref[i];
    e2 += e * e;
    r2 += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(e2 / r2);
}

TEST(StreamingDecode, TinyLlamaMatchesThePapersRule) {
  const int32_t budget = 16, n_sink = 4, n_prompt = 6, n_steps = 64;
  const auto model = Model::synthetic("tiny:7");
  const ModelConfig& c = model->config();
  ModelShape shape;
  uint64_t seed = 0;
  std::string error;
  ASSERT_TRUE(synthetic_shape("tiny:7", &shape, &seed, &error)) << error;
  test::SyntheticLlamaReference weights(shape, seed, test::RefRounding::None);
  StreamingReference paper{weights, budget, n_sink, kv::KvPositions::InCache, {}};
  StreamingReference control{weights, budget, n_sink, kv::KvPositions::Original, {}};

  auto policy = kv::make_kv_policy("streaming:budget=16,sink=4+full:type=f32", c.n_layer, c.n_head_kv);
  ASSERT_EQ(policy->positions(), kv::KvPositions::InCache);
  ThreadPool tp(2);
  Forward fwd(*model, tp, 8);
  kv::KvGeometry geo{c.n_layer, c.n_head_kv, c.head_dim, 16, policy->page_format(), policy->sealed_format()};
  kv::KvPagePool pages(geo.page_tokens, geo.head_dim, size_t{1} << 26);
  kv::KvSequence seq(geo, pages);
  kv::KvScores no_scores;

  std::mt19937 rng(9);
  std::vector<int32_t> tokens(static_cast<size_t>(n_prompt + n_steps));
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.n_vocab));
  // The prompt, within the budget, at original positions (as Generator::prefill), logits of its last row.
  std::vector<int32_t> pos(static_cast<size_t>(n_prompt));
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<float> logits(static_cast<size_t>(c.n_vocab));
  fwd.run(seq, tokens.data(), pos.data(), n_prompt, {n_prompt - 1}, logits.data());
  policy->after_prefill(seq, no_scores);
  std::vector<float> ref_logits, control_logits;
  for (int32_t i = 0; i < n_prompt; ++i) {
    ref_logits = paper.forward(tokens[static_cast<size_t>(i)], i);
    control_logits = control.forward(tokens[static_cast<size_t>(i)], i);
  }
  EXPECT_LE(rel_l2(logits.data(), ref_logits), 1e-5);
  // Teacher-forced steps, as Generator::decode_step: forward at in-cache positions, then the policy's eviction.
  double worst = 0, control_gap = 0;
  for (int32_t i = n_prompt; i < n_prompt + n_steps; ++i) {
    const int32_t id = tokens[static_cast<size_t>(i)];
    fwd.run(seq, &id, &i, 1, {0}, logits.data(), &no_scores, policy->positions());
    policy->after_decode_step(seq, no_scores);
    ref_logits = paper.forward(id, i);
    control_logits = control.forward(id, i);
    worst = std::max(worst, rel_l2(logits.data(), ref_logits));
    control_gap = std::max(control_gap, rel_l2(control_logits.data(), ref_logits));
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t g = 0; g < c.n_head_kv; ++g) ASSERT_LE(seq.head(l, g).n_tokens(), budget);
  }
  std::printf("worst rel L2 against the paper's rule over %d steps: %.2e; original positions against it: %.2e\n",
              n_steps, worst, control_gap);
  // Tolerance as synthetic_model_test's for the same model and an f32 cache (rel L2 1e-5): what remains is f32
  // rounding, plus the one f32 rotation of each moved key.
  EXPECT_LE(worst, 1e-5);
  EXPECT_GT(control_gap, 1e-3);  // the rule matters, and the check sees it
}

TEST(StreamingPolicy, OnlyStreamingHeadsEverywhereGiveInCachePositions) {
  const auto positions = [](const char* spec) { return kv::make_kv_policy(spec, 4, 2)->positions(); };
  EXPECT_EQ(positions("streaming"), kv::KvPositions::InCache);
  EXPECT_EQ(positions("streaming:budget=64,sink=0"), kv::KvPositions::InCache);
  EXPECT_EQ(positions("streaming:budget=64+kivi:bits=4"), kv::KvPositions::InCache);
  EXPECT_EQ(positions("pyramid:budget=64+streaming"), kv::KvPositions::InCache);
  for (const char* spec : {"full", "lossless", "h2o:budget=64", "snapkv:budget=64", "tova:budget=64", "compact"})
    EXPECT_EQ(positions(spec), kv::KvPositions::Original) << spec;
}

}  // namespace
}  // namespace longctx
