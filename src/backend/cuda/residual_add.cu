// Residual add x += y in f32, for branches that cannot fold the add into a GEMM's epilogue (ops.h says when).
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

__global__ void add_in_place_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) x[i] += y[i];
}

}  // namespace

Status add_in_place(float* x, const float* y, int64_t n, void* stream) {
  if (n < 0) return Status::error("add_in_place: negative count");
  if (n == 0) return Status::success();
  if (!x || !y) return Status::error("add_in_place: null pointer");
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65535);
  add_in_place_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, y, n);
  return cuda_status(cudaGetLastError(), "add_in_place launch");
}

}  // namespace longctx::cuda
