// Grouped-query attention over the paged KV store in the CPU codec's page layout (backend_ops.h,
// paged_attention): online softmax ("FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness")
// over a head's pages in tiles of kThreads slots, one block per (query row, query head, range of pages). A thread
// scores one slot of the tile (the keys are channel-major, so the block's reads of one channel are one coalesced
// row), then owns output channels for the product with the values (row-major: coalesced too). f32 throughout.
//
// Decode has one row: one block per head would leave most SMs idle and walk a long cache serially, so the pages are
// split into ranges, each block leaving its unnormalized partial (running max m, sum l, weighted values) in the
// workspace, and a second kernel combines them ("Flash-Decoding for long-context inference"). The loops over
// channels and slots are unrolled per page format so a thread keeps several loads in flight.
#include <cmath>
#include <string>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/paged_layer.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kChannels = kPagedMaxHeadDim / kThreads;  // output channels a thread owns at most
constexpr int kTargetBlocks = 1024;                      // a few waves over the SMs of a Hopper GPU

// q . key j of the page (q in shared memory), four independent sums.
__device__ __forceinline__ float key_dot(const float* q_s, const uint8_t* page, int fmt, int32_t T, int32_t D,
                                         int32_t j) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  int32_t d = 0;
  if (fmt == kPageF16) {
    const __half* k = reinterpret_cast<const __half*>(page) + j;
#pragma unroll 4
    for (; d + 4 <= D; d += 4) {
      s0 = fmaf(q_s[d], __half2float(k[static_cast<int64_t>(d) * T]), s0);
      s1 = fmaf(q_s[d + 1], __half2float(k[static_cast<int64_t>(d + 1) * T]), s1);
      s2 = fmaf(q_s[d + 2], __half2float(k[static_cast<int64_t>(d + 2) * T]), s2);
      s3 = fmaf(q_s[d + 3], __half2float(k[static_cast<int64_t>(d + 3) * T]), s3);
    }
  } else if (fmt == kPageF32) {
    const float* k = reinterpret_cast<const float*>(page) + j;
#pragma unroll 4
    for (; d + 4 <= D; d += 4) {
      s0 = fmaf(q_s[d], k[static_cast<int64_t>(d) * T], s0);
      s1 = fmaf(q_s[d + 1], k[static_cast<int64_t>(d + 1) * T], s1);
      s2 = fmaf(q_s[d + 2], k[static_cast<int64_t>(d + 2) * T], s2);
      s3 = fmaf(q_s[d + 3], k[static_cast<int64_t>(d + 3) * T], s3);
    }
  }
  for (; d < D; ++d) s0 = fmaf(q_s[d], paged_key(page, fmt, T, D, d, j), s0);
  return (s0 + s1) + (s2 + s3);
}

// a + sum over cnt slots from row r0 of p_s[jj] * value (r0 + jj, d), two independent sums.
__device__ __forceinline__ float value_sum(float a, const float* p_s, const uint8_t* page, int fmt, int32_t T,
                                           int32_t D, int32_t r0, int32_t cnt, int32_t d) {
  float b = 0.0f;
  int32_t jj = 0;
  if (fmt == kPageF16) {
    const __half* v = reinterpret_cast<const __half*>(page) + static_cast<int64_t>(T) * D +
                      static_cast<int64_t>(r0) * D + d;
#pragma unroll 4
    for (; jj + 2 <= cnt; jj += 2) {
      a = fmaf(p_s[jj], __half2float(v[static_cast<int64_t>(jj) * D]), a);
      b = fmaf(p_s[jj + 1], __half2float(v[static_cast<int64_t>(jj + 1) * D]), b);
    }
  } else if (fmt == kPageF32) {
    const float* v = reinterpret_cast<const float*>(page) + static_cast<int64_t>(T) * D +
                     static_cast<int64_t>(r0) * D + d;
#pragma unroll 4
    for (; jj + 2 <= cnt; jj += 2) {
      a = fmaf(p_s[jj], v[static_cast<int64_t>(jj) * D], a);
      b = fmaf(p_s[jj + 1], v[static_cast<int64_t>(jj + 1) * D], b);
    }
  }
  for (; jj < cnt; ++jj) a = fmaf(p_s[jj], paged_value(page, fmt, T, D, r0 + jj, d), a);
  return a + b;
}

// blockIdx.x: query row t and head h (t * n_head + h); blockIdx.y: the range of pages_per_split pages of the head.
// n_split == 1: writes the normalized output; else the partial (acc, then m and l) of its range to the workspace.
__global__ void __launch_bounds__(kThreads) paged_attention_kernel(PagedAttentionParams p, const float* q,
                                                                   const int32_t* q_pos, PagedLayer kv,
                                                                   int32_t pages_per_split, float* out,
                                                                   float* part_acc, float* part_ml) {
  const int32_t D = kv.head_dim, T = kv.page_tokens;
  const int32_t t = blockIdx.x / p.n_head, h = blockIdx.x % p.n_head;
  const int32_t split = blockIdx.y, n_split = gridDim.y;
  const int32_t kvh = h / (p.n_head / kv.n_head_kv);
  extern __shared__ float sm[];
  float* q_s = sm;              // (D)
  float* p_s = sm + D;          // (kThreads)
  float* red = p_s + kThreads;  // (32)
  const float* qr = q + (static_cast<int64_t>(t) * p.n_head + h) * D;
  for (int32_t d = threadIdx.x; d < D; d += kThreads) q_s[d] = qr[d];
  __syncthreads();
  const int32_t qp = q_pos[t];
  float m = -INFINITY, l = 0.0f;
  float acc[kChannels];
#pragma unroll
  for (int c = 0; c < kChannels; ++c) acc[c] = 0.0f;
  const int32_t* pos = kv.positions ? kv.positions + kv.token_begin[kvh] : nullptr;
  const int32_t p_first = kv.page_begin[kvh] + split * pages_per_split;
  const int32_t p_end = min(p_first + pages_per_split, kv.page_begin[kvh + 1]);
  for (int32_t pi = p_first; pi < p_end; ++pi) {
    const int32_t first = kv.slot0[pi + kvh], rows = kv.slot0[pi + kvh + 1] - first;
    const auto* page = reinterpret_cast<const uint8_t*>(kv.page_addr[pi]);
    const int fmt = kv.page_fmt[pi];
    for (int32_t c0 = 0; c0 < rows; c0 += kThreads) {
      const int32_t j = c0 + static_cast<int32_t>(threadIdx.x);
      float s = -INFINITY;
      if (j < rows && slot_visible(pos, first + j, qp, p.window)) s = key_dot(q_s, page, fmt, T, D, j) * p.scale;
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
        if (d < D) acc[c] = value_sum(acc[c] * corr, p_s, page, fmt, T, D, c0, cnt, d);
      }
      __syncthreads();  // p_s is read before the next tile writes it
    }
  }
  if (n_split == 1) {
    float* o = out + (static_cast<int64_t>(t) * p.n_head + h) * D;
#pragma unroll
    for (int c = 0; c < kChannels; ++c) {
      const int32_t d = static_cast<int32_t>(threadIdx.x) + c * kThreads;
      if (d < D) o[d] = l > 0.0f ? acc[c] / l : 0.0f;
    }
    return;
  }
  const int64_t part = static_cast<int64_t>(blockIdx.x) * n_split + split;
  float* a = part_acc + part * D;
#pragma unroll
  for (int c = 0; c < kChannels; ++c) {
    const int32_t d = static_cast<int32_t>(threadIdx.x) + c * kThreads;
    if (d < D) a[d] = acc[c];
  }
  if (threadIdx.x == 0) {
    part_ml[2 * part] = m;
    part_ml[2 * part + 1] = l;
  }
}

// Decode (a few rows): one block per (query row, kv-head, range of pages) for all the query heads sharing the kv-head
// (GQA), so each page is read once rather than once a query head, in 16-byte loads. A tile is kTile slots of a page:
// thread (slice c, group r) holds channels 8c .. 8c + 7 and slots 8r .. 8r + 7 of the tile. Scores: the thread's
// partial dots of its 8 slots with every head's q over its 8 channels (keys channel-major: one load is 8 slots of a
// channel), summed over the slices by shuffles (a group's slices are adjacent lanes of one warp). The online softmax
// of each head over the tile by one warp. Values (row-major: one load is 8 channels of a slot) accumulate in registers
// per (head, channel) and are summed over the groups at the end. F16 pages are read as halves; other formats decode
// element by element as the CPU codec does (paged_key / paged_value).
constexpr int kDecodeMaxGroup = 8;  // query heads per kv-head
constexpr int32_t kDecodeMaxRows = 8;

// G8: the most query heads a kv-head has (4 or 8; the arrays per head are sized by it, so 4 keeps registers low).
template <int D, int G8>
__global__ void __launch_bounds__(kThreads) paged_decode_kernel(PagedAttentionParams p, const float* q,
                                                                const int32_t* q_pos, PagedLayer kv,
                                                                int32_t pages_per_split, float* out, float* part_acc,
                                                                float* part_ml) {
  constexpr int kSlices = D / 8;
  constexpr int kGroups = kThreads / kSlices;
  constexpr int kTile = kGroups * 8;
  __shared__ float q_s[G8][D];
  __shared__ float s_s[kTile][G8];  // scores, then probabilities
  __shared__ float m_s[G8], l_s[G8], corr_s[G8];
  __shared__ float red_s[kGroups][G8][D];
  const int32_t T = kv.page_tokens, G = p.n_head / kv.n_head_kv;
  const int32_t t = blockIdx.x / kv.n_head_kv, kvh = blockIdx.x % kv.n_head_kv;
  const int32_t split = blockIdx.y, n_split = gridDim.y;
  const int c = threadIdx.x % kSlices, r = threadIdx.x / kSlices;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int32_t i = threadIdx.x; i < G * D; i += kThreads)
    q_s[i / D][i % D] = q[(static_cast<int64_t>(t) * p.n_head + kvh * G) * D + i];
  if (threadIdx.x < G8) m_s[threadIdx.x] = -INFINITY, l_s[threadIdx.x] = 0.0f;
  __syncthreads();
  const int32_t qp = q_pos[t];
  const int32_t* pos = kv.positions ? kv.positions + kv.token_begin[kvh] : nullptr;
  float acc[G8][8];
#pragma unroll
  for (int g = 0; g < G8; ++g)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
  const int32_t p_first = kv.page_begin[kvh] + split * pages_per_split;
  const int32_t p_end = min(p_first + pages_per_split, kv.page_begin[kvh + 1]);
  for (int32_t pi = p_first; pi < p_end; ++pi) {
    const int32_t first = kv.slot0[pi + kvh], rows = kv.slot0[pi + kvh + 1] - first;
    const auto* page = reinterpret_cast<const uint8_t*>(kv.page_addr[pi]);
    const int fmt = kv.page_fmt[pi];
    const bool halves = fmt == kPageF16 && (reinterpret_cast<uintptr_t>(page) & 15) == 0;
    for (int32_t c0 = 0; c0 < rows; c0 += kTile) {
      const int32_t j0 = c0 + r * 8;  // the thread's first slot in the page
      const bool live = j0 < rows;    // then j0 + 8 <= T (T and j0 multiples of 8): the loads stay in the page
      float dot[8][G8];
#pragma unroll
      for (int jj = 0; jj < 8; ++jj)
#pragma unroll
        for (int g = 0; g < G8; ++g) dot[jj][g] = 0.0f;
      // An F16 tile's keys and values are loaded together, so one memory latency is waited for a tile, not two (the
      // values do not depend on the scores); the rows past `rows` are in the page and multiplied by 0.
      uint4 kraw[8], vraw[8];
      if (live && halves) {
        const __half* base = reinterpret_cast<const __half*>(page);
#pragma unroll
        for (int i = 0; i < 8; ++i) kraw[i] = *reinterpret_cast<const uint4*>(base + static_cast<int64_t>(c * 8 + i) * T + j0);
#pragma unroll
        for (int jj = 0; jj < 8; ++jj)
          vraw[jj] = *reinterpret_cast<const uint4*>(base + static_cast<int64_t>(T) * D + static_cast<int64_t>(j0 + jj) * D + c * 8);
      }
      if (live) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int32_t d = c * 8 + i;
          float k[8];
          if (halves) {
            const __half2* h2 = reinterpret_cast<const __half2*>(&kraw[i]);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 f = __half22float2(h2[e]);
              k[2 * e] = f.x, k[2 * e + 1] = f.y;
            }
          } else {
#pragma unroll
            for (int jj = 0; jj < 8; ++jj) k[jj] = j0 + jj < rows ? paged_key(page, fmt, T, D, d, j0 + jj) : 0.0f;
          }
#pragma unroll
          for (int g = 0; g < G8; ++g) {
            if (g < G) {
              const float qd = q_s[g][d];
#pragma unroll
              for (int jj = 0; jj < 8; ++jj) dot[jj][g] = fmaf(qd, k[jj], dot[jj][g]);
            }
          }
        }
      }
#pragma unroll
      for (int o = 1; o < kSlices; o <<= 1)
#pragma unroll
        for (int jj = 0; jj < 8; ++jj)
#pragma unroll
          for (int g = 0; g < G8; ++g)
            if (g < G) dot[jj][g] += __shfl_xor_sync(0xffffffffu, dot[jj][g], o);
      if (c == 0) {
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
          const bool vis = live && j0 + jj < rows && slot_visible(pos, first + j0 + jj, qp, p.window);
#pragma unroll
          for (int g = 0; g < G8; ++g) s_s[r * 8 + jj][g] = vis ? dot[jj][g] * p.scale : -INFINITY;
        }
      }
      __syncthreads();
      for (int g = warp; g < G; g += kThreads / 32) {  // one warp a head: the tile's max, probabilities, sum
        float mx = -INFINITY;
        for (int j = lane; j < kTile; j += 32) mx = fmaxf(mx, s_s[j][g]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_old = m_s[g], m_new = fmaxf(m_old, mx);
        float sum = 0.0f;
        for (int j = lane; j < kTile; j += 32) {
          const float sj = s_s[j][g];
          const float pj = sj == -INFINITY ? 0.0f : expf(sj - m_new);
          s_s[j][g] = pj;
          sum += pj;
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) {
          const float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
          corr_s[g] = corr;
          l_s[g] = l_s[g] * corr + sum;
          m_s[g] = m_new;
        }
      }
      __syncthreads();
#pragma unroll
      for (int g = 0; g < G8; ++g) {
        if (g < G) {
          const float corr = corr_s[g];
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[g][i] *= corr;
        }
      }
      if (live) {
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
          const int32_t j = j0 + jj;
          if (j >= rows) break;
          float v[8];
          if (halves) {
            const __half2* h2 = reinterpret_cast<const __half2*>(&vraw[jj]);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 f = __half22float2(h2[e]);
              v[2 * e] = f.x, v[2 * e + 1] = f.y;
            }
          } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = paged_value(page, fmt, T, D, j, c * 8 + i);
          }
#pragma unroll
          for (int g = 0; g < G8; ++g) {
            if (g < G) {
              const float pj = s_s[r * 8 + jj][g];
#pragma unroll
              for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(pj, v[i], acc[g][i]);
            }
          }
        }
      }
      __syncthreads();  // s_s and corr_s are read before the next tile writes them
    }
  }
#pragma unroll
  for (int g = 0; g < G8; ++g)
    if (g < G)
#pragma unroll
      for (int i = 0; i < 8; ++i) red_s[r][g][c * 8 + i] = acc[g][i];
  __syncthreads();
  for (int32_t i = threadIdx.x; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float a = 0.0f;
    for (int rr = 0; rr < kGroups; ++rr) a += red_s[rr][g][d];
    const int64_t row_head = static_cast<int64_t>(t) * p.n_head + kvh * G + g;  // the combine's block index
    if (n_split == 1) {
      out[row_head * D + d] = l_s[g] > 0.0f ? a / l_s[g] : 0.0f;
    } else {
      const int64_t part = row_head * n_split + split;
      part_acc[part * D + d] = a;
      if (d == 0) part_ml[2 * part] = m_s[g], part_ml[2 * part + 1] = l_s[g];
    }
  }
}

// One block per (query row, query head): the partials of its n_split ranges rescaled to their common max and summed.
__global__ void __launch_bounds__(kThreads) paged_attention_combine_kernel(int32_t D, int32_t n_split,
                                                                           const float* part_acc,
                                                                           const float* part_ml, float* out) {
  const int64_t part0 = static_cast<int64_t>(blockIdx.x) * n_split;
  float m = -INFINITY;
  for (int32_t s = 0; s < n_split; ++s) m = fmaxf(m, part_ml[2 * (part0 + s)]);
  float l = 0.0f;
  for (int32_t s = 0; s < n_split; ++s) {
    const float ms = part_ml[2 * (part0 + s)];
    if (ms != -INFINITY) l += part_ml[2 * (part0 + s) + 1] * expf(ms - m);
  }
  float* o = out + static_cast<int64_t>(blockIdx.x) * D;
  for (int32_t d = threadIdx.x; d < D; d += kThreads) {
    float a = 0.0f;
    for (int32_t s = 0; s < n_split; ++s) {
      const float ms = part_ml[2 * (part0 + s)];
      if (ms != -INFINITY) a += part_acc[(part0 + s) * D + d] * expf(ms - m);
    }
    o[d] = l > 0.0f ? a / l : 0.0f;
  }
}

// Ranges per (row, head) and pages per range: enough blocks for kTargetBlocks, never an empty range.
void split_of(int32_t n, int32_t n_head, int32_t max_pages, int32_t* n_split, int32_t* pages_per_split) {
  const int64_t rows = static_cast<int64_t>(n) * n_head;
  int64_t want = rows >= kTargetBlocks ? 1 : (kTargetBlocks + rows - 1) / rows;
  want = std::max<int64_t>(1, std::min<int64_t>(want, max_pages));
  *pages_per_split = static_cast<int32_t>((max_pages + want - 1) / want);
  *n_split = *pages_per_split > 0 ? (max_pages + *pages_per_split - 1) / *pages_per_split : 1;
  if (*pages_per_split < 1) *pages_per_split = 1;
  if (*n_split < 1) *n_split = 1;
}

}  // namespace

Status paged_layer_check(const PagedAttentionParams& p, const PagedLayer& kv, const char* what) {
  if (kv.n_head_kv < 1 || p.n_head < 1 || p.n_head % kv.n_head_kv != 0)
    return Status::error(std::string(what) + ": n_head must be a positive multiple of n_head_kv");
  if (kv.head_dim < 1 || kv.head_dim > kPagedMaxHeadDim)
    return Status::error(std::string(what) + ": head_dim " + std::to_string(kv.head_dim) + " outside 1.." +
                         std::to_string(kPagedMaxHeadDim));
  if (kv.page_tokens < 1) return Status::error(std::string(what) + ": page_tokens must be positive");
  if (!kv.page_addr || !kv.page_fmt || !kv.page_begin || !kv.slot0 || !kv.token_begin)
    return Status::error(std::string(what) + ": null array in the layer");
  return Status::success();
}

size_t paged_attention_workspace_bytes(int32_t n, int32_t n_head, int32_t head_dim, int32_t max_pages) {
  if (n <= 0 || n_head <= 0 || max_pages <= 0) return 0;
  int32_t n_split = 1, pps = 1;
  // The most ranges either kernel may take: the decode kernel's blocks are per kv-head, at least one.
  split_of(n, n <= kDecodeMaxRows ? 1 : n_head, max_pages, &n_split, &pps);
  if (n_split == 1) return 0;
  return static_cast<size_t>(n) * n_head * n_split * (static_cast<size_t>(head_dim) + 2) * sizeof(float);
}

Status paged_attention(const PagedAttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                       const PagedLayer& kv, int32_t max_pages, float* out, void* workspace, void* stream) {
  if (Status s = paged_layer_check(p, kv, "paged_attention"); !s.ok()) return s;
  if (n < 0 || max_pages < 0) return Status::error("paged_attention: negative row or page count");
  if (n == 0) return Status::success();
  if (!q || !q_pos || !out) return Status::error("paged_attention: null pointer");
  const size_t smem = (static_cast<size_t>(kv.head_dim) + kThreads + 32) * sizeof(float);
  const int64_t blocks = static_cast<int64_t>(n) * p.n_head;
  if (blocks > 0x7fffffff) return Status::error("paged_attention: too many rows");
  int32_t n_split = 1, pps = std::max(1, max_pages);
  if (max_pages > 0) split_of(n, p.n_head, max_pages, &n_split, &pps);
  if (n_split > 1 && !workspace) return Status::error("paged_attention: no workspace for the split pages");
  auto* part_acc = static_cast<float*>(workspace);
  float* part_ml = part_acc ? part_acc + blocks * n_split * kv.head_dim : nullptr;
  const auto st = static_cast<cudaStream_t>(stream);
  const int32_t G = p.n_head / kv.n_head_kv, D = kv.head_dim;
  if (n <= kDecodeMaxRows && G <= kDecodeMaxGroup && kv.page_tokens % 8 == 0 && (D == 64 || D == 128 || D == 256)) {
    const int64_t groups = static_cast<int64_t>(n) * kv.n_head_kv;
    if (max_pages > 0) split_of(n, kv.n_head_kv, max_pages, &n_split, &pps);
    if (n_split > 1 && !workspace) return Status::error("paged_attention: no workspace for the split pages");
    part_ml = part_acc ? part_acc + blocks * n_split * kv.head_dim : nullptr;
    const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(n_split));
    auto launch = [&](auto kernel) { kernel<<<grid, kThreads, 0, st>>>(p, q, q_pos, kv, pps, out, part_acc, part_ml); };
    const bool four = G <= 4;
    if (D == 64) four ? launch(paged_decode_kernel<64, 4>) : launch(paged_decode_kernel<64, 8>);
    if (D == 128) four ? launch(paged_decode_kernel<128, 4>) : launch(paged_decode_kernel<128, 8>);
    if (D == 256) four ? launch(paged_decode_kernel<256, 4>) : launch(paged_decode_kernel<256, 8>);
  } else {
    paged_attention_kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(n_split)), kThreads, smem, st>>>(
      p, q, q_pos, kv, pps, out, part_acc, part_ml);
  }
  if (Status s = cuda_status(cudaGetLastError(), "paged_attention launch"); !s.ok() || n_split == 1) return s;
  paged_attention_combine_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(kv.head_dim, n_split, part_acc,
                                                                                      part_ml, out);
  return cuda_status(cudaGetLastError(), "paged_attention combine launch");
}

}  // namespace longctx::cuda
