// Element-wise ops against their one-line definitions, computed in double.
#include "backend/cpu/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace longctx {
namespace {

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

TEST(Ops, RmsNorm) {
  const int64_t rows = 3, n = 640;
  auto x = randn(rows * n, 1), w = randn(n, 2);
  std::vector<float> y(x.size());
  cpu::rmsnorm(x.data(), w.data(), y.data(), rows, n, 1e-6f);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[r * n + i]) * x[r * n + i];
    const double s = 1.0 / std::sqrt(ss / n + 1e-6);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[r * n + i], x[r * n + i] * s * w[i], 1e-5);  // f32 products
  }
}

TEST(Ops, RopeBothOrders) {
  const int64_t n_tok = 3, n_heads = 2, d = 8;
  const int32_t pos[] = {0, 7, 70000};
  for (auto order : {cpu::RopeOrder::Adjacent, cpu::RopeOrder::Halves}) {
    auto x = randn(n_tok * n_heads * d, 3);
    auto y = x;
    cpu::rope(y.data(), pos, n_tok, n_heads, d, d, 10000.0f, order);
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t h = 0; h < n_heads; ++h)
        for (int64_t i = 0; i < d / 2; ++i) {
          const double th = pos[t] * std::pow(10000.0, -2.0 * i / d);
          const int64_t a = order == cpu::RopeOrder::Adjacent ? 2 * i : i;
          const int64_t b = order == cpu::RopeOrder::Adjacent ? 2 * i + 1 : i + d / 2;
          const float* xv = &x[(t * n_heads + h) * d];
          const float* yv = &y[(t * n_heads + h) * d];
          // f32 rotation of an exact angle: a few ulps of |x|.
          EXPECT_NEAR(yv[a], xv[a] * std::cos(th) - xv[b] * std::sin(th), 1e-5);
          EXPECT_NEAR(yv[b], xv[a] * std::sin(th) + xv[b] * std::cos(th), 1e-5);
        }
  }
}

TEST(Ops, RopeLeavesUnrotatedChannels) {
  auto x = randn(16, 4);
  auto y = x;
  const int32_t pos = 5;
  cpu::rope(y.data(), &pos, 1, 1, 16, 8, 10000.0f, cpu::RopeOrder::Halves);
  for (int i = 8; i < 16; ++i) EXPECT_EQ(y[i], x[i]);
}

TEST(Ops, GatedActivations) {
  // 1003: a SIMD tail too; a few large inputs where exp and tanh saturate.
  constexpr int n = 1003;
  auto g = randn(n, 5), u = randn(n, 6);
  g[0] = 95.0f;
  g[1] = -95.0f;
  g[2] = 12.0f;
  g[3] = -12.0f;
  auto s = g, t = g;
  cpu::gated_activation(s.data(), u.data(), n, cpu::GatedActivation::SiLU);
  cpu::gated_activation(t.data(), u.data(), n, cpu::GatedActivation::GeluTanh);
  // Tolerance 1e-5 absolute on values of order 1 (relative 1e-6 beyond): Highway's Exp and Tanh are within a few
  // f32 ulps, the products add a few more.
  for (int i = 0; i < n; ++i) {
    const double x = g[i];
    const double silu = x / (1 + std::exp(-x)) * u[i];
    const double gelu = 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))) * u[i];
    EXPECT_NEAR(s[i], silu, 1e-5 + 1e-6 * std::fabs(silu)) << i;
    EXPECT_NEAR(t[i], gelu, 1e-5 + 1e-6 * std::fabs(gelu)) << i;
  }
}

}  // namespace
}  // namespace longctx
