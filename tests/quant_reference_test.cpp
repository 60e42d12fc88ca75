// The GPU tests' reference dequantizer (tests/cuda/quant_reference.h: plain scalar code, since the device machine
// cannot build the CPU backend) against cpu::dequantize_row, bit for bit, on the random rows those tests use. Runs
// here and in CI, so the device's results are tied to the CPU backend's values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <random>
#include <vector>

#include "backend/cpu/quant.h"
#include "cuda/quant_reference.h"

namespace longctx {
namespace {

class QuantReference : public ::testing::TestWithParam<GgmlType> {};

TEST_P(QuantReference, EqualsCpuDequantizer) {
  const GgmlType t = GetParam();
  std::mt19937_64 rng(20261205 + static_cast<uint32_t>(t));
  int64_t n_checked = 0;
  for (const int64_t n : {256, 768, 2048, 4096}) {
    const int64_t n_rows = 7;
    const std::vector<uint8_t> w = quant_ref::random_rows(t, n_rows, n, rng);
    ASSERT_EQ(w.size(), ggml_row_bytes(t, n) * n_rows);
    std::vector<float> want(n), got(n);
    for (int64_t r = 0; r < n_rows; ++r) {
      const uint8_t* row = w.data() + r * quant_ref::row_bytes(t, n);
      cpu::dequantize_row(t, row, want.data(), n);
      quant_ref::dequantize_row(t, row, got.data(), n);
      ASSERT_EQ(std::memcmp(want.data(), got.data(), n * sizeof(float)), 0)
          << quant_ref::name(t) << " row " << r << " of " << n << " values";
      n_checked += n;
    }
  }
  // The scales are finite and nonzero, so the rows are no zeros in disguise.
  std::vector<float> v(256);
  const std::vector<uint8_t> one = quant_ref::random_rows(t, 1, 256, rng);
  quant_ref::dequantize_row(t, one.data(), v.data(), 256);
  int n_nonzero = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    n_nonzero += x != 0.0f;
  }
  EXPECT_GT(n_nonzero, 200);
  std::printf("%-5s %lld values equal to cpu::dequantize_row\n", quant_ref::name(t), static_cast<long long>(n_checked));
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantReference,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0,
                                           GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K,
                                           GgmlType::Q6_K),
                         [](const auto& info) { return std::string(quant_ref::name(info.param)); });

}  // namespace
}  // namespace longctx
