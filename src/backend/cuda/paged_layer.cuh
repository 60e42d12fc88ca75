// Device helpers shared by the kernels over PagedLayer (backend_ops.h): an element of a page in the CPU codec's
// layout (keys channel-major (head_dim, page_tokens), then values (page_tokens, head_dim), F32 or F16, or KIVI), the causal
// and window mask, and block-wide reductions.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/backend_ops.h"

namespace longctx::cuda {

// Where a KIVI page's parts start (cpu::kivi_page_layout): key codes channel-major (head_dim rows of T codes), key
// scale and min (head_dim f16 each), value codes token-major (T rows of head_dim codes), value scale and min (f16 per
// token and group of 32 channels). A row of n b-bit codes takes n b / 8 bytes; code i sits in byte i % bytes at bit
// b (i / bytes).
struct KiviParts {
  int bits;
  int32_t k_row_bytes, v_row_bytes;
  int64_t k_scale, k_min, v_codes, v_scale, v_min;
};
__device__ __forceinline__ KiviParts kivi_parts(int bits, int32_t T, int32_t D) {
  KiviParts k;
  k.bits = bits;
  k.k_row_bytes = T * bits / 8;
  k.v_row_bytes = D * bits / 8;
  const int64_t codes = static_cast<int64_t>(T) * D * bits / 8;
  k.k_scale = codes;
  k.k_min = codes + 2 * D;
  k.v_codes = codes + 4 * D;
  k.v_scale = k.v_codes + codes;
  k.v_min = k.v_scale + static_cast<int64_t>(T) * (D / 32) * 2;
  return k;
}
__device__ __forceinline__ float half_at(const uint8_t* p) { return __half2float(*reinterpret_cast<const __half*>(p)); }
__device__ __forceinline__ uint32_t kivi_code_at(const uint8_t* row, int bits, int32_t row_bytes, int32_t i) {
  return (static_cast<uint32_t>(row[i % row_bytes]) >> (bits * (i / row_bytes))) & ((1u << bits) - 1);
}

// Key channel d of row j of a page in format fmt (PagedLayer::page_fmt), decoded as the CPU codec does
// (min + scale * code, the product rounded before the sum).
__device__ __forceinline__ float paged_key(const uint8_t* page, int fmt, int32_t T, int32_t D, int32_t d, int32_t j) {
  const int64_t i = static_cast<int64_t>(d) * T + j;
  if (fmt == kPageF32) return reinterpret_cast<const float*>(page)[i];
  if (fmt == kPageF16) return __half2float(reinterpret_cast<const __half*>(page)[i]);
  const KiviParts k = kivi_parts(fmt, T, D);
  const float code = static_cast<float>(kivi_code_at(page + static_cast<int64_t>(d) * k.k_row_bytes, fmt, k.k_row_bytes, j));
  return __fadd_rn(half_at(page + k.k_min + 2 * d), __fmul_rn(half_at(page + k.k_scale + 2 * d), code));
}
// Value channel d of row j.
__device__ __forceinline__ float paged_value(const uint8_t* page, int fmt, int32_t T, int32_t D, int32_t j, int32_t d) {
  const int64_t i = static_cast<int64_t>(T) * D + static_cast<int64_t>(j) * D + d;
  if (fmt == kPageF32) return reinterpret_cast<const float*>(page)[i];
  if (fmt == kPageF16) return __half2float(reinterpret_cast<const __half*>(page)[i]);
  const KiviParts k = kivi_parts(fmt, T, D);
  const float code =
      static_cast<float>(kivi_code_at(page + k.v_codes + static_cast<int64_t>(j) * k.v_row_bytes, fmt, k.v_row_bytes, d));
  const int64_t g = static_cast<int64_t>(j) * (D / 32) + d / 32;
  return __fadd_rn(half_at(page + k.v_min + 2 * g), __fmul_rn(half_at(page + k.v_scale + 2 * g), code));
}

// A query at q_pos sees a key at pos when pos <= q_pos and, with a window w > 0, pos > q_pos - w.
__device__ __forceinline__ bool paged_visible(int32_t pos, int32_t q_pos, int32_t window) {
  return pos <= q_pos && (window <= 0 || static_cast<int64_t>(pos) > static_cast<int64_t>(q_pos) - window);
}
// Slot s of a head whose positions are pos; pos null: every slot is visible (PagedLayer::positions).
__device__ __forceinline__ bool slot_visible(const int32_t* pos, int32_t s, int32_t q_pos, int32_t window) {
  return pos == nullptr || paged_visible(pos[s], q_pos, window);
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
