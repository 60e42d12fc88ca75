// KIVI pages for the CUDA tests: the CPU codec's quantization, restated so that the device script can build the tests
// with nvcc alone, then laid out for the device by kivi_page_pack.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/fp16.h"

namespace kivi_test {

namespace lc = longctx::cuda;
using longctx::f32_to_fp16;
using longctx::fp16_to_f32;

// The CPU codec's quantization rule (kv_page_codec.cpp), restated: asymmetric, min and scale rounded to f16 first
// and the codes computed against the rounded values.
struct KiviQuant {
  uint16_t scale_h, min_h;
  float scale, min;
};

inline KiviQuant kivi_qparams(float lo, float hi, int bits) {
  KiviQuant p;
  p.min_h = f32_to_fp16(lo);
  p.min = fp16_to_f32(p.min_h);
  const float levels = static_cast<float>((1 << bits) - 1);
  const float range = std::max(hi - p.min, 0.0f);  // the f16 min may sit above lo
  p.scale_h = f32_to_fp16(range / levels);
  p.scale = fp16_to_f32(p.scale_h);
  if (p.scale > 0 && p.scale * levels < range) {
    p.scale_h = static_cast<uint16_t>(p.scale_h + 1);
    p.scale = fp16_to_f32(p.scale_h);
  }
  return p;
}

inline uint8_t kivi_code(float x, const KiviQuant& p, int bits) {
  if (p.scale <= 0) return 0;
  const float q = std::nearbyint((x - p.min) / p.scale);
  return static_cast<uint8_t>(std::clamp(q, 0.0f, static_cast<float>((1 << bits) - 1)));
}

// Quantizes one full page: k, v (pt, d) f32 in; the device page out; k, v overwritten with the dequantized values.
inline lc::Status kivi_test_page(lc::KvPacking f, int32_t pt, int32_t d, std::vector<float>& k, std::vector<float>& v,
                                 uint8_t* dst) {
  const int bits = lc::kv_packing_bits(f);
  const int32_t n_groups = d / 32;
  std::vector<uint8_t> kc(k.size()), vc(v.size());
  std::vector<uint16_t> ks(d), km(d), vs(static_cast<size_t>(pt) * n_groups), vm(vs.size());
  for (int32_t ch = 0; ch < d; ++ch) {
    float lo = k[ch], hi = k[ch];
    for (int32_t t = 1; t < pt; ++t) {
      lo = std::min(lo, k[static_cast<size_t>(t) * d + ch]);
      hi = std::max(hi, k[static_cast<size_t>(t) * d + ch]);
    }
    const KiviQuant p = kivi_qparams(lo, hi, bits);
    ks[ch] = p.scale_h;
    km[ch] = p.min_h;
    for (int32_t t = 0; t < pt; ++t) {
      float& x = k[static_cast<size_t>(t) * d + ch];
      kc[static_cast<size_t>(t) * d + ch] = kivi_code(x, p, bits);
      x = p.min + p.scale * static_cast<float>(kc[static_cast<size_t>(t) * d + ch]);
    }
  }
  for (int32_t t = 0; t < pt; ++t)
    for (int32_t gi = 0; gi < n_groups; ++gi) {
      float* x = v.data() + static_cast<size_t>(t) * d + gi * 32;
      const auto [lo, hi] = std::minmax_element(x, x + 32);
      const KiviQuant p = kivi_qparams(*lo, *hi, bits);
      vs[static_cast<size_t>(t) * n_groups + gi] = p.scale_h;
      vm[static_cast<size_t>(t) * n_groups + gi] = p.min_h;
      for (int32_t i = 0; i < 32; ++i) {
        uint8_t& code = vc[static_cast<size_t>(t) * d + gi * 32 + i];
        code = kivi_code(x[i], p, bits);
        x[i] = p.min + p.scale * static_cast<float>(code);
      }
    }
  lc::KiviPageCodes codes;
  codes.k_codes = kc.data();
  codes.k_scale = ks.data();
  codes.k_min = km.data();
  codes.v_codes = vc.data();
  codes.v_scale = vs.data();
  codes.v_min = vm.data();
  return lc::kivi_page_pack(f, pt, d, codes, dst);
}

}  // namespace kivi_test
