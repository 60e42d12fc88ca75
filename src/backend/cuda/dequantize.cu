// GGUF weights to bf16 for the prefill GEMMs (quant.h, dequantize_bf16), and chosen rows to f32 for the embedding
// (dequantize_rows_f32).
//
// A thread makes 32 consecutive values of one row (a block; for the K-quants one 32-value slice of a super-block)
// with the f32 operations of cpu::dequantize_row in the same order, so every value is the CPU's bit for bit before
// the one rounding to bf16. Every product that feeds an addition is exact in f32 (quant.cpp says why), so the FMA
// contraction nvcc applies cannot change a value. One kernel for every format: the switch is uniform over the
// grid, and prefill is bound by its GEMMs, not by this pass (it writes 2 bytes a value once per tile).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/dequantize_unit.cuh"
#include "backend/cuda/quant.h"

namespace longctx::cuda {
namespace {

__global__ void dequantize_bf16_kernel(GgmlType t, const uint8_t* w, int64_t row_bytes, int32_t n_in,
                                       int64_t row_begin, int64_t n_rows, __nv_bfloat16* out, int64_t out_stride) {
  const int32_t units = n_in / 32;
  const int64_t n_units = n_rows * units;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n_units;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / units;
    const int u = static_cast<int>(k % units);
    float v[32];
    unit_values(t, w + (row_begin + r) * row_bytes, u, v);
    uint4* dst = reinterpret_cast<uint4*>(out + r * out_stride + 32 * u);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      uint32_t h[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const __nv_bfloat162 p = __floats2bfloat162_rn(v[8 * c + 2 * i], v[8 * c + 2 * i + 1]);
        h[i] = *reinterpret_cast<const uint32_t*>(&p);
      }
      dst[c] = make_uint4(h[0], h[1], h[2], h[3]);
    }
  }
}

// Row rows[r] of W to out row r in f32, times scale (a unit a thread, as above).
__global__ void dequantize_rows_f32_kernel(GgmlType t, const uint8_t* w, int64_t row_bytes, int32_t n_in,
                                           const int32_t* rows, int32_t n_rows, float scale, float* out) {
  const int32_t units = n_in / 32;
  const int64_t n_units = static_cast<int64_t>(n_rows) * units;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n_units;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / units;
    const int u = static_cast<int>(k % units);
    float v[32];
    unit_values(t, w + rows[r] * row_bytes, u, v);
    float* dst = out + r * n_in + 32 * u;
#pragma unroll
    for (int i = 0; i < 32; ++i) dst[i] = v[i] * scale;
  }
}

}  // namespace

bool dequantize_supported(GgmlType t) { return unit_row_bytes(t, 256) != 0; }

Status dequantize_rows_f32(GgmlType type, const void* w, int32_t n_in, const int32_t* rows, int32_t n_rows,
                           float scale, float* out, void* stream) {
  if (!dequantize_supported(type))
    return Status::error("dequantize_rows_f32: weight format " + std::to_string(static_cast<uint32_t>(type)) +
                         " is not supported on the GPU");
  const int32_t block = unit_block_values(type);
  if (n_in < 1 || n_in % block != 0)
    return Status::error("dequantize_rows_f32: n_in (" + std::to_string(n_in) + ") must be a positive multiple of " +
                         std::to_string(block) + " for this format");
  if (n_rows < 0) return Status::error("dequantize_rows_f32: negative row count");
  if (n_rows == 0) return Status::success();
  if (!w || !rows || !out) return Status::error("dequantize_rows_f32: null pointer");
  const int64_t n_units = static_cast<int64_t>(n_rows) * (n_in / 32);
  const int64_t blocks = std::min<int64_t>((n_units + 127) / 128, 4096);
  dequantize_rows_f32_kernel<<<static_cast<unsigned>(blocks), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      type, static_cast<const uint8_t*>(w), unit_row_bytes(type, n_in), n_in, rows, n_rows, scale, out);
  return cuda_status(cudaGetLastError(), "dequantize_rows_f32 launch");
}

Status dequantize_bf16(GgmlType type, const void* w, int32_t n_in, int64_t row_begin, int64_t n_rows, void* out,
                       int64_t out_stride, void* stream) {
  if (!dequantize_supported(type))
    return Status::error("dequantize_bf16: weight format " + std::to_string(static_cast<uint32_t>(type)) +
                         " is not supported on the GPU");
  const int32_t block = unit_block_values(type);
  if (n_in < 1 || n_in % block != 0)
    return Status::error("dequantize_bf16: n_in (" + std::to_string(n_in) + ") must be a positive multiple of " +
                         std::to_string(block) + " for this format");
  if (row_begin < 0 || n_rows < 0) return Status::error("dequantize_bf16: negative row range");
  if (out_stride == 0) out_stride = n_in;
  if (out_stride < n_in || out_stride % 8 != 0)
    return Status::error("dequantize_bf16: out_stride must be at least n_in and a multiple of 8");
  if (!w || !out) return Status::error("dequantize_bf16: null pointer");
  if (reinterpret_cast<uintptr_t>(out) % 16 != 0) return Status::error("dequantize_bf16: out must be 16-byte aligned");
  if (type == GgmlType::F32 && reinterpret_cast<uintptr_t>(w) % 4 != 0)
    return Status::error("dequantize_bf16: F32 weights must be 4-byte aligned");
  if (n_rows == 0) return Status::success();
  const int64_t row_bytes = unit_row_bytes(type, n_in);
  int dev = 0, n_sm = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  const int64_t n_units = n_rows * (n_in / 32);
  const int64_t blocks = std::min<int64_t>((n_units + 255) / 256, int64_t{n_sm} * 8);
  dequantize_bf16_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      type, static_cast<const uint8_t*>(w), row_bytes, n_in, row_begin, n_rows, static_cast<__nv_bfloat16*>(out),
      out_stride);
  return cuda_status(cudaGetLastError(), "dequantize_bf16 launch");
}

}  // namespace longctx::cuda
