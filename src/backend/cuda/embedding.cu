// Embedding lookup: one bf16 row of the table to the f32 residual stream.
#include <cuda_bf16.h>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"

namespace longctx::cuda {
namespace {

// Each thread converts 8 channels read as one 16-byte load (n_embd % 8 == 0 and the table is 16-byte aligned).
// Grid (channel blocks, tokens).
__global__ void embedding_kernel(const uint4* __restrict__ table, const int32_t* __restrict__ tokens, int32_t n_vocab,
                                 int32_t n_embd, float4* __restrict__ x) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;  // index of 8 channels
  if (i >= n_embd / 8) return;
  const int32_t t = tokens[blockIdx.y];
  x += static_cast<size_t>(blockIdx.y) * (n_embd / 4);
  float v[8];
  if (t < 0 || t >= n_vocab) {
    for (float& f : v) f = __int_as_float(0x7fc00000);
  } else {
    const uint4 w = table[static_cast<size_t>(t) * (n_embd / 8) + i];
    const uint32_t words[4] = {w.x, w.y, w.z, w.w};
    for (int j = 0; j < 4; ++j) {
      v[2 * j] = __uint_as_float(words[j] << 16);  // bf16 -> f32 is a shift: exact
      v[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
    }
  }
  x[2 * i] = make_float4(v[0], v[1], v[2], v[3]);
  x[2 * i + 1] = make_float4(v[4], v[5], v[6], v[7]);
}

}  // namespace

Status embedding_lookup(const void* table, const int32_t* tokens, int32_t n_tokens, int32_t n_vocab, int32_t n_embd,
                        float* x, void* stream) {
  if (n_embd <= 0 || n_embd % 8 != 0 || n_vocab <= 0)
    return Status::error("embedding: n_embd must be a positive multiple of 8 and n_vocab positive");
  if (n_tokens <= 0 || n_tokens > 65535) return Status::error("embedding: n_tokens must be in 1..65535");
  if (!table || !tokens || !x) return Status::error("embedding: null pointer");
  if ((reinterpret_cast<uintptr_t>(table) | reinterpret_cast<uintptr_t>(x)) % 16 != 0)
    return Status::error("embedding: table and x must be 16-byte aligned");
  const int32_t n8 = n_embd / 8;
  embedding_kernel<<<dim3((n8 + 127) / 128, n_tokens), 128, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint4*>(table), tokens, n_vocab, n_embd, reinterpret_cast<float4*>(x));
  return cuda_status(cudaGetLastError(), "embedding launch");
}

}  // namespace longctx::cuda
