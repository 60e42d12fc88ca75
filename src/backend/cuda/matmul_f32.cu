// y = x W^T for a few rows of f32 activations and a GGUF weight in any format the device decodes
// (backend_ops.h, matmul_f32): the plain product, each weight value decoded exactly as cpu::dequantize_row
// (dequantize_unit.cuh) and multiplied with the f32 activation, summed in f32. One warp an output row: a lane decodes
// 32-value units of the row in turn, so the row's bytes are read once for all n rows of x.
#include <algorithm>
#include <string>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/dequantize_unit.cuh"
#include "backend/cuda/quant.h"

namespace longctx::cuda {
namespace {

constexpr int kWarps = 4;

__global__ void matmul_f32_kernel(GgmlType t, const uint8_t* w, int64_t row_bytes, int32_t n_out, int32_t n_in,
                                  const float* x, int32_t n, float* y) {
  const int32_t row = blockIdx.x * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n_out) return;
  const uint8_t* wr = w + row * row_bytes;
  float acc[kMatmulF32MaxRows];
#pragma unroll
  for (int r = 0; r < kMatmulF32MaxRows; ++r) acc[r] = 0.0f;
  for (int32_t u = lane; u < n_in / 32; u += 32) {
    float v[32];
    unit_values(t, wr, u, v);
#pragma unroll
    for (int r = 0; r < kMatmulF32MaxRows; ++r) {
      if (r < n) {
        const float* xr = x + static_cast<int64_t>(r) * n_in + 32 * u;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < 32; ++i) s = fmaf(v[i], xr[i], s);
        acc[r] += s;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMatmulF32MaxRows; ++r) {
    if (r < n) {
      float s = acc[r];
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0) y[static_cast<int64_t>(r) * n_out + row] = s;
    }
  }
}

}  // namespace

Status matmul_f32(GgmlType type, const void* w, int32_t n_out, int32_t n_in, const float* x, int32_t n, float* y,
                  void* stream) {
  if (!dequantize_supported(type))
    return Status::error("matmul_f32: weight format " + std::to_string(static_cast<uint32_t>(type)) +
                         " is not supported on the GPU");
  const int32_t block = unit_block_values(type);
  if (n_out < 1 || n_in < 1 || n_in % block != 0)
    return Status::error("matmul_f32: n_in (" + std::to_string(n_in) + ") must be a positive multiple of " +
                         std::to_string(block) + " for this format");
  if (n < 0 || n > kMatmulF32MaxRows) return Status::error("matmul_f32: at most 8 rows of x a call");
  if (n == 0) return Status::success();
  if (!w || !x || !y) return Status::error("matmul_f32: null pointer");
  const unsigned blocks = static_cast<unsigned>((n_out + kWarps - 1) / kWarps);
  matmul_f32_kernel<<<blocks, kWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      type, static_cast<const uint8_t*>(w), unit_row_bytes(type, n_in), n_out, n_in, x, n, y);
  return cuda_status(cudaGetLastError(), "matmul_f32 launch");
}

}  // namespace longctx::cuda
