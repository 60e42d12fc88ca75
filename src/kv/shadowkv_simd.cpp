// ShadowKV's loops of every decode step, in SIMD lanes chosen at run time (Highway): the landmarks' scores for a
// query, their softmax, the keys rebuilt from the factors, and f16 rows widened. They are the method's whole cost on
// the CPU (the attention that follows reads only what they choose), and a plain loop leaves them to 2-4 lanes.
#include <algorithm>
#include <cmath>

#include "core/fp16.h"
#include "kv/shadowkv.h"

#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kv/shadowkv_simd.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; the code between here and HWY_ONCE is per target.
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace longctx::kv::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void LandmarkScoresImpl(const float* q, const uint16_t* landmarks, int32_t n, int32_t d, float scale, float* out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const auto N = static_cast<int32_t>(hn::Lanes(df));
  for (int32_t c = 0; c < n; ++c) {
    const uint16_t* lm = landmarks + static_cast<size_t>(c) * d;
    const auto* lh = reinterpret_cast<const hwy::float16_t*>(lm);
    auto acc = hn::Zero(df);
    int32_t i = 0;
    for (; i + N <= d; i += N) acc = hn::MulAdd(hn::LoadU(df, q + i), hn::PromoteTo(df, hn::LoadU(dh, lh + i)), acc);
    float s = hn::GetLane(hn::SumOfLanes(df, acc));
    for (; i < d; ++i) s += q[i] * fp16_to_f32(lm[i]);
    out[c] = s * scale;
  }
}

void SoftmaxImpl(float* x, int32_t n) {
  const hn::ScalableTag<float> df;
  const auto N = static_cast<int32_t>(hn::Lanes(df));
  const float mx = *std::max_element(x, x + n);
  const auto vmx = hn::Set(df, mx);
  auto acc = hn::Zero(df);
  int32_t i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(df, hn::Sub(hn::LoadU(df, x + i), vmx));
    hn::StoreU(e, df, x + i);
    acc = hn::Add(acc, e);
  }
  double sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; i < n; ++i) sum += (x[i] = std::exp(x[i] - mx));
  const auto inv = static_cast<float>(1.0 / sum);
  for (int32_t j = 0; j < n; ++j) x[j] *= inv;
}

void F16ToF32Impl(const uint16_t* x, int32_t n, float* out) {
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const auto N = static_cast<int32_t>(hn::Lanes(df));
  const auto* h = reinterpret_cast<const hwy::float16_t*>(x);
  int32_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, out + i);
  for (; i < n; ++i) out[i] = fp16_to_f32(x[i]);
}

void RebuildKeyImpl(const float* a, int32_t r, const float* b, int64_t b_stride, int32_t d, float* out) {
  const hn::ScalableTag<float> df;
  const auto N = static_cast<int32_t>(hn::Lanes(df));
  int32_t j = 0;
  // Four vectors of the output at a time: four independent chains of multiply-adds, not one waiting on itself.
  for (; j + 4 * N <= d; j += 4 * N) {
    auto acc0 = hn::Zero(df), acc1 = hn::Zero(df), acc2 = hn::Zero(df), acc3 = hn::Zero(df);
    for (int32_t m = 0; m < r; ++m) {
      const auto am = hn::Set(df, a[m]);
      const float* bm = b + m * b_stride + j;
      acc0 = hn::MulAdd(am, hn::LoadU(df, bm), acc0);
      acc1 = hn::MulAdd(am, hn::LoadU(df, bm + N), acc1);
      acc2 = hn::MulAdd(am, hn::LoadU(df, bm + 2 * N), acc2);
      acc3 = hn::MulAdd(am, hn::LoadU(df, bm + 3 * N), acc3);
    }
    hn::StoreU(acc0, df, out + j);
    hn::StoreU(acc1, df, out + j + N);
    hn::StoreU(acc2, df, out + j + 2 * N);
    hn::StoreU(acc3, df, out + j + 3 * N);
  }
  for (; j + N <= d; j += N) {
    auto acc = hn::Zero(df);
    for (int32_t m = 0; m < r; ++m) acc = hn::MulAdd(hn::Set(df, a[m]), hn::LoadU(df, b + m * b_stride + j), acc);
    hn::StoreU(acc, df, out + j);
  }
  for (; j < d; ++j) {
    float s = 0;
    for (int32_t m = 0; m < r; ++m) s += a[m] * b[m * b_stride + j];
    out[j] = s;
  }
}

}  // namespace longctx::kv::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace longctx::kv {

HWY_EXPORT(LandmarkScoresImpl);
HWY_EXPORT(RebuildKeyImpl);
HWY_EXPORT(SoftmaxImpl);
HWY_EXPORT(F16ToF32Impl);

void shadowkv_f16_to_f32(const uint16_t* x, int32_t n, float* out) { HWY_DYNAMIC_DISPATCH(F16ToF32Impl)(x, n, out); }

void shadowkv_softmax(float* x, int32_t n) { HWY_DYNAMIC_DISPATCH(SoftmaxImpl)(x, n); }

void shadowkv_landmark_scores(const float* q, const uint16_t* landmarks, int32_t n, int32_t d, float scale,
                              float* out) {
  HWY_DYNAMIC_DISPATCH(LandmarkScoresImpl)(q, landmarks, n, d, scale, out);
}

void shadowkv_rebuild_key(const float* a, int32_t r, const float* b, int64_t b_stride, int32_t d, float* out) {
  HWY_DYNAMIC_DISPATCH(RebuildKeyImpl)(a, r, b, b_stride, d, out);
}

}  // namespace longctx::kv
#endif  // HWY_ONCE
