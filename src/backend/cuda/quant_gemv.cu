// y = W x at batch 1 with W in a GGUF block format, decoded inside the product (quant.h, quant_gemv).
//
// Why tensor cores for a matrix-vector product: at the memory roofline a 4.5-bit format delivers ~33 weights per
// clock per multiprocessor, and the multiprocessor issues 128 thread-instructions per clock. Turning each code into
// an f32 and multiplying it costs ~3 instructions a weight, too close to that budget; turning pairs of codes into
// f16 pairs (one LOP3 against the 0x6400 exponent, one f16x2 subtract: exact small integers) and letting one
// mma.sync m16n8k16 multiply 16 rows x 16 codes by x costs ~1.5. The codes are exact in f16 and x is exact in f16
// after one power-of-two scaling (bf16 has 8 significant bits, f16 11), so every product is exact and the sums are
// f32: this is W x, not an approximation of it.
//
// The block scales differ per row and per group of 16 or 32 values, so they cannot enter the mma's A operand
// exactly (d * code needs up to 19 bits). They are applied afterwards, per (row, group), and the otherwise idle
// columns of the mma hold the groups apart: a window is 8 groups; for group j only column j of B holds x (the other
// lanes give zeros), so after the window's products C[row][j] is row's dot product with group j alone, and lane
// (g, t) holds exactly groups 2t and 2t + 1 of rows g and g + 8 (the C fragment), whose scales it alone applies.
// A group's min (Q4_1, Q4_K, Q5_K: x = d q + m) adds m * sum(x over the group), from sums made once per call.
//
// Memory: a block owns a tile of 16 rows (the mma's M) at a time and streams it through a two-stage cp.async
// ring in shared memory, a stage holding 8 consecutive units of every row (a unit: the 8 groups one window's
// products take), one per warp; the warps' sums meet in shared memory when the tile is done. 16-byte copies at any
// row alignment (Q8_0, Q4_0 and Q6_K blocks are 34, 18 and 210 bytes: only 2-byte aligned), no registers held by
// loads in flight, and lanes then read exactly the bytes their fragment needs. Lane mapping per format: lane (g, t)
// decodes rows g and g + 8, and within each group the 4 (or 8) values that feed k-slots 2t, 2t+1, 2t+8, 2t+9 of
// the mma; x sits in shared memory permuted to match, so each lane loads its x with one 8- or 16-byte read.
//
// Template instances (one kernel, the format a parameter): Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16; F32 rows
// (no scales, 32 bits a weight: a plain f32 dot product) have a kernel of their own, gemv_f32_kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/mma_primitives.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/quant.h"

namespace longctx::cuda {
namespace {

constexpr int kWarps = 8;          // warps per block: each takes one unit of every stage
constexpr int kTileRows = 16;      // rows per tile: the mma's M
#ifndef LONGCTX_QGEMV_STAGES
#define LONGCTX_QGEMV_STAGES 2
#endif
constexpr int kStages = LONGCTX_QGEMV_STAGES;  // cp.async ring depth, 2 or 3 (BENCHMARKS.md compares them)
constexpr int kMaxIn = 32768;      // x in shared memory as f16: 64 KB
constexpr int kMaxRowsPerLaunch = 8;  // rows of x one launch multiplies (QuantGemvArgs::n_rows may be more)

// How x is laid out in shared memory so that a lane reads its k-slots' values with one load (the A fragment of
// a lane holds values (v0, v2) and (v1, v3) of each 4 it decodes, which is what the nibble and byte tricks give).
enum class XLayout {
  Lanes32,  // per 32-value group: lane t's chunk c (values 16c + 4t .. + 3) at 8t + 4c, each 4 as (v0, v2, v1, v3)
  Pairs16,  // per 16-value group: lane t's values 4t .. 4t + 3 at 4t, as (v0, v2, v1, v3)
  Natural,  // as in x: raw f16/bf16 rows pair (v0, v1), (v2, v3) already
};

// What the kernel needs to know of a format. kUnitBytes: one row's bytes of the unit a warp decodes at a time (a
// window of 8 groups, or for Q6_K one 210-byte super-block = 2 windows, since its halves share the block's scales).
template <GgmlType T>
struct Fmt;
template <>
struct Fmt<GgmlType::Q4_0> {
  static constexpr int kGroup = 32, kWindowsPerUnit = 1, kUnitBytes = 8 * 18;
  static constexpr XLayout kX = XLayout::Lanes32;
  static constexpr bool kMin = false, kBf16 = false;
};
template <>
struct Fmt<GgmlType::Q4_1> {
  static constexpr int kGroup = 32, kWindowsPerUnit = 1, kUnitBytes = 8 * 20;
  static constexpr XLayout kX = XLayout::Lanes32;
  static constexpr bool kMin = true, kBf16 = false;
};
template <>
struct Fmt<GgmlType::Q8_0> {
  static constexpr int kGroup = 32, kWindowsPerUnit = 1, kUnitBytes = 8 * 34;
  static constexpr XLayout kX = XLayout::Lanes32;
  static constexpr bool kMin = false, kBf16 = false;
};
template <>
struct Fmt<GgmlType::Q4_K> {
  static constexpr int kGroup = 32, kWindowsPerUnit = 1, kUnitBytes = 144;
  static constexpr XLayout kX = XLayout::Lanes32;
  static constexpr bool kMin = true, kBf16 = false;
};
template <>
struct Fmt<GgmlType::Q5_K> {
  static constexpr int kGroup = 32, kWindowsPerUnit = 1, kUnitBytes = 176;
  static constexpr XLayout kX = XLayout::Lanes32;
  static constexpr bool kMin = true, kBf16 = false;
};
template <>
struct Fmt<GgmlType::Q6_K> {
  static constexpr int kGroup = 16, kWindowsPerUnit = 2, kUnitBytes = 210;
  static constexpr XLayout kX = XLayout::Pairs16;
  static constexpr bool kMin = false, kBf16 = false;
};
template <>
struct Fmt<GgmlType::F16> {
  static constexpr int kGroup = 16, kWindowsPerUnit = 1, kUnitBytes = 8 * 16 * 2;
  static constexpr XLayout kX = XLayout::Natural;
  static constexpr bool kMin = false, kBf16 = false;
};
template <>
struct Fmt<GgmlType::BF16> {
  static constexpr int kGroup = 16, kWindowsPerUnit = 1, kUnitBytes = 8 * 16 * 2;
  static constexpr XLayout kX = XLayout::Natural;
  static constexpr bool kMin = false, kBf16 = true;  // bf16 weights need bf16 x: the mma takes one type
};

// Derived geometry. A stage holds, for each of the tile's 16 rows, the 8 consecutive units the 8 warps decode
// (1.1-2.2 KB of one row: DRAM streams long contiguous reads, and one unit per row, 144-304 bytes, is too short
// for it; BENCHMARKS.md has both). A row's span is copied from its
// address rounded down to 32 bytes, so a stage row holds up to 30 bytes of lead-in; an odd number of 16-byte
// chunks per stage row keeps the 8 rows one warp load of the decode touches in different banks.
template <GgmlType T>
struct Geom {
  using F = Fmt<T>;
  static constexpr int kWindowValues = 8 * F::kGroup;
  static constexpr int kUnitValues = kWindowValues * F::kWindowsPerUnit;
  static constexpr int kSpanBytes = kWarps * F::kUnitBytes;  // one row's bytes in a stage
  static constexpr int kChunks = ((kSpanBytes + 30 + 15) / 16) | 1;
  static constexpr int kRowStride = 16 * kChunks;
  static constexpr int kStageBytes = kTileRows * kRowStride;
  static constexpr int kRingBytes = kStages * kStageBytes;
};

struct Params {
  const uint8_t* w;       // (n_out, row_bytes)
  const uint8_t* w_end;   // w + n_out * row_bytes
  int64_t row_bytes;
  int32_t n_out, n_in;
  const uint16_t* x;      // (n_rows, n_in) bf16
  float* y;               // (n_rows, n_out)
  int32_t n_rows;         // rows of x, at most the instance's R
  int32_t n_tiles;        // ceil(n_out / 16)
  int32_t n_units;        // units per row
  int32_t n_steps;        // stages per tile: ceil(n_units / kWarps)
  int32_t n_in_pad;       // x's length in shared memory: whole units
};

// ---- small device helpers ------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t ld_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
__device__ __forceinline__ uint32_t ld_u32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
// 4 bytes at a 2-byte aligned address (the 34-, 18- and 210-byte blocks).
__device__ __forceinline__ uint32_t ld_u32_a2(const uint8_t* p) {
  return __byte_perm(ld_u16(p), ld_u16(p + 2), 0x5410);
}
__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(ld_u16(p))));
}

__device__ __forceinline__ uint32_t hsub2(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}
__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

// f16x2 constants (bits): 1024 + c is the exponent trick's offset (0x6400 | code == 1024 + code for code < 1024).
constexpr uint32_t kH1024 = 0x64006400u, kH1032 = 0x64086408u, kH1056 = 0x64206420u, kH1152 = 0x64806480u;
constexpr uint32_t kHSixteenth = 0x2C002C00u, kHNeg64 = 0xD400D400u, kHNeg72 = 0xD480D480u;

// The four f16 pairs of 8 nibbles: the low nibbles of bytes (0, 2) and (1, 3), and the high nibbles of the same,
// each minus `centre` (lo_off = 1024 + centre, hi_off = -(64 + centre): the high nibble is taken in place, as
// 1024 + 16 n, and scaled by 1/16 in the same exact f16 fma). extra_* are bits or-ed in before the offset (the
// fifth bit of Q5_K: bit 4 of each half for the low, bit 8 for the high).
struct Nibbles {
  uint32_t lo02, lo13, hi02, hi13;
};
__device__ __forceinline__ Nibbles nibbles(uint32_t w, uint32_t lo_off, uint32_t hi_off, uint32_t x_lo02 = 0,
                                           uint32_t x_lo13 = 0, uint32_t x_hi02 = 0, uint32_t x_hi13 = 0) {
  Nibbles n;
  n.lo02 = hsub2((w & 0x000f000fu) | kH1024 | x_lo02, lo_off);
  n.hi02 = hfma2((w & 0x00f000f0u) | kH1024 | x_hi02, kHSixteenth, hi_off);
  w >>= 8;
  n.lo13 = hsub2((w & 0x000f000fu) | kH1024 | x_lo13, lo_off);
  n.hi13 = hfma2((w & 0x00f000f0u) | kH1024 | x_hi13, kHSixteenth, hi_off);
  return n;
}

// One group's products: A rows g / g + 8 from this lane, B = the lane's x where its column g is the group's, else 0.
template <bool kBf16>
__device__ __forceinline__ void mma_group(float (&c)[4], bool mine, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t x0, uint32_t x1) {
  const uint32_t b0 = mine ? x0 : 0u, b1 = mine ? x1 : 0u;
  if constexpr (kBf16)
    Elem<__nv_bfloat16>::mma(c, a0, a1, a2, a3, b0, b1);
  else
    Elem<__half>::mma(c, a0, a1, a2, a3, b0, b1);
}

// ---- per-format window bodies ---------------------------------------------------------------------------------
// pg, pg8: rows g and g + 8 of the stage, at the step's first byte. win: the window within the step. n_groups: the
// window's groups (8, fewer in a row's last window when n_in is not a whole number of windows). xb: the lane's x for
// group g of the window. c: the window's C fragment, from zero.

template <GgmlType T>
struct Body;

// The 4-bit 32-value formats (BB bytes a block, qs at kQs): 8 blocks a window, block j = group j; lane t takes qs
// bytes [4t, 4t + 4): the low nibbles are values 4t.. (chunk 0), the high nibbles values 16 + 4t.. (chunk 1).
template <int BB, int kQs, bool kAligned>
__device__ __forceinline__ void body_q4_32(const uint8_t* pg, const uint8_t* pg8, int g, int t, int n_groups,
                                           const uint32_t (&xb)[4], float (&c)[4], uint32_t lo_off, uint32_t hi_off) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j >= n_groups) break;
    const uint8_t* q0 = pg + BB * j + kQs + 4 * t;
    const uint8_t* q1 = pg8 + BB * j + kQs + 4 * t;
    const Nibbles a = nibbles(kAligned ? ld_u32(q0) : ld_u32_a2(q0), lo_off, hi_off);
    const Nibbles b = nibbles(kAligned ? ld_u32(q1) : ld_u32_a2(q1), lo_off, hi_off);
    mma_group<false>(c, g == j, a.lo02, b.lo02, a.lo13, b.lo13, xb[0], xb[1]);
    mma_group<false>(c, g == j, a.hi02, b.hi02, a.hi13, b.hi13, xb[2], xb[3]);
  }
}

template <>
struct Body<GgmlType::Q4_0> {
  static __device__ __forceinline__ void run(const uint8_t* pg, const uint8_t* pg8, int, int g, int t, int n_groups,
                                             const uint32_t (&xb)[4], float (&c)[4]) {
    body_q4_32<18, 2, false>(pg, pg8, g, t, n_groups, xb, c, kH1032, kHNeg72);
  }
  // Scale and min of group j of a window (for the row at p).
  static __device__ __forceinline__ void scale(const uint8_t* p, int, int j, float* s, float* m) {
    *s = f16_at(p + 18 * j);
    *m = 0.0f;
  }
};

template <>
struct Body<GgmlType::Q4_1> {
  static __device__ __forceinline__ void run(const uint8_t* pg, const uint8_t* pg8, int, int g, int t, int n_groups,
                                             const uint32_t (&xb)[4], float (&c)[4]) {
    body_q4_32<20, 4, true>(pg, pg8, g, t, n_groups, xb, c, kH1024, kHNeg64);
  }
  static __device__ __forceinline__ void scale(const uint8_t* p, int, int j, float* s, float* m) {
    *s = f16_at(p + 20 * j);
    *m = f16_at(p + 20 * j + 2);
  }
};

// Q8_0: lane t's chunk c is values 16c + 4t.. = bytes 2 + 16c + 4t (2-byte aligned); each pair of bytes becomes an
// f16 pair by byte permutation against the exponent byte 0x64, with the sign flipped (q + 128 < 256), minus 1152.
template <>
struct Body<GgmlType::Q8_0> {
  static __device__ __forceinline__ void codes(const uint8_t* p, uint32_t* v02, uint32_t* v13) {
    const uint32_t r0 = ld_u16(p), r1 = ld_u16(p + 2);  // bytes (v0, v1), (v2, v3); upper halves zero
    *v02 = hsub2((__byte_perm(r0, r1, 0x2420) ^ 0x00800080u) | kH1024, kH1152);
    *v13 = hsub2((__byte_perm(r0, r1, 0x2521) ^ 0x00800080u) | kH1024, kH1152);
  }
  static __device__ __forceinline__ void run(const uint8_t* pg, const uint8_t* pg8, int, int g, int t, int n_groups,
                                             const uint32_t (&xb)[4], float (&c)[4]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j >= n_groups) break;
#pragma unroll
      for (int ch = 0; ch < 2; ++ch) {
        uint32_t a02, a13, b02, b13;
        codes(pg + 34 * j + 2 + 16 * ch + 4 * t, &a02, &a13);
        codes(pg8 + 34 * j + 2 + 16 * ch + 4 * t, &b02, &b13);
        mma_group<false>(c, g == j, a02, b02, a13, b13, xb[2 * ch], xb[2 * ch + 1]);
      }
    }
  }
  static __device__ __forceinline__ void scale(const uint8_t* p, int, int j, float* s, float* m) {
    *s = f16_at(p + 34 * j);
    *m = 0.0f;
  }
};

// The 6-bit scales and mins of sub-blocks j0 = 2t and j0 + 1 of a Q4_K / Q5_K block from its 12 scale bytes at s
// (cpu::k_scale_min, two at a time as 16-bit pairs: sub-blocks 0-3 keep both in the low 6 bits of bytes 0-7,
// sub-blocks 4-7 spread theirs over the nibbles of bytes 8-11 and the top bits of bytes 0-7).
__device__ __forceinline__ void k_scales_pair(const uint8_t* s, int t, uint32_t* sc, uint32_t* mn) {
  const uint32_t a = ld_u16(s + 2 * t), b = ld_u16(s + 2 * t + 4), c = ld_u16(s + ((2 * t + 4) & 7));
  if (t < 2) {
    *sc = a & 0x3f3fu;
    *mn = b & 0x3f3fu;
  } else {
    *sc = (b & 0x0f0fu) | ((c >> 2) & 0x3030u);
    *mn = ((b >> 4) & 0x0f0fu) | ((a >> 2) & 0x3030u);
  }
}

// Q4_K and Q5_K: one super-block a window, sub-block j = group j; group pair (2i, 2i + 1) shares qs bytes
// [32i, 32i + 32): lane t's chunk c is the word at 32i + 16c + 4t, low nibbles for sub-block 2i, high for 2i + 1.
// Q5_K's fifth bits: bit j of qh byte v (values v of every sub-block), the lane's chunk c at qh word 16c + 4t.
template <GgmlType T>
struct BodyK {
  static constexpr bool kFifth = T == GgmlType::Q5_K;
  static constexpr int kQs = kFifth ? 48 : 16;
  template <int kJ>
  static __device__ __forceinline__ uint32_t shift(uint32_t v) {  // v << kJ, negative kJ shifting right
    if constexpr (kJ >= 0)
      return v << kJ;
    else
      return v >> (-kJ);
  }
  template <int kI>
  static __device__ __forceinline__ Nibbles word(const uint8_t* p, int t, int ch, uint32_t qh) {
    const uint32_t w = ld_u32(p + kQs + 32 * kI + 16 * ch + 4 * t);
    if constexpr (kFifth) {
      constexpr int j = 2 * kI;  // the low nibbles' sub-block; the high ones are j + 1
      return nibbles(w, kH1024, kHNeg64, shift<4 - j>(qh) & 0x00100010u, (qh >> (j + 4)) & 0x00100010u,
                     shift<7 - j>(qh) & 0x01000100u, (qh >> (j + 1)) & 0x01000100u);
    } else {
      return nibbles(w, kH1024, kHNeg64);
    }
  }
  template <int kI>
  static __device__ __forceinline__ void pair(const uint8_t* pg, const uint8_t* pg8, int g, int t,
                                              const uint32_t (&qh_g)[2], const uint32_t (&qh_g8)[2],
                                              const uint32_t (&xb)[4], float (&c)[4]) {
#pragma unroll
    for (int ch = 0; ch < 2; ++ch) {
      const Nibbles a = word<kI>(pg, t, ch, qh_g[ch]);
      const Nibbles b = word<kI>(pg8, t, ch, qh_g8[ch]);
      mma_group<false>(c, g == 2 * kI, a.lo02, b.lo02, a.lo13, b.lo13, xb[2 * ch], xb[2 * ch + 1]);
      mma_group<false>(c, g == 2 * kI + 1, a.hi02, b.hi02, a.hi13, b.hi13, xb[2 * ch], xb[2 * ch + 1]);
    }
  }
  static __device__ __forceinline__ void run(const uint8_t* pg, const uint8_t* pg8, int, int g, int t, int,
                                             const uint32_t (&xb)[4], float (&c)[4]) {
    uint32_t qh_g[2] = {0, 0}, qh_g8[2] = {0, 0};
    if constexpr (kFifth) {
#pragma unroll
      for (int ch = 0; ch < 2; ++ch) {
        qh_g[ch] = ld_u32(pg + 16 + 16 * ch + 4 * t);
        qh_g8[ch] = ld_u32(pg8 + 16 + 16 * ch + 4 * t);
      }
    }
    pair<0>(pg, pg8, g, t, qh_g, qh_g8, xb, c);
    pair<1>(pg, pg8, g, t, qh_g, qh_g8, xb, c);
    pair<2>(pg, pg8, g, t, qh_g, qh_g8, xb, c);
    pair<3>(pg, pg8, g, t, qh_g, qh_g8, xb, c);
  }
  // Both groups of the lane at once (2t, 2t + 1): s = d * sc, m = -dmin * min.
  static __device__ __forceinline__ void scales2(const uint8_t* p, int t, float (&s)[2], float (&m)[2]) {
    uint32_t sc, mn;
    k_scales_pair(p + 4, t, &sc, &mn);
    const float d = f16_at(p), dmin = f16_at(p + 2);
    s[0] = d * static_cast<float>(sc & 0xff);
    s[1] = d * static_cast<float>(sc >> 8);
    m[0] = -dmin * static_cast<float>(mn & 0xff);
    m[1] = -dmin * static_cast<float>(mn >> 8);
  }
};
template <>
struct Body<GgmlType::Q4_K> : BodyK<GgmlType::Q4_K> {};
template <>
struct Body<GgmlType::Q5_K> : BodyK<GgmlType::Q5_K> {};

// Q6_K: a step is one super-block, window h its half h (128 values), group j its sub-block 8h + j (16 values);
// lane t takes values 4t.. of each: low 4 bits from ql word 64h + 16 (j % 4) + 4t (low nibbles for j < 4, high
// above), top 2 bits from qh word 128 + 32h + 16 (j % 2) + 4t at bit 2 (j / 2) of each byte. 2-byte aligned blocks.
template <>
struct Body<GgmlType::Q6_K> {
  static __device__ __forceinline__ void codes(const uint32_t (&ql)[4], const uint32_t (&qh)[2], int j, uint32_t* v02,
                                               uint32_t* v13) {
    const uint32_t lo = (j < 4 ? ql[j & 3] : ql[j & 3] >> 4) & 0x0f0f0f0fu;
    const int k = j / 2;
    const uint32_t hi = k < 3 ? qh[j & 1] << (4 - 2 * k) : qh[j & 1] >> 2;
    const uint32_t code = (hi & 0x30303030u) | lo;  // 4 bytes of 6-bit codes
    *v02 = hsub2(__byte_perm(code, 0x64u, 0x4240), kH1056);
    *v13 = hsub2(__byte_perm(code, 0x64u, 0x4341), kH1056);
  }
  static __device__ __forceinline__ void run(const uint8_t* pg, const uint8_t* pg8, int h, int g, int t, int,
                                             const uint32_t (&xb)[2], float (&c)[4]) {
    uint32_t ql_g[4], ql_g8[4], qh_g[2], qh_g8[2];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      ql_g[m] = ld_u32_a2(pg + 64 * h + 16 * m + 4 * t);
      ql_g8[m] = ld_u32_a2(pg8 + 64 * h + 16 * m + 4 * t);
    }
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      qh_g[n] = ld_u32_a2(pg + 128 + 32 * h + 16 * n + 4 * t);
      qh_g8[n] = ld_u32_a2(pg8 + 128 + 32 * h + 16 * n + 4 * t);
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      uint32_t a02, a13, b02, b13;
      codes(ql_g, qh_g, j, &a02, &a13);
      codes(ql_g8, qh_g8, j, &b02, &b13);
      mma_group<false>(c, g == j, a02, b02, a13, b13, xb[0], xb[1]);
    }
  }
  static __device__ __forceinline__ void scales2(const uint8_t* p, int h, int t, float (&s)[2], float (&m)[2]) {
    const uint32_t sc = ld_u16(p + 192 + 8 * h + 2 * t);  // two int8 scales
    const float d = f16_at(p + 208);
    s[0] = d * static_cast<float>(static_cast<int8_t>(sc & 0xff));
    s[1] = d * static_cast<float>(static_cast<int8_t>(sc >> 8));
    m[0] = m[1] = 0.0f;
  }
};

// F16 / BF16 rows: 16 values a group, lane t's values 4t .. 4t + 3 as they are.
template <GgmlType T>
struct BodyFloat {
  static __device__ __forceinline__ void run(const uint8_t* pg, const uint8_t* pg8, int, int g, int t, int n_groups,
                                             const uint32_t (&xb)[2], float (&c)[4]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j >= n_groups) break;
      const uint2 a = *reinterpret_cast<const uint2*>(pg + 32 * j + 8 * t);
      const uint2 b = *reinterpret_cast<const uint2*>(pg8 + 32 * j + 8 * t);
      mma_group<T == GgmlType::BF16>(c, g == j, a.x, b.x, a.y, b.y, xb[0], xb[1]);
    }
  }
};
template <>
struct Body<GgmlType::F16> : BodyFloat<GgmlType::F16> {};
template <>
struct Body<GgmlType::BF16> : BodyFloat<GgmlType::BF16> {};

// The lane's scales and mins for groups 2t and 2t + 1 of window win of the step at p, zero past n_groups.
template <GgmlType T>
__device__ __forceinline__ void lane_scales(const uint8_t* p, int win, int t, int n_groups, float (&s)[2],
                                            float (&m)[2]) {
  if constexpr (T == GgmlType::Q4_K || T == GgmlType::Q5_K) {
    Body<T>::scales2(p, t, s, m);
  } else if constexpr (T == GgmlType::Q6_K) {
    Body<T>::scales2(p, win, t, s, m);
  } else if constexpr (T == GgmlType::F16 || T == GgmlType::BF16) {
    s[0] = 2 * t < n_groups ? 1.0f : 0.0f;
    s[1] = 2 * t + 1 < n_groups ? 1.0f : 0.0f;
    m[0] = m[1] = 0.0f;
  } else {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int j = 2 * t + i;
      if (j < n_groups) {
        Body<T>::scale(p, win, j, &s[i], &m[i]);
      } else {  // past the row's end: whatever bytes the stage holds there are not read
        s[i] = 0.0f;
        m[i] = 0.0f;
      }
    }
  }
}

// ---- the kernel -------------------------------------------------------------------------------------------------

__device__ __forceinline__ void cp_async16_zfill(uint32_t smem_addr, const void* src, uint32_t src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr), "l"(src), "r"(src_bytes));
}

// Where the run of 4 inputs starting at i (a multiple of 4) sits in the shared x (XLayout); within the run the
// values are stored as (v0, v2, v1, v3).
template <XLayout L>
__device__ __forceinline__ int x_run_slot(int i) {
  if constexpr (L == XLayout::Lanes32) {
    const int r = i % 32, c = r / 16, t = (r % 16) / 4;  // value 16c + 4t of its group
    return i - r + 8 * t + 4 * c;
  } else {
    return i;
  }
}

// Shared memory of an instance for n_rows rows of x: the ring, then per row x, its group sums (F::kMin), the warps'
// sums of a tile, the max |x| reduction and the output scale.
template <GgmlType T>
size_t smem_bytes(int32_t n_in_pad, int32_t n_rows) {
  using F = Fmt<T>;
  const size_t per_row = static_cast<size_t>(n_in_pad) * 2 + (F::kMin ? n_in_pad / 32 * 4 : 0) +
                         (kWarps * kTileRows + kWarps + 1) * 4;
  return Geom<T>::kRingBytes + static_cast<size_t>(n_rows) * per_row;
}

// R: the most rows of x an instance multiplies (the weights read once for all of them). Each row's sums are formed
// in the same order whatever R and n_rows are, so a row's y is the same bits as when it is multiplied alone (the
// server's batch invariance rests on this). The decoding is repeated per row; only the memory traffic is shared.
template <GgmlType T, int R>
__global__ void __launch_bounds__(kWarps * 32) quant_gemv_kernel(const Params p) {
  using F = Fmt<T>;
  using G = Geom<T>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int n_rows = p.n_rows;
  const int xsum_row = F::kMin ? p.n_in_pad / 32 : 0;
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem + G::kRingBytes);  // (n_rows, n_in_pad) f16 (bf16 for BF16)
  float* xsum = reinterpret_cast<float*>(xs + n_rows * p.n_in_pad);  // (n_rows, xsum_row) when F::kMin
  float* red = xsum + n_rows * xsum_row;                             // (n_rows, kWarps, 16) the warps' sums
  float* misc = red + n_rows * kWarps * kTileRows;                   // (n_rows, kWarps) max |x| reductions
  float* y_scales = misc + n_rows * kWarps;                          // (n_rows)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // The block walks tiles blockIdx.x, + gridDim.x, ...; item i is stage i % n_steps of its (i / n_steps)-th tile.
  const int n_items = (p.n_tiles - static_cast<int>(blockIdx.x) + static_cast<int>(gridDim.x) - 1) /
                      static_cast<int>(gridDim.x) * p.n_steps;
  auto item_row0 = [&](int i) {
    return (static_cast<int>(blockIdx.x) + i / p.n_steps * static_cast<int>(gridDim.x)) * kTileRows;
  };

  // Copies: warp w copies rows 2w and 2w + 1 of the tile, its lanes consecutive 16-byte chunks (512 contiguous
  // bytes a warp instruction). Rows past n_out copy the last row (their sums are never stored), so every read is of
  // the tensor.
  const uint32_t ring = smem_address(smem);
  auto issue = [&](int i, int stage) {
    if (i < n_items) {
      const int row0 = item_row0(i), step = i % p.n_steps;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = 2 * warp + r;
        const uint8_t* seg = p.w + static_cast<int64_t>(min(row0 + row, p.n_out - 1)) * p.row_bytes +
                             static_cast<int64_t>(step) * G::kSpanBytes;
        const uint8_t* src = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(seg) & ~uintptr_t{31});
        const uint32_t dst = ring + stage * G::kStageBytes + row * G::kRowStride;
        if (src >= p.w && src + 16 * G::kChunks <= p.w_end) {
#pragma unroll
          for (int rr = 0; rr < (G::kChunks + 31) / 32; ++rr) {
            const int k = lane + 32 * rr;
            if (k < G::kChunks) cp_async16(dst + 16 * k, src + 16 * k);
          }
        } else {  // the tensor's first or last bytes: nothing outside it is read (zeros instead)
          for (int k = lane; k < G::kChunks; k += 32) {
            const uint8_t* a = src + 16 * k;
            const int64_t left = a < p.w ? 0 : p.w_end - a;
            cp_async16_zfill(dst + 16 * k, a < p.w ? p.w : a,
                             static_cast<uint32_t>(left < 0 ? 0 : left > 16 ? 16 : left));
          }
        }
      }
    }
    cp_async_commit();  // one group per item, empty or not, so that wait_group counts items
  };
#pragma unroll
  for (int i = 0; i < kStages; ++i) issue(i, i);

  // The weights depend on nothing an earlier kernel writes; x does.
  pdl_trigger();
  pdl_wait();

  // x into shared memory: bf16, or f16 scaled by 2^e so that max |x| lands in [2^13, 2^14) (exact: bf16's 8
  // significant bits fit f16's 11, and values far below the maximum keep an absolute error under 2^-24 of it).
  // One row of x at a time (a barrier between: the max |x| reduction).
  const int n8 = p.n_in / 8;
  for (int r = 0; r < n_rows; ++r) {
    const uint4* x4 = reinterpret_cast<const uint4*>(p.x + static_cast<int64_t>(r) * p.n_in);
    uint16_t* xr = xs + r * p.n_in_pad;
    float* xsumr = xsum + r * xsum_row;
    float x_scale = 1.0f, y_scale = 1.0f;
    if constexpr (!F::kBf16) {
      uint32_t mx = 0;  // max of |x| as bf16 bits (ordered as the values for finite ones; inf and NaN above)
      for (int i = threadIdx.x; i < n8; i += blockDim.x) {
        const uint4 v = x4[i];
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) mx = max(mx, max(w[k] & 0x7fffu, (w[k] >> 16) & 0x7fffu));
      }
      for (int o = 16; o > 0; o >>= 1) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      if (lane == 0) misc[r * kWarps + warp] = __uint_as_float(mx);
      __syncthreads();
      mx = 0;
      for (int i = 0; i < kWarps; ++i) mx = max(mx, __float_as_uint(misc[r * kWarps + i]));
      const int e_max = static_cast<int>(mx >> 7);  // the biased exponent of max |x|
      if (mx != 0 && e_max < 255) {
        const int sh = min(126, max(-126, 140 - e_max));  // 2^(e_max - 127 + sh) = 2^13
        x_scale = __uint_as_float(static_cast<uint32_t>(127 + sh) << 23);
        y_scale = __uint_as_float(static_cast<uint32_t>(127 - sh) << 23);
      }
    }
    // Every thread runs the same number of rounds (the group sums below shuffle); a group of 4 threads is all in or out.
    for (int i0 = 0; i0 < n8; i0 += blockDim.x) {
      const int i = i0 + threadIdx.x;
      const bool in = i < n8;
      const uint4 v = in ? x4[i] : make_uint4(0, 0, 0, 0);
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
      uint32_t h[4];
      float sum = 0.0f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if constexpr (F::kBf16) {
          h[k] = w[k];
        } else {
          const __half lo = __float2half_rn(__uint_as_float(w[k] << 16) * x_scale);
          const __half hi = __float2half_rn(__uint_as_float(w[k] & 0xffff0000u) * x_scale);
          sum += __half2float(lo) + __half2float(hi);
          h[k] = static_cast<uint32_t>(__half_as_ushort(lo)) | static_cast<uint32_t>(__half_as_ushort(hi)) << 16;
        }
      }
      // 8 values (h[0].lo = v0 ... h[3].hi = v7) to their slots: two runs of 4, each stored as (v0, v2, v1, v3).
      if constexpr (F::kX == XLayout::Natural) {
        if (in) *reinterpret_cast<uint4*>(xr + 8 * i) = make_uint4(h[0], h[1], h[2], h[3]);
      } else {
#pragma unroll
        for (int h2 = 0; h2 < 2; ++h2) {
          const uint32_t a = h[2 * h2], b = h[2 * h2 + 1];  // (v0, v1), (v2, v3)
          if (in)
            *reinterpret_cast<uint2*>(xr + x_run_slot<F::kX>(8 * i + 4 * h2)) =
                make_uint2(__byte_perm(a, b, 0x5410), __byte_perm(a, b, 0x7632));
        }
      }
      if constexpr (F::kMin) {  // a 32-value group is 4 consecutive i, i.e. 4 consecutive threads
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (in && i % 4 == 0) xsumr[i / 4] = sum;
      }
    }
    // The padding past n_in (a row's last, partial window) is read by lanes whose group is not there: zeros, so that
    // masked products and zero scales stay zero.
    for (int i = p.n_in + threadIdx.x; i < p.n_in_pad; i += blockDim.x) xr[i] = 0;
    if constexpr (F::kMin)
      for (int i = p.n_in / 32 + threadIdx.x; i < p.n_in_pad / 32; i += blockDim.x) xsumr[i] = 0.0f;
    if (threadIdx.x == 0) y_scales[r] = y_scale;
  }
  __syncthreads();

  // Per row of x: rows row0 + g, row0 + g + 8 of W, this lane's groups (2t, 2t + 1) only.
  float acc_g[R], acc_g8[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc_g[r] = acc_g8[r] = 0.0f;
  const uintptr_t base = reinterpret_cast<uintptr_t>(p.w);
  int stage = 0;
  for (int i = 0; i < n_items; ++i) {
    const int row0 = item_row0(i), step = i % p.n_steps;
    cp_async_wait<kStages - 1>();  // item i has landed (this thread's copies; the barrier makes it everyone's)
    __syncthreads();
    const int u = step * kWarps + warp;  // the unit of the row this warp decodes
    if (u < p.n_units) {
      const int64_t span = static_cast<int64_t>(step) * G::kSpanBytes;
      const int64_t off_g = static_cast<int64_t>(min(row0 + g, p.n_out - 1)) * p.row_bytes + span;
      const int64_t off_g8 = static_cast<int64_t>(min(row0 + g + 8, p.n_out - 1)) * p.row_bytes + span;
      const uint8_t* st = smem + stage * G::kStageBytes + warp * F::kUnitBytes;
      const uint8_t* pg = st + g * G::kRowStride + ((base + off_g) & 31);
      const uint8_t* pg8 = st + (g + 8) * G::kRowStride + ((base + off_g8) & 31);
#pragma unroll
      for (int win = 0; win < F::kWindowsPerUnit; ++win) {
        const int x0 = u * G::kUnitValues + win * G::kWindowValues;  // the window's first input
        const int n_groups = min(8, (p.n_in - x0) / F::kGroup);
        float sg[2], mg[2], sg8[2], mg8[2];
        lane_scales<T>(pg, win, t, n_groups, sg, mg);
        lane_scales<T>(pg8, win, t, n_groups, sg8, mg8);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r >= n_rows) break;
          const uint16_t* xr = xs + r * p.n_in_pad;
          float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          if constexpr (F::kGroup == 32) {
            const uint4 v = *reinterpret_cast<const uint4*>(xr + x0 + 32 * g + 8 * t);
            const uint32_t xb[4] = {v.x, v.y, v.z, v.w};
            Body<T>::run(pg, pg8, win, g, t, n_groups, xb, c);
          } else {
            const uint2 v = *reinterpret_cast<const uint2*>(xr + x0 + 16 * g + 4 * t);
            const uint32_t xb[2] = {v.x, v.y};
            Body<T>::run(pg, pg8, win, g, t, n_groups, xb, c);
          }
          acc_g[r] = fmaf(sg[0], c[0], fmaf(sg[1], c[1], acc_g[r]));
          acc_g8[r] = fmaf(sg8[0], c[2], fmaf(sg8[1], c[3], acc_g8[r]));
          if constexpr (F::kMin) {
            const float2 xm = *reinterpret_cast<const float2*>(xsum + r * xsum_row + x0 / 32 + 2 * t);
            acc_g[r] = fmaf(mg[0], xm.x, fmaf(mg[1], xm.y, acc_g[r]));
            acc_g8[r] = fmaf(mg8[0], xm.x, fmaf(mg8[1], xm.y, acc_g8[r]));
          }
        }
      }
    }
    if (step == p.n_steps - 1) {
      // The tile is done. A row's sum is spread over its 4 lanes t (2 groups of each window each), then over the
      // 8 warps (a unit each per stage).
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r >= n_rows) break;
        float a = acc_g[r], a8 = acc_g8[r];
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        a += __shfl_xor_sync(0xffffffffu, a, 2);
        a8 += __shfl_xor_sync(0xffffffffu, a8, 1);
        a8 += __shfl_xor_sync(0xffffffffu, a8, 2);
        if (t == 0) {
          red[(r * kWarps + warp) * kTileRows + g] = a;
          red[(r * kWarps + warp) * kTileRows + g + 8] = a8;
        }
        acc_g[r] = acc_g8[r] = 0.0f;
      }
      __syncthreads();
      const int r = threadIdx.x / kTileRows, row = threadIdx.x % kTileRows;  // 256 threads: up to 16 rows of x
      if (r < n_rows && row0 + row < p.n_out) {
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < kWarps; ++k) sum += red[(r * kWarps + k) * kTileRows + row];
        p.y[static_cast<int64_t>(r) * p.n_out + row0 + row] = sum * y_scales[r];
      }
    }
    __syncthreads();  // every warp is done with the stage (and red is read) before the stage is refilled
    issue(i + kStages, stage);
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
}

// F32 rows: a warp per row, 4 loads of 16 bytes in flight per lane, x as f32 in shared memory.
__global__ void __launch_bounds__(kWarps * 32) gemv_f32_kernel(const float* w, int32_t n_out, int32_t n_in,
                                                              const uint16_t* x, float* y) {
  extern __shared__ __align__(16) float xf[];  // (n_in)
  const int lane = threadIdx.x % 32;
  pdl_trigger();
  pdl_wait();
  for (int i = threadIdx.x; i < n_in; i += blockDim.x) xf[i] = __uint_as_float(static_cast<uint32_t>(x[i]) << 16);
  __syncthreads();
  const int n4 = n_in / 4;
  const float4* x4 = reinterpret_cast<const float4*>(xf);
  for (int row = blockIdx.x * kWarps + threadIdx.x / 32; row < n_out; row += gridDim.x * kWarps) {
    const float4* w4 = reinterpret_cast<const float4*>(w + static_cast<int64_t>(row) * n_in);
    float acc = 0.0f;
    for (int c0 = lane; c0 < n4; c0 += 4 * 32) {
      float4 v[4];
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (c0 + 32 * k < n4) v[k] = __ldcs(w4 + c0 + 32 * k);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (c0 + 32 * k < n4) {
          const float4 xv = x4[c0 + 32 * k];
          acc = fmaf(v[k].x, xv.x, fmaf(v[k].y, xv.y, fmaf(v[k].z, xv.z, fmaf(v[k].w, xv.w, acc))));
        }
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) y[row] = acc;
  }
}

// One launch of the R-row instance for rows [r0, r0 + n) of x.
template <GgmlType T, int R>
Status launch_rows(const QuantGemvArgs& a, int64_t row_bytes, int32_t r0, int32_t n, cudaStream_t stream) {
  using G = Geom<T>;
  const int32_t n_units = (a.n_in + G::kUnitValues - 1) / G::kUnitValues;
  const int32_t n_in_pad = n_units * G::kUnitValues;
  const size_t smem = smem_bytes<T>(n_in_pad, n);
  auto kernel = quant_gemv_kernel<T, R>;
  static int smem_set = 0;  // the instance's dynamic shared-memory limit, raised once to the largest asked
  if (static_cast<int>(smem) > smem_set) {
    LONGCTX_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    smem_set = static_cast<int>(smem);
  }
  int dev = 0, n_sm = 0, per_sm = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  LONGCTX_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarps * 32, smem));
  if (per_sm < 1) return Status::error("quant_gemv: " + std::to_string(smem) + " bytes of shared memory do not fit");
  const int32_t n_tiles = (a.n_out + kTileRows - 1) / kTileRows;
  // One wave of resident blocks, each walking its tiles with the ring running on across them (x is staged once a
  // block, not once a tile).
  int64_t blocks = std::min<int64_t>(n_tiles, static_cast<int64_t>(n_sm) * per_sm);
  if (a.max_blocks > 0) blocks = std::min<int64_t>(blocks, a.max_blocks);
  Params p{};
  p.w = static_cast<const uint8_t*>(a.w);
  p.row_bytes = row_bytes;
  p.w_end = p.w + row_bytes * a.n_out;
  p.n_out = a.n_out;
  p.n_in = a.n_in;
  p.x = static_cast<const uint16_t*>(a.x_bf16) + static_cast<int64_t>(r0) * a.n_in;
  p.y = a.y + static_cast<int64_t>(r0) * a.n_out;
  p.n_rows = n;
  p.n_tiles = n_tiles;
  p.n_units = n_units;
  p.n_steps = (n_units + kWarps - 1) / kWarps;
  p.n_in_pad = n_in_pad;
  return cuda_status(launch_pdl(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), smem, stream, p),
                     "quant_gemv launch");
}

// The rows of x in launches of as many as shared memory holds (at most kMaxRowsPerLaunch): one row alone through the
// one-row instance, more through the many-row one.
template <GgmlType T>
Status launch(const QuantGemvArgs& a, int64_t row_bytes, cudaStream_t stream) {
  if (a.n_rows == 1) return launch_rows<T, 1>(a, row_bytes, 0, 1, stream);
  using G = Geom<T>;
  const int32_t n_in_pad = (a.n_in + G::kUnitValues - 1) / G::kUnitValues * G::kUnitValues;
  int dev = 0, optin = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  int32_t fit = kMaxRowsPerLaunch;
  while (fit > 1 && smem_bytes<T>(n_in_pad, fit) > static_cast<size_t>(optin)) --fit;
  for (int32_t r0 = 0; r0 < a.n_rows; r0 += fit) {
    const int32_t n = std::min(fit, a.n_rows - r0);
    const Status s = n == 1 ? launch_rows<T, 1>(a, row_bytes, r0, 1, stream)
                            : launch_rows<T, kMaxRowsPerLaunch>(a, row_bytes, r0, n, stream);
    if (!s.ok()) return s;
  }
  return Status::success();
}

Status launch_f32(const QuantGemvArgs& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(a.n_in) * 4;
  static int smem_set = 0;
  if (static_cast<int>(smem) > smem_set) {
    LONGCTX_CUDA_TRY(
        cudaFuncSetAttribute(gemv_f32_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    smem_set = static_cast<int>(smem);
  }
  int dev = 0, n_sm = 0, per_sm = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  LONGCTX_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_f32_kernel, kWarps * 32, smem));
  const int32_t blocks = std::max(1, std::min((a.n_out + kWarps - 1) / kWarps, n_sm * std::max(per_sm, 1)));
  return cuda_status(launch_pdl(gemv_f32_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), smem, stream,
                                static_cast<const float*>(a.w), a.n_out, a.n_in,
                                static_cast<const uint16_t*>(a.x_bf16), a.y),
                     "quant_gemv (f32) launch");
}

// Values per block and bytes per block of each format this file reads; 0 for the others.
void block_geometry(GgmlType t, int* values, int* bytes) {
  switch (t) {
    case GgmlType::F32: *values = 4, *bytes = 16; return;  // rows read 16 bytes at a time
    case GgmlType::F16: *values = 16, *bytes = 32; return;
    case GgmlType::BF16: *values = 16, *bytes = 32; return;
    case GgmlType::Q4_0: *values = 32, *bytes = 18; return;
    case GgmlType::Q4_1: *values = 32, *bytes = 20; return;
    case GgmlType::Q8_0: *values = 32, *bytes = 34; return;
    case GgmlType::Q4_K: *values = 256, *bytes = 144; return;
    case GgmlType::Q5_K: *values = 256, *bytes = 176; return;
    case GgmlType::Q6_K: *values = 256, *bytes = 210; return;
    default: *values = 0, *bytes = 0; return;
  }
}

}  // namespace

bool quant_supported(GgmlType t) {
  int v = 0, b = 0;
  block_geometry(t, &v, &b);
  return v != 0;
}

int32_t quant_gemv_max_in() { return kMaxIn; }

Status quant_gemv(const QuantGemvArgs& a, void* stream) {
  int block_values = 0, block_bytes = 0;
  block_geometry(a.type, &block_values, &block_bytes);
  if (block_values == 0)
    return Status::error("quant_gemv: weight format " + std::to_string(static_cast<uint32_t>(a.type)) +
                         " is not supported on the GPU");
  if (a.n_out < 1) return Status::error("quant_gemv: n_out must be positive");
  if (a.n_in < 1 || a.n_in % block_values != 0 || a.n_in > kMaxIn)
    return Status::error("quant_gemv: n_in (" + std::to_string(a.n_in) + ") must be a positive multiple of " +
                         std::to_string(block_values) + " for this format, at most " + std::to_string(kMaxIn));
  if (a.max_blocks < 0) return Status::error("quant_gemv: max_blocks must be 0 (one wave) or positive");
  if (a.n_rows < 1) return Status::error("quant_gemv: n_rows must be positive");
  if (!a.w || !a.x_bf16 || !a.y) return Status::error("quant_gemv: null pointer");
  if ((reinterpret_cast<uintptr_t>(a.w) | reinterpret_cast<uintptr_t>(a.x_bf16)) % 16 != 0)
    return Status::error("quant_gemv: W and x must be 16-byte aligned");
  const int64_t row_bytes = static_cast<int64_t>(a.n_in / block_values) * block_bytes;
  const auto st = static_cast<cudaStream_t>(stream);
  switch (a.type) {
    case GgmlType::Q4_0: return launch<GgmlType::Q4_0>(a, row_bytes, st);
    case GgmlType::Q4_1: return launch<GgmlType::Q4_1>(a, row_bytes, st);
    case GgmlType::Q8_0: return launch<GgmlType::Q8_0>(a, row_bytes, st);
    case GgmlType::Q4_K: return launch<GgmlType::Q4_K>(a, row_bytes, st);
    case GgmlType::Q5_K: return launch<GgmlType::Q5_K>(a, row_bytes, st);
    case GgmlType::Q6_K: return launch<GgmlType::Q6_K>(a, row_bytes, st);
    case GgmlType::F16: return launch<GgmlType::F16>(a, row_bytes, st);
    case GgmlType::BF16: return launch<GgmlType::BF16>(a, row_bytes, st);
    case GgmlType::F32:
      for (int32_t r = 0; r < a.n_rows; ++r) {  // a row a launch
        QuantGemvArgs one = a;
        one.x_bf16 = static_cast<const uint16_t*>(a.x_bf16) + static_cast<int64_t>(r) * a.n_in;
        one.y = a.y + static_cast<int64_t>(r) * a.n_out;
        one.n_rows = 1;
        if (Status s = launch_f32(one, st); !s.ok()) return s;
      }
      return Status::success();
    default: return Status::error("quant_gemv: unsupported format");
  }
}

}  // namespace longctx::cuda
