// Integer dot products of GGUF weight blocks with quantized activations (matmul_q8.h): the rows kernels for decode
// and small batches (below), and for prefill int8 panels with a VNNI micro-kernel ("prefill", further down).
//
// Per 32 weights of one row: the format unpacks its codes to 32 unsigned bytes in value order (nibbles, fifth or
// sixth bits merged in); one dpbusd (VNNI) or maddubs + madd (AVX2) per activation plane dots them with the 32
// activation bytes into 8 i32 lanes, which are converted once and accumulated in f32, scaled by (weight scale *
// activation scale). With AVX-512 a vector holds two such blocks. Offsets cost nothing per value: a centred code
// (c - C) starts the i32 lanes at -C * sum(x) (precomputed per call), a min m adds m * sum(x) per block in a
// vector of block sums, and the K-quants' sub-block scales and mins are decoded 8 at a time. Products and sums
// are exact in i32 (|code| <= 255, |q| <= 127, two planes 256 q + q2), so the only roundings are the
// activations' quantization and the f32 accumulation of block sums.
//
// 4 rows advance together a block (pair) at a time, so their 4 T accumulator chains interleave; the weights of a
// task, contiguous rows, are prefetched as one stream 8 KB ahead. Measured on 2-core Zen 5, one thread, a matrix
// from DRAM: 11-16 GB/s without the prefetch, 27-37 GB/s with it (the hardware prefetcher alone leaves the core
// waiting on DRAM latency between its bursts).
//
// x86 only (AVX2, AVX-512, AVX-512 VNNI): other targets return false and matmul.cpp runs the f32 kernels on
// the dequantized activations instead.
#include "backend/cpu/matmul_q8.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/quant.h"

// The x86 levels with different int8 instructions, and the fallback. AVX3_DL (Ice Lake, Zen 4 and later) is the
// one with VNNI; Highway 1.0 leaves it out of dynamic dispatch unless asked.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif
#define HWY_WANT_AVX3_DL

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/matmul_q8.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; the code between here and HWY_ONCE is per target.
#include <hwy/cache_control.h>
#include <hwy/highway.h>

#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#include <immintrin.h>
#endif

HWY_BEFORE_NAMESPACE();
// Highway 1.0.3 compiles AVX3_DL for "avxvnni" (the VEX form of Alder Lake) but detects it by AVX512_VNNI, the
// EVEX form every AVX3_DL CPU has: enable that one for the dpbusd below.
#if HWY_TARGET == HWY_AVX3_DL
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif
#endif
namespace longctx::cpu::q8 {
namespace HWY_NAMESPACE {
namespace {

#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL

constexpr bool kVnni = HWY_TARGET == HWY_AVX3_DL;

// A vector holds kSlots 32-value blocks ("slots" of 32 bytes, 8 i32 or f32 lanes each): two with AVX-512, one
// with AVX2. The kernels below are written once for both; the helpers up to the formats are the only code that
// differs by width.
#if HWY_TARGET == HWY_AVX2
constexpr int kSlots = 1;
using VI = __m256i;
using VF = __m256;
HWY_INLINE VI LoadI(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
HWY_INLINE VI SetI8(int8_t v) { return _mm256_set1_epi8(v); }
HWY_INLINE VI And(VI a, VI b) { return _mm256_and_si256(a, b); }
HWY_INLINE VI Or(VI a, VI b) { return _mm256_or_si256(a, b); }
HWY_INLINE VI Xor(VI a, VI b) { return _mm256_xor_si256(a, b); }
HWY_INLINE VI Shr16(VI a, int n) { return _mm256_srli_epi16(a, n); }
HWY_INLINE VI Shl16(VI a, int n) { return _mm256_slli_epi16(a, n); }
HWY_INLINE VF ToFloat(VI a) { return _mm256_cvtepi32_ps(a); }
HWY_INLINE VF ZeroF() { return _mm256_setzero_ps(); }
HWY_INLINE VI Shl32x8(VI a) { return _mm256_slli_epi32(a, 8); }
HWY_INLINE VI AddI(VI a, VI b) { return _mm256_add_epi32(a, b); }
HWY_INLINE VI ZeroI() { return _mm256_setzero_si256(); }
HWY_INLINE VF MulAdd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
#else
constexpr int kSlots = 2;
using VI = __m512i;
using VF = __m512;
HWY_INLINE VI LoadI(const void* p) { return _mm512_loadu_si512(p); }
HWY_INLINE VI SetI8(int8_t v) { return _mm512_set1_epi8(v); }
HWY_INLINE VI And(VI a, VI b) { return _mm512_and_si512(a, b); }
HWY_INLINE VI Or(VI a, VI b) { return _mm512_or_si512(a, b); }
HWY_INLINE VI Xor(VI a, VI b) { return _mm512_xor_si512(a, b); }
HWY_INLINE VI Shr16(VI a, int n) { return _mm512_srli_epi16(a, static_cast<unsigned>(n)); }
HWY_INLINE VI Shl16(VI a, int n) { return _mm512_slli_epi16(a, static_cast<unsigned>(n)); }
HWY_INLINE VF ToFloat(VI a) { return _mm512_cvtepi32_ps(a); }
HWY_INLINE VF ZeroF() { return _mm512_setzero_ps(); }
HWY_INLINE VI Shl32x8(VI a) { return _mm512_slli_epi32(a, 8); }
HWY_INLINE VI AddI(VI a, VI b) { return _mm512_add_epi32(a, b); }
HWY_INLINE VI ZeroI() { return _mm512_setzero_si512(); }
HWY_INLINE VF MulAdd(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
#endif

// 32 bytes from each slot's pointer.
HWY_INLINE VI Load32(const uint8_t* const* p) {
#if HWY_TARGET == HWY_AVX2
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[0]));
#else
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[0]))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[1])), 1);
#endif
}

// Each slot's 16 bytes of nibbles as its 32 codes: value j < 16 the low nibble of byte j, 16 + j the high one.
HWY_INLINE VI Nibbles16(const uint8_t* const* p) {
#if HWY_TARGET == HWY_AVX2
  const VI v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[0])));
  return And(_mm256_blend_epi32(v, Shr16(v, 4), 0xF0), SetI8(0x0f));
#else
  VI v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[0])));
  v = _mm512_mask_broadcast_i32x4(v, 0xFF00, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p[1])));
  return And(_mm512_mask_blend_epi64(0xCC, v, Shr16(v, 4)), SetI8(0x0f));  // odd 128-bit lanes: high nibbles
#endif
}

// Slots (lo, hi) of 32 bytes v: the low nibbles, then the high ones (K-quant sub-blocks 2g, 2g + 1). With one
// slot per vector, half h of them.
HWY_INLINE VI NibblePair(const uint8_t* p, int h) {
#if HWY_TARGET == HWY_AVX2
  const VI v = LoadI(p);
  return And(h == 0 ? v : Shr16(v, 4), SetI8(0x0f));
#else
  (void)h;
  const VI v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return And(_mm512_mask_blend_epi64(0xF0, v, Shr16(v, 4)), SetI8(0x0f));
#endif
}

// The 32 bytes at p, in every slot.
HWY_INLINE VI Dup32(const uint8_t* p) {
#if HWY_TARGET == HWY_AVX2
  return LoadI(p);
#else
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
}

// Per slot i, bits [n_i, n_i + kBits) of each byte of v moved to bit 4 (the high part of a code), n_i = first +
// step * i. Shifting 16-bit lanes is safe: the mask keeps only bits that came from the same byte.
template <int kBits>
HWY_INLINE VI HighBits(VI v, int first, int step) {
  const int8_t mask = kBits == 2 ? 0x30 : 0x10;
#if HWY_TARGET == HWY_AVX2
  (void)step;
  return And(Shl16(Shr16(v, first), 4), SetI8(mask));
#else
  const VI by = _mm512_mask_blend_epi64(0xF0, _mm512_set1_epi16(static_cast<int16_t>(first)),
                                        _mm512_set1_epi16(static_cast<int16_t>(first + step)));
  return And(Shl16(_mm512_srlv_epi16(v, by), 4), SetI8(mask));
#endif
}

// 0x10 in byte j of slot i where bit j of qh[i] is set: Q5_0/Q5_1's fifth bits.
HWY_INLINE VI FifthBits(const uint32_t* qh) {
#if HWY_TARGET == HWY_AVX2
  // Byte j takes byte j / 8 of qh (each 128-bit half sees all four), then tests its bit j % 8.
  const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                       2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
  const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh[0])), idx), bit);
  return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(0x10));
#else
  return _mm512_maskz_mov_epi8(qh[0] | static_cast<uint64_t>(qh[1]) << 32, SetI8(0x10));  // the bit plane is a mask
#endif
}

// acc + (i32 lane k: sum of u[4k + i] * s[4k + i], i < 4), bytes u unsigned and s signed. Without VNNI, maddubs
// sums pairs in saturating i16: exact while 2 * 255 * 127 fits, which holds for the codes below 128 handed to it
// (Q8_0 goes through DotSigned there).
HWY_INLINE VI Dot(VI acc, VI u, VI s) {
#if HWY_TARGET == HWY_AVX3_DL
  return _mm512_dpbusd_epi32(acc, u, s);
#elif HWY_TARGET == HWY_AVX3
  return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// The same for signed w, as |w| (<= 128) times s with w's sign: exact in maddubs (llama.cpp's trick).
HWY_INLINE VI DotSigned(VI acc, VI w, VI s) {
#if HWY_TARGET == HWY_AVX2
  return Dot(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w));
#else
  return Dot(acc, _mm512_abs_epi8(w), _mm512_mask_sub_epi8(s, _mm512_movepi8_mask(w), _mm512_setzero_si512(), s));
#endif
}

// Lanes of slot i: entry first + stride * i of table for all 8 (per 8), or for 4 lanes each that entry and the
// next (per 4: Q6_K's two scale groups per slot). Tables are the 8 floats of a ymm.
HWY_INLINE VF TableLanes(__m256 table, int first, int stride, int per) {
#if HWY_TARGET == HWY_AVX2
  const __m256i idx = per == 8 ? _mm256_set1_epi32(first)
                               : _mm256_setr_epi32(first, first, first, first, first + 1, first + 1, first + 1, first + 1);
  (void)stride;
  return _mm256_permutevar8x32_ps(table, idx);
#else
  const int a = first, b = first + (per == 8 ? stride : 1), c = first + stride, e = c + 1;
  const __m512i idx = per == 8 ? _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
                               : _mm512_setr_epi32(a, a, a, a, b, b, b, b, c, c, c, c, e, e, e, e);
  return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(table));
#endif
}

HWY_INLINE float SumLanes(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#if HWY_TARGET != HWY_AVX2  // there VF is __m256
HWY_INLINE float SumLanes(VF v) { return _mm512_reduce_add_ps(v); }
#endif

HWY_INLINE uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
HWY_INLINE float LoadF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// The pairs of f16 at each slot's block start (d, then m or the first code bytes) as f32 lanes [2i, 2i + 1].
// A missing second slot (p[1] null, an odd block count) reads as zeros.
HWY_INLINE __m128 HalfPairs(const uint8_t* const* p) {
  __m128i h = _mm_cvtsi32_si128(static_cast<int>(LoadU32(p[0])));
  if constexpr (kSlots == 2) h = _mm_insert_epi32(h, p[1] != nullptr ? static_cast<int>(LoadU32(p[1])) : 0, 1);
  return _mm_cvtph_ps(h);
}

// ---- accumulating a row's dot products with T tokens ----
//
// Formats hand over vectors of codes with their slots' scales; Tokens dots them with each token's activations
// and adds to the row's Acc: acc (f32 lanes) the scaled block dots, offp lanes 2i + 1 the 32-value formats' min
// terms, off8 the K-quants' (negated) min terms, table the current super-block's scales times the activations'.

template <int T>
struct Acc {
  VF acc[T];
  __m128 offp[T];
  __m256 off8[T];
  __m256 table[T];
  HWY_INLINE void Init() {
    for (int t = 0; t < T; ++t) acc[t] = ZeroF(), offp[t] = _mm_setzero_ps(), off8[t] = _mm256_setzero_ps();
  }
  HWY_INLINE float Result(int t) const {
    return SumLanes(acc[t]) + SumLanes(off8[t]) + _mm_cvtss_f32(_mm_movehdup_ps(offp[t])) +
           (kSlots == 2 ? _mm_cvtss_f32(_mm_shuffle_ps(offp[t], offp[t], 3)) : 0.0f);
  }
};

template <int T>
struct Tokens {
  const int8_t* q[T];      // (n_in + pad) each: the activation rows, the last repeated past the valid ones
  const int8_t* q2[T];     // (n_in + pad) each, or null with one plane
  const int32_t* corr[T];  // (n_in / 4 + pad): -C * sums of 4 of Q for centred codes, zeros otherwise
  const float* d[T];       // (n_in / 32 + pad)
  const float* s32[T];     // (n_in / 32 + pad)
  const float* ds[T];      // (n_in / 32 + pad, 2)

  // Codes times Q, the slots from sub-block j on. The plane test is the same for the whole call: predicted.
  HWY_INLINE VI Dots(int t, int64_t j, VI codes) const {
    if (q2[t] == nullptr) return Dot(LoadI(corr[t] + 8 * j), codes, LoadI(q[t] + 32 * j));
    const VI hi = Dot(ZeroI(), codes, LoadI(q[t] + 32 * j));  // |hi| < 2^17: shifting by 8 stays in i32
    return Dot(AddI(Shl32x8(hi), LoadI(corr[t] + 8 * j)), codes, LoadI(q2[t] + 32 * j));
  }
  // 32-value formats: slots j, j + 1 with their (d, m) pairs in dm; kMin accumulates m * block sum.
  template <bool kMin>
  HWY_INLINE void Block32(Acc<T>& a, int64_t j, VI codes, __m128 dm) const {
    for (int t = 0; t < T; ++t) {
      const __m128 p = _mm_mul_ps(dm, _mm_loadu_ps(ds[t] + 2 * j));  // d dx, m s per slot
      if constexpr (kMin) a.offp[t] = _mm_add_ps(a.offp[t], p);
      a.acc[t] = MulAdd(ToFloat(Dots(t, j, codes)), TableLanes(_mm256_castps128_ps256(p), 0, 2, 8), a.acc[t]);
    }
  }
  HWY_INLINE void Signed(Acc<T>& a, int64_t j, VI w, __m128 dm) const {  // Q8_0 without VNNI: no centre
    for (int t = 0; t < T; ++t) {
      const __m128 p = _mm_mul_ps(dm, _mm_loadu_ps(ds[t] + 2 * j));
      VI dot = DotSigned(ZeroI(), w, LoadI(q[t] + 32 * j));
      if (q2[t] != nullptr) dot = DotSigned(Shl32x8(dot), w, LoadI(q2[t] + 32 * j));
      a.acc[t] = MulAdd(ToFloat(dot), TableLanes(_mm256_castps128_ps256(p), 0, 2, 8), a.acc[t]);
    }
  }
  // K-quants: the scales of 8 consecutive sub-blocks from j (times the activations' d, per token), and the min
  // terms of those sub-blocks, mins the weights' (negated) mins per sub-block.
  HWY_INLINE void Table8(Acc<T>& a, int64_t j, __m256 scales, __m256 mins) const {
    for (int t = 0; t < T; ++t) {
      a.table[t] = _mm256_mul_ps(scales, _mm256_loadu_ps(d[t] + j));
      a.off8[t] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(s32[t] + j), a.off8[t]);
    }
  }
  // Q6_K: the scales of 8 groups of 16 from sub-block j on (4 sub-blocks), times each group's activation d.
  HWY_INLINE void Table16(Acc<T>& a, int64_t j, __m256 scales) const {
    const __m256i twice = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (int t = 0; t < T; ++t)
      a.table[t] = _mm256_mul_ps(scales, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(d[t] + j)), twice));
  }
  // Slots from sub-block j, scaled by table entries first + stride i (per 8) or first + 2 i, + 1 (per 4).
  HWY_INLINE void FromTable(Acc<T>& a, int64_t j, VI codes, int first, int stride, int per) const {
    for (int t = 0; t < T; ++t)
      a.acc[t] = MulAdd(ToFloat(Dots(t, j, codes)), TableLanes(a.table[t], first, stride, per), a.acc[t]);
  }
};

// ---- formats ----
//
// Step(row, b, x, acc) reads the blocks of one vector step at block b of a row and hands their codes, unsigned
// bytes in value order, to x with acc: kSlots blocks for the 32-value formats (kStepBlocks), one super-block for
// the K-quants. Tail(row, b, x, acc), 32-value formats only, reads the single block left at an odd end. kCentre
// is the C of codes (q - C), folded into the dot products' start (Activations::sum4); 0 for formats with a min.

enum class Offset { kCentred, kMin };
enum class HighBit { kNone, kStored };

// Q4_0, Q4_1, Q5_0, Q5_1 (layouts in quant.cpp).
template <Offset kOffset, HighBit kHigh>
struct Block32Format {
  static constexpr int64_t kBlockValues = 32, kStepBlocks = kSlots;
  static constexpr size_t kBlockBytes = 18 + (kOffset == Offset::kMin ? 2 : 0) + (kHigh == HighBit::kStored ? 4 : 0);
  static constexpr int kCentre = kOffset == Offset::kMin ? 0 : kHigh == HighBit::kStored ? 16 : 8;
  static constexpr size_t kQs = 2 + (kOffset == Offset::kMin ? 2 : 0) + (kHigh == HighBit::kStored ? 4 : 0);

  // Slots from blocks src[0], src[1]; head1 is src[1], or null for a missing second block (then scaled by 0).
  template <int T>
  HWY_INLINE static void Vector(const uint8_t* const* src, const uint8_t* head1, int64_t b, const Tokens<T>& x,
                                Acc<T>& acc) {
    const uint8_t* qs[2] = {src[0] + kQs, src[kSlots - 1] + kQs};
    VI codes = Nibbles16(qs);
    if constexpr (kHigh == HighBit::kStored) {
      const uint32_t qh[2] = {LoadU32(qs[0] - 4), LoadU32(qs[kSlots - 1] - 4)};
      codes = Or(codes, FifthBits(qh));
    }
    const uint8_t* heads[2] = {src[0], head1};
    x.template Block32<kOffset == Offset::kMin>(acc, b, codes, HalfPairs(heads));
  }
  template <int T>
  HWY_INLINE static void Step(const uint8_t* row, int64_t b, const Tokens<T>& x, Acc<T>& acc) {
    const uint8_t* src[2] = {row + static_cast<size_t>(b) * kBlockBytes, row + static_cast<size_t>(b + 1) * kBlockBytes};
    Vector(src, src[1], b, x, acc);
  }
  template <int T>
  HWY_INLINE static void Tail(const uint8_t* row, int64_t b, const Tokens<T>& x, Acc<T>& acc) {
    const uint8_t* src[2] = {row + static_cast<size_t>(b) * kBlockBytes, row + static_cast<size_t>(b) * kBlockBytes};
    Vector(src, nullptr, b, x, acc);
  }
  // For prefill's panels: one block as 32 codes in value order, with w = a * code + b (the centre or the min).
  static constexpr int kGroup = 32;
  HWY_INLINE static void Unpack(const uint8_t* src, uint8_t* codes, float* a, float* b) {  // codes (32), a, b (1)
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + kQs));
    __m128i lo = _mm_and_si128(v, _mm_set1_epi8(0x0f));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0f));
    if constexpr (kHigh == HighBit::kStored) {  // bit j of qh to bit 4 of code j
      const uint64_t qh = LoadU32(src + kQs - 4), bit4 = 0x1010101010101010ull;
      lo = _mm_or_si128(lo, _mm_set_epi64x(static_cast<int64_t>(_pdep_u64(qh >> 8, bit4)),
                                           static_cast<int64_t>(_pdep_u64(qh, bit4))));
      hi = _mm_or_si128(hi, _mm_set_epi64x(static_cast<int64_t>(_pdep_u64(qh >> 24, bit4)),
                                           static_cast<int64_t>(_pdep_u64(qh >> 16, bit4))));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), lo);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 16), hi);
    const float d = LoadF16(src);
    a[0] = d;
    b[0] = kOffset == Offset::kMin ? LoadF16(src + 2) : -static_cast<float>(kCentre) * d;
  }
};

struct Q8_0Format {
  static constexpr int64_t kBlockValues = 32, kStepBlocks = kSlots;
  static constexpr size_t kBlockBytes = 34;
  // With VNNI w + 128 is the unsigned code (one xor) and the 128 comes back off as a centre; without, the sign
  // trick needs no centre.
  static constexpr int kCentre = kVnni ? 128 : 0;

  template <int T>
  HWY_INLINE static void Vector(const uint8_t* const* src, const uint8_t* head1, int64_t b, const Tokens<T>& x,
                                Acc<T>& acc) {
    const uint8_t* qs[2] = {src[0] + 2, src[kSlots - 1] + 2};
    const uint8_t* heads[2] = {src[0], head1};
    const VI w = Load32(qs);
    if constexpr (kVnni) {
      x.template Block32<false>(acc, b, Xor(w, SetI8(static_cast<int8_t>(0x80))), HalfPairs(heads));
    } else {
      x.Signed(acc, b, w, HalfPairs(heads));
    }
  }
  template <int T>
  HWY_INLINE static void Step(const uint8_t* row, int64_t b, const Tokens<T>& x, Acc<T>& acc) {
    const uint8_t* src[2] = {row + static_cast<size_t>(b) * kBlockBytes, row + static_cast<size_t>(b + 1) * kBlockBytes};
    Vector(src, src[1], b, x, acc);
  }
  template <int T>
  HWY_INLINE static void Tail(const uint8_t* row, int64_t b, const Tokens<T>& x, Acc<T>& acc) {
    const uint8_t* src[2] = {row + static_cast<size_t>(b) * kBlockBytes, row + static_cast<size_t>(b) * kBlockBytes};
    Vector(src, nullptr, b, x, acc);
  }
  // Prefill's panels: the code is w + 128 (VNNI multiplies unsigned codes), the centre -128 d.
  static constexpr int kGroup = 32;
  HWY_INLINE static void Unpack(const uint8_t* src, uint8_t* codes, float* a, float* b) {  // codes (32), a, b (1)
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes), _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))));
    const float d = LoadF16(src);
    a[0] = d;
    b[0] = -128.0f * d;
  }
};

// The 6-bit scales and mins of a Q4_K/Q5_K block's 8 sub-blocks (k_scale_min's layout) as 8 + 8 bytes.
HWY_INLINE void KScalesMins(const uint8_t* s, uint8_t* sc, uint8_t* mn) {  // s (12), sc (8), mn (8)
  uint32_t u[3];
  std::memcpy(u, s, 12);
  const uint32_t sc_lo = u[0] & 0x3f3f3f3f, mn_lo = u[1] & 0x3f3f3f3f;
  const uint32_t sc_hi = (u[2] & 0x0f0f0f0f) | ((u[0] >> 6) & 0x03030303) << 4;
  const uint32_t mn_hi = ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 6) & 0x03030303) << 4;
  std::memcpy(sc, &sc_lo, 4);
  std::memcpy(sc + 4, &sc_hi, 4);
  std::memcpy(mn, &mn_lo, 4);
  std::memcpy(mn + 4, &mn_hi, 4);
}

HWY_INLINE __m256 BytesToFloat(const void* p, bool is_signed) {  // 8 bytes at p
  const __m128i b = _mm_loadl_epi64(static_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(is_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
}

// Q4_K and Q5_K: sub-block s takes nibble s % 2 of qs[32 (s / 2) ..], Q5_K's fifth bit is bit s of qh[i].
template <HighBit kHigh>
struct Q45KFormat {
  static constexpr int64_t kBlockValues = 256, kStepBlocks = 1;
  static constexpr size_t kBlockBytes = kHigh == HighBit::kStored ? 176 : 144;
  static constexpr int kCentre = 0;
  template <int T>
  HWY_INLINE static void Step(const uint8_t* row, int64_t b, const Tokens<T>& x, Acc<T>& acc) {
    const uint8_t* src = row + static_cast<size_t>(b) * kBlockBytes;
    const uint8_t* qs = src + (kHigh == HighBit::kStored ? 48 : 16);  // (128)
    alignas(16) uint8_t sc[8], mn[8];
    KScalesMins(src + 4, sc, mn);
    x.Table8(acc, 8 * b, _mm256_mul_ps(_mm256_set1_ps(LoadF16(src)), BytesToFloat(sc, false)),
             _mm256_mul_ps(_mm256_set1_ps(-LoadF16(src + 2)), BytesToFloat(mn, false)));
    [[maybe_unused]] VI qh;
    if constexpr (kHigh == HighBit::kStored) qh = Dup32(src + 16);
    HWY_UNROLL(4)
    for (int g = 0; g < 4; ++g) {  // sub-blocks 2g (low nibbles) and 2g + 1 (high nibbles)
      HWY_UNROLL(2)
      for (int h = 0; h < 2 / kSlots; ++h) {
        const int sub = 2 * g + h;  // the first sub-block of the vector
        VI codes = NibblePair(qs + 32 * g, h);
        if constexpr (kHigh == HighBit::kStored) codes = Or(codes, HighBits<1>(qh, sub, 1));
        x.FromTable(acc, 8 * b + sub, codes, sub, 1, 8);
      }
    }
  }
  // Prefill's panels: 256 codes in value order, a and b per sub-block (d * scale, -dmin * min).
  static constexpr int kGroup = 32;
  HWY_INLINE static void Unpack(const uint8_t* src, uint8_t* codes, float* a, float* b) {  // codes (256), a, b (8)
    const uint8_t* qs = src + (kHigh == HighBit::kStored ? 48 : 16);  // (128)
    alignas(16) uint8_t sc[8], mn[8];
    KScalesMins(src + 4, sc, mn);
    const float d = LoadF16(src), dmin = LoadF16(src + 2);
    for (int s = 0; s < 8; ++s) {
      a[s] = d * static_cast<float>(sc[s]);
      b[s] = -(dmin * static_cast<float>(mn[s]));
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
    [[maybe_unused]] __m256i qh;
    if constexpr (kHigh == HighBit::kStored) qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16));
    for (int g = 0; g < 4; ++g) {  // sub-blocks 2g (low nibbles) and 2g + 1 (high nibbles)
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * g));
      __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      if constexpr (kHigh == HighBit::kStored) {  // bits 2g, 2g + 1 of each byte to bits 0, 1 (none cross a byte)
        const __m256i h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 64 * g), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 64 * g + 32), hi);
    }
  }
};

// Q6_K: in half h, value r has its low 4 bits in nibble r / 64 of ql[64h + r % 64] and its top 2 bits at bit
// 2 (r / 32) of qh[32h + r % 32]; so 32-value sub-block k of the half reads ql[64h + 32 (k % 2) ..], nibble k / 2,
// and bits 2k of qh[32h ..]. Its two 16-value groups have their own int8 scales; codes are centred on 32.
struct Q6KFormat {
  static constexpr int64_t kBlockValues = 256, kStepBlocks = 1;
  static constexpr size_t kBlockBytes = 210;
  static constexpr int kCentre = 32;
  template <int T>
  HWY_INLINE static void Step(const uint8_t* row, int64_t b, const Tokens<T>& x, Acc<T>& acc) {
    const uint8_t* src = row + static_cast<size_t>(b) * kBlockBytes;
    const __m256 d = _mm256_set1_ps(LoadF16(src + 208));
    HWY_UNROLL(2)
    for (int h = 0; h < 2; ++h) {
      x.Table16(acc, 8 * b + 4 * h, _mm256_mul_ps(d, BytesToFloat(src + 192 + 8 * h, true)));
      const VI qh = Dup32(src + 128 + 32 * h);
      HWY_UNROLL(4)
      for (int k = 0; k < 4; k += kSlots) {  // sub-blocks k (and k + 1): ql bytes 32 k.. of the half, contiguous
        const VI l = LoadI(src + 64 * h + 32 * (k % 2));
        const VI low = And(k < 2 ? l : Shr16(l, 4), SetI8(0x0f));
        x.FromTable(acc, 8 * b + 4 * h + k, Or(low, HighBits<2>(qh, 2 * k, 2)), 2 * k, 2, 4);
      }
    }
  }
  // Prefill's panels: 256 codes (0..63) in value order, a and b per 16-value group (d * scale, -32 a).
  static constexpr int kGroup = 16;
  HWY_INLINE static void Unpack(const uint8_t* src, uint8_t* codes, float* a, float* b) {  // codes (256), a, b (16)
    const float d = LoadF16(src + 208);
    const auto* scales = reinterpret_cast<const int8_t*>(src + 192);
    for (int j = 0; j < 16; ++j) {
      a[j] = d * static_cast<float>(scales[j]);
      b[j] = -32.0f * a[j];
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 64 * h + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 128 + 32 * h));
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4))};
      for (int k = 0; k < 4; ++k) _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + 128 * h + 32 * k), q[k]);
    }
  }
};

// How far ahead of the rows being read the stream is prefetched: measured best of 4, 8, 16 and 32 KB (larger
// ones waste the start of the small tasks of small matrices).
constexpr size_t kPrefetchBytes = 8192;

// Rows processed per pass: 4 rows keep 4 T accumulator chains in flight; with 4 tokens and the 16 registers of
// AVX2 that would spill, so 2 rows there.
template <int T>
constexpr int kRowsPerPass = (T >= 4 && HWY_TARGET == HWY_AVX2) ? 2 : 4;

// y (n_valid, n_out) at rows r0 .. r0 + R for tokens t0 .. t0 + n_valid, R = kRowsPerPass<T>; rows past r_end - 1
// repeat the last one and are dropped, as are tokens past n_valid. The rows advance together a step at a time, so
// their R T accumulator chains interleave. The prefetch stream ends at pf_end, the end of this task's rows; *pf is
// the next byte it fetches.
template <class Fmt, int T>
void DotRows(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r_end, const Activations& a,
             const int32_t* corr, int64_t t0, int64_t n_valid, int64_t n_out, float* y, const uint8_t** pf,
             const uint8_t* pf_end) {
  constexpr int kR = kRowsPerPass<T>;
  constexpr int64_t kStep = Fmt::kStepBlocks;
  const int64_t n_in = a.n_in, n_blocks = n_in / Fmt::kBlockValues;
  Tokens<T> x;
  for (int t = 0; t < T; ++t) {
    const int64_t tok = t0 + std::min<int64_t>(t, n_valid - 1);
    x.q[t] = a.q.data() + tok * n_in;
    x.q2[t] = a.n_planes == 2 ? a.q2.data() + tok * n_in : nullptr;
    x.corr[t] = corr + tok * (n_in / 4);
    x.d[t] = a.d.data() + tok * (n_in / 32);
    x.s32[t] = a.s32.data() + tok * (n_in / 32);
    x.ds[t] = a.ds.data() + tok * (n_in / 32) * 2;
  }
  const uint8_t* rows[kR];
  Acc<T> acc[kR];
  for (int j = 0; j < kR; ++j) {
    rows[j] = w + static_cast<size_t>(std::min(r0 + j, r_end - 1)) * row_bytes;
    acc[j].Init();
  }
  // The rows of a pass are contiguous: the stream runs kPrefetchBytes ahead of the bytes consumed so far.
  const uint8_t* want = rows[0] + kPrefetchBytes;
  int64_t b = 0;
  for (; b + kStep <= n_blocks; b += kStep) {
    want += kR * kStep * Fmt::kBlockBytes;
    for (const uint8_t* end = std::min(want, pf_end); *pf < end; *pf += 64) hwy::Prefetch(*pf);
    HWY_UNROLL(4)
    for (int j = 0; j < kR; ++j) Fmt::Step(rows[j], b, x, acc[j]);
  }
  if constexpr (kStep > 1) {
    if (b < n_blocks)
      for (int j = 0; j < kR; ++j) Fmt::Tail(rows[j], b, x, acc[j]);
  }
  for (int j = 0; j < kR && r0 + j < r_end; ++j)
    for (int t = 0; t < T && t < n_valid; ++t) y[(t0 + t) * n_out + r0 + j] = acc[j].Result(t);
}

// y (n_tok, n_out) at rows [r0, r1): tokens in groups of 4 (3 padded to 4), then 2 or 1, each group reading the
// rows again (from cache, for the small batches this path serves).
template <class Fmt>
void RowsKernel(const uint8_t* w, int64_t r0, int64_t r1, int64_t n_out, const Activations& a,
                const int32_t* corr, float* y) {
  const size_t row_bytes = static_cast<size_t>(a.n_in / Fmt::kBlockValues) * Fmt::kBlockBytes;
  const uint8_t* pf_end = w + static_cast<size_t>(r1) * row_bytes;
  for (int64_t t = 0; t < a.n_tok;) {
    const int64_t n = std::min<int64_t>(4, a.n_tok - t);
    const uint8_t* pf = w + static_cast<size_t>(r0) * row_bytes;
    auto pass = [&](auto tokens) {
      constexpr int kT = decltype(tokens)::value;
      for (int64_t r = r0; r < r1; r += kRowsPerPass<kT>)
        DotRows<Fmt, kT>(w, row_bytes, r, r1, a, corr, t, n, n_out, y, &pf, pf_end);
    };
    if (n >= 3) {
      pass(std::integral_constant<int, 4>());
    } else if (n == 2) {
      pass(std::integral_constant<int, 2>());
    } else {
      pass(std::integral_constant<int, 1>());
    }
    t += n;
  }
}

// ---- prefill (n_tok >= 8): int8 panels and a register-tiled VNNI kernel ----
//
// The rows kernel above unpacks every weight block once per group of 4 tokens, which prefill cannot afford
// (measured: pp512 halved). Here kGemmRows rows are unpacked once into a panel of codes laid out as dpbusd's
// operand, 4 consecutive k of 16 rows per 64-byte vector (two vectors per step of 4 k), with each row's a and b per
// group of G values (w = a * code + b; G = 32, 16 for Q6_K's scale groups). The kernel then keeps kGemmTok tokens x
// 2 vectors of i32 accumulators for one group (G / 4 dpbusd each, a broadcast of 4 activation bytes against a
// panel vector), and per group converts them once and adds a * d_x * dot + b * (d_x sum Q) into f32 accumulators.
// The integer dot of a group is exact (|code| <= 255, |Q| <= 32767, G <= 32: below 2^29), so the values are the
// decode path's up to the order of the f32 sums. The panel (n_in 2048: 64 KB of codes, 16 KB of scales) stays in
// L2 while every token passes over it.
#if HWY_TARGET == HWY_AVX3_DL
// Tokens per pass: 2 T i32 + 2 T f32 accumulators, 2 panel vectors and a broadcast within 32 registers.
constexpr int kGemmTok = 6;
static_assert(kGemmRows == 32, "the kernel holds a panel step as two vectors of 16 rows");

struct GemmScratch {
  std::vector<uint8_t> codes;  // (n_in / 4, kGemmRows, 4): step k4 is 128 bytes, rows 0-15 then 16-31
  std::vector<float> ab;       // (n_in / G, 2, kGemmRows): a of each row, then b
  std::vector<uint8_t> rows;   // (16, n_in rounded up to 64): 16 rows' codes in value order, zero padded
  std::vector<float> ra, rb;   // (n_in / G): one row's a and b
};

// Transposes 16 x 16 u32: lane c of v[r] goes to lane r of v[c]. 4 k of a row are one u32, so this turns 16
// rows x 64 k into the 16 panel vectors of 4 k x 16 rows. Pairs of u32 and u64 within 128-bit lanes, then the
// 4 x 4 transpose of the lanes themselves.
HWY_INLINE void Transpose16x16(__m512i* v) {
  __m512i a[16], b[16];
  for (int i = 0; i < 16; i += 2) {
    a[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // lane L of b[i + m]: lane 4L + m of rows i .. i + 4
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512i y0 = _mm512_shuffle_i32x4(b[m], b[4 + m], 0x44), y1 = _mm512_shuffle_i32x4(b[m], b[4 + m], 0xEE);
    const __m512i y2 = _mm512_shuffle_i32x4(b[8 + m], b[12 + m], 0x44);
    const __m512i y3 = _mm512_shuffle_i32x4(b[8 + m], b[12 + m], 0xEE);
    v[m] = _mm512_shuffle_i32x4(y0, y2, 0x88);
    v[4 + m] = _mm512_shuffle_i32x4(y0, y2, 0xDD);
    v[8 + m] = _mm512_shuffle_i32x4(y1, y3, 0x88);
    v[12 + m] = _mm512_shuffle_i32x4(y1, y3, 0xDD);
  }
}

// The panel of rows p0 .. p0 + kGemmRows of W; rows at or past n_out get zero codes and scales. Each half of 16
// rows is unpacked into rows (value order), then moved to the panel 64 k at a time through Transpose16x16 (a
// store of 4 bytes per row and step instead cost about a cycle per weight, as much as 8 tokens of the kernel).
template <class Fmt>
void GemmPack(const uint8_t* w, int64_t p0, int64_t n_out, int64_t n_in, GemmScratch& s) {
  constexpr int G = Fmt::kGroup;
  constexpr int64_t kGroupsPerBlock = Fmt::kBlockValues / G;
  const int64_t n_groups = n_in / G, n_blocks = n_in / Fmt::kBlockValues, n_k4 = n_in / 4;
  const int64_t stride = (n_in + 63) / 64 * 64;  // of rows
  const size_t row_bytes = static_cast<size_t>(n_blocks) * Fmt::kBlockBytes;
  s.codes.resize(static_cast<size_t>(n_in * kGemmRows));
  s.ab.resize(static_cast<size_t>(n_groups * 2 * kGemmRows));
  if (s.rows.size() < static_cast<size_t>(16 * stride)) s.rows.assign(static_cast<size_t>(16 * stride), 0);
  s.ra.resize(static_cast<size_t>(n_groups));
  s.rb.resize(static_cast<size_t>(n_groups));
  for (int h = 0; h < 2; ++h) {
    for (int r = 0; r < 16; ++r) {
      const int64_t row = p0 + 16 * h + r;
      uint8_t* dst = s.rows.data() + r * stride;
      if (row < n_out) {
        const uint8_t* src = w + static_cast<size_t>(row) * row_bytes;
        for (int64_t blk = 0; blk < n_blocks; ++blk)
          Fmt::Unpack(src + static_cast<size_t>(blk) * Fmt::kBlockBytes, dst + blk * Fmt::kBlockValues,
                      s.ra.data() + blk * kGroupsPerBlock, s.rb.data() + blk * kGroupsPerBlock);
      } else {
        std::fill(dst, dst + n_in, uint8_t{0});
        std::fill(s.ra.begin(), s.ra.end(), 0.0f);
        std::fill(s.rb.begin(), s.rb.end(), 0.0f);
      }
      std::fill(dst + n_in, dst + stride, uint8_t{0});  // the pad of the last 64 k
      const int rr = 16 * h + r;
      for (int64_t g = 0; g < n_groups; ++g) {
        s.ab[static_cast<size_t>(g * 2 * kGemmRows + rr)] = s.ra[static_cast<size_t>(g)];
        s.ab[static_cast<size_t>(g * 2 * kGemmRows + kGemmRows + rr)] = s.rb[static_cast<size_t>(g)];
      }
    }
    for (int64_t k0 = 0; k0 < n_in; k0 += 64) {
      __m512i v[16];
      for (int r = 0; r < 16; ++r) v[r] = _mm512_loadu_si512(s.rows.data() + r * stride + k0);
      Transpose16x16(v);
      const int64_t n_c = std::min<int64_t>(16, n_k4 - k0 / 4);  // steps of 4 k left (n_in a multiple of 32)
      for (int64_t c = 0; c < n_c; ++c) _mm512_storeu_si512(s.codes.data() + (k0 / 4 + c) * 128 + 64 * h, v[c]);
    }
  }
}

// acc[t][v] += the dot of one group's panel codes cg (G / 4 steps) with plane q[t] at column k0.
template <int G>
HWY_INLINE void GemmPlane(__m512i (&acc)[kGemmTok][2], const uint8_t* HWY_RESTRICT cg, const int8_t* const* q,
                          int64_t k0) {
  HWY_UNROLL(8)
  for (int st = 0; st < G / 4; ++st) {
    const __m512i w0 = _mm512_loadu_si512(cg + 128 * st), w1 = _mm512_loadu_si512(cg + 128 * st + 64);
    for (int t = 0; t < kGemmTok; ++t) {
      const __m512i x = _mm512_set1_epi32(static_cast<int>(LoadU32(reinterpret_cast<const uint8_t*>(q[t] + k0 + 4 * st))));
      acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], w0, x);
      acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], w1, x);
    }
  }
}

// y (n_tok, n_out) at rows p0 .. p0 + kGemmRows (those below n_out) for tokens t0 .. t0 + n_valid, from the packed
// panel; tokens past n_valid - 1 repeat the last one and are dropped. sg (n_tok, n_in / G): d_x sum Q per group.
template <int G, int kPlanes>
void GemmTokens(const GemmScratch& s, const Activations& a, const float* sg, int64_t t0, int64_t n_valid,
                int64_t p0, int64_t n_out, float* y) {
  constexpr int T = kGemmTok;
  const int64_t n_in = a.n_in, n_groups = n_in / G;
  const int8_t* q[T];
  const int8_t* q2[T];
  const float* d[T];
  const float* sx[T];
  for (int t = 0; t < T; ++t) {
    const int64_t tok = t0 + std::min<int64_t>(t, n_valid - 1);
    q[t] = a.q.data() + tok * n_in;
    q2[t] = kPlanes == 2 ? a.q2.data() + tok * n_in : nullptr;
    d[t] = a.d.data() + tok * (n_in / 32);
    sx[t] = sg + tok * n_groups;
  }
  __m512 f[T][2];
  for (int t = 0; t < T; ++t) f[t][0] = f[t][1] = _mm512_setzero_ps();
  const uint8_t* codes = s.codes.data();
  const float* ab = s.ab.data();
  for (int64_t g = 0; g < n_groups; ++g) {
    __m512i acc[T][2];
    for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_si512();
    const uint8_t* cg = codes + g * G * kGemmRows;
    GemmPlane<G>(acc, cg, q, g * G);
    if constexpr (kPlanes == 2) {  // Q = 256 q + q2; |dot of q| < 2^20, so the shift stays in i32
      for (int t = 0; t < T; ++t) acc[t][0] = _mm512_slli_epi32(acc[t][0], 8), acc[t][1] = _mm512_slli_epi32(acc[t][1], 8);
      GemmPlane<G>(acc, cg, q2, g * G);
    }
    const float* abg = ab + g * 2 * kGemmRows;
    const __m512 a0 = _mm512_loadu_ps(abg), a1 = _mm512_loadu_ps(abg + 16);
    const __m512 b0 = _mm512_loadu_ps(abg + 32), b1 = _mm512_loadu_ps(abg + 48);
    for (int t = 0; t < T; ++t) {
      const __m512 dt = _mm512_set1_ps(d[t][g * G / 32]), st = _mm512_set1_ps(sx[t][g]);
      f[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][0]), _mm512_mul_ps(a0, dt), f[t][0]);
      f[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][1]), _mm512_mul_ps(a1, dt), f[t][1]);
      f[t][0] = _mm512_fmadd_ps(b0, st, f[t][0]);
      f[t][1] = _mm512_fmadd_ps(b1, st, f[t][1]);
    }
  }
  const int64_t n_rows = std::min<int64_t>(kGemmRows, n_out - p0);
  const __mmask16 m0 = n_rows >= 16 ? 0xffff : static_cast<__mmask16>((1u << n_rows) - 1);
  const __mmask16 m1 = n_rows >= 32 ? 0xffff : n_rows > 16 ? static_cast<__mmask16>((1u << (n_rows - 16)) - 1) : 0;
  for (int t = 0; t < T && t < n_valid; ++t) {
    float* dst = y + (t0 + t) * n_out + p0;
    _mm512_mask_storeu_ps(dst, m0, f[t][0]);
    _mm512_mask_storeu_ps(dst + 16, m1, f[t][1]);
  }
}

template <class Fmt>
void GemmPanel(const uint8_t* w, int64_t p0, int64_t n_out, const Activations& a, const float* s16, float* y) {
  thread_local GemmScratch s;  // per thread, kept across calls (the pool's threads are persistent)
  GemmPack<Fmt>(w, p0, n_out, a.n_in, s);
  constexpr int G = Fmt::kGroup;
  const float* sg = G == 32 ? a.s32.data() : s16;
  for (int64_t t = 0; t < a.n_tok; t += kGemmTok) {
    const int64_t n = std::min<int64_t>(kGemmTok, a.n_tok - t);
    if (a.n_planes == 2) {
      GemmTokens<G, 2>(s, a, sg, t, n, p0, n_out, y);
    } else {
      GemmTokens<G, 1>(s, a, sg, t, n, p0, n_out, y);
    }
  }
}
#endif  // AVX3_DL

// i32 (32) to bytes, saturating: packs interleave the 128-bit halves, the permute puts the values back in order.
HWY_INLINE __m256i PackBytes(const __m256i* qi) {
  return _mm256_permutevar8x32_epi32(
      _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3])),
      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
HWY_INLINE __m256i Sums4(__m256i p) {  // maddubs with ones, then pairs of i16: exact
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
}
// One block as Activations describes: cvtps2dq rounds half to even in the default MXCSR mode, and y - q is exact.
HWY_INLINE void QuantizeBlock(const float* x, int n_planes, int8_t* q, int8_t* q2, int32_t* sum4, float* d,
                              float* s32) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float mx = _mm_cvtss_f32(m);
  const float dd = mx / 127.0f, id = mx > 0.0f ? 127.0f / mx : 0.0f;
  __m256i qi[4], ri[4];
  for (int i = 0; i < 4; ++i) {
    const __m256 y = _mm256_mul_ps(v[i], _mm256_set1_ps(id));
    qi[i] = _mm256_cvtps_epi32(y);
    if (n_planes == 2)
      ri[i] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(y, _mm256_cvtepi32_ps(qi[i])), _mm256_set1_ps(256.0f)));
  }
  const __m256i p = PackBytes(qi);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p);
  __m256i s4 = Sums4(p);
  if (n_planes == 2) {
    const __m256i p2 = _mm256_max_epi8(PackBytes(ri), _mm256_set1_epi8(-127));  // +128 saturated to 127 already
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q2), p2);
    s4 = _mm256_add_epi32(_mm256_slli_epi32(s4, 8), Sums4(p2));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(sum4), s4);
  __m128i r = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
  r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4e));
  r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xb1));
  *d = n_planes == 2 ? dd / 256.0f : dd;
  *s32 = *d * static_cast<float>(_mm_cvtsi128_si32(r));
}

#endif  // x86 targets

}  // namespace

// The formats with int8 kernels on this target, each called with its type's code: Fmt f(...) for every format.
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
template <class F>
bool WithFormat(GgmlType t, F&& f) {
  switch (t) {
    case GgmlType::Q4_0: f(Block32Format<Offset::kCentred, HighBit::kNone>()); return true;
    case GgmlType::Q4_1: f(Block32Format<Offset::kMin, HighBit::kNone>()); return true;
    case GgmlType::Q5_0: f(Block32Format<Offset::kCentred, HighBit::kStored>()); return true;
    case GgmlType::Q5_1: f(Block32Format<Offset::kMin, HighBit::kStored>()); return true;
    case GgmlType::Q8_0: f(Q8_0Format()); return true;
    case GgmlType::Q4_K: f(Q45KFormat<HighBit::kNone>()); return true;
    case GgmlType::Q5_K: f(Q45KFormat<HighBit::kStored>()); return true;
    case GgmlType::Q6_K: f(Q6KFormat()); return true;
    default: return false;
  }
}
#endif

// The C of format t's centred codes (0 for formats with a min), or -1 where this target has no int8 kernel for it.
int CentreImpl(GgmlType t) {
  int centre = -1;
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  WithFormat(t, [&](auto fmt) { centre = decltype(fmt)::kCentre; });
#else
  (void)t;
#endif
  return centre;
}

// Rows [r0, r1) of one product; corr is -C * Activations::sum4 for the format's C.
void RowsImpl(GgmlType t, const uint8_t* w, int64_t r0, int64_t r1, int64_t n_out, const Activations* a,
              const int32_t* corr, float* y) {
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  WithFormat(t, [&](auto fmt) { RowsKernel<decltype(fmt)>(w, r0, r1, n_out, *a, corr, y); });
#else
  (void)t, (void)w, (void)r0, (void)r1, (void)n_out, (void)a, (void)corr, (void)y;
#endif
}

// Whether prefill's int8 panels serve format t on this target (VNNI only: without it, the f32 panels are faster
// than maddubs, and maddubs saturates on Q8_0's codes).
bool GemmSupportedImpl(GgmlType t) {
#if HWY_TARGET == HWY_AVX3_DL
  return WithFormat(t, [](auto) {});
#else
  (void)t;
  return false;
#endif
}

// Rows p0 .. p0 + kGemmRows of one product for all tokens; s16 (n_tok, n_in / 16) as gemm describes.
void GemmPanelImpl(GgmlType t, const uint8_t* w, int64_t p0, int64_t n_out, const Activations* a, const float* s16,
                   float* y) {
#if HWY_TARGET == HWY_AVX3_DL
  WithFormat(t, [&](auto fmt) { GemmPanel<decltype(fmt)>(w, p0, n_out, *a, s16, y); });
#else
  (void)t, (void)w, (void)p0, (void)n_out, (void)a, (void)s16, (void)y;
#endif
}

// Tokens [t0, t1) of x into a.
void QuantizeImpl(const float* x, int64_t t0, int64_t t1, int64_t n_in, Activations* a) {
  const int64_t nb = n_in / kBlock;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * n_in + b * kBlock;
      const int64_t i = t * nb + b;
      int8_t* q = a->q.data() + i * kBlock;
      int32_t* sum4 = a->sum4.data() + i * (kBlock / 4);
#if HWY_TARGET == HWY_AVX2 || HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
      int8_t* q2 = a->n_planes == 2 ? a->q2.data() + i * kBlock : nullptr;
      QuantizeBlock(xb, a->n_planes, q, q2, sum4, &a->d[i], &a->s32[i]);
#else
      // The same operations in scalar code; lrintf rounds half to even in the default rounding mode.
      float mx = 0.0f;
      for (int64_t k = 0; k < kBlock; ++k) mx = std::max(mx, std::fabs(xb[k]));
      const float dd = mx / 127.0f, id = mx > 0.0f ? 127.0f / mx : 0.0f;
      int8_t* q2 = a->n_planes == 2 ? a->q2.data() + i * kBlock : nullptr;
      int64_t sum = 0;
      for (int64_t k = 0; k < kBlock; ++k) {
        const float yk = xb[k] * id;
        q[k] = static_cast<int8_t>(std::clamp<long>(std::lrintf(yk), -127, 127));
        int32_t qk = q[k];
        if (a->n_planes == 2) {
          q2[k] = static_cast<int8_t>(std::clamp<long>(std::lrintf((yk - static_cast<float>(q[k])) * 256.0f), -127, 127));
          qk = 256 * qk + q2[k];
        }
        sum += qk;
        if (k % 4 == 0) sum4[k / 4] = 0;
        sum4[k / 4] += qk;
      }
      a->d[i] = a->n_planes == 2 ? dd / 256.0f : dd;
      a->s32[i] = a->d[i] * static_cast<float>(sum);
#endif
      a->ds[2 * i] = a->d[i];
      a->ds[2 * i + 1] = a->s32[i];
    }
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace longctx::cpu::q8
#if HWY_TARGET == HWY_AVX3_DL
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace longctx::cpu::q8 {

HWY_EXPORT(CentreImpl);
HWY_EXPORT(RowsImpl);
HWY_EXPORT(QuantizeImpl);
HWY_EXPORT(TargetName);
HWY_EXPORT(GemmSupportedImpl);
HWY_EXPORT(GemmPanelImpl);

void quantize(const float* x, int64_t n_tok, int64_t n_in, int n_planes, Activations& a) {
  quantize(nullptr, x, n_tok, n_in, n_planes, a);
}

void quantize(ThreadPool* pool, const float* x, int64_t n_tok, int64_t n_in, int n_planes, Activations& a) {
  a.n_planes = n_planes;
  a.n_tok = n_tok;
  a.n_in = n_in;
  const size_t n = static_cast<size_t>(n_tok * n_in), pad = Activations::kPad;
  // assign, not resize: the padding must read as zeros whatever a longer call left there.
  a.q.assign(n + pad, 0);
  a.q2.assign(n_planes == 2 ? n + pad : 0, 0);
  a.sum4.assign(n / 4 + pad, 0);
  a.d.assign(n / kBlock + pad, 0.0f);
  a.s32.assign(n / kBlock + pad, 0.0f);
  a.ds.assign(2 * (n / kBlock) + pad, 0.0f);
  // Prefill's activations are worth splitting (512 x 2048 values take about 0.3 ms on one core).
  constexpr int64_t kTokPerTask = 32;
  if (pool == nullptr || n_tok <= kTokPerTask) {
    HWY_DYNAMIC_DISPATCH(QuantizeImpl)(x, 0, n_tok, n_in, &a);
  } else {
    pool->run((n_tok + kTokPerTask - 1) / kTokPerTask, [&](int64_t i) {
      HWY_DYNAMIC_DISPATCH(QuantizeImpl)(x, i * kTokPerTask, std::min(n_tok, (i + 1) * kTokPerTask), n_in, &a);
    });
  }
}

bool gemm_supported(GgmlType t) { return HWY_DYNAMIC_DISPATCH(GemmSupportedImpl)(t); }

void gemm(ThreadPool& pool, const Product* products, int n_products, const Activations& a) {
  const int64_t n_in = a.n_in, n_tok = a.n_tok;
  // Q6_K's 16-value groups need d_x sum Q per 16 values: from the sums of 4 (the calling thread's buffer).
  thread_local std::vector<float> s16;  // (n_tok, n_in / 16)
  bool need16 = false;
  for (int i = 0; i < n_products; ++i) need16 |= products[i].t == GgmlType::Q6_K;
  if (need16) {
    s16.resize(static_cast<size_t>(n_tok * (n_in / 16)));
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t j = 0; j < n_in / 16; ++j) {
        const int32_t* s4 = a.sum4.data() + t * (n_in / 4) + 4 * j;
        s16[static_cast<size_t>(t * (n_in / 16) + j)] =
            a.d[static_cast<size_t>(t * (n_in / 32) + j / 2)] * static_cast<float>(s4[0] + s4[1] + s4[2] + s4[3]);
      }
  }
  // One task per panel of kGemmRows rows, over all products: the panels of a product are independent.
  std::vector<int64_t> first(static_cast<size_t>(n_products) + 1, 0);  // the first task of each product
  for (int i = 0; i < n_products; ++i)
    first[static_cast<size_t>(i) + 1] = first[static_cast<size_t>(i)] + (products[i].n_out + kGemmRows - 1) / kGemmRows;
  const float* s16_data = s16.data();  // the calling thread's: in the workers, s16 names their own
  pool.run(first.back(), [&](int64_t task) {
    int i = 0;
    while (first[static_cast<size_t>(i) + 1] <= task) ++i;
    const Product& p = products[i];
    HWY_DYNAMIC_DISPATCH(GemmPanelImpl)(p.t, p.w, (task - first[static_cast<size_t>(i)]) * kGemmRows, p.n_out, &a,
                                        s16_data, p.y);
  });
}

bool matmul(ThreadPool& pool, const Product* products, int n_products, const Activations& a) {
  // -C * sum(Q) per i32 lane for each distinct centre C, the start of every dot product of centred codes (the
  // calling thread's buffers; the workers only read them).
  thread_local std::vector<int32_t> corr[4];  // (n_tok, n_in / 4) + pad each
  thread_local int corr_centre[4];
  int n_corr = 0;
  std::vector<const int32_t*> corr_of(static_cast<size_t>(n_products));
  int64_t n_rows = 0;
  for (int i = 0; i < n_products; ++i) {
    const int centre = HWY_DYNAMIC_DISPATCH(CentreImpl)(products[i].t);
    if (centre < 0) return false;
    int k = 0;
    while (k < n_corr && corr_centre[k] != centre) ++k;
    if (k == n_corr) {
      if (n_corr == 4) return false;  // never: the formats have at most 4 centres (0, 8, 16, 32 or 128)
      corr[k].resize(a.sum4.size());
      for (size_t j = 0; j < a.sum4.size(); ++j) corr[k][j] = -centre * a.sum4[j];
      corr_centre[k] = centre;
      ++n_corr;
    }
    corr_of[static_cast<size_t>(i)] = corr[k].data();
    n_rows += products[i].n_out;
  }
  // One contiguous range of the products' rows (in order) per thread, cut at multiples of 4, each a prefetch
  // stream: every task boundary restarts a stream at a new place, and finer tasks cost decode (SmolLM2 tg128 on
  // 2 cores, tasks per thread 1 / 2 / 4 / 8: 289 / 266 / 242 / 218 tok/s). Still claimed dynamically: a
  // descheduled worker's range is run by the caller.
  const int64_t n_tasks = std::min<int64_t>(pool.n_threads(), (n_rows + 3) / 4);
  pool.run(n_tasks, [&](int64_t task) {
    const int64_t g0 = n_rows * task / n_tasks / 4 * 4;
    const int64_t g1 = task + 1 == n_tasks ? n_rows : n_rows * (task + 1) / n_tasks / 4 * 4;
    int64_t base = 0;  // the first row of product i in the concatenation
    for (int i = 0; i < n_products && base < g1; base += products[i].n_out, ++i) {
      const int64_t r0 = std::max<int64_t>(g0 - base, 0), r1 = std::min(g1 - base, products[i].n_out);
      if (r0 < r1)
        HWY_DYNAMIC_DISPATCH(RowsImpl)(products[i].t, products[i].w, r0, r1, products[i].n_out, &a,
                                       corr_of[static_cast<size_t>(i)], products[i].y);
    }
  });
  return true;
}

const char* target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace longctx::cpu::q8
#endif  // HWY_ONCE
