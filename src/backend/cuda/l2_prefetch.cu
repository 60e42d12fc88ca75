// Warming L2 with weights that the next product will read (ops.h, l2_prefetch).
//
// At batch 1 the step's attention at short context reads its K/V well under the memory bandwidth (4K context:
// ~1.5 TB/s, docs/cuda-backend-notes.md), so the bandwidth left over while it runs can bring the next weight matrix (Wo, 33.5 MB for
// llama3-8b, inside the H200's 60 MB L2) into L2; the Wo product then reads L2 instead of HBM. The bulk prefetch of
// sm_90 (cp.async.bulk.prefetch.L2) moves a whole range per instruction and completes on its own: the kernel only
// issues the requests and exits, so it costs a launch, not the transfer. It is a hint: no result depends on it.
#include <algorithm>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

constexpr size_t kChunk = 16384;  // bytes per bulk prefetch instruction

__global__ void l2_prefetch_kernel(const uint8_t* p, size_t bytes, int evict_last) {
  const size_t n_chunks = (bytes + kChunk - 1) / kChunk;
  uint64_t policy = 0;
  if (evict_last) asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
  for (size_t c = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < n_chunks;
       c += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t off = c * kChunk;
    const uint32_t n = static_cast<uint32_t>(bytes - off < kChunk ? bytes - off : kChunk);  // a multiple of 16
    if (evict_last)
      asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(p + off), "r"(n), "l"(policy)
                   : "memory");
    else
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(n) : "memory");
  }
}

}  // namespace

Status l2_prefetch(const void* device_ptr, size_t bytes, L2Priority priority, void* stream) {
  if (bytes == 0) return Status::success();
  if (!device_ptr) return Status::error("l2_prefetch: null pointer");
  if (reinterpret_cast<uintptr_t>(device_ptr) % 16 != 0 || bytes % 16 != 0)
    return Status::error("l2_prefetch: the range must be 16-byte aligned and a multiple of 16 bytes");
  const size_t n_chunks = (bytes + kChunk - 1) / kChunk;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((n_chunks + 127) / 128, 1024));
  l2_prefetch_kernel<<<blocks, 128, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const uint8_t*>(device_ptr), bytes,
                                                                             priority == L2Priority::EvictLast);
  return cuda_status(cudaGetLastError(), "l2_prefetch launch");
}

}  // namespace longctx::cuda
