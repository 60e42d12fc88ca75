// The quantized-activation paths of matmul (MatmulPrecision::Q8Activations, Q16Activations), used by
// matmul.cpp; not a public API.
//
// Activations are quantized once per call in blocks of 32 values, x ~ d * q with q in [-127, 127] (the scheme
// of llama.cpp's Q8_0/Q8_1), optionally with a second int8 plane for the residual, so that each weight block is
// dotted with them in integer arithmetic: the weights' codes are unpacked to bytes and multiplied by VNNI dpbusd
// (or AVX2 maddubs), and scales touch only the block sums. That is far less work per weight byte than
// dequantizing to f32, which is what lets decode, which reads every weight once per token, run at memory
// bandwidth.
#pragma once
#include <cstdint>
#include <vector>

#include "core/ggml_type.h"
#include "core/thread_pool.h"

namespace longctx::cpu::q8 {

constexpr int64_t kBlock = 32;  // activation values per scale

// x (n_tok, n_in) quantized in blocks of 32. For block b of token t, with m = max|x| over the block:
//   one plane:  q = round(x * (127 / m)), d = m / 127, and x ~ d * q;
//   two planes: the same q, then q2 = round((x * (127 / m) - q) * 256) clamped to [-127, 127], d = m / 127 / 256,
//               and x ~ d * (256 q + q2): 16 bits of precision as two int8 planes, each dotted in one dpbusd.
// Rounding is half to even, every step in f32 exactly as written (a block of zeros has d = 0, q = 0); every
// target gives the same bytes. Call the integer Q = q or 256 q + q2.
// The sums let formats with a per-block min add min * sum(x) once per block instead of per value; the sums of 4
// let centred codes (c - C) start each dot product at -C * sum(Q) (the kernels read 4 values per i32 lane).
// Every array has kPad zeros past its end: the kernels read two blocks at a time, the second one scaled by 0
// past an odd end.
struct Activations {
  static constexpr int64_t kPad = 64;
  int n_planes = 1;             // 1 or 2
  int64_t n_tok = 0, n_in = 0;  // n_in a multiple of kBlock
  std::vector<int8_t> q;        // (n_tok, n_in)
  std::vector<int8_t> q2;       // (n_tok, n_in), two planes only
  std::vector<int32_t> sum4;    // (n_tok, n_in / 4): sum of Q over each 4 consecutive values
  std::vector<float> d;         // (n_tok, n_in / 32)
  std::vector<float> s32;       // (n_tok, n_in / 32): d * sum of Q over the block, the dequantized block sum
  std::vector<float> ds;        // (n_tok, n_in / 32, 2): d and s32 interleaved, for the 32-value formats

  float value(int64_t i) const {  // the dequantized x[i], i = t * n_in + k
    const int32_t qi = n_planes == 2 ? 256 * q[i] + q2[i] : q[i];
    return d[i / kBlock] * static_cast<float>(qi);
  }
};

// Quantizes x as Activations describes into n_planes (1 or 2) planes; n_in must be a multiple of kBlock. With a
// pool, tokens are split between its threads (same bytes).
void quantize(const float* x, int64_t n_tok, int64_t n_in, int n_planes, Activations& a);
void quantize(ThreadPool* pool, const float* x, int64_t n_tok, int64_t n_in, int n_planes, Activations& a);

// One product: y (n_tok, n_out) = dequantized activations * W^T, W (n_out, n_in) row-major in a quantized format.
struct Product {
  GgmlType t;
  const uint8_t* w;
  int64_t n_out;
  float* y;
};

// The products of the same activations a with several weights, in integer dot products per block, in one
// parallel region. Returns false, computing nothing, where this CPU has no int8 kernels for one of the formats
// (they need AVX2; float formats never have them); the caller then runs the f32 kernels on the dequantized
// activations, which gives the same values up to the order of the f32 sums.
bool matmul(ThreadPool& pool, const Product* products, int n_products, const Activations& a);

// Prefill (n_tok >= 8): the same products by packed int8 panels of kGemmRows rows, each unpacked once per call,
// and a register-tiled dpbusd kernel over all tokens. gemm_supported(t) says whether this CPU and format have it
// (AVX-512 VNNI; the quantized formats measured faster than the f32 panels); gemm must only be given those.
constexpr int64_t kGemmRows = 32;
bool gemm_supported(GgmlType t);
void gemm(ThreadPool& pool, const Product* products, int n_products, const Activations& a);

// The SIMD target the int8 kernels dispatch to ("AVX3_DL" uses VNNI), as Highway names it.
const char* target_name();

}  // namespace longctx::cpu::q8
