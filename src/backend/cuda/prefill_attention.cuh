// Internal to the CUDA backend: what the two prefill attention kernels share (prefill_attention.cu, the mma.sync
// kernel and the public entry point; prefill_attention_wgmma.cu, the Hopper kernel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_backend.h"

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

// Grid (n_head, query tiles of 128 rows); checked arguments only.
Status prefill_attention_wgmma(const PrefillArgs& a, int32_t n_head, int32_t head_dim, bool bf16, cudaStream_t st);

}  // namespace longctx::cuda
