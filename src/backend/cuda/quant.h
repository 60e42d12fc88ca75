// GGUF weight formats on the device: the decode product straight from the quantized bytes, and dequantization to
// bf16 for the prefill GEMMs. Plain C++ interface (no CUDA header), device pointers, every call returns a Status.
//
// A weight tensor is what the GGUF file holds: n_out rows, each ggml_row_bytes(type, n_in) bytes of blocks in the
// ggml layout (src/backend/cpu/quant.cpp describes each format), rows back to back. The values are those of
// cpu::dequantize_row, bit for bit (the CPU backend is the reference).
#pragma once
#include <cstdint>

#include "backend/cuda/cuda_backend.h"
#include "core/ggml_type.h"

namespace longctx::cuda {

// The formats quant_gemv reads: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K.
bool quant_supported(GgmlType t);

// y (n_out) f32 = W x at batch 1, W (n_out, n_in) in `type`, x (n_in) bf16. Each block is decoded inside the
// product (quant_gemv.cu): a 4.5-bit format reads 3.5x fewer bytes than bf16, and decode is bound by those bytes.
//
// Numerics: the dequantized weights are exact (integer codes on tensor cores, the block scales applied in f32), and
// x enters exactly: bf16 values, scaled by one power of two per call into the f16 range (so no activation
// overflows f16), which keeps every bf16 bit; products are exact and accumulate in f32. So y is W x up to f32
// accumulation order, whatever the magnitude of x (tests/cuda/quant_gemv_test.cpp states the tolerance). x is not
// quantized to 8 bits, unlike the CPU's integer path (cpu::matmul's Q8 activations).
//
// Shapes: n_in a multiple of the format's block (32; 256 for the K-quants; 16 for F16/BF16; 4 for F32), at most
// quant_gemv_max_in(); any n_out >= 1. W and x 16-byte aligned (a GGUF tensor's data is 32-byte aligned).
struct QuantGemvArgs {
  GgmlType type = GgmlType::BF16;
  const void* w = nullptr;       // (n_out, row bytes) the tensor's bytes as in the file
  int32_t n_out = 0, n_in = 0;
  const void* x_bf16 = nullptr;  // (n_rows, n_in) bf16
  float* y = nullptr;            // (n_rows, n_out) f32, written (not accumulated)
  // Rows of x: each row's y is the same bits as when it is the only one (the weights are read once per up to 8
  // rows; F32 weights once per row).
  int32_t n_rows = 1;
  // At most this many blocks (0: one wave of resident blocks, which walk the 16-row tiles between them). Tests set
  // it low so that each block walks many tiles.
  int32_t max_blocks = 0;
};
int32_t quant_gemv_max_in();
Status quant_gemv(const QuantGemvArgs& a, void* stream = nullptr);

// The formats dequantize_bf16 and dequantize_rows_f32 read: quant_supported's and Q5_0, Q5_1.
bool dequantize_supported(GgmlType t);

// out (n_rows, n_in) bf16, row stride out_stride elements (0: n_in) = rows [row_begin, row_begin + n_rows) of W
// (n_out rows of `type`, each n_in values), dequantized exactly as cpu::dequantize_row and rounded to bf16 (to
// nearest even). Formats: dequantize_supported. For the prefill GEMMs (cuBLASLt on bf16 tiles or whole matrices).
// n_in a multiple of 32 (of 256 for the K-quants); out 16-byte aligned and out_stride a multiple of 8.

Status dequantize_bf16(GgmlType type, const void* w, int32_t n_in, int64_t row_begin, int64_t n_rows, void* out,
                       int64_t out_stride = 0, void* stream = nullptr);

// out (n_rows, n_in) f32: row r = scale * row rows[r] of W (rows: device), each value as cpu::dequantize_row's
// times scale (one f32 product). An embedding lookup (scale: gemma's sqrt(n_embd)); the caller checks the ids.
// n_in a multiple of 32 (of 256 for the K-quants).
Status dequantize_rows_f32(GgmlType type, const void* w, int32_t n_in, const int32_t* rows, int32_t n_rows,
                           float scale, float* out, void* stream = nullptr);

}  // namespace longctx::cuda
