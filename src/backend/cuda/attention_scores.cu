// The attention that queries paid to cached slots, for the token policies, on the device (the twin of
// cpu::attention_scores): SnapKV's observation-window vote ("SnapKV: LLM Knows What You are Looking for Before
// Generation": the last window queries of the prompt, their attention weights summed per key and over the query
// heads of a kv-head) and H2O's accumulated attention ("H2O: Heavy-Hitter Oracle for Efficient Generative Inference
// of Large Language Models": each decode step's probabilities added to a running score per key) are the same sum,
// over n_q rows per sequence: n_q = window at prefill end, 1 per decode step. The pooling and the top-k selection
// stay in the policies (host code).
//
// Two small kernels over chunks of slots, thread per slot, f32 throughout (the probabilities feed a ranking, and the
// pass runs only when a policy asks): the first leaves per (row, kv-head, chunk, head) the chunk's (max, sum of exp)
// of the logits, the second merges them into each head's log-sum-exp, recomputes the logits and adds
// sum_rows sum_heads exp(logit - lse) to each slot's score. Every slot is written by one thread of one block (the
// rows are looped inside), so the sums are deterministic. Keys are read from plain pages (f16, bf16) and KIVI pages
// (kivi_layout.h, dequantized per element as min + scale * code in f32, the CPU codec's formula) alike.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/kivi_layout.h"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 1024;  // slots per block: 4 per thread
constexpr int kMaxGroup = 8;

struct ScoreArgs {
  const uint8_t* pool;
  size_t page_bytes;
  const uint8_t* packed_pool;
  size_t packed_page_bytes;
  const uint8_t* page_packed;  // (n_seq, n_head_kv, max_pages) or null
  int32_t bits;                // of the packed pages (0: none)
  const int32_t* page_table;   // (n_seq, n_head_kv, max_pages)
  const int32_t* positions;    // (n_seq, n_head_kv, max_tokens)
  const int32_t* n_tokens;     // (n_seq, n_head_kv)
  int32_t n_head_kv, n_head, group, page_tokens, max_pages, max_tokens;
  const void* q;         // (n_seq, n_q, n_head, D)
  const int32_t* q_pos;  // (n_seq, n_q)
  int32_t n_q;
  float* scores;  // (n_seq, n_head_kv, stride)
  int32_t stride;
  float2* part;  // (n_seq, n_q, n_head_kv, n_chunks, kMaxGroup) (max, sum of exp) per chunk and head
  int32_t n_chunks;
  float scale;
  int32_t window;
};

__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

__device__ __forceinline__ bool visible(int32_t k_pos, int32_t q_pos, int32_t window) {
  return k_pos <= q_pos && (window <= 0 || k_pos > q_pos - window);
}

// Logits of slot j for the group's heads: l[h] = scale * q_h . k_j. qs: (kMaxGroup, D) f32 in shared memory.
template <typename T, int D>
__device__ __forceinline__ void logits(const ScoreArgs& a, int sh, int j, const float* qs, float (&l)[kMaxGroup]) {
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) l[h] = 0.0f;
  const int32_t page = a.page_table[static_cast<size_t>(sh) * a.max_pages + j / a.page_tokens];
  const int row = j % a.page_tokens;
  const bool packed = a.bits > 0 && a.page_packed[static_cast<size_t>(sh) * a.max_pages + j / a.page_tokens];
  if (!packed) {
    const T* k = reinterpret_cast<const T*>(a.pool + static_cast<size_t>(page) * a.page_bytes) +
                 static_cast<size_t>(row) * D;
    for (int c0 = 0; c0 < D; c0 += 8) {
      const uint4 w = *reinterpret_cast<const uint4*>(k + c0);
      const T* e = reinterpret_cast<const T*>(&w);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float x = to_float(e[i]);
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h)
          if (h < a.group) l[h] += qs[h * D + c0 + i] * x;
      }
    }
  } else {
    // One pass over the row's code words (head_dim * bits / 32 of them), each word's codes expanded in place (the
    // inverse of kivi::k_code_slot: kivi::k_row_word, kivi::k_word_channel).
    const uint8_t* pg = a.packed_pool + static_cast<size_t>(page) * a.packed_page_bytes;
    const uint32_t* kb = reinterpret_cast<const uint32_t*>(pg);
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(pg + kivi::k_scale_bytes(D) +
                                                              static_cast<size_t>(row / kivi::kTile) *
                                                                  kivi::tile_bytes(D, a.bits));
    const int t = row % kivi::kTile;
    const uint32_t mask = (1u << a.bits) - 1;
    const int per_word = kivi::pairs_per_word(a.bits), n_words = kivi::code_words(D, a.bits);
#pragma unroll
    for (int c = 0; c < 4; ++c)
      for (int wi = 0; wi < n_words; ++wi) {
        const uint32_t word = codes[kivi::k_row_word(D, a.bits, t, c, wi)];
        for (int k = 0; k < per_word; ++k) {
          const int ch = kivi::k_word_channel(a.bits, c, wi, k);
          const uint32_t sw = kb[kivi::k_scale_word(ch, 0)], mw = kb[kivi::k_scale_word(ch, 1)];
          const float2 sc = __half22float2(*reinterpret_cast<const __half2*>(&sw));  // channels ch, ch + 1
          const float2 mn = __half22float2(*reinterpret_cast<const __half2*>(&mw));
          const float x0 = mn.x + sc.x * static_cast<float>((word >> (a.bits * k)) & mask);
          const float x1 = mn.y + sc.y * static_cast<float>((word >> (a.bits * k + 16)) & mask);
#pragma unroll
          for (int h = 0; h < kMaxGroup; ++h)
            if (h < a.group) l[h] += qs[h * D + ch] * x0 + qs[h * D + ch + 1] * x1;
        }
      }
  }
#pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) l[h] *= a.scale;
}

// Row r's query heads of kv-head kvh into shared memory as f32, zeros past the group.
template <typename T, int D>
__device__ __forceinline__ void load_q(const ScoreArgs& a, int seq, int r, int kvh, float* qs) {
  const T* q = static_cast<const T*>(a.q) +
               ((static_cast<size_t>(seq) * a.n_q + r) * a.n_head + static_cast<size_t>(kvh) * a.group) * D;
  for (int i = threadIdx.x; i < kMaxGroup * D; i += blockDim.x)
    qs[i] = i / D < a.group ? to_float(q[i]) : 0.0f;
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) scores_partial_kernel(const ScoreArgs a) {
  __shared__ float qs[kMaxGroup * D];
  __shared__ float sm_m[kThreads / 32][kMaxGroup], sm_s[kThreads / 32][kMaxGroup];
  const int chunk = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int sh = seq * a.n_head_kv + kvh;
  const int n_tok = a.n_tokens[sh];
  const int j_end = min(n_tok, (chunk + 1) * kChunk);
  const int32_t* pos = a.positions + static_cast<size_t>(sh) * a.max_tokens;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int r = 0; r < a.n_q; ++r) {
    const int32_t qp = a.q_pos[seq * a.n_q + r];
    __syncthreads();  // qs and the reduction arrays of the previous row are consumed
    load_q<T, D>(a, seq, r, kvh, qs);
    __syncthreads();
    float m[kMaxGroup], s[kMaxGroup];
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) m[h] = -INFINITY, s[h] = 0.0f;
    for (int j = chunk * kChunk + threadIdx.x; j < j_end; j += kThreads) {
      if (!visible(pos[j], qp, a.window)) continue;
      float l[kMaxGroup];
      logits<T, D>(a, sh, j, qs, l);
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) {
        const float mn = fmaxf(m[h], l[h]);
        s[h] = s[h] * expf(m[h] - mn) + expf(l[h] - mn);  // m = -inf the first time: exp(-inf) = 0
        m[h] = mn;
      }
    }
    // Block reduction of (max, sum) per head: warps by shuffles, then the warps in shared memory.
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m[h], off), so = __shfl_xor_sync(0xffffffffu, s[h], off);
        const float mn = fmaxf(m[h], mo);
        s[h] = mn == -INFINITY ? 0.0f : s[h] * expf(m[h] - mn) + so * expf(mo - mn);
        m[h] = mn;
      }
      if (lane == 0) sm_m[warp][h] = m[h], sm_s[warp][h] = s[h];
    }
    __syncthreads();
    if (threadIdx.x < kMaxGroup) {
      const int h = threadIdx.x;
      float M = -INFINITY, S = 0.0f;
      for (int w = 0; w < kThreads / 32; ++w) {
        const float mn = fmaxf(M, sm_m[w][h]);
        S = mn == -INFINITY ? 0.0f : S * expf(M - mn) + sm_s[w][h] * expf(sm_m[w][h] - mn);
        M = mn;
      }
      a.part[((static_cast<size_t>(seq * a.n_q + r) * a.n_head_kv + kvh) * a.n_chunks + chunk) * kMaxGroup + h] =
          make_float2(M, S);
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) scores_add_kernel(const ScoreArgs a) {
  __shared__ float qs[kMaxGroup * D];
  __shared__ float sm_lse[kMaxGroup];
  const int chunk = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int sh = seq * a.n_head_kv + kvh;
  const int n_tok = a.n_tokens[sh];
  const int j_begin = chunk * kChunk, j_end = min(n_tok, (chunk + 1) * kChunk);
  const int32_t* pos = a.positions + static_cast<size_t>(sh) * a.max_tokens;
  float acc[kChunk / kThreads];
#pragma unroll
  for (int i = 0; i < kChunk / kThreads; ++i) acc[i] = 0.0f;
  for (int r = 0; r < a.n_q; ++r) {
    const int32_t qp = a.q_pos[seq * a.n_q + r];
    __syncthreads();
    load_q<T, D>(a, seq, r, kvh, qs);
    if (threadIdx.x < kMaxGroup) {  // the head's log-sum-exp over every chunk; -inf: it sees no slot
      const float2* pp = a.part + (static_cast<size_t>(seq * a.n_q + r) * a.n_head_kv + kvh) * a.n_chunks * kMaxGroup;
      float M = -INFINITY, S = 0.0f;
      for (int c = 0; c < a.n_chunks; ++c) {
        const float2 ms = pp[c * kMaxGroup + threadIdx.x];
        const float mn = fmaxf(M, ms.x);
        S = mn == -INFINITY ? 0.0f : S * expf(M - mn) + ms.y * expf(ms.x - mn);
        M = mn;
      }
      sm_lse[threadIdx.x] = threadIdx.x < a.group && M != -INFINITY ? M + logf(S) : INFINITY;  // exp(l - inf) = 0
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kChunk / kThreads; ++i) {
      const int j = j_begin + i * kThreads + threadIdx.x;
      if (j >= j_end || !visible(pos[j], qp, a.window)) continue;
      float l[kMaxGroup];
      logits<T, D>(a, sh, j, qs, l);
#pragma unroll
      for (int h = 0; h < kMaxGroup; ++h) acc[i] += expf(l[h] - sm_lse[h]);
    }
  }
#pragma unroll
  for (int i = 0; i < kChunk / kThreads; ++i) {
    const int j = j_begin + i * kThreads + threadIdx.x;
    if (j < j_end) a.scores[static_cast<size_t>(sh) * a.stride + j] += acc[i];
  }
}

// The instances, listed (DESIGN.md, Style 6): {bf16, f16} x head_dim {64, 128}; packed pages at any bit width.
template <typename T, int D>
Status launch(const ScoreArgs& a, int32_t n_seq, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.n_chunks), static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(n_seq));
  scores_partial_kernel<T, D><<<grid, kThreads, 0, stream>>>(a);
  LONGCTX_CUDA_TRY(cudaGetLastError());
  scores_add_kernel<T, D><<<grid, kThreads, 0, stream>>>(a);
  LONGCTX_CUDA_TRY(cudaGetLastError());
  return Status::success();
}

Status check(const DecodeAttentionParams& p, const PagedKvView& kv, int32_t n_q) {
  if (kv.head_dim != 64 && kv.head_dim != 128)
    return Status::error("attention scores: head_dim " + std::to_string(kv.head_dim) + " not supported (64, 128)");
  if (kv.page_tokens <= 0 || kv.page_tokens % kivi::kTile != 0)
    return Status::error("attention scores: page_tokens " + std::to_string(kv.page_tokens) + " is not a multiple of 16");
  if (kv.n_head_kv <= 0 || kv.n_seq <= 0 || p.n_head % kv.n_head_kv != 0 || p.n_head / kv.n_head_kv > kMaxGroup)
    return Status::error("attention scores: n_head must be 1..8 times n_head_kv");
  if (n_q < 1) return Status::error("attention scores: n_q must be >= 1");
  if (kv.packing != KvPacking::None && (!kv.packed_pool || !kv.page_packed))
    return Status::error("attention scores: a packed view needs packed_pool and page_packed");
  return Status::success();
}

}  // namespace

Status attention_scores_plan(const DecodeAttentionParams& p, const PagedKvView& kv, int32_t n_q, int32_t n_tokens_max,
                             AttentionScoresPlan* plan) {
  if (Status s = check(p, kv, n_q); !s.ok()) return s;
  plan->n_chunks = std::max<int32_t>(1, (n_tokens_max + kChunk - 1) / kChunk);
  plan->workspace_bytes =
      static_cast<size_t>(kv.n_seq) * n_q * kv.n_head_kv * plan->n_chunks * kMaxGroup * sizeof(float2);
  return Status::success();
}

Status attention_scores(const DecodeAttentionParams& p, const AttentionScoresPlan& plan, int32_t n_q, const void* q,
                        const int32_t* q_pos, const PagedKvView& kv, float* scores, int32_t stride, void* workspace,
                        void* stream) {
  if (Status s = check(p, kv, n_q); !s.ok()) return s;
  if (!q || !q_pos || !scores || !workspace || (!kv.pool && kv.packing == KvPacking::None) || !kv.page_table ||
      !kv.positions || !kv.n_tokens)
    return Status::error("attention scores: null pointer");
  if (stride < kv.max_tokens) return Status::error("attention scores: stride is below max_tokens");
  if (plan.n_chunks < 1 || static_cast<int64_t>(plan.n_chunks) * kChunk < kv.max_tokens)
    return Status::error("attention scores: the plan does not cover max_tokens");
  ScoreArgs a{};
  a.pool = static_cast<const uint8_t*>(kv.pool);
  a.page_bytes = kv.page_bytes();
  a.packed_pool = static_cast<const uint8_t*>(kv.packed_pool);
  a.packed_page_bytes = kv.packed_page_bytes();
  a.page_packed = kv.page_packed;
  a.bits = kv_packing_bits(kv.packing);
  a.page_table = kv.page_table;
  a.positions = kv.positions;
  a.n_tokens = kv.n_tokens;
  a.n_head_kv = kv.n_head_kv;
  a.n_head = p.n_head;
  a.group = p.n_head / kv.n_head_kv;
  a.page_tokens = kv.page_tokens;
  a.max_pages = kv.max_pages;
  a.max_tokens = kv.max_tokens;
  a.q = q;
  a.q_pos = q_pos;
  a.n_q = n_q;
  a.scores = scores;
  a.stride = stride;
  a.part = static_cast<float2*>(workspace);
  a.n_chunks = plan.n_chunks;
  a.scale = p.scale;
  a.window = p.window;
  auto st = static_cast<cudaStream_t>(stream);
  const bool bf = kv.dtype == KvDtype::BF16;
  if (kv.head_dim == 64) return bf ? launch<__nv_bfloat16, 64>(a, kv.n_seq, st) : launch<__half, 64>(a, kv.n_seq, st);
  return bf ? launch<__nv_bfloat16, 128>(a, kv.n_seq, st) : launch<__half, 128>(a, kv.n_seq, st);
}

}  // namespace longctx::cuda
