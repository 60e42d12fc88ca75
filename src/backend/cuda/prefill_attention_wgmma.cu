// Prefill attention on Hopper's warpgroup tensor cores (wgmma, sm_90a): the same tiling and online softmax as the
// mma.sync kernel (prefill_attention.cu), with the products of "FlashAttention-3: Fast and Accurate Attention with
// Asynchrony and Low-precision" (Shah et al., 2024): S = Q K^T takes Q from registers (loaded once) and K from
// shared memory, and O += P V takes P from registers (the accumulator layout of S is the register A layout of wgmma, as with
// mma.sync) and V from shared memory in its natural (key, dim) order as a transposed ("MN-major") operand.
//
// Block = 2 warpgroups x 64 query rows; 64-key tiles, K and V in three stages each, copied by cp.async.
// Shared memory holds every operand in the canonical 128-byte-swizzled layout wgmma's descriptors describe: a
// (rows x D) tile is D / 64 panels of (rows x 64) elements, rows of 128 bytes, and the 16-byte chunk c of row r
// stored at chunk c ^ (r % 8) inside 1024-byte atoms of 8 rows.
//
// The loop is software-pipelined (the kernel's loop says how): S of the next tile runs during the softmax of this
// one, and O += P V during the wait for the next tiles' copies and the block's barrier. What is not here (its other
// ideas): loads by a producer warpgroup through TMA, and explicit scheduling of one warpgroup's softmax against the
// other's products ("ping-pong").
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/mma_primitives.cuh"
#include "backend/cuda/prefill_attention.cuh"

// wgmma exists only in the arch-specific sm_90a target: a plain sm_90 build of this file would launch an empty kernel.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "prefill_attention_wgmma.cu must be compiled for sm_90a (CMAKE_CUDA_ARCHITECTURES 90a), not sm_90"
#endif

namespace longctx::cuda {
namespace {

// Overridable at compile time for tuning sweeps only (docs/cuda-backend-notes.md has the measurements).
#ifndef LONGCTX_PREFILL_GROUPS
#define LONGCTX_PREFILL_GROUPS 2
#endif
#ifndef LONGCTX_PREFILL_KEYS
#define LONGCTX_PREFILL_KEYS 64
#endif
constexpr int kGroups = LONGCTX_PREFILL_GROUPS;  // warpgroups per block
constexpr int kBr = 64 * kGroups;                // query rows per block
constexpr int kBc = LONGCTX_PREFILL_KEYS;        // keys per tile
static_assert(kBc == 64 || kBc == 128, "the score product is m64n64 or m64n128");

constexpr int kStages = 3;  // K and V stages each (why three: the loop's comment)

template <int D>
constexpr int smem_bytes() {
  return (kBr + 2 * kStages * kBc) * D * 2 + 1024;  // Q, the K and V stages, and room to align to an atom
}

// The wgmma products, one function per shape, for either element type (TY: its PTX name): A in registers, B in
// shared memory, K-major (TransB 0: K for S) or MN-major (TransB 1: V for O). accumulate = 0 overwrites the
// accumulators.
template <typename T>
struct Wgmma;

#define LONGCTX_WGMMA_PRODUCTS(T, TY) \
  template <>                         \
  struct Wgmma<T> {                   \
  template <int TransB>                                                                                             \
  static __device__ __forceinline__ void rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int accumulate) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                       \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate), "n"(TransB));                 \
  } \
  template <int TransB>                                                                                             \
  static __device__ __forceinline__ void rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int accumulate) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                       \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n" \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate), "n"(TransB));                 \
  } \
  };
LONGCTX_WGMMA_PRODUCTS(__nv_bfloat16, "bf16")
LONGCTX_WGMMA_PRODUCTS(__half, "f16")
#undef LONGCTX_WGMMA_PRODUCTS

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// cp.async writes through the generic proxy, wgmma reads through the async proxy: the fence orders the two.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// A shared-memory matrix descriptor: start address, leading and stride byte offsets (16-byte units), 128-byte swizzle.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3ffff) >> 4) | static_cast<uint64_t>(lbo >> 4) << 16 |
         static_cast<uint64_t>(sbo >> 4) << 32 | 1ull << 62;
}

// Byte offset of row r, 16-byte chunk c (of D / 8) in a (R x D) tile in the canonical layout.
template <int R>
__device__ __forceinline__ uint32_t canonical(int r, int c) {
  return (c >> 3) * (R * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}

template <int R, int D>
__device__ __forceinline__ void load_rows(uint32_t base, const uint16_t* src, int64_t stride, int r0, int n_rows) {
  constexpr int kChunks = D / 8, kThreads = kGroups * 128;
#pragma unroll
  for (int n = 0; n < (R * kChunks + kThreads - 1) / kThreads; ++n) {
    const int i = n * kThreads + threadIdx.x;
    if (R * kChunks % kThreads != 0 && i >= R * kChunks) break;
    const int r = i / kChunks, c = i % kChunks;
    const int gr = min(r0 + r, n_rows - 1);  // rows past the end repeat the last (finite; masked)
    cp_async16(base + canonical<R>(r, c), src + gr * stride + c * 8);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kGroups * 128) prefill_attention_wgmma_kernel(const PrefillArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using E = Elem<T>;
  using W = Wgmma<T>;
  extern __shared__ uint8_t smem_raw[];
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, wg = threadIdx.x >> 7;
  const int g = lane >> 2, c = lane & 3;
  const int head = blockIdx.x;
  const int q_tile = gridDim.y - 1 - blockIdx.y;
  const int kvh = head / a.group;
  const uint16_t* Q = static_cast<const uint16_t*>(a.q) + head * a.q_head;
  const uint16_t* K = static_cast<const uint16_t*>(a.k) + kvh * a.k_head;
  const uint16_t* V = static_cast<const uint16_t*>(a.v) + kvh * a.v_head;
  const uint32_t sQ = (smem_address(smem_raw) + 1023) & ~1023u;
  const uint32_t sK = sQ + kBr * D * 2, sV = sK + kStages * kBc * D * 2;

  const int q0 = q_tile * kBr;
  const int pos_lo = a.q_offset + q0, pos_hi = a.q_offset + min(q0 + kBr, a.n_q) - 1;
  const int k_end = a.causal ? min(a.n_kv, pos_hi + 1) : a.n_kv;
  const int k_begin = a.window > 0 ? max(0, pos_lo - a.window + 1) : 0;
  const int t_begin = k_begin / kBc, t_end = k_end > k_begin ? (k_end + kBc - 1) / kBc : t_begin;

  // This warpgroup's 64 rows. Both warpgroups run every tile of the block (one of them sees the last causal tile, or
  // the first windowed one, fully masked): the products are then issued under no branch, which ptxas needs to keep
  // them asynchronous, and the extra tile is one in the block's (k_end - k_begin) / 64.
  const int w0 = q0 + wg * 64;
  const int wpos_lo = a.q_offset + w0, wpos_hi = a.q_offset + min(w0 + 64, a.n_q) - 1;
  const int row_pos0 = a.q_offset + w0 + warp * 16 + g, row_pos1 = row_pos0 + 8;
  auto stage = [&](uint32_t base, int t) { return base + (t - t_begin) % kStages * (kBc * D * 2); };
  auto load_k = [&](int t) {  // K(t) into its stage, when the tile exists
    if (t < t_end) load_rows<kBc, D>(stage(sK, t), K, a.k_row, t * kBc, a.n_kv);
  };
  auto load_v = [&](int t) {
    if (t < t_end) load_rows<kBc, D>(stage(sV, t), V, a.v_row, t * kBc, a.n_kv);
  };
  auto issue_scores = [&](float (&s)[kBc / 2], const uint32_t (&qf)[D / 16][4], int t) {  // S = Q K(t)^T, one group
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      // k-step kk: panel kk / 4, 32 bytes per step inside the swizzled 128-byte rows.
      const uint64_t db = descriptor(stage(sK, t) + (kk >> 2) * (kBc * 128) + (kk & 3) * 32, 16, 1024);
      if constexpr (kBc == 128) W::template rs_n128<0>(s, qf[kk], db, kk > 0);
      else W::template rs_n64<0>(s, qf[kk], db, kk > 0);
    }
    wgmma_commit();
  };
  auto issue_values = [&](float (&o)[D / 2], const uint32_t (&p)[kBc / 16][4], int t) {  // O += P V(t), one group
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      // V as the MN-major B operand: 16 keys (two 8-row groups, 1024 bytes apart) per step, dims in panels of 64.
      const uint64_t dv = descriptor(stage(sV, t) + kk * 16 * 128, kBc * 128, 1024);
      if constexpr (D == 128) W::template rs_n128<1>(o, p[kk], dv, 1);
      else W::template rs_n64<1>(o, p[kk], dv, 1);
    }
    wgmma_commit();
  };

  // Software pipeline over the tiles (FlashAttention-3's intra-warpgroup overlap, and more): iteration t issues
  // S(t + 1), runs the softmax of tile t on the CUDA cores while the tensor cores compute it, issues O += P V(t), and
  // while that runs waits for the next tiles' copies, crosses the block's barrier and issues the copies after them;
  // then waits for both products. Nothing is in flight across the loop's back edge. The barrier of iteration t
  // publishes K(t + 2) and V(t + 1) (copied during iteration t - 1) and certifies that every warpgroup is done with
  // K(t) and V(t - 1), whose stages take K(t + 3) and V(t + 2): three stages of each. The S issued in the last
  // iteration reads a stage no copy refilled and is discarded (an unconditional issue, for the same reason as above).
  load_rows<kBr, D>(sQ, Q, a.q_row, q0, a.n_q);
  load_k(t_begin), load_v(t_begin), load_k(t_begin + 1);
  cp_async_commit();
  load_k(t_begin + 2), load_v(t_begin + 1);
  cp_async_commit();
  cp_async_wait<1>();  // Q, K(t_begin), V(t_begin), K(t_begin + 1)
  fence_proxy_async();
  __syncthreads();

  float o[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
  if (t_begin < t_end) {
    // Q as the register operand of S (the mma.sync A fragment layout, loaded once): shared memory then serves K and
    // V alone, where with Q read from it too the n64 score product alone would ask for its full 128 bytes a clock.
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      ldmatrix_x4(qf[kk], sQ + canonical<kBr>(wg * 64 + warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                              2 * kk + (lane >> 4)));
    float s[kBc / 2];
    issue_scores(s, qf, t_begin);
    wgmma_wait_all();
    for (int t = t_begin; t < t_end; ++t) {
      float s_next[kBc / 2];
      issue_scores(s_next, qf, t + 1);

      const int ks = t * kBc;
      const bool edge = ks + kBc > a.n_kv || (a.causal && ks + kBc - 1 > wpos_lo) ||
                        (a.window > 0 && ks <= wpos_hi - a.window);
      if (edge) mask_tile<kBc>(s, a, ks, row_pos0, row_pos1, c);
      uint32_t p[kBc / 16][4];
      float corr0, corr1;
      online_softmax<E, kBc>(s, p, m0, m1, l0, l1, corr0, corr1, a.scale_log2);
      rescale_rows<D>(o, corr0, corr1);
      issue_values(o, p, t);

      cp_async_wait<0>();  // K(t + 2) and V(t + 1)
      fence_proxy_async();
      __syncthreads();
      load_k(t + 3), load_v(t + 2);
      cp_async_commit();

      wgmma_wait_all();
#pragma unroll
      for (int i = 0; i < kBc / 2; ++i) s[i] = s_next[i];
    }
  }
  store_rows<E, D>(o, l0, l1, a, head, w0 + warp * 16 + g, c);
#endif
}

template <typename T, int D>
Status launch(const PrefillArgs& a, int32_t n_head, cudaStream_t stream) {
  return launch_prefill<prefill_attention_wgmma_kernel<T, D>>(a, n_head, kBr, kGroups * 128, smem_bytes<D>(), stream,
                                                              "prefill attention (wgmma) launch");
}

}  // namespace

Status prefill_attention_wgmma(const PrefillArgs& a, int32_t n_head, int32_t head_dim, bool bf16, cudaStream_t st) {
  if (head_dim == 64) return bf16 ? launch<__nv_bfloat16, 64>(a, n_head, st) : launch<__half, 64>(a, n_head, st);
  return bf16 ? launch<__nv_bfloat16, 128>(a, n_head, st) : launch<__half, 128>(a, n_head, st);
}

}  // namespace longctx::cuda
