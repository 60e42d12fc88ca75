// SwiGLU ("GLU Variants Improve Transformer", Shazeer 2020): silu(gate) * up, from the f32 output of the fused
// gate/up GEMM to the bf16 input of the down projection.
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

__global__ void swiglu_kernel(const float4* __restrict__ gate, const float4* __restrict__ up, uint2* __restrict__ h,
                              int32_t n4) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 g = gate[i], u = up[i];
  // silu(g) = g / (1 + e^-g); expf's argument is clamped so that e^-g stays finite (silu is 0 there anyway).
  auto silu = [](float v) { return v / (1.0f + expf(fminf(-v, 88.0f))); };
  const __nv_bfloat162 a = __floats2bfloat162_rn(silu(g.x) * u.x, silu(g.y) * u.y);
  const __nv_bfloat162 b = __floats2bfloat162_rn(silu(g.z) * u.z, silu(g.w) * u.w);
  h[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

}  // namespace

Status swiglu(const float* gate_up, void* h, int32_t n_ff, void* stream) {
  if (n_ff <= 0 || n_ff % 4 != 0) return Status::error("swiglu: n_ff must be a positive multiple of 4");
  if (!gate_up || !h) return Status::error("swiglu: null pointer");
  if (reinterpret_cast<uintptr_t>(gate_up) % 16 != 0 || reinterpret_cast<uintptr_t>(h) % 8 != 0)
    return Status::error("swiglu: gate_up must be 16-byte aligned, h 8-byte aligned");
  const int32_t n4 = n_ff / 4;
  const float4* g = reinterpret_cast<const float4*>(gate_up);
  swiglu_kernel<<<(n4 + 255) / 256, 256, 0, static_cast<cudaStream_t>(stream)>>>(g, g + n4, static_cast<uint2*>(h), n4);
  return cuda_status(cudaGetLastError(), "swiglu launch");
}

}  // namespace longctx::cuda
