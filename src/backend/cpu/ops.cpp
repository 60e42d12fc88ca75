#include "backend/cpu/ops.h"

#include <cmath>
#include <vector>

namespace longctx::cpu {

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
  const int64_t half = n_rot / 2;
  std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
  for (int64_t t = 0; t < n_tok; ++t) {
    // Angles in double: positions reach 10^5 and an f32 product would be off by whole radians' fractions.
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
      const double a = static_cast<double>(positions[t]) * inv_freq;
      cos_t[static_cast<size_t>(i)] = static_cast<float>(std::cos(a));
      sin_t[static_cast<size_t>(i)] = static_cast<float>(std::sin(a));
    }
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = order == RopeOrder::Adjacent ? 2 * i : i;
        const int64_t b = order == RopeOrder::Adjacent ? 2 * i + 1 : i + half;
        const float c = cos_t[static_cast<size_t>(i)], s = sin_t[static_cast<size_t>(i)];
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
      }
    }
  }
}

void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act) {
  if (act == GatedActivation::SiLU) {
    for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  } else {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    for (int64_t i = 0; i < n; ++i) {
      const float g = gate[i];
      gate[i] = 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * up[i];
    }
  }
}

void add_in_place(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace longctx::cpu
