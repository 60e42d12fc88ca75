// Internal to the CUDA backend: what the two prefill attention kernels share (prefill_attention.cu, the mma.sync
// kernel and the public entry point; prefill_attention_wgmma.cu, the Hopper kernel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.cuh"

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
