// The CPU matrix product of activations with GGUF weights: y = x * W^T, with W in any weight format of quant.h.
// f32 activations and f32 accumulation: the weights are dequantized on the fly, the activations never quantized.
#pragma once
#include <cstdint>

#include "core/ggml_type.h"
#include "core/thread_pool.h"

namespace longctx::cpu {

// y (n_tok, n_out) = x (n_tok, n_in) * W^T. W (n_out, n_in) is row-major, each row ggml_row_bytes(t, n_in) bytes
// in format t (n_in a multiple of its block size). y must not overlap x or W. Threads split the output rows.
// Every weight is dequantized once per call (decode, n_tok < 4: once per row into a small buffer; prefill: once
// per panel of rows, transposed for an outer-product kernel). Throws Error for an unsupported format or shape.
void matmul(ThreadPool& pool, GgmlType t, const void* w, int64_t n_out, int64_t n_in, const float* x,
            int64_t n_tok, float* y);

// The SIMD target matmul dispatches to on this CPU, as Highway names it ("AVX3", "AVX2", "SCALAR"): for logs.
const char* matmul_target_name();

// The straightforward reference of the same: dequantize_row, then a dot product accumulated in double.
void matmul_reference(GgmlType t, const void* w, int64_t n_out, int64_t n_in, const float* x, int64_t n_tok,
                      float* y);

}  // namespace longctx::cpu
