// Rows of f32 keys and values written into KV pages of the CPU codec's layout (backend_ops.h, kv_rows_write): the
// device side of KvPageMemory::write_rows. One block a row; a thread a channel: the value row is one coalesced store,
// the key column a strided one (keys are channel-major so that attention reads them coalesced). Compaction
// (kv_page_compact) moves rows the same way, gathering from a snapshot of the page.
#include <cuda_fp16.h>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

__global__ void kv_rows_write_kernel(bool f16, int32_t T, int32_t D, const float* k, const float* v,
                                     int64_t row_stride, const uint64_t* dest_page, const int32_t* dest_row) {
  const int32_t i = blockIdx.x;
  auto* page = reinterpret_cast<uint8_t*>(dest_page[i]);
  const int32_t row = dest_row[i];
  const float* kr = k + i * row_stride;
  const float* vr = v + i * row_stride;
  for (int32_t d = threadIdx.x; d < D; d += blockDim.x) {
    const int64_t ki = static_cast<int64_t>(d) * T + row;
    const int64_t vi = static_cast<int64_t>(T) * D + static_cast<int64_t>(row) * D + d;
    if (f16) {
      reinterpret_cast<__half*>(page)[ki] = __float2half_rn(kr[d]);
      reinterpret_cast<__half*>(page)[vi] = __float2half_rn(vr[d]);
    } else {
      reinterpret_cast<float*>(page)[ki] = kr[d];
      reinterpret_cast<float*>(page)[vi] = vr[d];
    }
  }
}

template <typename E>
__global__ void kv_page_compact_kernel(int32_t T, int32_t D, E* page, const E* old, const int32_t* keep) {
  const int32_t i = blockIdx.x, from = keep[i];
  for (int32_t d = threadIdx.x; d < D; d += blockDim.x) {
    page[static_cast<int64_t>(d) * T + i] = old[static_cast<int64_t>(d) * T + from];
    page[static_cast<int64_t>(T) * D + static_cast<int64_t>(i) * D + d] =
        old[static_cast<int64_t>(T) * D + static_cast<int64_t>(from) * D + d];
  }
}

}  // namespace

Status kv_page_compact(bool f16, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
                       int32_t n_keep, void* snapshot, void* stream) {
  if (page_tokens < 1 || head_dim < 1 || n_keep < 0 || n_keep > page_tokens)
    return Status::error("kv_page_compact: bad shape");
  if (n_keep == 0) return Status::success();
  if (!page || !keep || !snapshot) return Status::error("kv_page_compact: null pointer");
  const auto st = static_cast<cudaStream_t>(stream);
  const size_t bytes = static_cast<size_t>(2) * page_tokens * head_dim * (f16 ? 2 : 4);
  if (Status s = cuda_status(cudaMemcpyAsync(snapshot, page, bytes, cudaMemcpyDeviceToDevice, st), "page snapshot");
      !s.ok())
    return s;
  if (f16)
    kv_page_compact_kernel<<<static_cast<unsigned>(n_keep), 128, 0, st>>>(
        page_tokens, head_dim, reinterpret_cast<__half*>(page), static_cast<const __half*>(snapshot), keep);
  else
    kv_page_compact_kernel<<<static_cast<unsigned>(n_keep), 128, 0, st>>>(
        page_tokens, head_dim, reinterpret_cast<float*>(page), static_cast<const float*>(snapshot), keep);
  return cuda_status(cudaGetLastError(), "kv_page_compact launch");
}

Status kv_rows_write(bool f16, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                     int64_t row_stride, const uint64_t* dest_page, const int32_t* dest_row, int32_t n, void* stream) {
  if (page_tokens < 1 || head_dim < 1 || n < 0 || row_stride < head_dim)
    return Status::error("kv_rows_write: bad shape (row_stride must be at least head_dim)");
  if (n == 0) return Status::success();
  if (!k || !v || !dest_page || !dest_row) return Status::error("kv_rows_write: null pointer");
  kv_rows_write_kernel<<<static_cast<unsigned>(n), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      f16, page_tokens, head_dim, k, v, row_stride, dest_page, dest_row);
  return cuda_status(cudaGetLastError(), "kv_rows_write launch");
}

}  // namespace longctx::cuda
