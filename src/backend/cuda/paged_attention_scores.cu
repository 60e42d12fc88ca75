// The attention queries paid to each cached slot, for the token policies (backend_ops.h, paged_attention_scores):
// SnapKV's observation-window votes ("SnapKV: LLM Knows What You are Looking for Before Generation"), H2O's
// accumulation ("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models"), KVzip's
// maximum. Blocks of (query row, query head, page range) over the page layout of the CPU codec, in two launches: the
// first finds each range's softmax maximum and sum (online, in tiles of kThreads slots), the second merges the
// ranges' into the row's and writes each slot's probability into the kv-head's scores (atomically: the rows and
// query heads of a group share them). A decode step has one row, so without the ranges a layer of SmolLM2 would run
// on 9 blocks of the GPU's 132 SMs; a prefill window's rows give enough blocks alone, and then one launch does both.
#include <cmath>
#include <string>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/paged_layer.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kBlocksWanted = 264;  // two per SM of an H100/H200

__device__ float slot_logit(const float* q_s, const uint8_t* page, int fmt, int32_t T, int32_t D, int32_t j,
                            float scale) {
  float dot = 0.0f;
  for (int32_t d = 0; d < D; ++d) dot = fmaf(q_s[d], paged_key(page, fmt, T, D, d, j), dot);
  return dot * scale;
}

// Pages [first, last) of kv-head kvh: range s of n_split.
__device__ void page_range(const PagedLayer& kv, int32_t kvh, int32_t s, int32_t n_split, int32_t& first,
                           int32_t& last) {
  const int32_t b = kv.page_begin[kvh], n = kv.page_begin[kvh + 1] - b;
  first = b + static_cast<int32_t>(static_cast<int64_t>(n) * s / n_split);
  last = b + static_cast<int32_t>(static_cast<int64_t>(n) * (s + 1) / n_split);
}

// Blocks: x = (row - first_row) * n_head + head, y = page range. partial: (rows, n_head, n_split) of (max, sum).
// write == false: each block stores its range's (max, sum). write == true: each block merges the row's ranges (or,
// with one range, finds them itself) and writes its range's probabilities.
__global__ void __launch_bounds__(kThreads) paged_attention_scores_kernel(PagedAttentionParams p, const float* q,
                                                                          const int32_t* q_pos, int32_t first_row,
                                                                          PagedLayer kv, float* scores,
                                                                          int32_t stride, bool reduce_max,
                                                                          int32_t n_split, float2* partial,
                                                                          bool write) {
  const int32_t D = kv.head_dim, T = kv.page_tokens;
  const int32_t t = first_row + static_cast<int32_t>(blockIdx.x) / p.n_head, h = blockIdx.x % p.n_head;
  const int32_t kvh = h / (p.n_head / kv.n_head_kv), split = blockIdx.y;
  extern __shared__ float sm[];
  float* q_s = sm;          // (D)
  float* red = sm + D;      // (32)
  const float* qr = q + (static_cast<int64_t>(t) * p.n_head + h) * D;
  for (int32_t d = threadIdx.x; d < D; d += kThreads) q_s[d] = qr[d];
  __syncthreads();
  const int32_t qp = q_pos[t];
  const int32_t* pos = kv.positions ? kv.positions + kv.token_begin[kvh] : nullptr;
  int32_t p_first, p_last;
  page_range(kv, kvh, split, n_split, p_first, p_last);
  float2* row_partial = partial ? partial + static_cast<int64_t>(blockIdx.x) * n_split : nullptr;
  float m = -INFINITY, l = 0.0f;
  if (!write || n_split == 1) {
    for (int32_t pi = p_first; pi < p_last; ++pi) {
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
    if (!write) {
      if (threadIdx.x == 0) row_partial[split] = make_float2(m, l);
      return;
    }
  } else {
    for (int32_t s = 0; s < n_split; ++s) m = fmaxf(m, row_partial[s].x);
    if (m != -INFINITY)
      for (int32_t s = 0; s < n_split; ++s)
        if (row_partial[s].x != -INFINITY) l += row_partial[s].y * expf(row_partial[s].x - m);
  }
  if (m == -INFINITY) return;  // the row sees no slot: it adds nothing
  float* acc = scores + static_cast<int64_t>(kvh) * stride;
  for (int32_t pi = p_first; pi < p_last; ++pi) {
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

int32_t split_count(int32_t n_rows, int32_t n_head, int32_t max_pages) {
  const int64_t blocks = static_cast<int64_t>(n_rows) * n_head;
  if (blocks <= 0 || max_pages <= 1) return 1;
  return static_cast<int32_t>(std::min<int64_t>((kBlocksWanted + blocks - 1) / blocks, max_pages));
}

}  // namespace

size_t paged_attention_scores_workspace_bytes(int32_t n_rows, int32_t n_head, int32_t max_pages) {
  const int32_t n_split = split_count(n_rows, n_head, max_pages);
  return n_split == 1 ? 0 : static_cast<size_t>(n_rows) * n_head * n_split * sizeof(float2);
}

Status paged_attention_scores(const PagedAttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                              int32_t first_row, const PagedLayer& kv, int32_t max_pages, float* scores,
                              int32_t stride, bool reduce_max, void* workspace, void* stream) {
  if (Status s = paged_layer_check(p, kv, "paged_attention_scores"); !s.ok()) return s;
  if (n < 0 || first_row < 0) return Status::error("paged_attention_scores: negative row count or first row");
  if (first_row >= n) return Status::success();
  if (!q || !q_pos || !scores) return Status::error("paged_attention_scores: null pointer");
  if (stride < 1) return Status::error("paged_attention_scores: stride must be positive");
  const size_t smem = (static_cast<size_t>(kv.head_dim) + 32) * sizeof(float);
  const int64_t blocks = static_cast<int64_t>(n - first_row) * p.n_head;
  if (blocks > 0x7fffffff) return Status::error("paged_attention_scores: too many rows");
  const int32_t n_split = split_count(n - first_row, p.n_head, max_pages);
  auto* partial = static_cast<float2*>(workspace);
  if (n_split > 1 && !partial) return Status::error("paged_attention_scores: no workspace for the page ranges");
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(n_split));
  const auto st = static_cast<cudaStream_t>(stream);
  if (n_split > 1) {
    paged_attention_scores_kernel<<<grid, kThreads, smem, st>>>(p, q, q_pos, first_row, kv, scores, stride,
                                                                reduce_max, n_split, partial, false);
    if (Status s = cuda_status(cudaGetLastError(), "paged_attention_scores launch"); !s.ok()) return s;
  }
  paged_attention_scores_kernel<<<grid, kThreads, smem, st>>>(p, q, q_pos, first_row, kv, scores, stride, reduce_max,
                                                              n_split, partial, true);
  return cuda_status(cudaGetLastError(), "paged_attention_scores launch");
}

}  // namespace longctx::cuda
