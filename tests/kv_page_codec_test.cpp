// KV page formats: plain round trips, KIVI's error bound, and attention over packed pages against attention over
// their dequantized values.
#include "backend/cpu/kv_page_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cpu/attention.h"
#include "kv/kv_store.h"

namespace longctx {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float outlier_every = 0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = nd(rng) * (outlier_every > 0 && i % 61 == 0 ? 8.0f : 1.0f);
  return v;
}

TEST(KvPageCodec, KiviErrorWithinHalfAStep) {
  const int32_t T = 64, d = 64;
  // Keys with fixed outlier channels, as real keys have (the reason KIVI quantizes keys per channel).
  std::vector<float> k = randn(size_t(T) * d, 1), v = randn(size_t(T) * d, 2, 1);
  for (int32_t t = 0; t < T; ++t) k[size_t(t) * d + 5] *= 10.0f;
  for (KvFormat f : {KvFormat::Kivi8, KvFormat::Kivi4, KvFormat::Kivi2}) {
    const int levels = (1 << kv_format_bits(f)) - 1;
    std::vector<uint8_t> page(cpu::kv_page_bytes(f, T, d));
    cpu::kv_page_write(f, T, d, k.data(), v.data(), 0, T, page.data());
    std::vector<float> kd(k.size()), vd(v.size());
    cpu::kv_page_read_keys(f, T, d, page.data(), 0, T, kd.data());
    cpu::kv_page_read_values(f, T, d, page.data(), 0, T, vd.data());
    // Bound: half a quantization step of the group's range, plus f16 rounding of the minimum and the step
    // (relative 2^-11 of the group's largest magnitude, times the code count for the step).
    for (int32_t c = 0; c < d; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (int32_t t = 0; t < T; ++t) lo = std::min(lo, k[size_t(t) * d + c]), hi = std::max(hi, k[size_t(t) * d + c]);
      const float step = (hi - lo) / levels;
      const float bound = 0.5f * step + (std::max(std::abs(lo), std::abs(hi)) + step * levels) * 1e-3f;
      for (int32_t t = 0; t < T; ++t)
        ASSERT_LE(std::abs(kd[size_t(t) * d + c] - k[size_t(t) * d + c]), bound) << kv_format_name(f) << " key c=" << c;
    }
    for (int32_t t = 0; t < T; ++t)
      for (int32_t g = 0; g < d / cpu::kKiviValueGroup; ++g) {
        const float* x = &v[size_t(t) * d + g * cpu::kKiviValueGroup];
        const auto [lo, hi] = std::minmax_element(x, x + cpu::kKiviValueGroup);
        const float step = (*hi - *lo) / levels;
        const float bound = 0.5f * step + (std::max(std::abs(*lo), std::abs(*hi)) + step * levels) * 1e-3f;
        for (int32_t i = 0; i < cpu::kKiviValueGroup; ++i)
          ASSERT_LE(std::abs(vd[size_t(t) * d + g * cpu::kKiviValueGroup + i] - x[i]), bound) << kv_format_name(f);
      }
    // Compression: payload bits plus per-channel and per-group f16 scale and minimum.
    const size_t expect = 2 * size_t(T) * d * kv_format_bits(f) / 8 + size_t(d) * 4 + size_t(T) * (d / 32) * 4;
    EXPECT_EQ(page.size(), expect);
  }
}

TEST(KvPageCodec, AttentionOverPackedPagesMatchesAttentionOverTheirValues) {
  // The same tokens in a packed store and, dequantized, in an f32 store: the kernel must give the same output
  // up to f32 summation order (1e-5), since it decodes exactly those values.
  const int32_t n_head = 4, n_head_kv = 2, d = 64, n = 200;
  for (KvFormat f : {KvFormat::Kivi8, KvFormat::Kivi4, KvFormat::Kivi2}) {
    kv::KvGeometry packed_geo{1, n_head_kv, d, 32, KvFormat::F16, f};
    kv::KvPagePool pool(32, d, size_t{1} << 28);
    kv::KvSequence packed(packed_geo, pool);
    auto k = randn(size_t(n) * n_head_kv * d, 3), v = randn(k.size(), 4);
    std::vector<int32_t> pos(n);
    for (int32_t i = 0; i < n; ++i) pos[size_t(i)] = i;
    packed.append(0, k.data(), v.data(), pos.data(), n);
    packed.seal_full_pages();  // 6 packed pages and an open page of 8 tokens per head
    EXPECT_EQ(packed.head(0, 0).pages[0].format, f);
    EXPECT_EQ(packed.head(0, 0).pages.back().format, KvFormat::F16);

    kv::KvGeometry plain_geo{1, n_head_kv, d, 32, KvFormat::F32, KvFormat::F32};
    kv::KvPagePool pool2(32, d, size_t{1} << 28);
    kv::KvSequence plain(plain_geo, pool2);
    std::vector<float> kd(k.size()), vd(v.size());
    for (int32_t g = 0; g < n_head_kv; ++g)
      for (int32_t t = 0; t < n; ++t) {
        packed.read_keys(0, g, t, 1, &kd[(size_t(t) * n_head_kv + g) * d]);
        packed.read_values(0, g, t, 1, &vd[(size_t(t) * n_head_kv + g) * d]);
      }
    plain.append(0, kd.data(), vd.data(), pos.data(), n);

    auto q = randn(size_t(3) * n_head * d, 5);
    const int32_t q_pos[] = {n, n + 1, n + 2};
    cpu::AttentionParams ap{n_head, n_head_kv, d, 0.125f, 0};
    std::vector<float> a(q.size()), b(q.size());
    ThreadPool tp(2);
    cpu::attention(tp, ap, q.data(), q_pos, 3, packed.layer_view(0), a.data());
    cpu::attention(tp, ap, q.data(), q_pos, 3, plain.layer_view(0), b.data());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f) << kv_format_name(f);
  }
}

}  // namespace
}  // namespace longctx
