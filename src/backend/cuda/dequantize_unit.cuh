// One 32-value unit of a GGUF weight row decoded to f32 on the device, with the f32 operations of
// cpu::dequantize_row in the same order, so every value is the CPU's bit for bit (every product that feeds an addition
// is exact in f32: quant.cpp says why, so FMA contraction cannot change a value). Shared by the dequantizing kernels
// (dequantize.cu: to bf16 for the prefill GEMMs, rows to f32 for the embedding) and the f32 GEMV (matmul_f32.cu).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "core/ggml_type.h"

namespace longctx::cuda {

__device__ __forceinline__ uint32_t u16_at(const uint8_t* p) { return p[0] | static_cast<uint32_t>(p[1]) << 8; }
__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(u16_at(p))));
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (cpu::k_scale_min).
__device__ __forceinline__ void k_scale_min(const uint8_t* s, int j, int* sc, int* m) {  // s (12)
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Values [32u, 32u + 32) of the row at `row`, in f32.
__device__ inline void unit_values(GgmlType t, const uint8_t* row, int u, float (&v)[32]) {
  switch (t) {
    case GgmlType::F32: {
      const float* f = reinterpret_cast<const float*>(row) + 32 * u;
      for (int i = 0; i < 32; ++i) v[i] = f[i];
      return;
    }
    case GgmlType::F16:
      for (int i = 0; i < 32; ++i) v[i] = f16_at(row + 64 * u + 2 * i);
      return;
    case GgmlType::BF16:
      for (int i = 0; i < 32; ++i) v[i] = __uint_as_float(u16_at(row + 64 * u + 2 * i) << 16);
      return;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1: {
      const bool min = t == GgmlType::Q4_1;
      const uint8_t* b = row + (min ? 20 : 18) * u;
      const float d = f16_at(b), m = min ? f16_at(b + 2) : 0.0f;
      const uint8_t* qs = b + (min ? 4 : 2);
      for (int j = 0; j < 32; ++j) {
        const int q = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
        v[j] = min ? d * static_cast<float>(q) + m : d * static_cast<float>(q - 8);
      }
      return;
    }
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      const bool min = t == GgmlType::Q5_1;
      const uint8_t* b = row + (min ? 24 : 22) * u;
      const float d = f16_at(b), m = min ? f16_at(b + 2) : 0.0f;
      const uint8_t* hb = b + (min ? 4 : 2);
      const uint32_t qh = u16_at(hb) | u16_at(hb + 2) << 16;
      const uint8_t* qs = hb + 4;
      for (int j = 0; j < 32; ++j) {
        const int q = (j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4)) | static_cast<int>((qh >> j) & 1u) << 4;
        v[j] = min ? d * static_cast<float>(q) + m : d * static_cast<float>(q - 16);
      }
      return;
    }
    case GgmlType::Q8_0: {
      const uint8_t* b = row + 34 * u;
      const float d = f16_at(b);
      for (int j = 0; j < 32; ++j) v[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool fifth = t == GgmlType::Q5_K;
      const uint8_t* b = row + (fifth ? 176 : 144) * (u / 8);
      const int s = u % 8;  // the sub-block
      int sc, m;
      k_scale_min(b + 4, s, &sc, &m);
      const float ds = f16_at(b) * static_cast<float>(sc);
      const float dm = f16_at(b + 2) * static_cast<float>(m);
      const uint8_t* qh = b + 16;
      const uint8_t* q4 = b + (fifth ? 48 : 16) + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int i = 0; i < 32; ++i) {
        int q = (q4[i] >> shift) & 0x0f;
        if (fifth) q |= ((qh[i] >> s) & 1) << 4;
        v[i] = ds * static_cast<float>(q) - dm;
      }
      return;
    }
    case GgmlType::Q6_K: {
      const uint8_t* b = row + 210 * (u / 8);
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
      const float d = f16_at(b + 208);
      for (int i = 0; i < 32; ++i) {
        const int val = 32 * (u % 8) + i, h = val / 128, r = val % 128;
        const int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        const int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
        const float ds = d * static_cast<float>(scales[val / 16]);
        v[i] = ds * static_cast<float>((lo | hi << 4) - 32);
      }
      return;
    }
    default:
      for (int i = 0; i < 32; ++i) v[i] = __uint_as_float(0x7fc00000u);  // excluded by the launcher
  }
}

// The unit the rows of a format come in, in values: its block, and at least the 32 values unit_values decodes
// (ggml_traits needs core/ggml_type.cpp, which the nvcc-only device builds leave out).
inline int32_t unit_block_values(GgmlType t) {
  return t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q6_K ? 256 : 32;
}

// Bytes of one row of n_in values in a format unit_values decodes (0 for any other).
inline int64_t unit_row_bytes(GgmlType t, int64_t n_in) {
  switch (t) {
    case GgmlType::F32: return 4 * n_in;
    case GgmlType::F16: case GgmlType::BF16: return 2 * n_in;
    case GgmlType::Q4_0: return 18 * (n_in / 32);
    case GgmlType::Q4_1: return 20 * (n_in / 32);
    case GgmlType::Q5_0: return 22 * (n_in / 32);
    case GgmlType::Q5_1: return 24 * (n_in / 32);
    case GgmlType::Q8_0: return 34 * (n_in / 32);
    case GgmlType::Q4_K: return 144 * (n_in / 256);
    case GgmlType::Q5_K: return 176 * (n_in / 256);
    case GgmlType::Q6_K: return 210 * (n_in / 256);
    default: return 0;
  }
}

}  // namespace longctx::cuda
