// Prefill attention: many query rows against a dense run of keys and values, causal or not, with an optional sliding
// window and GQA: the tiled online-softmax design of "FlashAttention-2: Faster Attention with Better Parallelism and
// Work Partitioning" (Dao, 2023) on mma.sync tensor cores.
//
// Block (head, query tile) holds kBr = 16 * kWarps query rows; each warp owns 16 of them, with its Q fragments in
// registers for the whole block. The block walks the 64-key tiles its rows can see (causal: up to its last row's
// diagonal; window: from the oldest key its first row still sees), K and V double-buffered in shared memory by
// cp.async so that the next tile lands while this one is computed. Per tile and warp:
//
//   S = Q K^T     A = Q (16 rows x 16 dims, ldmatrix), B = K^T (16 dims x 8 keys, ldmatrix of K's rows)
//   online softmax over S's rows in f32 (base-2 exponentials, the scale folded into one fma)
//   O += P V      A = P (S's accumulators repacked in registers: the m16n8 C layout of two adjacent key groups is
//                 the m16n8k16 A layout), B = V (16 keys x 8 dims, ldmatrix.trans of V's rows)
//
// Shared-memory rows are stored with the 16-byte chunks XOR-swizzled by (row % 8), so every ldmatrix phase (8 rows at
// one logical chunk) hits 8 distinct bank groups. Only the tiles on a mask's edge (the diagonal, the window's tail,
// the last partial tile) pay for per-element masks; a warp whose rows see nothing of a tile skips its math.
// Queries that see no key get zeros (as decode attention and the CPU backend).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/mma_primitives.cuh"
#include "backend/cuda/prefill_attention.cuh"

namespace longctx::cuda {
namespace {

#ifndef LONGCTX_PREFILL_WARPS
#define LONGCTX_PREFILL_WARPS 8
#endif
constexpr int kWarps = LONGCTX_PREFILL_WARPS;  // warps per block (overridable at compile time for tuning sweeps)
constexpr int kBr = 16 * kWarps;               // query rows per block
constexpr int kBc = 64;                        // keys per tile

template <int D>
constexpr int smem_bytes() {
  return (kBr + 4 * kBc) * D * 2;  // Q, then K and V in two stages each
}

// Row r, 16-byte chunk c of a (rows x D) tile of 16-bit elements, swizzled.
template <int D>
__device__ __forceinline__ uint32_t swizzled(uint32_t base, int r, int c) {
  return base + r * (D * 2) + ((c ^ (r & 7)) << 4);
}

// cp.async of rows [r0, r0 + R) of a (n_rows x D) matrix with row stride `stride`; rows past the end repeat the last
// row (finite values that the masks drop), so no tile ever holds garbage a 0 * NaN could spread.
template <int R, int D>
__device__ __forceinline__ void load_rows(uint32_t base, const uint16_t* src, int64_t stride, int r0, int n_rows) {
  constexpr int kChunks = D / 8, kThreads = kWarps * 32;
  static_assert(R * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int n = 0; n < R * kChunks / kThreads; ++n) {
    const int i = n * kThreads + threadIdx.x;
    const int r = i / kChunks, c = i % kChunks;
    const int gr = min(r0 + r, n_rows - 1);
    cp_async16(swizzled<D>(base, r, c), src + gr * stride + c * 8);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) prefill_attention_kernel(const PrefillArgs a) {
  using E = Elem<T>;
  extern __shared__ __align__(128) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;  // mma fragment coordinates: row group and column pair
  const int head = blockIdx.x;
  // The longest query tiles (causal: the last ones) go first, so the short ones fill the tail of the grid.
  const int q_tile = gridDim.y - 1 - blockIdx.y;
  const int kvh = head / a.group;
  const uint16_t* Q = static_cast<const uint16_t*>(a.q) + head * a.q_head;
  const uint16_t* K = static_cast<const uint16_t*>(a.k) + kvh * a.k_head;
  const uint16_t* V = static_cast<const uint16_t*>(a.v) + kvh * a.v_head;
  const uint32_t sQ = smem_address(smem);
  const uint32_t sK = sQ + kBr * D * 2, sV = sK + 2 * kBc * D * 2;

  // The keys any row of the block sees: [k_begin, k_end).
  const int q0 = q_tile * kBr;
  const int pos_lo = a.q_offset + q0, pos_hi = a.q_offset + min(q0 + kBr, a.n_q) - 1;
  const int k_end = a.causal ? min(a.n_kv, pos_hi + 1) : a.n_kv;
  const int k_begin = a.window > 0 ? max(0, pos_lo - a.window + 1) : 0;
  const int t_begin = k_begin / kBc, t_end = k_end > k_begin ? (k_end + kBc - 1) / kBc : t_begin;

  load_rows<kBr, D>(sQ, Q, a.q_row, q0, a.n_q);
  cp_async_commit();
  if (t_begin < t_end) {
    load_rows<kBc, D>(sK, K, a.k_row, t_begin * kBc, a.n_kv);
    load_rows<kBc, D>(sV, V, a.v_row, t_begin * kBc, a.n_kv);
  }
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  // This warp's rows and their positions; rows past n_q compute on a repeated row and are never stored.
  const int w0 = q0 + warp * 16;
  const int wpos_lo = a.q_offset + w0, wpos_hi = a.q_offset + min(w0 + 16, a.n_q) - 1;
  const int row_pos0 = a.q_offset + w0 + g, row_pos1 = row_pos0 + 8;
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], swizzled<D>(sQ, warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, 2 * kk + (lane >> 4)));

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;  // running max (log2 units) and partial sums, rows g, g+8

  for (int t = t_begin; t < t_end; ++t) {
    const int stage = (t - t_begin) & 1;
    if (t + 1 < t_end) {  // the other stage was released by the barrier that ended the previous tile
      load_rows<kBc, D>(sK + (stage ^ 1) * kBc * D * 2, K, a.k_row, (t + 1) * kBc, a.n_kv);
      load_rows<kBc, D>(sV + (stage ^ 1) * kBc * D * 2, V, a.v_row, (t + 1) * kBc, a.n_kv);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const int ks = t * kBc;
    const bool skip = w0 >= a.n_q || (a.causal && ks > wpos_hi) || (a.window > 0 && ks + kBc - 1 <= wpos_lo - a.window);
    if (!skip) {
      const uint32_t sKt = sK + stage * kBc * D * 2, sVt = sV + stage * kBc * D * 2;
      float s[kBc / 8][4];
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
        for (int j = 0; j < kBc / 8; j += 2) {
          uint32_t b[4];  // b0, b1 of key group j, then of key group j + 1
          ldmatrix_x4(b, swizzled<D>(sKt, j * 8 + (lane & 7) + (lane >> 4) * 8, 2 * kk + ((lane >> 3) & 1)));
          E::mma(s[j], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b[0], b[1]);
          E::mma(s[j + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], b[2], b[3]);
        }

      const bool edge = ks + kBc > a.n_kv || (a.causal && ks + kBc - 1 > wpos_lo) ||
                        (a.window > 0 && ks <= wpos_hi - a.window);
      // The (key group, element) arrays in the flat accumulator order the shared softmax reads (same layout).
      auto& s_flat = reinterpret_cast<float (&)[kBc / 2]>(s);
      if (edge) mask_tile<kBc>(s_flat, a, ks, row_pos0, row_pos1, c);
      uint32_t p[kBc / 16][4];  // P as the A operand: keys 16 kk .. 16 kk + 15
      float corr0, corr1;
      online_softmax<E, kBc>(s_flat, p, m0, m1, l0, l1, corr0, corr1, a.scale_log2);
      rescale_rows<D>(reinterpret_cast<float (&)[D / 2]>(o), corr0, corr1);
#pragma unroll
      for (int kk = 0; kk < kBc / 16; ++kk)
#pragma unroll
        for (int j = 0; j < D / 8; j += 2) {
          uint32_t b[4];  // b0, b1 of dims 8 j .. 8 j + 7, then of dims 8 (j + 1) ..
          ldmatrix_x4_trans(b, swizzled<D>(sVt, 16 * kk + (lane & 7) + ((lane >> 3) & 1) * 8, j + (lane >> 4)));
          E::mma(o[j], p[kk][0], p[kk][1], p[kk][2], p[kk][3], b[0], b[1]);
          E::mma(o[j + 1], p[kk][0], p[kk][1], p[kk][2], p[kk][3], b[2], b[3]);
        }
    }
    __syncthreads();
  }

  store_rows<E, D>(reinterpret_cast<const float (&)[D / 2]>(o), l0, l1, a, head, w0 + g, c);
}

template <typename T, int D>
Status launch(const PrefillArgs& a, int32_t n_head, cudaStream_t stream) {
  return launch_prefill<prefill_attention_kernel<T, D>>(a, n_head, kBr, kWarps * 32, smem_bytes<D>(), stream,
                                                        "prefill attention launch");
}

}  // namespace

Status prefill_attention(const PrefillAttentionParams& p, const void* q, const void* k, const void* v, void* out,
                         void* stream) {
  if (p.head_dim != 64 && p.head_dim != 128) return Status::error("prefill attention: head_dim must be 64 or 128");
  if (p.n_head <= 0 || p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0)
    return Status::error("prefill attention: n_head must be a positive multiple of n_head_kv");
  if (p.n_q < 0 || p.n_kv < 0 || p.q_offset < 0 || p.window < 0)
    return Status::error("prefill attention: negative n_q, n_kv, q_offset or window");
  if (p.window > 0 && !p.causal) return Status::error("prefill attention: a sliding window needs the causal mask");
  if (p.n_q > 65535 * kBr) return Status::error("prefill attention: too many query rows for one call");
  if (p.n_q == 0) return Status::success();
  if (!q || !out || (p.n_kv > 0 && (!k || !v))) return Status::error("prefill attention: null pointer");
  const int64_t D = p.head_dim;
  // Strides 0: the (token, head, dim) layout of the QKV product's output.
  const int64_t q_row = p.q_row_stride ? p.q_row_stride : p.n_head * D;
  const int64_t q_head = p.q_head_stride ? p.q_head_stride : D;
  const int64_t k_row = p.k_row_stride ? p.k_row_stride : p.n_head_kv * D;
  const int64_t k_head = p.k_head_stride ? p.k_head_stride : D;
  const int64_t v_row = p.v_row_stride ? p.v_row_stride : p.n_head_kv * D;
  const int64_t v_head = p.v_head_stride ? p.v_head_stride : D;
  const int64_t o_row = p.o_row_stride ? p.o_row_stride : p.n_head * D;
  const int64_t o_head = p.o_head_stride ? p.o_head_stride : D;
  if ((q_row | q_head | k_row | k_head | v_row | v_head | o_row | o_head) % 8 != 0 ||
      (reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(k) | reinterpret_cast<uintptr_t>(v) |
       reinterpret_cast<uintptr_t>(out)) % 16 != 0)
    return Status::error("prefill attention: pointers must be 16-byte aligned and strides multiples of 8 elements");

  const PrefillArgs a{q,     k,      v,     out,    q_row,     q_head,     k_row,    k_head, v_row,
                      v_head, o_row, o_head, p.n_q, p.n_kv, p.n_head / p.n_head_kv, p.q_offset, p.window,
                      p.causal ? 1 : 0, p.scale * 1.4426950408889634f};
  auto st = static_cast<cudaStream_t>(stream);
  const bool bf16 = p.dtype == KvDtype::BF16;
  if (p.kernel != PrefillKernel::MmaSync) {
    static const int cc = [] {  // the device of the first call; one device per process in this backend
      int dev = 0, major = 0;
      cudaGetDevice(&dev);
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
      return major;
    }();
    if (cc == 9) return prefill_attention_wgmma(a, p.n_head, p.head_dim, bf16, st);
    if (p.kernel == PrefillKernel::Wgmma) return Status::error("prefill attention: the wgmma kernel needs an sm_90 device");
  }
  if (p.head_dim == 64) return bf16 ? launch<__nv_bfloat16, 64>(a, p.n_head, st) : launch<__half, 64>(a, p.n_head, st);
  return bf16 ? launch<__nv_bfloat16, 128>(a, p.n_head, st) : launch<__half, 128>(a, p.n_head, st);
}

}  // namespace longctx::cuda
