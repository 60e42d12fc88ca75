// Rows of f32 keys and values written into KV pages of the CPU codec's layout (backend_ops.h, kv_rows_write): the
// device side of KvPageMemory::write_rows. One block a row; a thread a channel: the value row is one coalesced store,
// the key column a strided one (keys are channel-major so that attention reads them coalesced). Compaction
// (kv_page_compact) moves rows in place, a thread a channel.
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

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

// Rows of a page kept by a compaction, a bit each (a kernel parameter, so a decode step's eviction launches one kernel
// and uploads nothing).
struct KeptRows {
  uint64_t bits[kCompactMaxRows / 64];
};

// One thread per channel moves its own elements down, row by row in order: a kept row only moves to a row at or
// before it, which that thread has already read, so the page compacts in place.
template <typename E>
__global__ void kv_page_compact_kernel(int32_t T, int32_t D, E* page, KeptRows kept) {
  E* vals = page + static_cast<int64_t>(T) * D;
  for (int32_t d = threadIdx.x; d < D; d += blockDim.x) {
    E* key = page + static_cast<int64_t>(d) * T;
    int32_t to = 0;
    for (int32_t j = 0; j < T; ++j) {
      if (!((kept.bits[j / 64] >> (j % 64)) & 1)) continue;
      if (to != j) {
        key[to] = key[j];
        vals[static_cast<int64_t>(to) * D + d] = vals[static_cast<int64_t>(j) * D + d];
      }
      ++to;
    }
  }
}

}  // namespace

namespace {
// One block a page: keys channel-major (a channel's n elements are contiguous in both pages), values row-major.
template <typename E>
__global__ void kv_page_copy_rows_kernel(int32_t T, int32_t D, const E* src, int32_t s0, int32_t n, E* dst, int32_t d0) {
  for (int32_t i = threadIdx.x; i < n * D; i += blockDim.x) {
    const int32_t c = i / n, r = i % n;  // keys: channel c, row r
    dst[static_cast<int64_t>(c) * T + d0 + r] = src[static_cast<int64_t>(c) * T + s0 + r];
    const int64_t v = static_cast<int64_t>(T) * D;  // values: row r's element i % D, rows in order
    dst[v + static_cast<int64_t>(d0) * D + i] = src[v + static_cast<int64_t>(s0) * D + i];
  }
}
}  // namespace

Status kv_page_copy_rows(bool f16, int32_t page_tokens, int32_t head_dim, const uint8_t* src, int32_t src_row0,
                         int32_t n, uint8_t* dst, int32_t dst_row0, void* stream) {
  if (page_tokens < 1 || head_dim < 1 || n < 0 || src_row0 < 0 || dst_row0 < 0 || src_row0 + n > page_tokens ||
      dst_row0 + n > page_tokens)
    return Status::error("kv_page_copy_rows: rows outside the page");
  if (n == 0) return Status::success();
  if (!src || !dst || src == dst) return Status::error("kv_page_copy_rows: null or the same page");
  const auto st = static_cast<cudaStream_t>(stream);
  if (f16)
    kv_page_copy_rows_kernel<<<1, 256, 0, st>>>(page_tokens, head_dim, reinterpret_cast<const __half*>(src), src_row0,
                                                n, reinterpret_cast<__half*>(dst), dst_row0);
  else
    kv_page_copy_rows_kernel<<<1, 256, 0, st>>>(page_tokens, head_dim, reinterpret_cast<const float*>(src), src_row0,
                                                n, reinterpret_cast<float*>(dst), dst_row0);
  return cuda_status(cudaGetLastError(), "kv_page_copy_rows launch");
}

Status kv_page_compact(bool f16, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
                       int32_t n_keep, void* stream) {
  if (page_tokens < 1 || head_dim < 1 || n_keep < 0 || n_keep > page_tokens)
    return Status::error("kv_page_compact: bad shape");
  if (page_tokens > kCompactMaxRows)
    return Status::error("kv_page_compact: pages of " + std::to_string(page_tokens) + " tokens, more than " +
                         std::to_string(kCompactMaxRows));
  if (n_keep == 0) return Status::success();
  if (!page || !keep) return Status::error("kv_page_compact: null pointer");
  KeptRows kept{};
  for (int32_t i = 0; i < n_keep; ++i) {
    if (keep[i] < i || keep[i] >= page_tokens || (i > 0 && keep[i] <= keep[i - 1]))
      return Status::error("kv_page_compact: kept rows must be ascending and inside the page");
    kept.bits[keep[i] / 64] |= uint64_t{1} << (keep[i] % 64);
  }
  const auto st = static_cast<cudaStream_t>(stream);
  const unsigned threads = static_cast<unsigned>(std::min(head_dim, 256));
  if (f16)
    kv_page_compact_kernel<<<1, threads, 0, st>>>(page_tokens, head_dim, reinterpret_cast<__half*>(page), kept);
  else
    kv_page_compact_kernel<<<1, threads, 0, st>>>(page_tokens, head_dim, reinterpret_cast<float*>(page), kept);
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
