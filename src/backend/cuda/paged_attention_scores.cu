// The attention queries paid to each cached slot, for the token policies (backend_ops.h, paged_attention_scores):
// SnapKV's observation-window votes ("SnapKV: LLM Knows What You are Looking for Before Generation"), H2O's
// accumulation ("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"), KVzip's
// maximum. The straightforward kernel, one block per (query row, query head) over the page layout of the CPU codec:
// a first pass finds the softmax's maximum and sum (online, in tiles of kThreads slots), a second writes each slot's
// probability into the kv-head's scores (atomically: the rows and query heads of a group share them).
#include <cmath>
#include <string>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/paged_layer.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 128;

__device__ float slot_logit(const float* q_s, const uint8_t* page, int fmt, int32_t T, int32_t D, int32_t j,
                            float scale) {
  float dot = 0.0f;
  for (int32_t d = 0; d < D; ++d) dot = fmaf(q_s[d], paged_key(page, fmt, T, D, d, j), dot);
  return dot * scale;
}

__global__ void __launch_bounds__(kThreads) paged_attention_scores_kernel(PagedAttentionParams p, const float* q,
                                                                          const int32_t* q_pos, int32_t first_row,
                                                                          PagedLayer kv, float* scores,
                                                                          int32_t stride, bool reduce_max) {
  const int32_t D = kv.head_dim, T = kv.page_tokens;
  const int32_t t = first_row + static_cast<int32_t>(blockIdx.x) / p.n_head, h = blockIdx.x % p.n_head;
  const int32_t kvh = h / (p.n_head / kv.n_head_kv);
  extern __shared__ float sm[];
  float* q_s = sm;          // (D)
  float* red = sm + D;      // (32)
  const float* qr = q + (static_cast<int64_t>(t) * p.n_head + h) * D;
  for (int32_t d = threadIdx.x; d < D; d += kThreads) q_s[d] = qr[d];
  __syncthreads();
  const int32_t qp = q_pos[t];
  const int32_t* pos = kv.positions ? kv.positions + kv.token_begin[kvh] : nullptr;
  float m = -INFINITY, l = 0.0f;
  for (int32_t pi = kv.page_begin[kvh]; pi < kv.page_begin[kvh + 1]; ++pi) {
    const int32_t first = kv.slot0[pi + kvh], rows = kv.slot0[pi + kvh + 1] - first;
    const auto* page = reinterpret_cast<const uint8_t*>(kv.page_addr[pi]);
    const int fmt = kv.page_fmt[pi];
    for (int32_t c0 = 0; c0 < rows; c0 += kThreads) {
      const int32_t j = c0 + static_cast<int32_t>(threadIdx.x);
      float s = -INFINITY;
      if (j < rows && slot_visible(pos, first + j, qp, p.window)) s = slot_logit(q_s, page, fmt, T, D, j, p.scale);
      const float m_new = fmaxf(m, block_max(s, red));
      if (m_new == -INFINITY) continue;
      const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
      l = l * corr + block_sum(s == -INFINITY ? 0.0f : expf(s - m_new), red);
      m = m_new;
    }
  }
  if (m == -INFINITY) return;  // the row sees no slot: it adds nothing
  float* acc = scores + static_cast<int64_t>(kvh) * stride;
  for (int32_t pi = kv.page_begin[kvh]; pi < kv.page_begin[kvh + 1]; ++pi) {
    const int32_t first = kv.slot0[pi + kvh], rows = kv.slot0[pi + kvh + 1] - first;
    const auto* page = reinterpret_cast<const uint8_t*>(kv.page_addr[pi]);
    const int fmt = kv.page_fmt[pi];
    for (int32_t j = threadIdx.x; j < rows; j += kThreads) {
      float prob = 0.0f;
      if (slot_visible(pos, first + j, qp, p.window))
        prob = expf(slot_logit(q_s, page, fmt, T, D, j, p.scale) - m) / l;
      if (reduce_max)
        atomicMax(reinterpret_cast<int*>(acc + first + j), __float_as_int(prob));  // prob >= 0: int order is float order
      else
        atomicAdd(acc + first + j, prob);
    }
  }
}

}  // namespace

Status paged_attention_scores(const PagedAttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                              int32_t first_row, const PagedLayer& kv, float* scores, int32_t stride, bool reduce_max,
                              void* stream) {
  if (Status s = paged_layer_check(p, kv, "paged_attention_scores"); !s.ok()) return s;
  if (n < 0 || first_row < 0) return Status::error("paged_attention_scores: negative row count or first row");
  if (first_row >= n) return Status::success();
  if (!q || !q_pos || !scores) return Status::error("paged_attention_scores: null pointer");
  if (stride < 1) return Status::error("paged_attention_scores: stride must be positive");
  const size_t smem = (static_cast<size_t>(kv.head_dim) + 32) * sizeof(float);
  const int64_t blocks = static_cast<int64_t>(n - first_row) * p.n_head;
  if (blocks > 0x7fffffff) return Status::error("paged_attention_scores: too many rows");
  paged_attention_scores_kernel<<<static_cast<unsigned>(blocks), kThreads, smem, static_cast<cudaStream_t>(stream)>>>(
      p, q, q_pos, first_row, kv, scores, stride, reduce_max);
  return cuda_status(cudaGetLastError(), "paged_attention_scores launch");
}

}  // namespace longctx::cuda
