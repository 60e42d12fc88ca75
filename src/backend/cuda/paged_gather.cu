// A paged layer's slots gathered into dense f16 keys and values (backend_ops.h, paged_gather_f16): the operand of the
// tensor-core prefill attention (prefill_attention.cu), which reads keys and values as dense (row, head, dim) runs.
// Block (page, kv-head): the page's rows decoded as the CPU codec decodes them (paged_key / paged_value: F16 pages
// copied exactly, F32 rounded to nearest even, KIVI codes expanded) and written row-major, one row's channels by
// consecutive threads.
#include <cuda_fp16.h>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/paged_layer.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) paged_gather_f16_kernel(PagedLayer kv, int32_t n_rows, __half* k,
                                                                    __half* v) {
  const int32_t h = blockIdx.y;
  const int32_t page = kv.page_begin[h] + static_cast<int32_t>(blockIdx.x);
  if (page >= kv.page_begin[h + 1]) return;
  const int32_t head_slot0 = kv.slot0[kv.page_begin[h] + h];
  const int32_t first = kv.slot0[page + h] - head_slot0, rows = kv.slot0[page + h + 1] - kv.slot0[page + h];
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(kv.page_addr[page]);
  const int fmt = kv.page_fmt[page];
  const int32_t T = kv.page_tokens, D = kv.head_dim;
  const int64_t out0 = (static_cast<int64_t>(h) * n_rows + first) * D;
  for (int32_t i = threadIdx.x; i < rows * D; i += kThreads) {
    const int32_t j = i / D, d = i % D;
    k[out0 + i] = __float2half_rn(paged_key(bytes, fmt, T, D, d, j));
    v[out0 + i] = __float2half_rn(paged_value(bytes, fmt, T, D, j, d));
  }
}

}  // namespace

Status paged_gather_f16(const PagedLayer& kv, int32_t max_pages, int32_t n_rows, void* k, void* v, void* stream) {
  if (kv.n_head_kv <= 0 || kv.head_dim <= 0 || kv.head_dim > kPagedMaxHeadDim || kv.page_tokens <= 0)
    return Status::error("paged_gather_f16: bad layer shape");
  if (max_pages < 0 || n_rows < 0) return Status::error("paged_gather_f16: negative page or row count");
  if (max_pages == 0 || n_rows == 0) return Status::success();
  if (!k || !v) return Status::error("paged_gather_f16: null output");
  paged_gather_f16_kernel<<<dim3(static_cast<unsigned>(max_pages), static_cast<unsigned>(kv.n_head_kv)), kThreads, 0,
                            static_cast<cudaStream_t>(stream)>>>(kv, n_rows, static_cast<__half*>(k),
                                                                 static_cast<__half*>(v));
  return cuda_status(cudaGetLastError(), "paged_gather_f16 launch");
}

}  // namespace longctx::cuda
