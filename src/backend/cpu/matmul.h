// The CPU matrix product of activations with GGUF weights: y = x * W^T, with W in any weight format of quant.h.
// f32 accumulation; the activations stay f32, or for small batches are quantized to 8 bits (MatmulPrecision).
#pragma once
#include <cstdint>

#include "core/ggml_type.h"
#include "core/thread_pool.h"

namespace longctx::cpu {

// What the activations are multiplied as. The quantized precisions apply to quantized weight formats: the
// activations are quantized per 32 values (as llama.cpp's Q8_0: d = max|x| / 127) and multiplied in integer dot
// products, a fraction of the work per weight byte, so decode runs at memory bandwidth. Calls of 8 tokens or more
// (prefill) take them only where this CPU has the int8 panels for the format (AVX-512 VNNI: 4 times the MACs per
// instruction of f32 FMA), else they are computed as F32 (the f32 panels); float weight formats are always F32.
// matmul_quantizes says which.
enum class MatmulPrecision {
  // f32 activations times dequantized weights: the exact product up to the order of the f32 sums.
  F32,
  // 16-bit activations, as two int8 planes (x ~ d (256 q + q2)): each value off by at most d / 512, two integer
  // dot products per block. End to end, with prefill quantized too, the logits goldens move by up to 4.8e-3
  // (against 1.2e-4 with f32 prefill; model_logits_test, f32 cache).
  Q16Activations,
  // 8-bit activations (x ~ d q), llama.cpp's numerics: each value off by at most d / 2. The fastest; logits
  // move by up to ~1 (measured on the goldens with every matmul quantized).
  Q8Activations,
};

// Up to this many tokens a call takes the rows path, where each token's outputs are the bits it gets alone
// (its own accumulators and activation scales, the same order of sums): the bound of batch invariance.
constexpr int64_t kMatmulRowInvariantTok = 7;

// y (n_tok, n_out) = x (n_tok, n_in) * W^T. W (n_out, n_in) is row-major, each row ggml_row_bytes(t, n_in) bytes
// in format t (n_in a multiple of its block size). y must not overlap x or W. Threads split the output rows.
// Every weight is read once per call (n_tok < 8: once per group of 4 tokens, fused with the dot products;
// prefill: unpacked once per panel of rows, to int8 codes for the VNNI kernel or dequantized and transposed for
// the f32 outer-product kernel). Throws Error for an
// unsupported format or shape.
void matmul(ThreadPool& pool, GgmlType t, const void* w, int64_t n_out, int64_t n_in, const float* x,
            int64_t n_tok, float* y, MatmulPrecision precision = MatmulPrecision::Q16Activations);

// One product of matmul_multi: y (n_tok, n_out) = x W^T, W (n_out, n_in) row-major in format t.
struct MatmulOutput {
  GgmlType t;
  const void* w;
  int64_t n_out;
  float* y;  // (n_tok, n_out), overlapping no other output, x or W
};

// The products of the same activations x (n_tok, n_in) with several weights, as matmul computes each (same
// values), in one parallel region: attention's q, k and v, or the feed-forward's gate and up. Decode pays per
// region (threads meet, and each starts a new prefetch stream), and the activations are quantized once.
void matmul_multi(ThreadPool& pool, const MatmulOutput* outputs, int n_outputs, int64_t n_in, const float* x,
                  int64_t n_tok, MatmulPrecision precision = MatmulPrecision::Q16Activations);

// Whether matmul rounds the activations as `precision` says for this format and token count on this CPU (else the
// product is F32's).
bool matmul_quantizes(GgmlType t, int64_t n_tok, MatmulPrecision precision);

// The SIMD target matmul dispatches to on this CPU, as Highway names it ("AVX3", "AVX2", "SCALAR"), and the one
// of the quantized-activation kernels ("AVX3_DL" with VNNI): for logs.
const char* matmul_target_name();
const char* matmul_q8_target_name();

// The straightforward reference of the same: dequantize_row, then a dot product accumulated in double.
void matmul_reference(GgmlType t, const void* w, int64_t n_out, int64_t n_in, const float* x, int64_t n_tok,
                      float* y);

}  // namespace longctx::cpu
