// f32 to f16 and back (backend_ops.h): the queries into, and the output out of, the tensor-core prefill attention.
#include <cuda_fp16.h>

#include <algorithm>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

__global__ void f32_to_f16_kernel(const float* x, __half* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

__global__ void f16_to_f32_kernel(const __half* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __half2float(x[i]);
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 8192)); }

}  // namespace

Status f32_to_f16(const float* x, void* y, int64_t n, void* stream) {
  if (n < 0) return Status::error("f32_to_f16: negative length");
  if (n == 0) return Status::success();
  if (!x || !y) return Status::error("f32_to_f16: null pointer");
  f32_to_f16_kernel<<<blocks_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, static_cast<__half*>(y), n);
  return cuda_status(cudaGetLastError(), "f32_to_f16 launch");
}

Status f16_to_f32(const void* x, float* y, int64_t n, void* stream) {
  if (n < 0) return Status::error("f16_to_f32: negative length");
  if (n == 0) return Status::success();
  if (!x || !y) return Status::error("f16_to_f32: null pointer");
  f16_to_f32_kernel<<<blocks_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const __half*>(x), y, n);
  return cuda_status(cudaGetLastError(), "f16_to_f32 launch");
}

}  // namespace longctx::cuda
