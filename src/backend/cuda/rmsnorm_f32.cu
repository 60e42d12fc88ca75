// RMSNorm ("Root Mean Square Layer Normalization") over f32 rows, the backend interface's op (backend_ops.h): one
// block a row, the sum of squares in double as cpu::rmsnorm (a 2048-wide row loses digits in f32), then the same f32
// products x * scale * w.
#include <cmath>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_f32_kernel(const float* x, const float* w, float* y, int32_t n, float eps) {
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * n;
  double ss = 0;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) ss += static_cast<double>(xr[i]) * xr[i];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ double part[kThreads / 32];
  __shared__ float scale_s;
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < kThreads / 32; ++i) t += part[i];
    scale_s = static_cast<float>(1.0 / sqrt(t / static_cast<double>(n) + static_cast<double>(eps)));
  }
  __syncthreads();
  const float scale = scale_s;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

}  // namespace

Status rmsnorm_f32(const float* x, const float* w, float* y, int64_t n_rows, int32_t n, float eps, void* stream) {
  if (n_rows < 0 || n < 1) return Status::error("rmsnorm_f32: bad shape");
  if (n_rows == 0) return Status::success();
  if (!x || !w || !y) return Status::error("rmsnorm_f32: null pointer");
  if (n_rows > 0x7fffffff) return Status::error("rmsnorm_f32: too many rows");
  rmsnorm_f32_kernel<<<static_cast<unsigned>(n_rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, w, y, n,
                                                                                                          eps);
  return cuda_status(cudaGetLastError(), "rmsnorm_f32 launch");
}

}  // namespace longctx::cuda
