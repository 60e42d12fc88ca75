// The gated activations of the FFN ("GLU Variants Improve Transformer", Shazeer 2020), from the f32 output of the
// fused gate/up GEMM to the bf16 input of the down projection: SwiGLU silu(gate) * up (llama) and GeGLU
// gelu(gate) * up with GELU's tanh approximation (gemma). One kernel, the activation a template parameter.
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

struct Silu {
  // g / (1 + e^-g); expf's argument is clamped so that e^-g stays finite (silu is 0 there anyway).
  static __device__ __forceinline__ float apply(float g) { return g / (1.0f + expf(fminf(-g, 88.0f))); }
};
struct GeluTanh {
  // 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))), as the CPU backend's GeluTanh; tanhf saturates to +-1 for
  // large arguments, so the tails are g and 0 without overflow.
  static __device__ __forceinline__ float apply(float g) {
    return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
  }
};

// Grid (blocks of 4-channel groups, rows): row r reads gate_up[r] = (gate, up) and writes h[r].
template <typename Act>
__global__ void gated_kernel(const float4* __restrict__ gate_up, uint2* __restrict__ h, int32_t n4) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const size_t r = blockIdx.y;
  const float4 g = gate_up[2 * r * n4 + i], u = gate_up[(2 * r + 1) * n4 + i];
  h += r * n4;
  const __nv_bfloat162 a = __floats2bfloat162_rn(Act::apply(g.x) * u.x, Act::apply(g.y) * u.y);
  const __nv_bfloat162 b = __floats2bfloat162_rn(Act::apply(g.z) * u.z, Act::apply(g.w) * u.w);
  h[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
}

template <typename Act>
Status gated(const char* name, const float* gate_up, void* h, int32_t n_rows, int32_t n_ff, void* stream) {
  if (n_ff <= 0 || n_ff % 4 != 0) return Status::error(std::string(name) + ": n_ff must be a positive multiple of 4");
  if (n_rows <= 0 || n_rows > 65535) return Status::error(std::string(name) + ": n_rows must be in 1..65535");
  if (!gate_up || !h) return Status::error(std::string(name) + ": null pointer");
  if (reinterpret_cast<uintptr_t>(gate_up) % 16 != 0 || reinterpret_cast<uintptr_t>(h) % 8 != 0)
    return Status::error(std::string(name) + ": gate_up must be 16-byte aligned, h 8-byte aligned");
  const int32_t n4 = n_ff / 4;
  gated_kernel<Act><<<dim3((n4 + 255) / 256, n_rows), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const float4*>(gate_up), static_cast<uint2*>(h), n4);
  return cuda_status(cudaGetLastError(), name);
}

}  // namespace

Status swiglu(const float* gate_up, void* h, int32_t n_rows, int32_t n_ff, void* stream) {
  return gated<Silu>("swiglu", gate_up, h, n_rows, n_ff, stream);
}

Status geglu(const float* gate_up, void* h, int32_t n_rows, int32_t n_ff, void* stream) {
  return gated<GeluTanh>("geglu", gate_up, h, n_rows, n_ff, stream);
}

}  // namespace longctx::cuda
