// ShadowKV ("ShadowKV: KV Cache in Shadows for High-Throughput Long-Context LLM Inference"): the factorization is the
// best rank-r approximation (its error is the spectrum's tail); what a decode step reads equals a plain loop over
// the method (landmarks, exact chunks, top chunks by attention, keys rebuilt and rotated, values from the cold
// tier) and attention over it equals attention over those rows; the store gives back what the filter holds; the
// spec composes and refuses what it cannot run with.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "expect_error.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/kv_page_codec.h"
#include "core/fp16.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/shadowkv.h"

namespace longctx {
namespace {

std::vector<double> orthonormal_columns(std::mt19937& rng, int32_t rows, int32_t cols) {
  // (rows, cols) row-major, columns orthonormal: Gram-Schmidt on normal draws.
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> m(static_cast<size_t>(rows) * cols);
  for (double& x : m) x = nd(rng);
  for (int32_t c = 0; c < cols; ++c) {
    for (int pass = 0; pass < 2; ++pass)
      for (int32_t p = 0; p < c; ++p) {
        double dot = 0;
        for (int32_t r = 0; r < rows; ++r) dot += m[static_cast<size_t>(r) * cols + p] * m[static_cast<size_t>(r) * cols + c];
        for (int32_t r = 0; r < rows; ++r) m[static_cast<size_t>(r) * cols + c] -= dot * m[static_cast<size_t>(r) * cols + p];
      }
    double norm = 0;
    for (int32_t r = 0; r < rows; ++r) norm += m[static_cast<size_t>(r) * cols + c] * m[static_cast<size_t>(r) * cols + c];
    for (int32_t r = 0; r < rows; ++r) m[static_cast<size_t>(r) * cols + c] /= std::sqrt(norm);
  }
  return m;
}

// x = U diag(s) V^T with known singular values: the rank-r factors leave an error whose squared norm is the sum of
// the squares of the singular values past r (Eckart-Young), within 1% (the subspace iteration's convergence) plus
// f32 rounding (1e-9 of the total); b's rows are orthonormal to 1e-5; a matrix of rank r is rebuilt to 1e-5.
TEST(ShadowKv, FactorizationLeavesTheSpectrumsTail) {
  std::mt19937 rng(7);
  const int32_t n = 700, D = 48;
  const std::vector<double> U = orthonormal_columns(rng, n, D), V = orthonormal_columns(rng, D, D);
  for (int kind = 0; kind < 3; ++kind) {
    std::vector<double> s(static_cast<size_t>(D));
    for (int32_t i = 0; i < D; ++i)
      s[static_cast<size_t>(i)] = kind == 0   ? 30.0 * std::pow(0.85, i)                  // smooth decay
                                  : kind == 1 ? (i < 12 ? 10.0 - 0.01 * i : 0.0)          // exactly rank 12
                                              : (i < 12 ? 20.0 : 19.0 - 0.1 * (i - 12));  // a small gap at the cut
    std::vector<float> x(static_cast<size_t>(n) * D);
    for (int32_t t = 0; t < n; ++t)
      for (int32_t j = 0; j < D; ++j) {
        double v = 0;
        for (int32_t i = 0; i < D; ++i)
          v += U[static_cast<size_t>(t) * D + i] * s[static_cast<size_t>(i)] * V[static_cast<size_t>(j) * D + i];
        x[static_cast<size_t>(t) * D + j] = static_cast<float>(v);
      }
    for (int32_t r : {4, 12, 30}) {
      SCOPED_TRACE("spectrum " + std::to_string(kind) + ", rank " + std::to_string(r));
      std::vector<float> a, b;
      kv::low_rank_factorize(x.data(), n, D, r, a, b);
      ASSERT_EQ(a.size(), static_cast<size_t>(n) * r);
      ASSERT_EQ(b.size(), static_cast<size_t>(r) * D);
      for (int32_t i = 0; i < r; ++i)
        for (int32_t k = 0; k < r; ++k) {
          double dot = 0;
          for (int32_t j = 0; j < D; ++j) dot += static_cast<double>(b[static_cast<size_t>(i) * D + j]) * b[static_cast<size_t>(k) * D + j];
          ASSERT_NEAR(dot, i == k ? 1.0 : 0.0, 1e-5);
        }
      double err = 0, total = 0, tail = 0;
      for (int32_t i = 0; i < D; ++i) {
        total += s[static_cast<size_t>(i)] * s[static_cast<size_t>(i)];
        if (i >= r) tail += s[static_cast<size_t>(i)] * s[static_cast<size_t>(i)];
      }
      for (int32_t t = 0; t < n; ++t)
        for (int32_t j = 0; j < D; ++j) {
          double v = 0;
          for (int32_t k = 0; k < r; ++k) v += static_cast<double>(a[static_cast<size_t>(t) * r + k]) * b[static_cast<size_t>(k) * D + j];
          const double e = v - x[static_cast<size_t>(t) * D + j];
          err += e * e;
        }
      EXPECT_LE(err, 1.01 * tail + 1e-9 * total);
      EXPECT_GE(err, 0.999 * tail - 1e-9 * total);  // no better than the optimum: the check can fail both ways
    }
  }
}

struct Fixture {
  static constexpr int32_t kD = 32, kT = 16, kHeads = 2, kGroup = 3, kN = 300;
  static constexpr float kBase = 10000.0f;
  kv::KvGeometry geo{1, kHeads, kD, kT, KvFormat::F16, KvFormat::F16};
  kv::KvPagePool pool{kT, kD, size_t{1} << 26};
  kv::KvSequence seq{geo, pool};
  kv::KvScores scores;
  // As the store held them before the filter took them: (n, head) rows, f16-rounded, keys rotated.
  std::vector<float> keys, values;

  explicit Fixture(std::mt19937& rng) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    keys.resize(static_cast<size_t>(kN) * kHeads * kD);
    values.resize(keys.size());
    // Keys before RoPE of rank 6 over the layer's 64 channels plus a little noise, a few much larger (outliers).
    std::vector<float> basis(6 * kHeads * kD);
    for (float& x : basis) x = nd(rng);
    std::vector<float> cos_t(kD / 2), sin_t(kD / 2);
    std::vector<int32_t> pos(kN);
    for (int32_t t = 0; t < kN; ++t) {
      float* k = keys.data() + static_cast<size_t>(t) * kHeads * kD;
      for (int32_t m = 0; m < 6; ++m) {
        const float w = nd(rng) * (t % 37 == 5 ? 8.0f : 1.0f);
        for (int32_t j = 0; j < kHeads * kD; ++j) k[j] += w * basis[static_cast<size_t>(m) * kHeads * kD + j];
      }
      for (int32_t j = 0; j < kHeads * kD; ++j) k[j] += 0.01f * nd(rng);
      rope_angles(t, kD, kBase, cos_t.data(), sin_t.data());
      rope_rotate(k, kHeads, kD, kD, cos_t.data(), sin_t.data(), RopeOrder::Halves);
      pos[static_cast<size_t>(t)] = t;
    }
    for (float& v : values) v = nd(rng);
    seq.append(0, keys.data(), values.data(), pos.data(), kN);
    for (float& k : keys) k = fp16_to_f32(f32_to_fp16(k));
    for (float& v : values) v = fp16_to_f32(f32_to_fp16(v));
    scores.queries.first_pos = kN - 1;
    scores.queries.reset(1, kHeads * kGroup, kD);
    kv::KvQueryStats::Layer& l = scores.queries.layers[0];
    l.rope_base = kBase;
    l.n_rot = kD;
    l.rope_order = RopeOrder::Halves;
    l.scale = 1.0f / std::sqrt(static_cast<float>(kD));
  }
  const float* key(int32_t t, int32_t g) const { return keys.data() + (static_cast<size_t>(t) * kHeads + g) * kD; }
  // The norm of a position's keys over the layer's channels (every head): the scale of the error of a rebuilt key,
  // whose factor a is stored at f16 (2^-11 of each coefficient).
  double row_norm(int32_t t) const {
    double s = 0;
    for (int32_t i = 0; i < kHeads * kD; ++i) s += keys[static_cast<size_t>(t) * kHeads * kD + i] * static_cast<double>(keys[static_cast<size_t>(t) * kHeads * kD + i]);
    return std::sqrt(s);
  }
  const float* value(int32_t t, int32_t g) const { return values.data() + (static_cast<size_t>(t) * kHeads + g) * kD; }
};

// The chunks a kv-head reads for one query, as a plain loop over the method in double: landmarks are chunk means of
// the stored keys (scored as the filter keeps them, at f16); exact chunks are the first and the `outliers` with the lowest cosine between a key and its mean;
// the others are ranked by the largest softmax probability the group's query heads give their landmark.
std::vector<int32_t> reference_chunks(const Fixture& f, const kv::ShadowKvOptions& o, int32_t n_shadow, int32_t g,
                                      const float* q, float scale) {
  const int32_t C = o.chunk, n_chunks = n_shadow / C, d = Fixture::kD;
  std::vector<std::vector<double>> lm(static_cast<size_t>(n_chunks), std::vector<double>(static_cast<size_t>(d)));
  std::vector<std::pair<double, int32_t>> fit;
  for (int32_t c = 0; c < n_chunks; ++c) {
    for (int32_t t = c * C; t < (c + 1) * C; ++t)
      for (int32_t i = 0; i < d; ++i) lm[static_cast<size_t>(c)][static_cast<size_t>(i)] += f.key(t, g)[i] / static_cast<double>(C);
    double worst = 1;
    for (int32_t t = c * C; t < (c + 1) * C; ++t) {
      double dot = 0, a = 0, b = 0;
      for (int32_t i = 0; i < d; ++i) {
        dot += f.key(t, g)[i] * lm[static_cast<size_t>(c)][static_cast<size_t>(i)];
        a += f.key(t, g)[i] * static_cast<double>(f.key(t, g)[i]);
        b += lm[static_cast<size_t>(c)][static_cast<size_t>(i)] * lm[static_cast<size_t>(c)][static_cast<size_t>(i)];
      }
      worst = std::min(worst, dot / std::sqrt(a * b));
    }
    if (c > 0) fit.emplace_back(worst, c);
  }
  std::sort(fit.begin(), fit.end());
  std::set<int32_t> out{0};
  for (int32_t e = 0; e < o.outliers; ++e) out.insert(fit[static_cast<size_t>(e)].second);
  std::vector<std::pair<double, int32_t>> ranked;  // (-score, chunk)
  std::vector<double> best(static_cast<size_t>(n_chunks), 0.0);
  for (int32_t j = 0; j < Fixture::kGroup; ++j) {
    const float* qh = q + static_cast<size_t>(g * Fixture::kGroup + j) * d;
    std::vector<double> s(static_cast<size_t>(n_chunks));
    double mx = -1e300, sum = 0;
    for (int32_t c = 0; c < n_chunks; ++c) {
      double dot = 0;
      for (int32_t i = 0; i < d; ++i)  // landmarks are kept at f16
        dot += qh[i] * static_cast<double>(fp16_to_f32(f32_to_fp16(static_cast<float>(lm[static_cast<size_t>(c)][static_cast<size_t>(i)]))));
      s[static_cast<size_t>(c)] = dot * scale;
      mx = std::max(mx, s[static_cast<size_t>(c)]);
    }
    for (double& x : s) sum += (x = std::exp(x - mx));
    for (int32_t c = 0; c < n_chunks; ++c) best[static_cast<size_t>(c)] = std::max(best[static_cast<size_t>(c)], s[static_cast<size_t>(c)] / sum);
  }
  for (int32_t c = 0; c < n_chunks; ++c)
    if (!out.count(c)) ranked.emplace_back(-best[static_cast<size_t>(c)], c);
  std::sort(ranked.begin(), ranked.end());
  for (int32_t i = 0; i < o.budget / C && i < static_cast<int32_t>(ranked.size()); ++i) out.insert(ranked[static_cast<size_t>(i)].second);
  return {out.begin(), out.end()};
}

// With a rank covering the layer's 64 channels the rebuilt keys are the stored ones up to the f16 rounding of the
// factor a (1e-3 of the position's key norm), so the view narrow() gives must hold exactly the reference's chunks,
// in order, then the store's tokens, with those keys and the very values; and the attention kernel must read that
// mixed view as the plain reference loop does (1e-4). Rebuilt on the calling thread or over a pool's threads alike.
TEST(ShadowKv, ReadsWhatAPlainLoopChooses) {
  std::mt19937 rng(3);
  Fixture f(rng);
  kv::ShadowKvOptions o;
  o.budget = 48;  // 6 of the 33 chunks
  o.chunk = 8;
  o.rank = 64;
  o.outliers = 2;
  o.recent = 30;
  kv::ShadowKvReadFilter filter(o);
  filter.after_prefill(f.seq, f.scores);
  const kv::ShadowKvReadFilter::Layer* L = filter.layer(0);
  ASSERT_NE(L, nullptr);
  const int32_t n_shadow = (Fixture::kN - o.recent) / o.chunk * o.chunk;
  ASSERT_EQ(L->n_shadow, n_shadow);
  for (int32_t g = 0; g < Fixture::kHeads; ++g) {
    ASSERT_EQ(f.seq.head(0, g).n_tokens(), Fixture::kN - n_shadow);
    EXPECT_EQ(f.seq.head(0, g).positions.front(), n_shadow);
  }
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_head = Fixture::kHeads * Fixture::kGroup, d = Fixture::kD;
  const float scale = f.scores.queries.layers[0].scale;
  ThreadPool tp(2);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> q(static_cast<size_t>(n_head) * d);
    for (float& x : q) x = nd(rng) * (trial % 2 ? 3.0f : 1.0f);
    const int32_t q_pos = Fixture::kN;
    KvLayerView view = f.seq.layer_view(0);
    view.n_head = n_head;
    filter.set_host_pool(trial % 3 == 0 ? nullptr : &tp);  // the rebuild on the calling thread, or a page an item
    filter.narrow(0, q.data(), &q_pos, 1, view);
    AttentionParams ap;
    ap.n_head = n_head;
    ap.n_head_kv = Fixture::kHeads;
    ap.head_dim = d;
    ap.scale = scale;
    std::vector<float> got(static_cast<size_t>(n_head) * d);
    cpu::attention_reference(ap, q.data(), &q_pos, 1, view, got.data());
    for (int32_t g = 0; g < Fixture::kHeads; ++g) {
      const std::vector<int32_t> chunks = reference_chunks(f, o, n_shadow, g, q.data(), scale);
      std::vector<int32_t> rows;
      for (int32_t c : chunks)
        for (int32_t t = c * o.chunk; t < (c + 1) * o.chunk; ++t) rows.push_back(t);
      for (int32_t t = n_shadow; t < Fixture::kN; ++t) rows.push_back(t);
      const KvHeadView& hv = view.heads[static_cast<size_t>(g)];
      ASSERT_EQ(hv.n_tokens, static_cast<int32_t>(rows.size())) << "trial " << trial << " head " << g;
      ASSERT_TRUE(std::equal(rows.begin(), rows.end(), hv.positions)) << "trial " << trial << " head " << g;
      ASSERT_EQ(chunks.size(), static_cast<size_t>(1 + o.outliers + o.budget / o.chunk));
      // The rows themselves: keys rebuilt (or exact) equal the stored ones, values equal.
      std::vector<float> k(static_cast<size_t>(d)), v(static_cast<size_t>(d));
      for (int32_t r = 0; r < hv.n_tokens; ++r) {
        const int32_t pi = hv.page_of(r);
        cpu::kv_page_read_keys(hv.formats[static_cast<size_t>(pi)], view.page_tokens, d, hv.pages[static_cast<size_t>(pi)],
                          r - hv.slot0[static_cast<size_t>(pi)], 1, k.data());
        cpu::kv_page_read_values(hv.formats[static_cast<size_t>(pi)], view.page_tokens, d, hv.pages[static_cast<size_t>(pi)],
                            r - hv.slot0[static_cast<size_t>(pi)], 1, v.data());
        for (int32_t i = 0; i < d; ++i) {
          ASSERT_NEAR(k[static_cast<size_t>(i)], f.key(hv.positions[r], g)[i], 1e-3 * f.row_norm(hv.positions[r])) << "trial " << trial << " head " << g << " row " << r << " position " << hv.positions[r] << " channel " << i;
          ASSERT_EQ(v[static_cast<size_t>(i)], f.value(hv.positions[r], g)[i]) << "row " << r;
        }
      }
    }
    // The kernel reads the mixed view (f32 rebuilt pages, the last one partial, then the store's f16 pages) as the
    // plain reference loop does.
    std::vector<float> fast(got.size());
    cpu::attention(tp, ap, q.data(), &q_pos, 1, view, fast.data());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(fast[i], got[i], 1e-4) << "trial " << trial << " element " << i;
  }
  EXPECT_LT(filter.rows_read(), filter.rows_held());
}

// The store gives back the shadowed tokens' pages; the filter's bytes are what it holds: the factors (f16 a, f32
// b), f16 landmarks, exact chunks at f16 and the RoPE table in fast memory, every shadowed value at f16 in the
// cold tier. reset() forgets it all.
TEST(ShadowKv, BytesMoveFromTheStoreToTheFilter) {
  std::mt19937 rng(5);
  Fixture f(rng);
  kv::ShadowKvOptions o;
  o.budget = 32;
  o.rank = 16;
  o.outliers = 3;
  const size_t before = f.seq.bytes().payload;
  kv::ShadowKvReadFilter filter(o);
  filter.after_prefill(f.seq, f.scores);
  const int32_t N = (Fixture::kN - o.recent) / o.chunk * o.chunk, n_chunks = N / o.chunk, d = Fixture::kD;
  EXPECT_LT(f.seq.bytes().payload, before / 5);
  const size_t exact = static_cast<size_t>(1 + o.outliers) * o.chunk * d * 2 * 2;  // keys and values, f16
  const size_t per_head = static_cast<size_t>(n_chunks) * d * 2 + static_cast<size_t>(n_chunks) * 4 + exact;
  const size_t want_fast = static_cast<size_t>(N) * o.rank * 2 + static_cast<size_t>(o.rank) * Fixture::kHeads * d * 4 +
                           Fixture::kHeads * per_head + static_cast<size_t>(N) * d / 2 * 2 * 4;
  EXPECT_EQ(filter.bytes_fast(), want_fast);
  EXPECT_EQ(filter.bytes_cold(), static_cast<size_t>(N) * d * 2 * Fixture::kHeads);
  filter.reset();
  EXPECT_EQ(filter.bytes_fast(), 0u);
  EXPECT_EQ(filter.layer(0), nullptr);
}

// A layer that does not hold the whole prompt from position 0 (a sliding window dropped its oldest tokens) and a
// prompt too short to gain are left to the store untouched.
TEST(ShadowKv, LeavesLayersItCannotShadow) {
  std::mt19937 rng(9);
  {
    Fixture f(rng);
    f.seq.remove_slots(0, 0, {0});
    f.seq.remove_slots(0, 1, {0});
    kv::ShadowKvOptions o;
    o.budget = 32;
    kv::ShadowKvReadFilter filter(o);
    filter.after_prefill(f.seq, f.scores);
    EXPECT_EQ(filter.layer(0), nullptr);
    EXPECT_EQ(f.seq.head(0, 0).n_tokens(), Fixture::kN - 1);
  }
  {
    Fixture f(rng);
    kv::ShadowKvOptions o;
    o.budget = 256;  // 32 chunks of 33: nothing left unread
    kv::ShadowKvReadFilter filter(o);
    filter.after_prefill(f.seq, f.scores);
    EXPECT_EQ(filter.layer(0), nullptr);
    EXPECT_EQ(f.seq.head(0, 0).n_tokens(), Fixture::kN);
  }
}

// A second prompt on a sequence that has its shadow (a prefill after the first) leaves its tokens in the store and
// the shadow as it was; reset() (a new sequence) lets the next prompt be shadowed again.
TEST(ShadowKv, ASecondPromptStaysInTheStore) {
  std::mt19937 rng(13);
  Fixture f(rng);
  kv::ShadowKvOptions o;
  o.budget = 32;
  kv::ShadowKvReadFilter filter(o);
  filter.after_prefill(f.seq, f.scores);
  ASSERT_NE(filter.layer(0), nullptr);
  const int32_t n_shadow = filter.layer(0)->n_shadow;
  const size_t fast = filter.bytes_fast();
  const int32_t held = f.seq.head(0, 0).n_tokens();
  std::vector<float> k(static_cast<size_t>(100) * Fixture::kHeads * Fixture::kD, 0.5f), v(k.size(), 0.25f);
  std::vector<int32_t> pos(100);
  std::iota(pos.begin(), pos.end(), Fixture::kN);
  f.seq.append(0, k.data(), v.data(), pos.data(), 100);
  filter.after_prefill(f.seq, f.scores);
  EXPECT_EQ(filter.layer(0)->n_shadow, n_shadow);
  EXPECT_EQ(filter.bytes_fast(), fast);
  EXPECT_EQ(f.seq.head(0, 0).n_tokens(), held + 100);
  filter.reset();
  EXPECT_EQ(filter.layer(0), nullptr);
}

TEST(ShadowKv, SpecComposesAndRejectsBadInput) {
  auto p = kv::make_kv_policy("shadowkv:budget=512,rank=48", 30, 3);
  ASSERT_NE(p->read_filter(), nullptr);
  EXPECT_TRUE(p->holds_tokens_beside_store());
  EXPECT_FALSE(p->keeps_every_token());
  EXPECT_NE(p->describe().find("shadowkv(budget=512, chunk=8, rank=48"), std::string::npos) << p->describe();
  auto* f = dynamic_cast<kv::ShadowKvReadFilter*>(p->read_filter());
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->rank_for(3, 64), 48);
  auto def = kv::make_kv_policy("shadowkv", 30, 3);
  const auto* df = dynamic_cast<kv::ShadowKvReadFilter*>(def->read_filter());
  EXPECT_EQ(df->rank_for(3, 64), 64);     // SmolLM2: at least 64
  EXPECT_EQ(df->rank_for(1, 256), 128);   // Gemma 3: half a head
  EXPECT_EQ(df->rank_for(1, 48), 48);     // at most the width
  EXPECT_EQ(df->rank_for(8, 128), 160);   // Llama-3-8B: the paper's
  EXPECT_EQ(def->prefill_query_stats_from(1000), 999);
  EXPECT_FALSE(kv::make_kv_policy("quest", 30, 3)->holds_tokens_beside_store());
  auto throws_with = [](const std::string& spec, const std::string& what) {
    expect_error_containing([&] { kv::make_kv_policy(spec, 30, 3); }, what, spec);
  };
  throws_with("snapkv:budget=1024+shadowkv", "token policy");
  throws_with("shadowkv+kivi:bits=4", "kivi");
  throws_with("shadowkv+quest", "two read policies");
  throws_with("shadowkv:budget=4", "chunk");
  throws_with("shadowkv:chunk=0", "chunk");
  throws_with("shadowkv:ranks=3", "ranks");
}

}  // namespace
}  // namespace longctx
