// The device fill of the synthetic weights (core/synthetic_weights.h has the generator, the shapes and the scales).
#include "backend/cuda/synthetic.h"

#include <algorithm>

#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

// Each thread makes 8 consecutive elements and stores them with one 16-byte write where the run is aligned:
// generating is pure arithmetic, so the fill runs at store bandwidth (15 GB of llama3-8b in a few milliseconds).
__global__ void synthetic_fill_kernel(uint16_t* __restrict__ dst, size_t n, uint64_t seed, uint32_t tensor,
                                      TensorInit init, uint64_t first_index) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x * 8;
  for (size_t i0 = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8; i0 < n; i0 += stride) {
    if (i0 + 8 <= n && (reinterpret_cast<uintptr_t>(dst + i0) & 15) == 0) {
      uint32_t w[4];
      for (int j = 0; j < 4; ++j) {
        const uint32_t lo = synthetic_bf16(seed, tensor, first_index + i0 + 2 * j, init);
        const uint32_t hi = synthetic_bf16(seed, tensor, first_index + i0 + 2 * j + 1, init);
        w[j] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst + i0) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      for (size_t i = i0; i < n && i < i0 + 8; ++i) dst[i] = synthetic_bf16(seed, tensor, first_index + i, init);
    }
  }
}

}  // namespace

Status synthetic_shape(const std::string& spec, ModelShape* shape, uint64_t* seed) {
  std::string error;
  if (!longctx::synthetic_shape(spec, shape, seed, &error)) return Status::error(error);
  return Status::success();
}

Status synthetic_fill_bf16(void* device_dst, size_t n, uint64_t seed, uint32_t tensor, TensorInit init,
                           uint64_t first_index, void* stream) {
  if (n == 0) return Status::success();
  if (device_dst == nullptr) return Status::error("synthetic fill: null destination");
  int dev = 0, n_sm = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  const size_t blocks = std::min<size_t>(static_cast<size_t>(n_sm) * 8, (n / 8 + 255) / 256 + 1);
  synthetic_fill_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<uint16_t*>(device_dst), n, seed, tensor, init, first_index);
  return cuda_status(cudaGetLastError(), "synthetic fill launch");
}

}  // namespace longctx::cuda
