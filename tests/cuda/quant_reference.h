// The GGUF weight formats for the CUDA tests, on the host: random rows of valid blocks and a plain scalar
// dequantizer. The device machine has no Highway, so the GPU tests cannot link the CPU backend; this dequantizer is
// their reference instead, and tests/quant_reference_test.cpp (CPU, runs in CI) checks it against
// cpu::dequantize_row bit for bit on the same random rows, which ties the GPU tests to the CPU backend.
//
// Header-only, host code, no CUDA and no fmt: built by nvcc alone on the device and by CMake here.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "core/ggml_type.h"

namespace longctx::quant_ref {

struct Geometry {
  int block_values = 0;  // values per block (1 for the float formats)
  int block_bytes = 0;
};
inline Geometry geometry(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return {1, 4};
    case GgmlType::F16: return {1, 2};
    case GgmlType::BF16: return {1, 2};
    case GgmlType::Q4_0: return {32, 18};
    case GgmlType::Q4_1: return {32, 20};
    case GgmlType::Q8_0: return {32, 34};
    case GgmlType::Q4_K: return {256, 144};
    case GgmlType::Q5_K: return {256, 176};
    case GgmlType::Q6_K: return {256, 210};
    default: return {};
  }
}
inline const char* name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::BF16: return "BF16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    default: return "?";
  }
}
inline size_t row_bytes(GgmlType t, int64_t n) {
  const Geometry g = geometry(t);
  return static_cast<size_t>(n / g.block_values) * g.block_bytes;
}

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_f32(h);
}
inline uint16_t bf16_bits(float x) {  // round to nearest even (finite x)
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}
inline float bf16_value(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// The first n values of one row (ggml's layouts, cpu/quant.cpp's expressions). n a multiple of the block.
inline void dequantize_row(GgmlType t, const uint8_t* src, float* dst, int64_t n) {
  const Geometry geo = geometry(t);
  for (int64_t blk = 0; blk < n / geo.block_values; ++blk) {
    const uint8_t* b = src + blk * geo.block_bytes;
    float* out = dst + blk * geo.block_values;
    switch (t) {
      case GgmlType::F32: std::memcpy(out, b, 4); break;
      case GgmlType::F16: out[0] = f16_at(b); break;
      case GgmlType::BF16: {
        uint16_t h;
        std::memcpy(&h, b, 2);
        out[0] = bf16_value(h);
        break;
      }
      case GgmlType::Q4_0:
      case GgmlType::Q4_1: {
        const bool has_min = t == GgmlType::Q4_1;
        const float d = f16_at(b), m = has_min ? f16_at(b + 2) : 0.0f;
        const uint8_t* qs = b + (has_min ? 4 : 2);
        for (int j = 0; j < 32; ++j) {
          const int q = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
          out[j] = has_min ? d * static_cast<float>(q) + m : d * static_cast<float>(q - 8);
        }
        break;
      }
      case GgmlType::Q8_0: {
        const float d = f16_at(b);
        for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
        break;
      }
      case GgmlType::Q4_K:
      case GgmlType::Q5_K: {
        const bool fifth = t == GgmlType::Q5_K;
        const float d = f16_at(b), dmin = f16_at(b + 2);
        const uint8_t* sc = b + 4;
        for (int s = 0; s < 8; ++s) {
          int scale, mn;
          if (s < 4) {
            scale = sc[s] & 63;
            mn = sc[s + 4] & 63;
          } else {
            scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
            mn = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
          }
          const float ds = d * static_cast<float>(scale), dm = dmin * static_cast<float>(mn);
          for (int i = 0; i < 32; ++i) {
            int q = (b[(fifth ? 48 : 16) + 32 * (s / 2) + i] >> (4 * (s % 2))) & 0x0f;
            if (fifth) q |= ((b[16 + i] >> s) & 1) << 4;
            out[32 * s + i] = ds * static_cast<float>(q) - dm;
          }
        }
        break;
      }
      case GgmlType::Q6_K: {
        const float d = f16_at(b + 208);
        for (int v = 0; v < 256; ++v) {
          const int h = v / 128, r = v % 128;
          const int lo = (b[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
          const int hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
          const float ds = d * static_cast<float>(static_cast<int8_t>(b[192 + v / 16]));
          out[v] = ds * static_cast<float>((lo | hi << 4) - 32);
        }
        break;
      }
      default: break;
    }
  }
}

// n_rows random rows of n values: random codes and scale bytes, f16 scales drawn over several octaves with both
// signs (finite, so no value is inf or NaN), float formats with values of unit scale.
inline std::vector<uint8_t> random_rows(GgmlType t, int64_t n_rows, int64_t n, std::mt19937_64& rng) {
  const size_t rb = row_bytes(t, n);
  std::vector<uint8_t> w(rb * n_rows);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : w) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), octave(-12.0f, -4.0f);
  auto put_f16 = [&](uint8_t* p, bool sign) {
    float v = std::exp2(octave(rng));
    if (sign && unit(rng) < 0) v = -v;
    const uint16_t h = f32_to_fp16(v);
    std::memcpy(p, &h, 2);
  };
  const Geometry geo = geometry(t);
  const int64_t n_blocks = static_cast<int64_t>(w.size()) / geo.block_bytes;
  for (int64_t i = 0; i < n_blocks; ++i) {
    uint8_t* b = w.data() + i * geo.block_bytes;
    switch (t) {
      case GgmlType::F32: {
        const float v = unit(rng) * 2.0f;
        std::memcpy(b, &v, 4);
        break;
      }
      case GgmlType::F16: {
        const uint16_t h = f32_to_fp16(unit(rng) * 2.0f);
        std::memcpy(b, &h, 2);
        break;
      }
      case GgmlType::BF16: {
        const uint16_t h = bf16_bits(unit(rng) * 2.0f);
        std::memcpy(b, &h, 2);
        break;
      }
      case GgmlType::Q4_0: case GgmlType::Q8_0: put_f16(b, true); break;
      case GgmlType::Q4_1: put_f16(b, true), put_f16(b + 2, true); break;
      case GgmlType::Q4_K: case GgmlType::Q5_K: put_f16(b, false), put_f16(b + 2, false); break;
      case GgmlType::Q6_K: put_f16(b + 208, true); break;  // its int8 scales stay random bytes: the full range
      default: break;
    }
  }
  return w;
}

}  // namespace longctx::quant_ref
