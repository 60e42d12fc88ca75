// Internal to the CUDA backend: what the two prefill attention kernels share (prefill_attention.cu, the mma.sync
// kernel and the public entry point; prefill_attention_wgmma.cu, the Hopper kernel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/mma_primitives.cuh"

namespace longctx::cuda {

struct PrefillArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int64_t q_row, q_head, k_row, k_head, v_row, v_head, o_row, o_head;  // strides in elements
  int32_t n_q, n_kv, group, q_offset, window, causal;
  float scale_log2;
};

// The online softmax of one (16 rows x Keys) tile of scores, in the accumulator layout both kernels' products leave
// (mma.sync m16n8 tiles side by side, and a warp's quarter of a wgmma m64nN tile alike): lane (g, c) = (lane / 4,
// lane % 4) holds s[4 j + e] = row g + 8 (e / 2), key 8 j + 2 c + e % 2. The mask is applied only on tiles that
// cross an edge (the caller knows which); rows are the two query positions of this lane.
template <int Keys>
__device__ __forceinline__ void mask_tile(float (&s)[Keys / 2], const PrefillArgs& a, int ks, int row_pos0,
                                          int row_pos1, int c) {
#pragma unroll
  for (int i = 0; i < Keys / 2; ++i) {
    const int key = ks + (i >> 2) * 8 + 2 * c + (i & 1);
    const int qp = (i & 2) ? row_pos1 : row_pos0;
    const bool visible = key < a.n_kv && (!a.causal || key <= qp) && (a.window <= 0 || key > qp - a.window);
    if (!visible) s[i] = kNegInf;
  }
}

// Folds the tile into the running max m (log2 units) and sum l of rows g and g + 8, leaves P (rounded to the element
// type, as the A operand of P V: p[kk] holds keys 16 kk .. 16 kk + 15) and returns the factors the accumulated O
// rows must be scaled by (the caller applies them when O is not in flight).
template <typename E, int Keys>
__device__ __forceinline__ void online_softmax(const float (&s)[Keys / 2], uint32_t (&p)[Keys / 16][4], float& m0,
                                               float& m1, float& l0, float& l1, float& corr0, float& corr1,
                                               float scale_log2) {
  float mx0 = kNegInf, mx1 = kNegInf;
#pragma unroll
  for (int j = 0; j < Keys / 8; ++j) {
    mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
    mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
  }
#pragma unroll
  for (int d = 1; d <= 2; d <<= 1) {  // the four lanes of a row group share rows g and g + 8
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, d));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, d));
  }
  const float mn0 = fmaxf(m0, mx0 * scale_log2), mn1 = fmaxf(m1, mx1 * scale_log2);
  // A row that has seen no visible key yet keeps max -inf; subtracting 0 instead keeps its terms at exp2(-inf) = 0.
  const float b0 = mn0 == kNegInf ? 0.0f : mn0, b1 = mn1 == kNegInf ? 0.0f : mn1;
  corr0 = fast_exp2(m0 - b0), corr1 = fast_exp2(m1 - b1);
  m0 = mn0, m1 = mn1;
  l0 *= corr0, l1 *= corr1;
#pragma unroll
  for (int j = 0; j < Keys / 8; ++j) {
    const float p0 = fast_exp2(fmaf(s[4 * j], scale_log2, -b0)), p1 = fast_exp2(fmaf(s[4 * j + 1], scale_log2, -b0));
    const float p2 = fast_exp2(fmaf(s[4 * j + 2], scale_log2, -b1)),
                p3 = fast_exp2(fmaf(s[4 * j + 3], scale_log2, -b1));
    l0 += p0 + p1, l1 += p2 + p3;
    p[j / 2][(j & 1) * 2] = E::pack(p0, p1);      // row g
    p[j / 2][(j & 1) * 2 + 1] = E::pack(p2, p3);  // row g + 8
  }
}

template <int Dims>
__device__ __forceinline__ void rescale_rows(float (&o)[Dims / 2], float corr0, float corr1) {
#pragma unroll
  for (int j = 0; j < Dims / 8; ++j)
    o[4 * j] *= corr0, o[4 * j + 1] *= corr0, o[4 * j + 2] *= corr1, o[4 * j + 3] *= corr1;
}

// Normalizes rows g and g + 8 of O by their sums (summed over the row group's four lanes first) and stores them.
template <typename E, int Dims>
__device__ __forceinline__ void store_rows(const float (&o)[Dims / 2], float l0, float l1, const PrefillArgs& a,
                                           int head, int r0, int c) {
#pragma unroll
  for (int d = 1; d <= 2; d <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, d);
    l1 += __shfl_xor_sync(0xffffffffu, l1, d);
  }
  const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
  const int r1 = r0 + 8;
  uint32_t* O0 = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(a.out) + head * a.o_head + r0 * a.o_row);
  uint32_t* O1 = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(a.out) + head * a.o_head + r1 * a.o_row);
#pragma unroll
  for (int j = 0; j < Dims / 8; ++j) {
    if (r0 < a.n_q) O0[j * 4 + c] = E::pack(o[4 * j] * inv0, o[4 * j + 1] * inv0);
    if (r1 < a.n_q) O1[j * 4 + c] = E::pack(o[4 * j + 2] * inv1, o[4 * j + 3] * inv1);
  }
}

// Launches one of the prefill kernels over the grid (n_head, query tiles of rows_per_block), the longest tiles first
// (the kernels reverse blockIdx.y); the dynamic shared-memory limit is raised on first use (it is per function).
template <void (*Kernel)(PrefillArgs)>
Status launch_prefill(const PrefillArgs& a, int32_t n_head, int rows_per_block, int threads, int smem_bytes,
                      cudaStream_t stream, const char* what) {
  static bool configured = false;
  if (!configured) {
    LONGCTX_CUDA_TRY(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    configured = true;
  }
  const dim3 grid(static_cast<unsigned>(n_head), static_cast<unsigned>((a.n_q + rows_per_block - 1) / rows_per_block));
  Kernel<<<grid, threads, smem_bytes, stream>>>(a);
  return cuda_status(cudaGetLastError(), what);
}

// Grid (n_head, query tiles of 128 rows); checked arguments only.
Status prefill_attention_wgmma(const PrefillArgs& a, int32_t n_head, int32_t head_dim, bool bf16, cudaStream_t st);

}  // namespace longctx::cuda
