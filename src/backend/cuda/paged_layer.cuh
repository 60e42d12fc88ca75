// Device helpers shared by the kernels over PagedLayer (backend_ops.h): an element of a page in the CPU codec's
// layout (keys channel-major (head_dim, page_tokens), then values (page_tokens, head_dim), F32 or F16), the causal
// and window mask, and block-wide reductions.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/backend_ops.h"

namespace longctx::cuda {

// Key channel d of row j.
__device__ __forceinline__ float paged_key(const uint8_t* page, bool f16, int32_t page_tokens, int32_t d, int32_t j) {
  const int64_t i = static_cast<int64_t>(d) * page_tokens + j;
  return f16 ? __half2float(reinterpret_cast<const __half*>(page)[i]) : reinterpret_cast<const float*>(page)[i];
}
// Value channel d of row j.
__device__ __forceinline__ float paged_value(const uint8_t* page, bool f16, int32_t page_tokens, int32_t head_dim,
                                             int32_t j, int32_t d) {
  const int64_t i = static_cast<int64_t>(page_tokens) * head_dim + static_cast<int64_t>(j) * head_dim + d;
  return f16 ? __half2float(reinterpret_cast<const __half*>(page)[i]) : reinterpret_cast<const float*>(page)[i];
}

// A query at q_pos sees a key at pos when pos <= q_pos and, with a window w > 0, pos > q_pos - w.
__device__ __forceinline__ bool paged_visible(int32_t pos, int32_t q_pos, int32_t window) {
  return pos <= q_pos && (window <= 0 || static_cast<int64_t>(pos) > static_cast<int64_t>(q_pos) - window);
}

// The max / sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
// red: 32 floats of shared memory. Every thread of the block must call it.
__device__ __forceinline__ float block_max(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) r = fmaxf(r, red[w]);
  __syncthreads();
  return r;
}
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) r += red[w];
  __syncthreads();
  return r;
}

// The checks both kernels make of the layer and the heads before launching (paged_attention.cu).
Status paged_layer_check(const PagedAttentionParams& p, const PagedLayer& kv, const char* what);

}  // namespace longctx::cuda
