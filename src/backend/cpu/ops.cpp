#include "backend/cpu/ops.h"

#include <cmath>
#include <vector>

// The gated activations run in SIMD through Highway's dynamic dispatch (Gemma's tanh GELU in libm was a seventh of
// its prefill); the other ops here are a small part of a forward and stay plain.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/ops.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace longctx::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// gate = act(gate) * up, act = SiLU x / (1 + e^-x) or GELU 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void GatedActivationImpl(float* gate, const float* up, int64_t n, GatedActivation act) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  // Exp's range reduction is exact only inside f32's exponent range; e^88 is near FLT_MAX and SiLU is 0 or x there.
  const auto lo = hn::Set(d, -88.0f), hi = hn::Set(d, 88.0f), one = hn::Set(d, 1.0f), half = hn::Set(d, 0.5f);
  const auto k0 = hn::Set(d, 0.7978845608028654f), k1 = hn::Set(d, 0.044715f);
  auto one_vec = [&](hn::Vec<decltype(d)> g) {
    if (act == GatedActivation::SiLU) return hn::Div(g, hn::Add(one, hn::Exp(d, hn::Clamp(hn::Neg(g), lo, hi))));
    const auto inner = hn::Mul(k0, hn::MulAdd(hn::Mul(k1, hn::Mul(g, g)), g, g));
    return hn::Mul(hn::Mul(half, g), hn::Add(one, hn::Tanh(d, inner)));
  };
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(one_vec(hn::LoadU(d, gate + i)), hn::LoadU(d, up + i)), d, gate + i);
  for (; i < n; ++i) {  // the tail, in libm
    const float g = gate[i];
    gate[i] = (act == GatedActivation::SiLU ? g / (1.0f + std::exp(-g))
                                            : 0.5f * g * (1.0f + std::tanh(0.7978845608028654f * (g + 0.044715f * g * g * g)))) *
              up[i];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace longctx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace longctx::cpu {

HWY_EXPORT(GatedActivationImpl);

void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act) {
  HWY_DYNAMIC_DISPATCH(GatedActivationImpl)(gate, up, n, act);
}

void rmsnorm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double ss = 0;  // double: the sum of squares of a 2048-wide row loses digits in f32
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

void rope(float* x, const int32_t* positions, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
          float base, RopeOrder order) {
  std::vector<float> cos_t(static_cast<size_t>(n_rot / 2)), sin_t(static_cast<size_t>(n_rot / 2));
  for (int64_t t = 0; t < n_tok; ++t) {
    rope_angles(positions[t], n_rot, base, cos_t.data(), sin_t.data());
    rope_rotate(x + t * n_heads * head_dim, n_heads, head_dim, n_rot, cos_t.data(), sin_t.data(), order);
  }
}

void add_in_place(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace longctx::cpu
#endif  // HWY_ONCE
