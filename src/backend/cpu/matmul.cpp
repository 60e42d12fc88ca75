// y = x * W^T with W in a GGUF weight format; Highway dynamic dispatch picks the widest target the CPU has.
//
// Each format has one SIMD dequantizer that hands vectors of weights to a "sink", and two paths consume them, both
// dequantizing every weight once per call (per group of 4 tokens below kPanelMinTok) and keeping f32 semantics:
// - rows (n_tok < kPanelMinTok: decode, small batches): the sink FMAs each weight vector straight into the
//   accumulators of up to 4 tokens, for 4 rows at once so that 4 T independent FMA chains hide the latency. The
//   weights stream from memory once and are never written out: this path is bound by memory bandwidth.
// - panels (prefill): 2N consecutive rows (N = lanes) are dequantized, N x N tiles transposed in registers, into a
//   panel (n_in, 2N) that stays in L2; an outer-product kernel then broadcasts one activation per token and FMAs it
//   against two vectors of panel rows, kTok tokens at once, so each accumulator is one output vector and no
//   horizontal sums are needed. This is the register blocking of BLAS micro-kernels, the packing doing the dequant.
//
// The SIMD dequantizers give the same values as quant.cpp's scalar reference (the products are exact, see there),
// so matmul differs from matmul_reference only by the order of the f32 sums.
//
// With a quantized precision (the default) and a quantized format, the int8 kernels of matmul_q8.cpp take over:
// below kPanelMinTok on every CPU with AVX2 (without, the rows path here runs on the dequantized activations), and
// from it on where the CPU has VNNI (int8 panels; matmul_quantizes). The paths here serve the float formats, F32
// precision, and prefill on CPUs without VNNI.
#include "backend/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend/cpu/matmul_q8.h"
#include "backend/cpu/quant.h"
#include "core/error.h"
#include "core/fp16.h"

// Compile time grows with every target: keep the fallback (SCALAR with GCC 12), AVX2 and AVX-512, drop the SSE
// levels between (a machine without AVX2 runs correctly, slowly, on the fallback) and ARM's scalable vectors (the
// kernels keep arrays of vectors, which sizeless types forbid; NEON is used there instead).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/matmul.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; the code between here and HWY_ONCE is per target.
#include <hwy/aligned_allocator.h>
#include <hwy/cache_control.h>
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace longctx::cpu {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

// At most 16 lanes: the unpackers take 16-byte groups of nibbles and 16-value Q6_K scale groups per vector.
using DF = hn::CappedTag<float, 16>;
using V = hn::Vec<DF>;
using D8 = hn::Rebind<uint8_t, DF>;
using DI = hn::Rebind<int32_t, DF>;
using DU = hn::Rebind<uint32_t, DF>;

// f16 -> f32 of a scale field, in hardware (F16C) where the target has it; exact either way.
HWY_INLINE float LoadF16(const uint8_t* p) {
  const hn::CappedTag<float, 1> d1;
  const hn::Rebind<hwy::float16_t, decltype(d1)> dh1;
  return hn::GetLane(hn::PromoteTo(d1, hn::LoadU(dh1, reinterpret_cast<const hwy::float16_t*>(p))));
}

// ---- formats ----
//
// A format has kBlockValues, kBlockBytes and Run(src, n_blocks, sink), which dequantizes n_blocks consecutive
// blocks and hands the values to the sink in order: sink(i, v) for the vector of values i .. i + N (i counted from
// src's first value), and for a float format sink.Scalar(i, f) for its last n % N values. The sink decides what
// happens to them (stored, or multiplied into an accumulator), so one dequantizer per format serves both paths.

// F32, F16, BF16: a block is one value.
template <typename T>
struct FloatFormat {
  static constexpr int64_t kBlockValues = 1;
  static constexpr size_t kBlockBytes = sizeof(T);
  template <class Sink>
  HWY_INLINE static void Run(const uint8_t* src, int64_t n, Sink& sink) {
    const DF df;
    const hn::Rebind<T, DF> dt;
    const int64_t N = static_cast<int64_t>(hn::Lanes(df));
    const T* s = reinterpret_cast<const T*>(src);
    int64_t i = 0;
    for (; i + N <= n; i += N) {
      if constexpr (std::is_same_v<T, float>) {
        sink(i, hn::LoadU(df, s + i));
      } else {
        sink(i, hn::PromoteTo(df, hn::LoadU(dt, s + i)));
      }
    }
    for (; i < n; ++i) {
      uint32_t bits = 0;
      std::memcpy(&bits, src + sizeof(T) * i, sizeof(T));
      float f;
      if constexpr (std::is_same_v<T, float>) {
        std::memcpy(&f, &bits, 4);
      } else if constexpr (std::is_same_v<T, hwy::bfloat16_t>) {
        f = bf16_to_f32(static_cast<uint16_t>(bits));
      } else {
        f = fp16_to_f32(static_cast<uint16_t>(bits));
      }
      sink.Scalar(i, f);
    }
  }
};

// Nibbles of lanes: low 4 bits, or high 4 bits when `high`, widened to i32.
HWY_INLINE hn::Vec<DI> Nibbles(hn::Vec<D8> bytes, bool high) {
  const D8 d8;
  const DI di;
  return hn::PromoteTo(di, high ? hn::ShiftRight<4>(bytes) : hn::And(bytes, hn::Set(d8, uint8_t{0x0f})));
}

// Q4_0, Q4_1, Q5_0, Q5_1 (layouts in quant.cpp): x = d*q + m with a stored min, else d*(q - half the range).
enum class Offset { kCentred, kMin };
enum class HighBit { kNone, kStored };

template <Offset kOffset, HighBit kHigh>
struct Block32Format {
  static constexpr int64_t kBlockValues = 32;
  static constexpr size_t kBlockBytes = 18 + (kOffset == Offset::kMin ? 2 : 0) + (kHigh == HighBit::kStored ? 4 : 0);
  template <class Sink>
  HWY_INLINE static void Run(const uint8_t* src, int64_t n_blocks, Sink& sink) {
    const DF df;
    const D8 d8;
    const DI di;
    [[maybe_unused]] const DU du;
    const int N = static_cast<int>(hn::Lanes(df));
    const auto centre = hn::Set(di, kHigh == HighBit::kStored ? 16 : 8);
    for (int64_t b = 0; b < n_blocks; ++b, src += kBlockBytes) {
      const auto d = hn::Set(df, LoadF16(src));
      size_t off = 2;
      auto m = hn::Zero(df);
      if constexpr (kOffset == Offset::kMin) {
        m = hn::Set(df, LoadF16(src + off));
        off += 2;
      }
      uint32_t qh = 0;
      if constexpr (kHigh == HighBit::kStored) {
        std::memcpy(&qh, src + off, 4);
        off += 4;
      }
      const uint8_t* qs = src + off;  // (16)
      for (int j = 0; j < 16; j += N) {
        const auto bytes = hn::LoadU(d8, qs + j);
        for (int half = 0; half < 2; ++half) {  // values j.. (low nibbles), then 16 + j.. (high nibbles)
          auto q = Nibbles(bytes, half == 1);
          if constexpr (kHigh == HighBit::kStored) {
            const auto bit = hn::And(hn::Set(du, qh) >> hn::Iota(du, 16 * half + j), hn::Set(du, 1u));
            q = hn::Or(q, hn::BitCast(di, hn::ShiftLeft<4>(bit)));
          }
          if constexpr (kOffset == Offset::kMin) {
            sink(32 * b + 16 * half + j, hn::MulAdd(d, hn::ConvertTo(df, q), m));
          } else {
            sink(32 * b + 16 * half + j, hn::Mul(d, hn::ConvertTo(df, hn::Sub(q, centre))));
          }
        }
      }
    }
  }
};

struct Q8_0Format {
  static constexpr int64_t kBlockValues = 32;
  static constexpr size_t kBlockBytes = 34;
  template <class Sink>
  HWY_INLINE static void Run(const uint8_t* src, int64_t n_blocks, Sink& sink) {
    const DF df;
    const hn::Rebind<int8_t, DF> d8;
    const DI di;
    const int N = static_cast<int>(hn::Lanes(df));
    for (int64_t b = 0; b < n_blocks; ++b, src += kBlockBytes) {
      const auto d = hn::Set(df, LoadF16(src));
      const auto* qs = reinterpret_cast<const int8_t*>(src + 2);
      for (int j = 0; j < 32; j += N)
        sink(32 * b + j, hn::Mul(hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, qs + j))), d));
    }
  }
};

// Q4_K and Q5_K: sub-block s takes nibble s % 2 of qs[32 (s / 2) ..], Q5_K's fifth bit is bit s of qh[i].
template <HighBit kHigh>
struct Q45KFormat {
  static constexpr int64_t kBlockValues = 256;
  static constexpr size_t kBlockBytes = kHigh == HighBit::kStored ? 176 : 144;
  template <class Sink>
  HWY_INLINE static void Run(const uint8_t* src, int64_t n_blocks, Sink& sink) {
    const DF df;
    const D8 d8;
    const DI di;
    const int N = static_cast<int>(hn::Lanes(df));
    for (int64_t b = 0; b < n_blocks; ++b, src += kBlockBytes) {
      const float d = LoadF16(src), dmin = LoadF16(src + 2);
      const uint8_t* qh = src + 16;                                    // (32), Q5_K only
      const uint8_t* qs = src + (kHigh == HighBit::kStored ? 48 : 16);  // (128)
      float ds[8], dm[8];  // per sub-block
      for (int s = 0; s < 8; ++s) {
        int sc, mn;
        k_scale_min(src + 4, s, &sc, &mn);
        ds[s] = d * static_cast<float>(sc);
        dm[s] = dmin * static_cast<float>(mn);
      }
      HWY_UNROLL(4)  // unrolled, the sinks' accumulators stay in registers
      for (int g = 0; g < 4; ++g) {  // sub-blocks 2g (low nibbles) and 2g + 1 (high nibbles)
        HWY_UNROLL(2)
        for (int i = 0; i < 32; i += N) {
          const auto bytes = hn::LoadU(d8, qs + 32 * g + i);
          auto lo = Nibbles(bytes, false), hi = Nibbles(bytes, true);
          if constexpr (kHigh == HighBit::kStored) {
            const auto hb = hn::PromoteTo(di, hn::LoadU(d8, qh + i));
            lo = hn::Or(lo, hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(hb, 2 * g), hn::Set(di, 1))));
            hi = hn::Or(hi, hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(hb, 2 * g + 1), hn::Set(di, 1))));
          }
          sink(256 * b + 64 * g + i, hn::MulSub(hn::Set(df, ds[2 * g]), hn::ConvertTo(df, lo), hn::Set(df, dm[2 * g])));
          sink(256 * b + 64 * g + 32 + i,
               hn::MulSub(hn::Set(df, ds[2 * g + 1]), hn::ConvertTo(df, hi), hn::Set(df, dm[2 * g + 1])));
        }
      }
    }
  }
};

// Q6_K: in half h, value r has its low 4 bits in nibble r / 64 of ql[64h + r % 64] and its top 2 bits at bit
// 2 (r / 32) of qh[32h + r % 32]; so bytes i of ql, ql + 32 and qh give the four values i, 32 + i, 64 + i, 96 + i
// of the half. A vector of at most 16 values never straddles a 16-value scale group.
struct Q6KFormat {
  static constexpr int64_t kBlockValues = 256;
  static constexpr size_t kBlockBytes = 210;
  template <class Sink>
  HWY_INLINE static void Run(const uint8_t* src, int64_t n_blocks, Sink& sink) {
    const DF df;
    const D8 d8;
    const DI di;
    const int N = static_cast<int>(hn::Lanes(df));
    const auto mask4 = hn::Set(d8, uint8_t{0x0f}), mask2 = hn::Set(d8, uint8_t{0x03});
    const auto centre = hn::Set(di, 32);
    for (int64_t b = 0; b < n_blocks; ++b, src += kBlockBytes) {
      const auto* scales = reinterpret_cast<const int8_t*>(src + 192);
      const float d = LoadF16(src + 208);
      HWY_UNROLL(2)  // unrolled, the sinks' accumulators stay in registers
      for (int h = 0; h < 2; ++h) {
        const uint8_t* ql = src + 64 * h;
        const uint8_t* qh = src + 128 + 32 * h;
        HWY_UNROLL(2)
        for (int i = 0; i < 32; i += N) {
          const auto l0 = hn::LoadU(d8, ql + i), l1 = hn::LoadU(d8, ql + 32 + i), hb = hn::LoadU(d8, qh + i);
          const hn::Vec<D8> q6[4] = {
              hn::Or(hn::And(l0, mask4), hn::ShiftLeft<4>(hn::And(hb, mask2))),
              hn::Or(hn::And(l1, mask4), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<2>(hb), mask2))),
              hn::Or(hn::ShiftRight<4>(l0), hn::ShiftLeft<4>(hn::And(hn::ShiftRight<4>(hb), mask2))),
              hn::Or(hn::ShiftRight<4>(l1), hn::ShiftLeft<4>(hn::ShiftRight<6>(hb)))};
          for (int k = 0; k < 4; ++k) {
            const int v = 128 * h + 32 * k + i;
            const auto ds = hn::Set(df, d * static_cast<float>(scales[v / 16]));
            sink(256 * b + v, hn::Mul(ds, hn::ConvertTo(df, hn::Sub(hn::PromoteTo(di, q6[k]), centre))));
          }
        }
      }
    }
  }
};

// ---- sinks ----

struct StoreSink {
  float* out;  // (n values)
  HWY_INLINE void operator()(int64_t i, V v) const { hn::StoreU(v, DF(), out + i); }
  HWY_INLINE void Scalar(int64_t i, float f) const { out[i] = f; }
};

// Fused with the dot products of T tokens: the weights never leave the registers.
template <int T>
struct DotSink {
  const float* x[T];  // T rows of activations, each at the column of the first weight handed in
  V acc[T];
  float tail[T];
  HWY_INLINE void operator()(int64_t i, V v) {
    for (int t = 0; t < T; ++t) acc[t] = hn::MulAdd(v, hn::LoadU(DF(), x[t] + i), acc[t]);
  }
  HWY_INLINE void Scalar(int64_t i, float f) {
    for (int t = 0; t < T; ++t) tail[t] += f * x[t][i];
  }
};

// ---- rows path (decode) ----

// From this many tokens on, packing a panel costs less than dequantizing once per group of 4 tokens (measured).
// matmul's kQuantizedMaxTok is the same bound.
constexpr int64_t kPanelMinTok = 8;
static_assert(kPanelMinTok == kMatmulRowInvariantTok + 1, "the rows path is the batch-invariant one");

// y (n_valid, n_out) at rows r0 .. r0 + 4 for tokens x (n_valid, n_in), dequantization fused with the dot
// products. Rows past r_end - 1 and tokens past n_valid - 1 repeat the last one and are dropped: a short group
// costs little more than a full one. The 4 rows advance together a block (or 64 values) at a time so that their
// 4 T accumulator chains overlap: one row of one token alone waits on the FMA latency. The next 4 rows are
// prefetched in step: the hardware prefetcher loses track of 4 interleaved streams a K-quant row apart (measured:
// Q6_K decode from DRAM went from 4.5 to 12 GB/s).
template <class Fmt, int T>
void DotRows(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r_end, int64_t n_in, const float* x,
             int64_t n_valid, int64_t n_out, float* y) {
  const DF df;
  constexpr int kR = 4;
  constexpr int64_t kStep = Fmt::kBlockValues >= 32 ? 1 : 64;  // blocks per step
  const int64_t n_blocks = n_in / Fmt::kBlockValues;
  const uint8_t* rows[kR];
  const uint8_t* ahead[kR];  // the same row of the next group, prefetched in step (none past the matrix)
  DotSink<T> sink[kR];
  for (int j = 0; j < kR; ++j) {
    rows[j] = w + static_cast<size_t>(std::min(r0 + j, r_end - 1)) * row_bytes;
    ahead[j] = r0 + kR + j < n_out ? w + static_cast<size_t>(r0 + kR + j) * row_bytes : nullptr;
    for (int t = 0; t < T; ++t) sink[j].acc[t] = hn::Zero(df), sink[j].tail[t] = 0.0f;
  }
  for (int64_t b = 0; b < n_blocks; b += kStep) {
    const int64_t nb = std::min(kStep, n_blocks - b);
    for (int j = 0; j < kR; ++j) {
      if (ahead[j] != nullptr) {
        const uint8_t* p = ahead[j] + static_cast<size_t>(b) * Fmt::kBlockBytes;
        for (size_t o = 0; o < static_cast<size_t>(nb) * Fmt::kBlockBytes; o += 64) hwy::Prefetch(p + o);
      }
      for (int t = 0; t < T; ++t) sink[j].x[t] = x + std::min<int64_t>(t, n_valid - 1) * n_in + b * Fmt::kBlockValues;
      Fmt::Run(rows[j] + static_cast<size_t>(b) * Fmt::kBlockBytes, nb, sink[j]);
    }
  }
  for (int j = 0; j < kR && r0 + j < r_end; ++j)
    for (int t = 0; t < T && t < n_valid; ++t)
      y[t * n_out + r0 + j] = hn::GetLane(hn::SumOfLanes(df, sink[j].acc[t])) + sink[j].tail[t];
}

// y (n_tok, n_out) at rows [r0, r1) for n_tok < kPanelMinTok tokens, in groups of 4 tokens (3 padded to 4),
// then 2 or 1: each group dequantizes the rows again, cheaper than a panel for so few tokens.
template <class Fmt>
void RowsKernel(const uint8_t* w, int64_t r0, int64_t r1, int64_t n_out, int64_t n_in, const float* x,
                int64_t n_tok, float* y) {
  const size_t row_bytes = static_cast<size_t>(n_in / Fmt::kBlockValues) * Fmt::kBlockBytes;
  for (int64_t t = 0; t < n_tok;) {
    const int64_t n = std::min<int64_t>(4, n_tok - t);
    const float* xt = x + t * n_in;
    float* yt = y + t * n_out;
    for (int64_t r = r0; r < r1; r += 4) {
      if (n >= 3) {
        DotRows<Fmt, 4>(w, row_bytes, r, r1, n_in, xt, n, n_out, yt);
      } else if (n == 2) {
        DotRows<Fmt, 2>(w, row_bytes, r, r1, n_in, xt, n, n_out, yt);
      } else {
        DotRows<Fmt, 1>(w, row_bytes, r, r1, n_in, xt, n, n_out, yt);
      }
    }
    t += n;
  }
}

// ---- panels path (prefill) ----

// Tokens per micro-kernel call: 2 * kTok accumulators + 2 panel vectors + 1 broadcast must fit the register file
// (32 vector registers with AVX-512, 16 otherwise).
#if HWY_ARCH_X86_64 && HWY_TARGET <= HWY_AVX3
constexpr int kTok = 12;
#else
constexpr int kTok = 6;
#endif

// out (T, 2N) = x[0 .. T) (T, n_in) * panel (n_in, 2N). The template instances are kTok, 4 and 1 (the tail).
template <int T>
HWY_INLINE void PanelKernel(const float* HWY_RESTRICT panel, int64_t n_in, const float* HWY_RESTRICT x,
                            float* HWY_RESTRICT out) {
  const DF df;
  const size_t N = hn::Lanes(df);
  V a0[T], a1[T];
  for (int i = 0; i < T; ++i) a0[i] = a1[i] = hn::Zero(df);
  for (int64_t k = 0; k < n_in; ++k) {
    const auto w0 = hn::Load(df, panel + k * 2 * N);
    const auto w1 = hn::Load(df, panel + k * 2 * N + N);
    for (int i = 0; i < T; ++i) {
      const auto xb = hn::Set(df, x[i * n_in + k]);
      a0[i] = hn::MulAdd(w0, xb, a0[i]);
      a1[i] = hn::MulAdd(w1, xb, a1[i]);
    }
  }
  for (int i = 0; i < T; ++i) {
    hn::Store(a0[i], df, out + i * 2 * N);
    hn::Store(a1[i], df, out + i * 2 * N + N);
  }
}

// In-register transpose of N vectors of N floats, N = MaxLanes(DF) in {1, 4, 8, 16}: lane c of v[r] goes to
// lane r of v[c]. 4x4 transposes inside each 128-bit block, then (N > 4) a transpose of the blocks across vectors.
HWY_INLINE void Transpose(V* v) {
#if HWY_TARGET == HWY_SCALAR
  (void)v;  // one lane: nothing to do
#else
  const DF df;
  const hn::Repartition<uint64_t, DF> d64;
  constexpr size_t N = hn::MaxLanes(df);
  static_assert(N == 4 || N == 8 || N == 16, "transpose of 4, 8 or 16 lanes");
  V u[N];
  for (size_t g = 0; g < N; g += 4) {
    const V t0 = hn::InterleaveLower(df, v[g], v[g + 1]), t1 = hn::InterleaveLower(df, v[g + 2], v[g + 3]);
    const V t2 = hn::InterleaveUpper(df, v[g], v[g + 1]), t3 = hn::InterleaveUpper(df, v[g + 2], v[g + 3]);
    u[g] = hn::BitCast(df, hn::InterleaveLower(d64, hn::BitCast(d64, t0), hn::BitCast(d64, t1)));
    u[g + 1] = hn::BitCast(df, hn::InterleaveUpper(d64, hn::BitCast(d64, t0), hn::BitCast(d64, t1)));
    u[g + 2] = hn::BitCast(df, hn::InterleaveLower(d64, hn::BitCast(d64, t2), hn::BitCast(d64, t3)));
    u[g + 3] = hn::BitCast(df, hn::InterleaveUpper(d64, hn::BitCast(d64, t2), hn::BitCast(d64, t3)));
  }
  // Now block j of u[4g + m] holds column 4j + m of rows 4g .. 4g + 4.
  for (size_t m = 0; m < 4; ++m) {
    if constexpr (N == 4) {
      v[m] = u[m];
    } else if constexpr (N == 8) {
      v[m] = hn::ConcatLowerLower(df, u[4 + m], u[m]);
      v[4 + m] = hn::ConcatUpperUpper(df, u[4 + m], u[m]);
    } else {
      const V a = u[m], b = u[4 + m], c = u[8 + m], d = u[12 + m];
      const V ab_even = hn::OddEvenBlocks(hn::SwapAdjacentBlocks(b), a);  // blocks a0 b0 a2 b2
      const V ab_odd = hn::OddEvenBlocks(b, hn::SwapAdjacentBlocks(a));   // blocks a1 b1 a3 b3
      const V cd_even = hn::OddEvenBlocks(hn::SwapAdjacentBlocks(d), c);
      const V cd_odd = hn::OddEvenBlocks(d, hn::SwapAdjacentBlocks(c));
      v[m] = hn::ConcatLowerLower(df, cd_even, ab_even);
      v[4 + m] = hn::ConcatLowerLower(df, cd_odd, ab_odd);
      v[8 + m] = hn::ConcatUpperUpper(df, cd_even, ab_even);
      v[12 + m] = hn::ConcatUpperUpper(df, cd_odd, ab_odd);
    }
  }
#endif
}

constexpr int64_t kPackChunk = 256;  // values of a row dequantized at a time while packing: a multiple of every block

// Per-thread scratch, grown as needed and kept across calls (the pool's threads are persistent).
struct Scratch {
  hwy::AlignedFreeUniquePtr<float[]> panel;  // (n_in, 2N)
  hwy::AlignedFreeUniquePtr<float[]> rows;   // (N, kPackChunk): N rows of one chunk, before the transpose
  size_t n_in = 0;
};

// panel (n_in, 2N) = rows p0 .. p0 + 2N of W, dequantized and transposed; rows at or past n_out are zeros
// (computed and dropped). N rows by kPackChunk values go through L1, then N x N tiles through registers.
template <class Fmt>
void PackPanel(const uint8_t* w, int64_t p0, int64_t n_out, int64_t n_in, float* HWY_RESTRICT panel,
               float* HWY_RESTRICT rows) {
  const DF df;
  constexpr int64_t N = static_cast<int64_t>(hn::MaxLanes(df));
  constexpr int64_t P = 2 * N;
  const size_t row_bytes = static_cast<size_t>(n_in / Fmt::kBlockValues) * Fmt::kBlockBytes;
  for (int64_t h = 0; h < 2; ++h) {  // the two half-panels of N rows
    for (int64_t c0 = 0; c0 < n_in; c0 += kPackChunk) {
      const int64_t len = std::min(kPackChunk, n_in - c0);
      for (int64_t r = 0; r < N; ++r) {
        float* dst = rows + r * kPackChunk;
        const int64_t row = p0 + h * N + r;
        if (row < n_out) {
          StoreSink sink{dst};
          Fmt::Run(w + static_cast<size_t>(row) * row_bytes + static_cast<size_t>(c0 / Fmt::kBlockValues) *
                                                                   Fmt::kBlockBytes,
                   len / Fmt::kBlockValues, sink);
        } else {
          std::fill(dst, dst + len, 0.0f);
        }
      }
      int64_t k = 0;
      for (; k + N <= len; k += N) {
        V v[N];
        for (int64_t r = 0; r < N; ++r) v[r] = hn::Load(df, rows + r * kPackChunk + k);
        Transpose(v);
        for (int64_t c = 0; c < N; ++c) hn::Store(v[c], df, panel + (c0 + k + c) * P + h * N);
      }
      for (; k < len; ++k)  // float formats only: n_in need not be a multiple of N
        for (int64_t r = 0; r < N; ++r) panel[(c0 + k) * P + h * N + r] = rows[r * kPackChunk + k];
    }
  }
}

// y[:, p0 .. p0 + 2N) for all tokens: one panel, dequantized once.
template <class Fmt>
void PanelRows(const uint8_t* w, int64_t p0, int64_t n_out, int64_t n_in, const float* x, int64_t n_tok,
               float* y) {
  const DF df;
  constexpr int64_t N = static_cast<int64_t>(hn::MaxLanes(df));
  constexpr int64_t P = 2 * N;
  thread_local Scratch s;
  if (s.n_in < static_cast<size_t>(n_in)) {
    s.panel = hwy::AllocateAligned<float>(static_cast<size_t>(n_in * P));
    s.rows = hwy::AllocateAligned<float>(static_cast<size_t>(N * kPackChunk));
    s.n_in = static_cast<size_t>(n_in);
  }
  float* panel = s.panel.get();
  PackPanel<Fmt>(w, p0, n_out, n_in, panel, s.rows.get());
  const int64_t n_rows = std::min(P, n_out - p0);
  HWY_ALIGN float out[kTok * 32];  // (T, P)
  // Two vector stores per token for a whole panel (a memcpy call per 128-byte row cost ~10% of Gemma's prefill).
  auto emit = [&](int64_t t0, int64_t n) {
    if (n_rows == P) {
      for (int64_t i = 0; i < n; ++i) {
        float* dst = y + (t0 + i) * n_out + p0;
        hn::StoreU(hn::Load(df, out + i * P), df, dst);
        hn::StoreU(hn::Load(df, out + i * P + N), df, dst + N);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) std::memcpy(y + (t0 + i) * n_out + p0, out + i * P, n_rows * sizeof(float));
    }
  };
  int64_t t = 0;
  for (; t + kTok <= n_tok; t += kTok) {
    PanelKernel<kTok>(panel, n_in, x + t * n_in, out);
    emit(t, kTok);
  }
  for (; t + 4 <= n_tok; t += 4) {
    PanelKernel<4>(panel, n_in, x + t * n_in, out);
    emit(t, 4);
  }
  for (; t < n_tok; ++t) {
    PanelKernel<1>(panel, n_in, x + t * n_in, out);
    emit(t, 1);
  }
}

template <class Fmt>
void MatmulFormat(ThreadPool& pool, const uint8_t* w, int64_t n_out, int64_t n_in, const float* x, int64_t n_tok,
                  float* y) {
  if (n_tok < kPanelMinTok) {
    // Enough tasks per thread to balance, few enough that handing them out costs nothing.
    const int64_t rows_per_task = std::max<int64_t>(4, n_out / (8 * pool.n_threads()));
    const int64_t n_tasks = (n_out + rows_per_task - 1) / rows_per_task;
    pool.run(n_tasks, [&](int64_t i) {
      const int64_t r0 = i * rows_per_task;
      RowsKernel<Fmt>(w, r0, std::min(n_out, r0 + rows_per_task), n_out, n_in, x, n_tok, y);
    });
  } else {
    const int64_t P = 2 * static_cast<int64_t>(hn::Lanes(DF()));
    pool.run((n_out + P - 1) / P, [&](int64_t i) { PanelRows<Fmt>(w, i * P, n_out, n_in, x, n_tok, y); });
  }
}

}  // namespace

void MatmulImpl(ThreadPool& pool, GgmlType t, const void* w_, int64_t n_out, int64_t n_in, const float* x,
                int64_t n_tok, float* y) {
  const auto* w = static_cast<const uint8_t*>(w_);
  switch (t) {
    case GgmlType::F32: return MatmulFormat<FloatFormat<float>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::F16: return MatmulFormat<FloatFormat<hwy::float16_t>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::BF16: return MatmulFormat<FloatFormat<hwy::bfloat16_t>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q4_0:
      return MatmulFormat<Block32Format<Offset::kCentred, HighBit::kNone>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q4_1:
      return MatmulFormat<Block32Format<Offset::kMin, HighBit::kNone>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q5_0:
      return MatmulFormat<Block32Format<Offset::kCentred, HighBit::kStored>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q5_1:
      return MatmulFormat<Block32Format<Offset::kMin, HighBit::kStored>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q8_0: return MatmulFormat<Q8_0Format>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q4_K: return MatmulFormat<Q45KFormat<HighBit::kNone>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q5_K: return MatmulFormat<Q45KFormat<HighBit::kStored>>(pool, w, n_out, n_in, x, n_tok, y);
    case GgmlType::Q6_K: return MatmulFormat<Q6KFormat>(pool, w, n_out, n_in, x, n_tok, y);
    default: break;  // matmul checked quant_supported
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace longctx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace longctx::cpu {

HWY_EXPORT(MatmulImpl);
HWY_EXPORT(TargetName);

const char* matmul_target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }
const char* matmul_q8_target_name() { return q8::target_name(); }

namespace {
constexpr int64_t kQuantizedMaxTok = 8;  // below it the rows path runs, where reading the weights dominates
static_assert(kQuantizedMaxTok == kMatmulRowInvariantTok + 1, "the rows path is the batch-invariant one");
}  // namespace

bool matmul_quantizes(GgmlType t, int64_t n_tok, MatmulPrecision precision) {
  if (precision == MatmulPrecision::F32 || t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) return false;
  return n_tok < kQuantizedMaxTok || q8::gemm_supported(t);
}

void matmul_multi(ThreadPool& pool, const MatmulOutput* outputs, int n_outputs, int64_t n_in, const float* x,
                  int64_t n_tok, MatmulPrecision precision) {
  for (int i = 0; i < n_outputs; ++i) {
    const MatmulOutput& o = outputs[i];
    if (!quant_supported(o.t)) fail("matmul: unsupported weight format {}", static_cast<uint32_t>(o.t));
    const auto tr = ggml_traits(o.t);
    if (o.n_out < 0 || n_in < 0 || n_tok < 0 || n_in % tr.block_values != 0)
      fail("matmul: bad shape n_out {} n_in {} n_tok {} for {} (blocks of {})", o.n_out, n_in, n_tok, tr.name,
           tr.block_values);
  }
  if (n_tok == 0) return;
  auto f32_product = [&](const MatmulOutput& o, const float* xs) {
    if (o.n_out > 0)
      HWY_DYNAMIC_DISPATCH(MatmulImpl)(pool, o.t, static_cast<const uint8_t*>(o.w), o.n_out, n_in, xs, n_tok, o.y);
  };
  if (precision == MatmulPrecision::F32) {
    for (int i = 0; i < n_outputs; ++i) f32_product(outputs[i], x);
    return;
  }
  const bool prefill = n_tok >= kQuantizedMaxTok;
  // The calling thread's buffers: the workers only read them.
  thread_local q8::Activations xq;
  thread_local std::vector<q8::Product> products;
  products.clear();
  for (int i = 0; i < n_outputs; ++i) {
    const MatmulOutput& o = outputs[i];
    if (!matmul_quantizes(o.t, n_tok, precision)) {
      f32_product(o, x);  // float weights stay exact; prefill without int8 panels for t runs the f32 panels
    } else if (o.n_out > 0) {
      products.push_back({o.t, static_cast<const uint8_t*>(o.w), o.n_out, o.y});
    }
  }
  if (products.empty()) return;
  q8::quantize(prefill ? &pool : nullptr, x, n_tok, n_in, precision == MatmulPrecision::Q16Activations ? 2 : 1, xq);
  if (prefill) return q8::gemm(pool, products.data(), static_cast<int>(products.size()), xq);
  if (q8::matmul(pool, products.data(), static_cast<int>(products.size()), xq)) return;
  // No int8 kernels on this CPU: the same products from the dequantized activations.
  thread_local std::vector<float> xd;  // (n_tok, n_in)
  xd.resize(static_cast<size_t>(n_tok * n_in));
  for (int64_t i = 0; i < n_tok * n_in; ++i) xd[static_cast<size_t>(i)] = xq.value(i);
  for (const q8::Product& p : products) f32_product({p.t, p.w, p.n_out, p.y}, xd.data());
}

void matmul(ThreadPool& pool, GgmlType t, const void* w, int64_t n_out, int64_t n_in, const float* x,
            int64_t n_tok, float* y, MatmulPrecision precision) {
  const MatmulOutput o{t, w, n_out, y};
  matmul_multi(pool, &o, 1, n_in, x, n_tok, precision);
}

void matmul_reference(GgmlType t, const void* w, int64_t n_out, int64_t n_in, const float* x, int64_t n_tok,
                      float* y) {
  const size_t row_bytes = ggml_row_bytes(t, n_in);
  std::vector<float> row(static_cast<size_t>(n_in));  // (n_in)
  for (int64_t r = 0; r < n_out; ++r) {
    dequantize_row(t, static_cast<const uint8_t*>(w) + static_cast<size_t>(r) * row_bytes, row.data(), n_in);
    for (int64_t i = 0; i < n_tok; ++i) {
      double sum = 0.0;
      for (int64_t k = 0; k < n_in; ++k) sum += static_cast<double>(row[k]) * x[i * n_in + k];
      y[i * n_out + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace longctx::cpu
#endif  // HWY_ONCE
