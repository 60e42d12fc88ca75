// matmul against matmul_reference on random weights of every format, every precision and every SIMD target. (The
// rates on the real models' shapes are a benchmark, tests/matmul_rates.cpp.)
//
// Tolerance: |y - y_ref| <= 1e-5 * sum_k |x_k * w_k| per output, where for the quantized precisions the
// reference is given the activations as that path rounds them (quantized per 32 values, then dequantized: the
// test does it on its own, from the rule in matmul_q8.h). Both sides then see identical values (the SIMD
// dequantizers are exact, see quant.cpp, and the int8 products and block sums are exact in i32), so they differ
// only by summation: matmul adds in f32 (the panel kernel sequentially per output, the rows kernels in lane-wise
// partial sums of products or of block sums, the int8 panels of prefill group by group after an exact i32 dot of
// the group), the reference in double. A sequential f32 sum of n terms errs by at
// most about n * 2^-24 * sum|terms|, and in practice, the roundings behaving like a random walk, by about
// sqrt(n) * 2^-24 * sum|terms|: 3e-6 at n_in = 2048, the largest here. 1e-5 leaves margin over that (the worst
// seen is printed, about 3e-7), while a wrong layout, scale, tail or row is off by a good fraction of sum|x*w|,
// and one activation rounded differently by about 1e-3 of it.
//
// The quantized paths against the exact product: rounding x to the nearest multiple of d moves it by at most
// d / 2 (two planes: d, where q2 is clamped), so |y - y_exact| <= sum_k |w_k| * d_k (/ 2) (d_k the scale of
// x_k's block), plus the f32 slack above; checked too.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/fp16.h"
#include "random_weights.h"

namespace longctx {
namespace {

using test::random_weights;

const GgmlType kFormats[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                             GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                             GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

// sum_k |x_k * w_k| for every output: the scale of the rounding error of its dot product.
std::vector<double> abs_dot(GgmlType t, const std::vector<uint8_t>& w, int64_t n_out, int64_t n_in,
                            const std::vector<float>& x, int64_t n_tok) {
  std::vector<double> out(static_cast<size_t>(n_tok * n_out));  // (n_tok, n_out)
  std::vector<float> row(static_cast<size_t>(n_in));
  for (int64_t r = 0; r < n_out; ++r) {
    cpu::dequantize_row(t, w.data() + static_cast<size_t>(r) * ggml_row_bytes(t, n_in), row.data(), n_in);
    for (int64_t i = 0; i < n_tok; ++i) {
      double s = 0.0;
      for (int64_t k = 0; k < n_in; ++k) s += std::fabs(static_cast<double>(row[k]) * x[i * n_in + k]);
      out[i * n_out + r] = s;
    }
  }
  return out;
}

struct Shape {
  int64_t n_out, n_in, n_tok;  // n_in is rounded up to the format's block size
};

// n_tok 1..7 take the rows path (groups of 4, 2, 1 tokens; 3 padded to 4), 8 and up the panels (f32: 12 or 6, 4
// and 1 tokens per kernel call; int8: 6 tokens per pass, the last padded, every n_tok % 6 below); n_out below, at
// and past a panel of 32 rows (16 on AVX2) and a group of 4 rows; n_in not a multiple of 256 (32-blocks), of 64
// (the int8 packing's transpose) or of a vector (float formats, both paths).
const Shape kShapes[] = {{1, 32, 1},   {37, 576, 1},   {5, 100, 2},    {33, 256, 3},  {64, 512, 4},
                         {96, 2048, 5}, {9, 64, 7},    {40, 96, 8},    {20, 100, 9},  {45, 768, 13},
                         {70, 320, 29}, {17, 1024, 37}, {3, 64, 64},   {32, 128, 16},
                         // prefill's int8 panels (32 rows, groups of 32 or Q6_K's 16): n_out half a panel and one
                         // more, one short, half, two and one more, one and a half; up to 600 tokens
                         {17, 256, 600}, {31, 96, 8},  {16, 256, 11},  {65, 160, 100}, {48, 2048, 10}};

// Runs body once for each SIMD target matmul was built for that this CPU has (the fallback always), so the
// AVX2 and scalar code is checked on an AVX-512 machine too. AVX3_DL runs the int8 kernels with VNNI (the f32
// ones as AVX3), AVX3 without; the fallback has no int8 kernels and dequantizes the activations.
template <typename F>
void for_each_target(F body) {
  const int64_t supported = hwy::SupportedTargets();  // before the mock below changes what it returns
  for (int64_t target : {int64_t{HWY_AVX3_DL}, int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SCALAR}}) {
    if (target != HWY_SCALAR && (supported & target) == 0) continue;
    // The target and every lesser one (larger bits): each file then picks its best up to the target.
    hwy::SetSupportedTargetsForTest((supported & ~(target - 1)) | HWY_SCALAR);
    const std::string name = std::string(cpu::matmul_target_name()) + "/" + cpu::matmul_q8_target_name();
    body(name.c_str());
  }
  hwy::SetSupportedTargetsForTest(0);
}

bool is_float_format(GgmlType t) { return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16; }

// The activations as the quantized precisions round them (matmul_q8.h): per block of 32, m = max|x|, y = x *
// (127 / m) and q = round-half-even(y) in f32; with two planes also q2 = round((y - q) * 256) clamped to +-127.
// Returns d * Q in double (Q = q or 256 q + q2, d = m / 127 or m / 127 / 256), and each value's d in scale.
std::vector<double> quantized_round_trip(const std::vector<float>& x, int n_planes, std::vector<double>* scale) {
  std::vector<double> out(x.size());
  scale->resize(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float mx = 0.0f;
    for (size_t k = b; k < b + 32; ++k) mx = std::max(mx, std::fabs(x[k]));
    const float id = mx > 0.0f ? 127.0f / mx : 0.0f;
    const float d = n_planes == 2 ? mx / 127.0f / 256.0f : mx / 127.0f;
    for (size_t k = b; k < b + 32; ++k) {
      const float y = x[k] * id;
      const float q = std::nearbyint(y);
      double qq = q;
      if (n_planes == 2) qq = 256.0 * q + std::clamp(std::nearbyint((y - q) * 256.0f), -127.0f, 127.0f);
      out[k] = static_cast<double>(d) * qq;
      (*scale)[k] = d;
    }
  }
  return out;
}

// y (n_tok, n_out) = x * W^T in double from dequantized weights and double activations.
std::vector<double> reference_double(GgmlType t, const std::vector<uint8_t>& w, int64_t n_out, int64_t n_in,
                                     const std::vector<double>& x, int64_t n_tok) {
  std::vector<double> y(static_cast<size_t>(n_tok * n_out));
  std::vector<float> row(static_cast<size_t>(n_in));
  for (int64_t r = 0; r < n_out; ++r) {
    cpu::dequantize_row(t, w.data() + static_cast<size_t>(r) * ggml_row_bytes(t, n_in), row.data(), n_in);
    for (int64_t i = 0; i < n_tok; ++i) {
      double s = 0.0;
      for (int64_t k = 0; k < n_in; ++k) s += row[k] * x[i * n_in + k];
      y[i * n_out + r] = s;
    }
  }
  return y;
}

void check_against_reference(const char* target) {
  using cpu::MatmulPrecision;
  const MatmulPrecision kPrecisions[] = {MatmulPrecision::F32, MatmulPrecision::Q16Activations,
                                         MatmulPrecision::Q8Activations};
  const char* kNames[] = {"F32", "Q16", "Q8"};
  std::mt19937 rng(1234);
  ThreadPool pool1(1), pool3(3);
  for (GgmlType t : kFormats) {
    const auto tr = ggml_traits(t);
    double worst[3] = {0, 0, 0};        // per precision: largest |y - y_ref| / sum|x*w| where it applied
    double worst_exact[3] = {0, 0, 0};  // per quantized precision: largest |y - y_exact| / its bound
    for (const Shape& s : kShapes) {
      const int64_t n_in = (s.n_in + tr.block_values - 1) / tr.block_values * tr.block_values;
      const auto w = random_weights(t, s.n_out, n_in, rng);
      std::vector<float> x(static_cast<size_t>(s.n_tok * n_in));  // (n_tok, n_in)
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (auto& v : x) v = normal(rng);
      const auto scale = abs_dot(t, w, s.n_out, n_in, x, s.n_tok);
      const std::vector<double> xd(x.begin(), x.end());
      const auto exact = reference_double(t, w, s.n_out, n_in, xd, s.n_tok);
      {  // matmul_reference is the double product of the f32 activations
        std::vector<float> ref(exact.size());
        cpu::matmul_reference(t, w.data(), s.n_out, n_in, x.data(), s.n_tok, ref.data());
        for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(ref[i], static_cast<float>(exact[i]));
      }
      for (int p = 0; p < 3; ++p) {
        // The quantized precisions apply to quantized weights below 8 tokens, and from 8 on where the int8 panels
        // exist (AVX-512 VNNI); elsewhere they are F32.
        const bool quantized = cpu::matmul_quantizes(t, s.n_tok, kPrecisions[p]);
        if (p > 0 && !is_float_format(t) && s.n_tok < 8) {
          EXPECT_TRUE(quantized);
        }
        std::vector<double> xs;  // (n_tok, n_in): the scale of each activation's block
        const auto ref = quantized ? reference_double(t, w, s.n_out, n_in, quantized_round_trip(x, 3 - p, &xs), s.n_tok)
                                   : exact;
        std::vector<double> bound;  // (n_tok, n_out): sum_k |w_k| d_k (/ 2), the rounding's worst effect
        if (quantized) {
          bound.assign(exact.size(), 0.0);
          std::vector<float> row(static_cast<size_t>(n_in));
          for (int64_t r = 0; r < s.n_out; ++r) {
            cpu::dequantize_row(t, w.data() + static_cast<size_t>(r) * ggml_row_bytes(t, n_in), row.data(), n_in);
            for (int64_t i = 0; i < s.n_tok; ++i)
              for (int64_t k = 0; k < n_in; ++k)
                bound[i * s.n_out + r] += std::fabs(row[k]) * xs[i * n_in + k] * (p == 1 ? 1.0 : 0.5);
          }
        }
        for (ThreadPool* pool : {&pool1, &pool3}) {
          std::vector<float> y(ref.size(), std::nanf(""));  // NaN: an output never written fails
          cpu::matmul(*pool, t, w.data(), s.n_out, n_in, x.data(), s.n_tok, y.data(), kPrecisions[p]);
          int n_bad = 0;
          auto report = [&](size_t i, const char* what, double got, double want, double tol) {
            if (++n_bad <= 3)
              ADD_FAILURE() << target << " " << tr.name << " " << kNames[p] << " n_out " << s.n_out << " n_in " << n_in
                            << " n_tok " << s.n_tok << " threads " << pool->n_threads() << ": y[" << i / s.n_out << ", "
                            << i % s.n_out << "] = " << got << ", " << what << " " << want << ", tolerance " << tol;
          };
          for (size_t i = 0; i < y.size(); ++i) {
            const double err = std::fabs(static_cast<double>(y[i]) - ref[i]);
            const double tol = 1e-5 * scale[i] + 1e-30;
            if (scale[i] > 0 && (p == 0 || quantized)) worst[p] = std::max(worst[p], err / scale[i]);
            if (!(err <= tol)) report(i, "reference", y[i], ref[i], tol);
            if (quantized) {
              const double err_exact = std::fabs(static_cast<double>(y[i]) - exact[i]);
              const double tol_exact = bound[i] + 1e-5 * scale[i];
              if (bound[i] > 0) worst_exact[p] = std::max(worst_exact[p], err_exact / bound[i]);
              if (!(err_exact <= tol_exact)) report(i, "exact product", y[i], exact[i], tol_exact);
            }
          }
        }
      }
    }
    std::printf("%-14s %-5s |y - y_ref| / sum|x*w|: F32 %.1e, Q16 %.1e, Q8 %.1e; |y - y_exact| / bound: Q16 %.2f, "
                "Q8 %.2f\n", target, std::string(tr.name).c_str(), worst[0], worst[1], worst[2], worst_exact[1],
                worst_exact[2]);
  }
}

TEST(Matmul, MatchesReference) { for_each_target(check_against_reference); }

// matmul_multi computes each product as matmul does: the same rows by the same kernels, so the same bits, whatever
// the split of the concatenated rows between threads (row counts not multiples of 4 included).
TEST(Matmul, MultiEqualsSeparateCalls) {
  std::mt19937 rng(99);
  const int64_t n_in = 512;
  const std::pair<GgmlType, int64_t> weights[] = {
      {GgmlType::Q5_0, 37}, {GgmlType::Q8_0, 64}, {GgmlType::F16, 5}, {GgmlType::Q4_K, 130}, {GgmlType::Q6_K, 3}};
  std::vector<std::vector<uint8_t>> w;
  for (const auto& [t, n_out] : weights) w.push_back(random_weights(t, n_out, n_in, rng));
  ThreadPool pool1(1), pool3(3);
  for (int64_t n_tok : {1, 3, 9}) {
    std::vector<float> x(static_cast<size_t>(n_tok * n_in));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : x) v = normal(rng);
    for (auto precision : {cpu::MatmulPrecision::F32, cpu::MatmulPrecision::Q16Activations,
                           cpu::MatmulPrecision::Q8Activations})
      for (ThreadPool* pool : {&pool1, &pool3}) {
        std::vector<std::vector<float>> y_multi, y_single;
        std::vector<cpu::MatmulOutput> outs;
        for (size_t i = 0; i < w.size(); ++i) {
          const auto [t, n_out] = weights[i];
          y_multi.emplace_back(static_cast<size_t>(n_tok * n_out), std::nanf(""));
          y_single.emplace_back(static_cast<size_t>(n_tok * n_out), std::nanf(""));
          cpu::matmul(*pool, t, w[i].data(), n_out, n_in, x.data(), n_tok, y_single[i].data(), precision);
          outs.push_back({t, w[i].data(), n_out, y_multi[i].data()});
        }
        cpu::matmul_multi(*pool, outs.data(), static_cast<int>(outs.size()), n_in, x.data(), n_tok, precision);
        for (size_t i = 0; i < w.size(); ++i)
          for (size_t j = 0; j < y_multi[i].size(); ++j)
            ASSERT_EQ(y_multi[i][j], y_single[i][j]) << "weight " << i << " n_tok " << n_tok << " output " << j
                                                     << " threads " << pool->n_threads();
      }
  }
}

// A row's product does not depend on the rows beside it, below the panel bound: each token keeps its own
// accumulators and activation scales, so a batch of decode steps (several sequences in one forward) gives each
// sequence the bits it gets alone. kMatmulRowInvariantTok is that bound.
void check_rows_do_not_depend_on_their_batch(const char* target) {
  std::mt19937 rng(7);
  const int64_t n_in = 512, n_out = 70;
  ThreadPool pool(2);
  for (GgmlType t : kFormats) {
    const std::vector<uint8_t> w = random_weights(t, n_out, n_in, rng);
    for (int64_t n_tok = 2; n_tok <= cpu::kMatmulRowInvariantTok; ++n_tok) {
      std::vector<float> x(static_cast<size_t>(n_tok * n_in));
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (auto& v : x) v = normal(rng);
      for (auto precision : {cpu::MatmulPrecision::F32, cpu::MatmulPrecision::Q16Activations,
                             cpu::MatmulPrecision::Q8Activations}) {
        std::vector<float> y(static_cast<size_t>(n_tok * n_out)), y1(static_cast<size_t>(n_out));
        cpu::matmul(pool, t, w.data(), n_out, n_in, x.data(), n_tok, y.data(), precision);
        for (int64_t i = 0; i < n_tok; ++i) {
          cpu::matmul(pool, t, w.data(), n_out, n_in, x.data() + i * n_in, 1, y1.data(), precision);
          for (int64_t r = 0; r < n_out; ++r)
            ASSERT_EQ(y[static_cast<size_t>(i * n_out + r)], y1[static_cast<size_t>(r)])
                << target << " " << ggml_traits(t).name << " n_tok " << n_tok << " token " << i << " output " << r;
        }
      }
    }
  }
}

TEST(Matmul, RowsBelowThePanelBoundDoNotDependOnTheirBatch) { for_each_target(check_rows_do_not_depend_on_their_batch); }

TEST(Matmul, RejectsBadInput) {
  ThreadPool pool(1);
  std::vector<uint8_t> w(4096);
  std::vector<float> x(512), y(512);
  EXPECT_THROW(cpu::matmul(pool, GgmlType::Q4_K, w.data(), 2, 128, x.data(), 1, y.data()), Error);
  EXPECT_THROW(cpu::matmul(pool, GgmlType::Q2_K, w.data(), 2, 256, x.data(), 1, y.data()), Error);
  cpu::matmul(pool, GgmlType::Q8_0, w.data(), 2, 32, x.data(), 0, y.data());  // no tokens: nothing to do
}

}  // namespace
}  // namespace longctx
