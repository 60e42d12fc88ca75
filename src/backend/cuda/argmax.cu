// Greedy sampling on the device: the index of the largest logit, in one launch.
//
// Every block reduces its share of the logits to one 64-bit key and folds it into the workspace with atomicMax; the
// last block to finish (a counter, after a fence: the "threadFenceReduction" pattern of the CUDA samples' guide)
// publishes the index and zeroes the workspace again, so the op needs no memset node and replays inside a graph.
// The key orders floats as unsigned integers (flip all bits of negatives, set the sign bit of non-negatives) in its
// high half and holds ~index in its low half, so that the largest key is the largest value at the smallest index.
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 16;  // logits per thread: 4096 a block, 32 blocks for llama3's 128256

struct ArgmaxWorkspace {
  unsigned long long best;
  unsigned int n_done;
};

__device__ __forceinline__ unsigned long long argmax_key(float v, int32_t i) {
  const uint32_t b = __float_as_uint(v);
  const uint32_t ordered = isnan(v) ? 0xffffffffu : (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // any NaN wins
  return (static_cast<unsigned long long>(ordered) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i));
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* __restrict__ logits, int32_t n,
                                                          int32_t* __restrict__ index, ArgmaxWorkspace* ws) {
  unsigned long long best = 0;
  const int32_t base = blockIdx.x * kThreads * kPerThread;
  for (int k = 0; k < kPerThread; ++k) {
    const int32_t i = base + k * kThreads + threadIdx.x;  // coalesced across the block
    if (i < n) best = max(best, argmax_key(logits[i], i));
  }
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  __shared__ unsigned long long warp_best[kThreads / 32];
  __shared__ bool last;
  if (threadIdx.x % 32 == 0) warp_best[threadIdx.x / 32] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) best = max(best, warp_best[w]);
    atomicMax(&ws->best, best);
    __threadfence();  // the max is visible device-wide before this block counts itself done
    last = atomicAdd(&ws->n_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    const unsigned long long b = atomicExch(&ws->best, 0ull);
    *index = static_cast<int32_t>(~static_cast<uint32_t>(b & 0xffffffffu));
    ws->n_done = 0;
  }
}

}  // namespace

size_t argmax_workspace_bytes() { return sizeof(ArgmaxWorkspace); }

Status argmax(const float* logits, int32_t n, int32_t* index, void* workspace, void* stream) {
  if (n <= 0) return Status::error("argmax: no logits");
  if (!logits || !index || !workspace) return Status::error("argmax: null pointer");
  if (reinterpret_cast<uintptr_t>(workspace) % 8 != 0) return Status::error("argmax: workspace must be 8-byte aligned");
  const int32_t per_block = kThreads * kPerThread;
  argmax_kernel<<<(n + per_block - 1) / per_block, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, n, index, static_cast<ArgmaxWorkspace*>(workspace));
  return cuda_status(cudaGetLastError(), "argmax launch");
}

}  // namespace longctx::cuda
