// The tiled online-softmax attention against the one-pass double-precision reference, over the paged store.
#include "backend/cpu/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <hwy/targets.h>
#include <random>
#include <string>

#include "core/error.h"
#include "core/kv_format.h"
#include "kv/kv_store.h"

namespace longctx {
namespace {

struct Case {
  int32_t n_head, n_head_kv, head_dim, n_cached, n_tok, window, threads;
  KvFormat format;  // sealed format: full pages are packed into it, the open page stays f16
  bool gaps;  // positions with holes, as after eviction
  int32_t page_tokens = 16;
  bool evict = false;  // a third of the slots removed after sealing: pages of every format left part full
};

// Removes about a third of every head's slots, then page_tokens - 1 more spread over the head: packed pages compact
// in place and keep fewer rows than they can; open pages are packed into the fewest that hold them, so their last
// page is the part-full one.
void evict_a_third(kv::KvSequence& seq, int32_t n_head_kv, std::mt19937& rng) {
  const int32_t T = seq.geometry().page_tokens;
  for (int32_t g = 0; g < n_head_kv; ++g) {
    std::vector<int32_t> drop;
    for (int32_t s = 0; s < seq.head(0, g).n_tokens(); ++s)
      if (rng() % 3 == 0) drop.push_back(s);
    seq.remove_slots(0, g, drop);
    drop.clear();
    const int32_t n = seq.head(0, g).n_tokens();
    for (int32_t i = 0; i < T - 1 && i * (n / T) < n; ++i) drop.push_back(i * (n / T));
    drop.erase(std::unique(drop.begin(), drop.end()), drop.end());
    seq.remove_slots(0, g, drop);
    int32_t n_partial = 0;
    for (size_t p = 0; p + 1 < seq.head(0, g).pages.size(); ++p) n_partial += seq.head(0, g).pages[p].n_rows < T;
    if (seq.geometry().sealed_format != seq.geometry().format)
      EXPECT_GT(n_partial, 0) << "the case must leave part-full packed pages";
  }
}

// Runs body once for each SIMD target this CPU has (the fallback always), so the AVX2 and scalar code paths are
// checked on an AVX-512 machine too.
template <typename F>
void for_each_target(F body) {
  const int64_t supported = hwy::SupportedTargets();  // before the mock below changes what it returns
  for (int64_t target : {int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SCALAR}}) {
    if (target != HWY_SCALAR && (supported & target) == 0) continue;
    hwy::SetSupportedTargetsForTest((supported & ~(target - 1)) | HWY_SCALAR);
    body(hwy::TargetName(target));
  }
  hwy::SetSupportedTargetsForTest(0);
}

void run_case(const Case& c) {
  std::mt19937 rng(1234 + c.n_cached * 7 + c.n_tok);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const KvFormat open = kv_format_is_packed(c.format) ? KvFormat::F16 : c.format;
  kv::KvGeometry geo{1, c.n_head_kv, c.head_dim, c.page_tokens, open, c.format};
  kv::KvPagePool pool(geo.page_tokens, geo.head_dim, size_t{1} << 30);
  kv::KvSequence seq(geo, pool);
  const int32_t total = c.n_cached + c.n_tok;
  std::vector<int32_t> pos(static_cast<size_t>(total));
  int32_t p = 0;
  for (auto& x : pos) {
    x = p;
    p += c.gaps ? 1 + static_cast<int32_t>(rng() % 3) : 1;
  }
  std::vector<float> k(static_cast<size_t>(total) * c.n_head_kv * c.head_dim), v(k.size());
  for (auto& x : k) x = nd(rng) * 2.0f;  // scores spread enough that the softmax is far from uniform
  for (auto& x : v) x = nd(rng);
  seq.append(0, k.data(), v.data(), pos.data(), total);
  seq.seal_full_pages();  // packed formats: every full page packed, the partial last one stays f16
  if (c.evict) evict_a_third(seq, c.n_head_kv, rng);
  std::vector<float> q(static_cast<size_t>(c.n_tok) * c.n_head * c.head_dim);
  for (auto& x : q) x = nd(rng);
  cpu::AttentionParams ap{c.n_head, c.n_head_kv, c.head_dim, 1.0f / std::sqrt(static_cast<float>(c.head_dim)), c.window};
  const int32_t* q_pos = pos.data() + c.n_cached;
  std::vector<float> out(q.size(), NAN), ref(q.size(), NAN);
  ThreadPool tp(c.threads);
  const auto view = seq.layer_view(0);
  cpu::attention(tp, ap, q.data(), q_pos, c.n_tok, view, out.data());
  cpu::attention_reference(ap, q.data(), q_pos, c.n_tok, view, ref.data());
  // Tolerance: f32 accumulation over at most a few hundred keys of unit-scale values, against double, and
  // Highway's Exp (within a few ulps): the error is a few ulps of the largest term, far below 1e-5 absolute for
  // outputs of order 1. The reference reads packed pages through the same decoder, so this is also the check
  // that attention over a packed format equals attention over its dequantized values.
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(out[i], ref[i], 1e-5f) << "element " << i << ", format " << kv_format_name(c.format) << ", d "
                                       << c.head_dim << ", pages of " << c.page_tokens;
}

TEST(Attention, MatchesReferenceAcrossShapes) {
  for_each_target([](const char* target) {
  SCOPED_TRACE(target);
  for (KvFormat f : {KvFormat::F32, KvFormat::F16})
    for (int32_t threads : {1, 3})
      for (bool gaps : {false, true}) {
        run_case({9, 3, 64, 0, 37, 0, threads, f, gaps});     // prefill from empty, GQA 3
        run_case({9, 3, 64, 100, 1, 0, threads, f, gaps});    // decode: split-K over pages
        run_case({4, 1, 256, 50, 20, 0, threads, f, gaps});   // gemma shape
        run_case({4, 1, 256, 300, 1, 0, threads, f, gaps});   // gemma decode
        run_case({4, 1, 32, 200, 33, 24, threads, f, gaps});  // sliding window, pages skipped
        run_case({4, 1, 32, 200, 1, 24, threads, f, gaps});   // sliding window decode
        run_case({8, 8, 16, 5, 3, 0, threads, f, gaps});      // no GQA
        run_case({9, 3, 64, 300, 40, 0, threads, f, gaps, 64});   // the store's default pages
        run_case({9, 3, 64, 1500, 1, 0, threads, f, gaps, 64});   // decode at depth, many splits
        run_case({4, 1, 256, 700, 1, 512, threads, f, gaps, 64}); // gemma local layer at depth
      }
  });
}

TEST(Attention, PackedPagesMatchTheirDequantizedValues) {
  for_each_target([](const char* target) {
    SCOPED_TRACE(target);
    for (KvFormat f : {KvFormat::Kivi8, KvFormat::Kivi4, KvFormat::Kivi2})
      for (int32_t threads : {1, 2}) {
        run_case({9, 3, 64, 200, 17, 0, threads, f, false, 64});  // prefill over sealed pages + an open one
        run_case({9, 3, 64, 500, 1, 0, threads, f, true, 64});    // decode
        run_case({4, 1, 256, 100, 1, 48, threads, f, false, 32}); // gemma shape, sliding window
      }
  });
}

TEST(Attention, PagesLeftPartFullByEviction) {
  for_each_target([](const char* target) {
    SCOPED_TRACE(target);
    for (KvFormat f : {KvFormat::F16, KvFormat::Kivi4, KvFormat::Kivi2})
      for (int32_t threads : {1, 2}) {
        run_case({9, 3, 64, 300, 17, 0, threads, f, false, 64, true});  // prefill chunk over evicted pages
        run_case({9, 3, 64, 900, 1, 0, threads, f, true, 64, true});    // decode, split over partial pages
        run_case({4, 1, 256, 200, 1, 48, threads, f, false, 32, true}); // sliding window
      }
  });
}

// The attention paid to each slot (for the token policies) against the one-pass double reference: summed
// probabilities of the selected rows and the query heads of each kv-head. Tolerance: probabilities in [0, 1]
// summed over at most 3 heads x 12 rows, f32 logits and Highway's Exp against double: 2e-5 absolute.
TEST(Attention, ScoresMatchReference) {
  for_each_target([](const char* target) {
    SCOPED_TRACE(target);
    struct S {
      int32_t n_head, n_head_kv, head_dim, n_cached, n_tok, first_row, window, page_tokens;
      KvFormat f;
      bool evict = false;
    };
    for (const S c : {S{9, 3, 64, 300, 12, 4, 0, 64, KvFormat::F16},   // SnapKV's observation window at prefill end
                      S{9, 3, 64, 700, 1, 0, 0, 64, KvFormat::F16},    // H2O / TOVA: one decode query
                      S{4, 1, 256, 200, 5, 0, 48, 32, KvFormat::F32},  // sliding window
                      S{9, 3, 64, 256, 3, 1, 0, 64, KvFormat::Kivi2},  // packed pages
                      S{4, 2, 8, 40, 6, 2, 0, 16, KvFormat::F32},      // one-lane path
                      S{9, 3, 64, 700, 1, 0, 0, 64, KvFormat::Kivi2, true},    // partial packed pages
                      S{9, 3, 64, 300, 12, 4, 0, 64, KvFormat::F16, true}}) {  // partial open pages
      std::mt19937 rng(99 + c.n_cached);
      std::normal_distribution<float> nd;
      const KvFormat open = kv_format_is_packed(c.f) ? KvFormat::F16 : c.f;
      kv::KvGeometry geo{1, c.n_head_kv, c.head_dim, c.page_tokens, open, c.f};
      kv::KvPagePool pool(geo.page_tokens, geo.head_dim, size_t{1} << 28);
      kv::KvSequence seq(geo, pool);
      const int32_t total = c.n_cached + c.n_tok;
      std::vector<int32_t> pos(static_cast<size_t>(total));
      for (int32_t i = 0; i < total; ++i) pos[static_cast<size_t>(i)] = 2 * i;  // gaps
      std::vector<float> k(static_cast<size_t>(total) * c.n_head_kv * c.head_dim), v(k.size());
      for (auto& x : k) x = nd(rng) * 2.0f;
      for (auto& x : v) x = nd(rng);
      seq.append(0, k.data(), v.data(), pos.data(), total);
      seq.seal_full_pages();
      if (c.evict) evict_a_third(seq, c.n_head_kv, rng);
      std::vector<float> q(static_cast<size_t>(c.n_tok) * c.n_head * c.head_dim);
      for (auto& x : q) x = nd(rng);
      const cpu::AttentionParams ap{c.n_head, c.n_head_kv, c.head_dim, 1.0f / std::sqrt(float(c.head_dim)), c.window};
      const int32_t stride = total + 5;
      std::vector<float> got(static_cast<size_t>(c.n_head_kv) * stride, 0.25f), want = got;  // accumulated into
      ThreadPool tp(2);
      const auto view = seq.layer_view(0);
      const int32_t* q_pos = pos.data() + c.n_cached;
      cpu::attention_scores(tp, ap, q.data(), q_pos, c.n_tok, c.first_row, view, got.data(), stride);
      cpu::attention_scores_reference(ap, q.data(), q_pos, c.n_tok, c.first_row, view, want.data(), stride);
      double mass = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 2e-5f) << "slot " << i << ", d " << c.head_dim;
        mass += want[i] - 0.25;
      }
      // Each selected row of each query head contributes probability 1 in all (every row sees some key here).
      EXPECT_NEAR(mass, double(c.n_head) * (c.n_tok - c.first_row), 1e-3);

      // Attention and its scores in one pass (decode steps of TOVA and H2O): the attention's bits unchanged, the
      // scores as the separate pass within the same tolerance against the reference (the probabilities come from
      // the attention's page-by-page softmax, rescaled to the row's final max and sum).
      if (c.first_row == 0) {
        std::vector<float> out(q.size(), NAN), fused_out(q.size(), NAN), fused(got.size(), 0.25f);
        cpu::attention(tp, ap, q.data(), q_pos, c.n_tok, view, out.data());
        cpu::attention_with_scores(tp, ap, q.data(), q_pos, c.n_tok, view, fused_out.data(), fused.data(), stride);
        ASSERT_EQ(0, std::memcmp(out.data(), fused_out.data(), out.size() * sizeof(float))) << "attention changed";
        for (size_t i = 0; i < fused.size(); ++i)
          ASSERT_NEAR(fused[i], want[i], 2e-5f) << "fused slot " << i << ", d " << c.head_dim;
      }

      // The maximum (KVzip's reduction) against its reference, from a start of 0 and from a floor of 0.25 that
      // only larger probabilities replace; it lies between the sum's share per contribution and the sum itself.
      for (const float start : {0.0f, 0.25f}) {
        std::vector<float> got_max(got.size(), start), want_max(got.size(), start);
        cpu::attention_scores(tp, ap, q.data(), q_pos, c.n_tok, c.first_row, view, got_max.data(), stride,
                              cpu::ScoreReduce::Max);
        cpu::attention_scores_reference(ap, q.data(), q_pos, c.n_tok, c.first_row, view, want_max.data(), stride,
                                        cpu::ScoreReduce::Max);
        const double n_votes = double(c.n_head / c.n_head_kv) * (c.n_tok - c.first_row);
        double n_above_start = 0;
        for (size_t i = 0; i < got_max.size(); ++i) {
          ASSERT_NEAR(got_max[i], want_max[i], 2e-6f) << "slot " << i << ", d " << c.head_dim << ", max mode";
          ASSERT_GE(want_max[i], start);
          const double sum = want[i] - 0.25;
          if (start == 0.0f) {
            ASSERT_LE(want_max[i], sum + 1e-6) << "slot " << i;
            ASSERT_GE(want_max[i], sum / n_votes - 1e-6) << "slot " << i;
          }
          n_above_start += want_max[i] > start;
        }
        EXPECT_GT(n_above_start, 0) << "some probability must exceed the start";
      }
    }
  });
}

TEST(Attention, QueryWithNoVisibleKeyGetsZeros) {
  kv::KvGeometry geo{1, 1, 8, 16, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, geo.head_dim, size_t{1} << 20);
  kv::KvSequence seq(geo, pool);
  std::vector<float> k(8, 1.0f), v(8, 1.0f);
  int32_t kpos = 10;
  seq.append(0, k.data(), v.data(), &kpos, 1);
  std::vector<float> q(8, 1.0f), out(8, NAN);
  int32_t qpos = 5;  // before the only key
  ThreadPool tp(2);
  cpu::attention(tp, {1, 1, 8, 1.0f, 0}, q.data(), &qpos, 1, seq.layer_view(0), out.data());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

// A view restricted to some pages (cpu::keep_pages) attends exactly as a cache that holds only those pages' tokens:
// the same f32 values in a store of their own, so the outputs agree to the last bit but for summation order
// across pages (1e-6 absolute for outputs of order 1).
TEST(Attention, PageSubsetEqualsACacheOfThosePages) {
  const int32_t H = 6, G = 2, D = 32, T = 16, n = 150;
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  kv::KvGeometry geo{1, G, D, T, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(T, D, size_t{1} << 24);
  kv::KvSequence seq(geo, pool);
  std::vector<int32_t> pos(n);
  for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = 2 * i;
  std::vector<float> k(static_cast<size_t>(n) * G * D), v(k.size()), q(static_cast<size_t>(H) * D);
  for (auto* a : {&k, &v, &q})
    for (auto& x : *a) x = nd(rng);
  seq.append(0, k.data(), v.data(), pos.data(), n);
  const std::vector<int32_t> keep = {0, 3, 4, 9};  // the last (part-full) page among them
  ASSERT_EQ(seq.layer_view(0).heads[0].n_pages(), 10);
  cpu::KvLayerView view = seq.layer_view(0);
  std::vector<std::vector<int32_t>> scratch(G);
  for (int32_t g = 0; g < G; ++g) view.heads[static_cast<size_t>(g)] = cpu::keep_pages(view.heads[static_cast<size_t>(g)], keep, scratch[static_cast<size_t>(g)]);
  // The same tokens in a store of their own.
  kv::KvSequence only(geo, pool);
  for (int32_t page : keep)
    for (int32_t s = page * T; s < std::min(n, (page + 1) * T); ++s)
      only.append(0, k.data() + static_cast<size_t>(s) * G * D, v.data() + static_cast<size_t>(s) * G * D,
                  &pos[static_cast<size_t>(s)], 1);
  ASSERT_EQ(view.heads[0].n_tokens, only.head(0, 0).n_tokens());
  const int32_t q_pos = 2 * n;
  ThreadPool tp(2);
  const cpu::AttentionParams ap{H, G, D, 1.0f / std::sqrt(static_cast<float>(D)), 0};
  std::vector<float> out(q.size(), NAN), ref(q.size(), NAN);
  cpu::attention(tp, ap, q.data(), &q_pos, 1, view, out.data());
  cpu::attention(tp, ap, q.data(), &q_pos, 1, only.layer_view(0), ref.data());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref[i], 1e-6f) << i;
  std::vector<int32_t> bad;
  EXPECT_THROW(cpu::keep_pages(seq.layer_view(0).heads[0], {3, 3}, bad), Error);
  EXPECT_THROW(cpu::keep_pages(seq.layer_view(0).heads[0], {10}, bad), Error);
}

}  // namespace
}  // namespace longctx
