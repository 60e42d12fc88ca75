// Grouped-query attention over the paged KV store in the CPU codec's page layout (backend_ops.h,
// paged_attention): the straightforward kernel, one block per (query row, query head), online softmax
// ("FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness") over the head's pages in tiles of
// kThreads slots. A thread scores one slot of the tile (the keys are channel-major, so the block's reads of one
// channel are one coalesced row), then owns output channels for the product with the values (row-major: coalesced
// too). f32 throughout.
#include <cmath>
#include <string>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/paged_layer.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kChannels = kPagedMaxHeadDim / kThreads;  // output channels a thread owns at most

__global__ void __launch_bounds__(kThreads) paged_attention_kernel(PagedAttentionParams p, const float* q,
                                                                   const int32_t* q_pos, PagedLayer kv, float* out) {
  const int32_t D = kv.head_dim, T = kv.page_tokens;
  const int32_t t = blockIdx.x / p.n_head, h = blockIdx.x % p.n_head;
  const int32_t kvh = h / (p.n_head / kv.n_head_kv);
  extern __shared__ float sm[];
  float* q_s = sm;          // (D)
  float* p_s = sm + D;      // (kThreads)
  float* red = p_s + kThreads;  // (32)
  const float* qr = q + (static_cast<int64_t>(t) * p.n_head + h) * D;
  for (int32_t d = threadIdx.x; d < D; d += kThreads) q_s[d] = qr[d];
  __syncthreads();
  const int32_t qp = q_pos[t];
  float m = -INFINITY, l = 0.0f;
  float acc[kChannels];
#pragma unroll
  for (int c = 0; c < kChannels; ++c) acc[c] = 0.0f;
  const int32_t* pos = kv.positions + kv.token_begin[kvh];
  for (int32_t pi = kv.page_begin[kvh]; pi < kv.page_begin[kvh + 1]; ++pi) {
    const int32_t first = kv.slot0[pi + kvh], rows = kv.slot0[pi + kvh + 1] - first;
    const auto* page = reinterpret_cast<const uint8_t*>(kv.page_addr[pi]);
    const int fmt = kv.page_fmt[pi];
    for (int32_t c0 = 0; c0 < rows; c0 += kThreads) {
      const int32_t j = c0 + static_cast<int32_t>(threadIdx.x);
      float s = -INFINITY;
      if (j < rows && paged_visible(pos[first + j], qp, p.window)) {
        float dot = 0.0f;
        for (int32_t d = 0; d < D; ++d) dot = fmaf(q_s[d], paged_key(page, fmt, T, D, d, j), dot);
        s = dot * p.scale;
      }
      const float m_new = fmaxf(m, block_max(s, red));
      if (m_new == -INFINITY) continue;  // nothing visible yet (uniform over the block)
      const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
      const float pj = s == -INFINITY ? 0.0f : expf(s - m_new);
      p_s[threadIdx.x] = pj;
      l = l * corr + block_sum(pj, red);  // its barriers publish p_s
      m = m_new;
      const int32_t cnt = min(kThreads, rows - c0);
#pragma unroll
      for (int c = 0; c < kChannels; ++c) {
        const int32_t d = static_cast<int32_t>(threadIdx.x) + c * kThreads;
        if (d < D) {
          float a = acc[c] * corr;
          for (int32_t jj = 0; jj < cnt; ++jj) a = fmaf(p_s[jj], paged_value(page, fmt, T, D, c0 + jj, d), a);
          acc[c] = a;
        }
      }
      __syncthreads();  // p_s is read before the next tile writes it
    }
  }
  float* o = out + (static_cast<int64_t>(t) * p.n_head + h) * D;
#pragma unroll
  for (int c = 0; c < kChannels; ++c) {
    const int32_t d = static_cast<int32_t>(threadIdx.x) + c * kThreads;
    if (d < D) o[d] = l > 0.0f ? acc[c] / l : 0.0f;
  }
}

}  // namespace

Status paged_layer_check(const PagedAttentionParams& p, const PagedLayer& kv, const char* what) {
  if (kv.n_head_kv < 1 || p.n_head < 1 || p.n_head % kv.n_head_kv != 0)
    return Status::error(std::string(what) + ": n_head must be a positive multiple of n_head_kv");
  if (kv.head_dim < 1 || kv.head_dim > kPagedMaxHeadDim)
    return Status::error(std::string(what) + ": head_dim " + std::to_string(kv.head_dim) + " outside 1.." +
                         std::to_string(kPagedMaxHeadDim));
  if (kv.page_tokens < 1) return Status::error(std::string(what) + ": page_tokens must be positive");
  if (!kv.page_addr || !kv.page_fmt || !kv.page_begin || !kv.slot0 || !kv.token_begin || !kv.positions)
    return Status::error(std::string(what) + ": null array in the layer");
  return Status::success();
}

Status paged_attention(const PagedAttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                       const PagedLayer& kv, float* out, void* stream) {
  if (Status s = paged_layer_check(p, kv, "paged_attention"); !s.ok()) return s;
  if (n < 0) return Status::error("paged_attention: negative row count");
  if (n == 0) return Status::success();
  if (!q || !q_pos || !out) return Status::error("paged_attention: null pointer");
  const size_t smem = (static_cast<size_t>(kv.head_dim) + kThreads + 32) * sizeof(float);
  const int64_t blocks = static_cast<int64_t>(n) * p.n_head;
  if (blocks > 0x7fffffff) return Status::error("paged_attention: too many rows");
  paged_attention_kernel<<<static_cast<unsigned>(blocks), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      p, q, q_pos, kv, out);
  return cuda_status(cudaGetLastError(), "paged_attention launch");
}

}  // namespace longctx::cuda
