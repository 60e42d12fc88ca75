// Scalar reference dequantizers. Block layouts as in ggml (ggml-common.h), little-endian, no padding:
//   Q4_0  {f16 d; u8 qs[16]}                      x = d * (q - 8)
//   Q4_1  {f16 d, m; u8 qs[16]}                   x = d * q + m
//   Q5_0  {f16 d; u32 qh; u8 qs[16]}              x = d * (q - 16), q = nibble | bit << 4
//   Q5_1  {f16 d, m; u32 qh; u8 qs[16]}           x = d * q + m
//   Q8_0  {f16 d; i8 qs[32]}                      x = d * q
//   Q4_K  {f16 d, dmin; u8 scales[12]; u8 qs[128]}            8 sub-blocks of 32, 6-bit scale and min each:
//                                                              x = (d * sc) * q - dmin * m
//   Q5_K  {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]} as Q4_K with a fifth bit
//   Q6_K  {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}       16 sub-blocks of 16: x = (d * sc) * (q - 32)
// In the 32-value formats value j < 16 is the low nibble of qs[j] and value j + 16 its high nibble.
//
// The f32 expressions keep gguf-py's order of operations (quants.py), so results agree bit for bit. Every
// product that feeds an addition is exact in f32 (an f16 significand of 11 bits times a q of at most 5 bits, or
// times a 6-bit scale or min and then a q of at most 5 bits: at most 22 significant bits), so a compiler that
// fuses a*b+c into an FMA, as the SIMD paths do on purpose, cannot change a result; Q6_K's (d*sc)*q may round,
// but nothing is added to it.
#include "backend/cpu/quant.h"

#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace longctx::cpu {
namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float load_f16(const uint8_t* p) { return fp16_to_f32(load_u16(p)); }

// The four 32-value formats differ only in whether a min m follows d (then x = d*q + m, else q is centred
// by subtracting half its range) and whether a plane of fifth bits precedes the nibbles.
enum class Min { kNone, kStored };
enum class HighBit { kNone, kStored };

void dequant_block32(const uint8_t* b, float* out, Min min, HighBit high) {  // out (32)
  const float d = load_f16(b);
  size_t off = 2;
  float m = 0.0f;
  if (min == Min::kStored) {
    m = load_f16(b + off);
    off += 2;
  }
  uint32_t qh = 0;
  if (high == HighBit::kStored) {
    qh = load_u32(b + off);
    off += 4;
  }
  const uint8_t* qs = b + off;  // (16)
  const int centre = high == HighBit::kStored ? 16 : 8;
  for (int j = 0; j < 32; ++j) {
    const int nib = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
    const int q = nib | static_cast<int>((qh >> j) & 1u) << 4;
    out[j] = min == Min::kStored ? d * static_cast<float>(q) + m : d * static_cast<float>(q - centre);
  }
}

void dequant_q8_0(const uint8_t* b, float* out) {  // out (32)
  const float d = load_f16(b);
  for (int j = 0; j < 32; ++j) out[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// Q4_K and Q5_K: 4 groups of 64 values; group g takes the low nibbles of qs[32g .. 32g+32) for sub-block 2g and
// the high nibbles for sub-block 2g+1; Q5_K's fifth bit of value i of sub-block s is bit s of qh[i].
void dequant_q45_k(const uint8_t* b, float* out, HighBit high) {  // out (256)
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;  // (32), Q5_K only
  const uint8_t* qs = b + (high == HighBit::kStored ? 48 : 16);  // (128)
  for (int s = 0; s < 8; ++s) {
    int sc, m;
    k_scale_min(scales, s, &sc, &m);
    const float ds = d * static_cast<float>(sc);
    const float dm = dmin * static_cast<float>(m);
    const uint8_t* q4 = qs + 32 * (s / 2);
    const int shift = 4 * (s % 2);
    for (int i = 0; i < 32; ++i) {
      int q = (q4[i] >> shift) & 0x0f;
      if (high == HighBit::kStored) q |= ((qh[i] >> s) & 1) << 4;
      out[32 * s + i] = ds * static_cast<float>(q) - dm;
    }
  }
}

// Q6_K: two halves of 128 values; in half h, value r takes its low 4 bits from ql[64h + r % 64] (low nibble for
// r < 64, high nibble above) and its top 2 bits from qh[32h + r % 32], bits 2*(r / 32) and up.
void dequant_q6_k(const uint8_t* b, float* out) {  // out (256)
  const uint8_t* ql = b;                                         // (128)
  const uint8_t* qh = b + 128;                                   // (64)
  const auto* scales = reinterpret_cast<const int8_t*>(b + 192);  // (16)
  const float d = load_f16(b + 208);
  for (int v = 0; v < 256; ++v) {
    const int h = v / 128, r = v % 128;
    const int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
    const float ds = d * static_cast<float>(scales[v / 16]);
    out[v] = ds * static_cast<float>((lo | hi << 4) - 32);
  }
}

}  // namespace

bool quant_supported(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16:
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  if (!quant_supported(t)) fail("dequantize_row: unsupported weight format {}", static_cast<uint32_t>(t));
  const auto tr = ggml_traits(t);
  if (n < 0 || n % tr.block_values != 0)
    fail("dequantize_row: {} values is not a whole number of {} blocks of {}", n, tr.name, tr.block_values);
  const auto* b = static_cast<const uint8_t*>(src);
  const int64_t n_blocks = n / tr.block_values;
  for (int64_t i = 0; i < n_blocks; ++i, b += tr.block_bytes, dst += tr.block_values) {
    switch (t) {
      case GgmlType::F32: std::memcpy(dst, b, 4); break;
      case GgmlType::F16: *dst = load_f16(b); break;
      case GgmlType::BF16: *dst = bf16_to_f32(load_u16(b)); break;
      case GgmlType::Q4_0: dequant_block32(b, dst, Min::kNone, HighBit::kNone); break;
      case GgmlType::Q4_1: dequant_block32(b, dst, Min::kStored, HighBit::kNone); break;
      case GgmlType::Q5_0: dequant_block32(b, dst, Min::kNone, HighBit::kStored); break;
      case GgmlType::Q5_1: dequant_block32(b, dst, Min::kStored, HighBit::kStored); break;
      case GgmlType::Q8_0: dequant_q8_0(b, dst); break;
      case GgmlType::Q4_K: dequant_q45_k(b, dst, HighBit::kNone); break;
      case GgmlType::Q5_K: dequant_q45_k(b, dst, HighBit::kStored); break;
      case GgmlType::Q6_K: dequant_q6_k(b, dst); break;
      default: break;  // excluded by quant_supported
    }
  }
}

}  // namespace longctx::cpu
