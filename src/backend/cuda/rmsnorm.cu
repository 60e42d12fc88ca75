// RMSNorm ("Root Mean Square Layer Normalization", Zhang and Sennrich 2019) from the f32 residual stream to the bf16
// input of the next GEMM.
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 512;

// One block per row. A decode step has one row of 4096: a single block reads it twice (the sum of squares, then the
// scaled output) from L1/L2 -- the row is 16 KB, so the whole op is a few microseconds of latency, not bandwidth.
__global__ void __launch_bounds__(kThreads) rmsnorm_kernel(const float* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                                                           __nv_bfloat16* __restrict__ y, int32_t n, float eps) {
  const float* xr = x + static_cast<size_t>(blockIdx.x) * n;
  __nv_bfloat16* yr = y + static_cast<size_t>(blockIdx.x) * n;
  float ss = 0.0f;
  for (int32_t i = threadIdx.x * 4; i < n; i += kThreads * 4) {
    const float4 v = *reinterpret_cast<const float4*>(xr + i);
    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
  }
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  __shared__ float warp_ss[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_ss[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < kThreads / 32; ++i) total += warp_ss[i];  // every thread sums in the same order
  const float scale = rsqrtf(total / static_cast<float>(n) + eps);
  for (int32_t i = threadIdx.x * 4; i < n; i += kThreads * 4) {
    const float4 v = *reinterpret_cast<const float4*>(xr + i);
    const __nv_bfloat162 w01 = *reinterpret_cast<const __nv_bfloat162*>(w + i);
    const __nv_bfloat162 w23 = *reinterpret_cast<const __nv_bfloat162*>(w + i + 2);
    const float2 f01 = __bfloat1622float2(w01), f23 = __bfloat1622float2(w23);
    *reinterpret_cast<__nv_bfloat162*>(yr + i) = __floats2bfloat162_rn(v.x * scale * f01.x, v.y * scale * f01.y);
    *reinterpret_cast<__nv_bfloat162*>(yr + i + 2) = __floats2bfloat162_rn(v.z * scale * f23.x, v.w * scale * f23.y);
  }
}

}  // namespace

Status rmsnorm(const float* x, const void* w, void* y, int32_t n_rows, int32_t n, float eps, void* stream) {
  if (n_rows <= 0 || n <= 0 || n % 4 != 0) return Status::error("rmsnorm: n must be a positive multiple of 4");
  if (!x || !w || !y) return Status::error("rmsnorm: null pointer");
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(w) % 8 != 0 ||
      reinterpret_cast<uintptr_t>(y) % 8 != 0)
    return Status::error("rmsnorm: x must be 16-byte aligned, w and y 8-byte aligned");
  rmsnorm_kernel<<<n_rows, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      x, static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(y), n, eps);
  return cuda_status(cudaGetLastError(), "rmsnorm launch");
}

}  // namespace longctx::cuda
