// matmul against matmul_reference on random weights of every format and every SIMD target, and a small
// benchmark (printed only).
//
// Tolerance: |y - y_ref| <= 1e-5 * sum_k |x_k * w_k| per output. Both sides see identical weights (the SIMD
// dequantizers are exact, see quant.cpp), so they differ only by summation: matmul adds the n_in products in f32
// (the panel kernel sequentially per output, the rows kernel in N lane-wise partial sums), the reference in
// double. A sequential f32 sum of n terms errs by at most about n * 2^-24 * sum|terms|, and in practice, the
// roundings behaving like a random walk, by about sqrt(n) * 2^-24 * sum|terms|: 3e-6 at n_in = 2048, the largest
// here. 1e-5 leaves margin over that (the worst seen is printed, about 3e-7), while a wrong layout, scale, tail
// or row is off by a good fraction of sum|x*w|.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/fp16.h"

namespace longctx {
namespace {

const GgmlType kFormats[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                             GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                             GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

// Byte offsets of the f16 scale fields in one block: random bytes there would be NaN or inf.
std::vector<size_t> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: return {0};
    case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q4_K: case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q6_K: return {208};
    default: return {};
  }
}

// Random weights (n_out, n_in) in format t: random bytes with finite f16 scales of either sign, or random
// normal values for the float formats.
std::vector<uint8_t> random_weights(GgmlType t, int64_t n_out, int64_t n_in, std::mt19937& rng) {
  const auto tr = ggml_traits(t);
  std::vector<uint8_t> w(ggml_row_bytes(t, n_in) * static_cast<size_t>(n_out));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(w.data() + at, &v, 2); };
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
    for (size_t i = 0; i < w.size() / tr.block_bytes; ++i) {
      const float f = normal(rng);
      if (t == GgmlType::F32) {
        std::memcpy(w.data() + 4 * i, &f, 4);
      } else {
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        put16(2 * i, t == GgmlType::F16 ? f32_to_fp16(f) : static_cast<uint16_t>(bits >> 16));
      }
    }
    return w;
  }
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  for (size_t blk = 0; blk < w.size() / tr.block_bytes; ++blk)
    for (size_t off : scale_offsets(t)) put16(blk * tr.block_bytes + off, f32_to_fp16(scale(rng)));
  return w;
}

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

// n_tok 1..7 take the rows path (groups of 4, 2, 1 tokens; 3 padded to 4), 8 and up the panels (12 or 6, 4 and
// 1 tokens per kernel call); n_out below, at and past a panel of 32 rows (16 on AVX2) and a group of 4 rows;
// n_in not a multiple of 256 (32-blocks) or of a vector (float formats, both paths).
const Shape kShapes[] = {{1, 32, 1},   {37, 576, 1},   {5, 100, 2},    {33, 256, 3},  {64, 512, 4},
                         {96, 2048, 5}, {9, 64, 7},    {40, 96, 8},    {20, 100, 9},  {45, 768, 13},
                         {70, 320, 29}, {17, 1024, 37}, {3, 64, 64},   {32, 128, 16}};

// Runs body once for each SIMD target matmul was built for that this CPU has (the fallback always), so the
// AVX2 and scalar code is checked on an AVX-512 machine too.
template <typename F>
void for_each_target(F body) {
  const int64_t supported = hwy::SupportedTargets();  // before the mock below changes what it returns
  for (int64_t target : {int64_t{HWY_AVX3}, int64_t{HWY_AVX2}, int64_t{HWY_SCALAR}}) {
    if (target != HWY_SCALAR && (supported & target) == 0) continue;
    hwy::SetSupportedTargetsForTest(target);
    body(cpu::matmul_target_name());
  }
  hwy::SetSupportedTargetsForTest(0);
}

void check_against_reference(const char* target) {
  std::mt19937 rng(1234);
  ThreadPool pool1(1), pool3(3);
  for (GgmlType t : kFormats) {
    const auto tr = ggml_traits(t);
    double worst = 0.0;  // largest |y - y_ref| / sum|x*w| seen for this format
    for (const Shape& s : kShapes) {
      const int64_t n_in = (s.n_in + tr.block_values - 1) / tr.block_values * tr.block_values;
      const auto w = random_weights(t, s.n_out, n_in, rng);
      std::vector<float> x(static_cast<size_t>(s.n_tok * n_in));  // (n_tok, n_in)
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (auto& v : x) v = normal(rng);
      std::vector<float> ref(static_cast<size_t>(s.n_tok * s.n_out));  // (n_tok, n_out)
      cpu::matmul_reference(t, w.data(), s.n_out, n_in, x.data(), s.n_tok, ref.data());
      const auto scale = abs_dot(t, w, s.n_out, n_in, x, s.n_tok);
      for (ThreadPool* pool : {&pool1, &pool3}) {
        std::vector<float> y(ref.size(), std::nanf(""));  // NaN: an output never written fails
        cpu::matmul(*pool, t, w.data(), s.n_out, n_in, x.data(), s.n_tok, y.data());
        int n_bad = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          const double err = std::fabs(static_cast<double>(y[i]) - ref[i]);
          const double tol = 1e-5 * scale[i] + 1e-30;
          if (scale[i] > 0) worst = std::max(worst, err / scale[i]);
          if (!(err <= tol) && ++n_bad <= 3)
            ADD_FAILURE() << target << " " << tr.name << " n_out " << s.n_out << " n_in " << n_in << " n_tok " << s.n_tok
                          << " threads " << pool->n_threads() << ": y[" << i / s.n_out << ", " << i % s.n_out
                          << "] = " << y[i] << ", reference " << ref[i] << ", tolerance " << tol;
        }
      }
    }
    std::printf("%-6s %-5s worst |y - y_ref| / sum|x*w| = %.2e\n", target, std::string(tr.name).c_str(), worst);
  }
}

TEST(Matmul, MatchesReference) { for_each_target(check_against_reference); }

TEST(Matmul, RejectsBadInput) {
  ThreadPool pool(1);
  std::vector<uint8_t> w(4096);
  std::vector<float> x(512), y(512);
  EXPECT_THROW(cpu::matmul(pool, GgmlType::Q4_K, w.data(), 2, 128, x.data(), 1, y.data()), Error);
  EXPECT_THROW(cpu::matmul(pool, GgmlType::Q2_K, w.data(), 2, 256, x.data(), 1, y.data()), Error);
  cpu::matmul(pool, GgmlType::Q8_0, w.data(), 2, 32, x.data(), 0, y.data());  // no tokens: nothing to do
}

// Rates on the shapes of the real models, printed for the record (no assertion: shared machines drift).
// GFLOP/s counts 2 * n_out * n_in * n_tok; weight GB/s the bytes of W read per call. "hot" repeats one matrix,
// which then sits in L2/L3 (the compute rate); "cold" cycles through copies filling 4x a 32 MiB L3, as decode
// streams a whole model from DRAM (the bandwidth a token actually gets).
TEST(MatmulBench, Rates) {
#ifndef NDEBUG
  GTEST_SKIP() << "timings of a debug build mean nothing";
#endif
  struct Case {
    GgmlType t;
    int64_t n_out, n_in;
    const char* what;
  };
  const Case cases[] = {{GgmlType::Q4_1, 1536, 576, "SmolLM2 ffn_up/gate"},
                        {GgmlType::Q4_1, 576, 1536, "SmolLM2 ffn_down"},
                        {GgmlType::Q4_K, 640, 2048, "gemma3 attn_output/ffn_down shape"},
                        {GgmlType::Q6_K, 640, 2048, "gemma3 ffn_down"},
                        {GgmlType::Q5_0, 2048, 640, "gemma3 ffn_up/gate"}};
  std::printf("SIMD target %s\n", cpu::matmul_target_name());
  std::mt19937 rng(7);
  const int n_hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto seconds = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (const Case& c : cases) {
    const auto w = random_weights(c.t, c.n_out, c.n_in, rng);
    const size_t n_copies = (128u << 20) / w.size() + 1;
    std::vector<uint8_t> copies(w.size() * n_copies);  // (n_copies, n_out, row bytes)
    for (size_t i = 0; i < n_copies; ++i) std::memcpy(copies.data() + i * w.size(), w.data(), w.size());
    for (int n_threads : {1, n_hw}) {
      ThreadPool pool(n_threads);
      for (int64_t n_tok : {int64_t{1}, int64_t{256}}) {
        std::vector<float> x(static_cast<size_t>(n_tok * c.n_in), 0.5f), y(static_cast<size_t>(n_tok * c.n_out));
        auto call = [&](const uint8_t* wi) { cpu::matmul(pool, c.t, wi, c.n_out, c.n_in, x.data(), n_tok, y.data()); };
        call(w.data());  // warm up
        double best = 1e30, total = 0.0;
        for (int rep = 0; rep < 1000 && total < 0.2; ++rep) {
          const double dt = seconds([&] { call(w.data()); });
          best = std::min(best, dt);
          total += dt;
        }
        const double flop = 2.0 * static_cast<double>(c.n_out * c.n_in * n_tok);
        std::printf("%-5s n_out %5lld n_in %5lld n_tok %3lld threads %d: hot %8.1f us %6.1f GFLOP/s %6.2f GB/s",
                    std::string(ggml_traits(c.t).name).c_str(), static_cast<long long>(c.n_out),
                    static_cast<long long>(c.n_in), static_cast<long long>(n_tok), n_threads, best * 1e6,
                    flop / best * 1e-9, static_cast<double>(w.size()) / best * 1e-9);
        if (n_tok == 1) {
          double dt = 1e30;  // best of 5 passes: a pass is one timing, exposed to other work on the machine
          for (int pass = 0; pass < 5; ++pass)
            dt = std::min(dt, seconds([&] {
                                for (size_t i = 0; i < n_copies; ++i) call(copies.data() + i * w.size());
                              }) / static_cast<double>(n_copies));
          std::printf(" | cold %6.1f us %6.2f GB/s", dt * 1e6, static_cast<double>(w.size()) / dt * 1e-9);
        }
        std::printf("  (%s)\n", c.what);
      }
    }
  }
}

}  // namespace
}  // namespace longctx
