// RoPE ("RoFormer: Enhanced Transformer with Rotary Position Embedding") in place on f32 heads, the backend
// interface's op (backend_ops.h): the operations of cpu::rope (angles in double, cos and sin rounded to f32, the
// rotation in f32 with no fused multiply-add), so both backends turn a vector the same way. One thread a pair.
#include <algorithm>
#include <cmath>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

__global__ void rope_f32_kernel(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim,
                                int32_t n_rot, float base, bool halves) {
  const int32_t half = n_rot / 2;
  const int64_t total = static_cast<int64_t>(n) * n_heads * half;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t i = static_cast<int32_t>(k % half);
    const int64_t th = k / half;  // token * n_heads + head
    const int32_t t = static_cast<int32_t>(th / n_heads);
    const double inv_freq = pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
    const double a = static_cast<double>(positions[t]) * inv_freq;
    const float c = static_cast<float>(cos(a)), s = static_cast<float>(sin(a));
    float* v = x + th * head_dim;
    const int32_t ia = halves ? i : 2 * i, ib = halves ? i + half : 2 * i + 1;
    const float x0 = v[ia], x1 = v[ib];
    v[ia] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    v[ib] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
  }
}

}  // namespace

Status rope_f32(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim, int32_t n_rot,
                float base, bool halves, void* stream) {
  if (n < 0 || n_heads < 1 || head_dim < 1 || n_rot < 0 || n_rot > head_dim || n_rot % 2 != 0)
    return Status::error("rope_f32: bad shape (n_rot must be even and at most head_dim)");
  if (n == 0 || n_rot == 0) return Status::success();
  if (!x || !positions) return Status::error("rope_f32: null pointer");
  const int64_t total = static_cast<int64_t>(n) * n_heads * (n_rot / 2);
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 8192);
  rope_f32_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      x, positions, n, n_heads, head_dim, n_rot, base, halves);
  return cuda_status(cudaGetLastError(), "rope_f32 launch");
}

}  // namespace longctx::cuda
