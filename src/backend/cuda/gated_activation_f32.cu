// The gated activations of the feed-forward on f32 (backend_ops.h): SwiGLU and GeGLU ("GLU Variants Improve
// Transformer"), gate = act(gate) * up, with cpu::gated_activation's formulas (its SIMD exp and tanh differ from
// CUDA's in the last bits; tests state the tolerance).
#include <algorithm>
#include <cmath>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

__global__ void gated_activation_f32_kernel(float* gate, const float* up, int64_t n, bool gelu) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    float a;
    if (gelu) {
      a = 0.5f * g * (1.0f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    } else {
      a = g / (1.0f + expf(fminf(fmaxf(-g, -88.0f), 88.0f)));
    }
    gate[i] = a * up[i];
  }
}

}  // namespace

Status gated_activation_f32(float* gate, const float* up, int64_t n, GateAct act, void* stream) {
  if (n < 0) return Status::error("gated_activation_f32: negative length");
  if (n == 0) return Status::success();
  if (!gate || !up) return Status::error("gated_activation_f32: null pointer");
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 8192);
  gated_activation_f32_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      gate, up, n, act == GateAct::GeluTanh);
  return cuda_status(cudaGetLastError(), "gated_activation_f32 launch");
}

}  // namespace longctx::cuda
