// f32 activations to bf16 (round to nearest even), the operand of the bf16 GEMMs and of quant_gemv (backend_ops.h).
#include <cuda_bf16.h>

#include <algorithm>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

__global__ void f32_to_bf16_kernel(const float* x, __nv_bfloat16* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

}  // namespace

Status f32_to_bf16(const float* x, void* y, int64_t n, void* stream) {
  if (n < 0) return Status::error("f32_to_bf16: negative length");
  if (n == 0) return Status::success();
  if (!x || !y) return Status::error("f32_to_bf16: null pointer");
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 8192);
  f32_to_bf16_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      x, static_cast<__nv_bfloat16*>(y), n);
  return cuda_status(cudaGetLastError(), "f32_to_bf16 launch");
}

}  // namespace longctx::cuda
