// Internal to the CUDA backend: the rotation of RoPE ("RoFormer: Enhanced Transformer with Rotary Position
// Embedding") for one adjacent pair (x[2i], x[2i+1]), shared by rope_kv_append and the QKV product's fused epilogue
// (gemv.cu) so that both give the same bits: the angle pos * base^(-2i/d) in double, as the CPU backend (positions
// reach 10^5 and more, where an f32 angle is off by whole fractions of a radian), and the rotation in f32 with
// explicit roundings (no contraction the compiler could choose differently in two kernels).
#pragma once
#include <cuda_runtime.h>

namespace longctx::cuda {

__device__ __forceinline__ void rope_cos_sin(double base, int32_t pair, int32_t head_dim, int32_t pos, float* c,
                                             float* s) {
  const double inv_freq = pow(base, -2.0 * static_cast<double>(pair) / static_cast<double>(head_dim));
  double sd, cd;
  sincos(static_cast<double>(pos) * inv_freq, &sd, &cd);
  *c = static_cast<float>(cd);
  *s = static_cast<float>(sd);
}

// (x0 c - x1 s, x0 s + x1 c)
__device__ __forceinline__ float2 rope_rotate(float x0, float x1, float c, float s) {
  return make_float2(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)), __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
}

}  // namespace longctx::cuda
