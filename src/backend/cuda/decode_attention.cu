// Decode attention over the paged KV store: one query token per sequence against every kept key of its heads.
//
// Split-K over the sequence ("Flash-Decoding for long-context inference", Dao et al. 2023): block (split, kv-head,
// seq) reads one chunk of one kv-head's tokens, so a single sequence still fills every multiprocessor; each block
// leaves a partial softmax state (max, sum, unnormalized output), and the last block of a kv-head to finish (a
// counter per kv-head in the workspace) merges them, so a step is one launch (DecodeMerge::InKernel). The merge can
// also run as a second small kernel (DecodeMerge::Kernel), which needs no counters.
//
// Decode is bound by reading K and V once, so the kernel is built around keeping enough bytes in flight: each warp
// walks its own 16-token tiles through a private ring of kStages shared-memory stages filled by cp.async (no
// registers held by loads in flight: 8 warps x 3 stages x 8 KB per multiprocessor at d = 128). A one-round-trip
// prologue puts the chunk's page ids and a visibility flag per tile in shared memory, so no copy waits on a page-table
// read and tiles no query can see (future keys, keys behind a sliding window) are never read.
//
// The products run on tensor cores (mma.sync m16n8k16, f32 accumulation) with the GQA heads of one kv-head packed
// into the n = 8 columns, so each key and value is read once for all query heads of its group:
//
//   S^T = K Q^T    A = K tile (16 tokens x 16 dims), B = Q^T (16 dims x 8 heads), C = S^T (16 tokens x 8 heads)
//   O^T += V^T P^T A = V^T (16 dims x 16 tokens), B = P^T (16 tokens x 8 heads), C = O^T (16 dims x 8 heads)
//
// The contraction dimension of S^T is permuted (a dot product does not care about order) so that one 16-byte read
// of 8 consecutive key channels feeds two k-steps; Q is loaded with the same permutation. V^T's rows (channels) are
// permuted likewise, and its k (token) pairs are packed with byte permutes from four token rows. P goes from S^T's
// accumulator layout to P^T's operand layout with movmatrix (an 8x8 transpose in registers). The stages are stored
// with an XOR swizzle of the 16-byte chunks so that these reads are free of bank conflicts.
//
// KIVI pages ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"; layout in kivi_layout.h) go through
// the same ring, the same softmax and the same products: a packed tile's stage holds its page's key (scale, min)
// block and the tile's codes and value scales (1.8 KB at 2 bits, d = 128, against 8 KB for a bf16 tile), and each
// lane expands its own fragment's codes to f16 (value = min + scale * code, one fma), so that the products of a
// packed tile run as f16 mma.sync whatever the plain pages' dtype. Nothing is dequantized outside registers. A head
// may mix packed and plain pages in any order (KIVI's plain tail is the usual case); the instance for plain pages
// alone (Bits = 0) drops the packed path at compile time (166 registers, as before it existed, and the same speed).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/kivi_layout.h"
#include "backend/cuda/mma_primitives.cuh"
#include "backend/cuda/pdl.cuh"

namespace longctx::cuda {
namespace {

constexpr int kTile = 16;     // tokens per tensor-core tile
// Warps and stages are overridable at compile time only for tuning sweeps (docs/cuda-backend-notes.md has the measurements).
#ifndef LONGCTX_DECODE_WARPS
#define LONGCTX_DECODE_WARPS 8
#endif
#ifndef LONGCTX_DECODE_STAGES
#define LONGCTX_DECODE_STAGES 3
#endif
constexpr int kWarps = LONGCTX_DECODE_WARPS;    // warps per block, each walking its own tiles of the block's chunk
constexpr int kStages = LONGCTX_DECODE_STAGES;  // cp.async stages per warp, all in flight while a tile is computed
constexpr int kMaxGroup = 8;  // query heads per kv-head: the n = 8 columns of one mma
// A split never spans more tokens than this, so its page ids and tile flags fit the shared memory reserved for them.
constexpr int kMaxSplitTokens = 8192;
constexpr int kChunkMetaBytes = 4096;  // >= (kMaxSplitTokens / 16 + 2) * 4 + kMaxSplitTokens / 16
// At most this many splits, so that the merge's weights (kMaxGroup * kMaxSplits floats) fit the idle rings.
constexpr int kMaxSplits = 1024;

// The workspace's split counters (one int32 per kv-head of the batch), padded to 256 bytes so that the partial
// outputs after them start on an L2 sector group.
size_t counter_bytes_for(int32_t n_heads) { return (static_cast<size_t>(n_heads) * sizeof(int32_t) + 255) / 256 * 256; }

// Shared memory of one block: the warps' stage rings (K tile, V tile, positions), then the chunk's page ids and
// tile flags. After the main loop the stage rings are reused for merging the warps.
template <int D>
struct Smem {
  static constexpr int kTileBytes = kTile * D * 2;  // K or V of one tile
  static constexpr int kStageBytes = 2 * kTileBytes + kTile * 4;
  static constexpr int kRingsBytes = kWarps * kStages * kStageBytes;
  static constexpr int kMaxBytes = kRingsBytes + kChunkMetaBytes;
  static_assert(kWarps * kMaxGroup * (D + 2) * 4 <= kRingsBytes, "merge area must fit in the rings");
  static_assert(kMaxGroup * kMaxSplits * 4 <= kRingsBytes, "the splits' merge weights must fit in the rings");
};

struct DecodeArgs {
  const uint8_t* pool;
  size_t page_bytes;
  const int32_t* page_table;  // (n_seq, n_head_kv, max_pages)
  const int32_t* positions;   // (n_seq, n_head_kv, max_tokens)
  const int32_t* n_tokens;    // (n_seq, n_head_kv)
  const uint8_t* packed_pool;  // KIVI pages (kivi_layout.h), or null
  size_t packed_page_bytes;
  const uint8_t* page_packed;  // (n_seq, n_head_kv, max_pages): 1 = the page id indexes packed_pool
  int32_t n_head_kv, n_head, group, page_tokens, max_pages, max_tokens;
  const void* q;         // (n_seq, n_head, D)
  const int32_t* q_pos;  // (n_seq)
  void* out;             // (n_seq, n_head, D)
  float* part_o;         // (n_seq * n_head, n_splits, D) unnormalized partial outputs
  float2* part_ml;       // (n_seq * n_head, n_splits) partial (max, sum), max in log2 units
  int32_t* done;         // (n_seq * n_head_kv) splits finished, zero between calls; null: the merge kernel merges
  int32_t n_splits, split_tokens;
  int32_t chunk_pages;  // page-id slots reserved per block: split_tokens / page_tokens + 2
  float scale_log2;  // softmax scale times log2(e): the kernel works with exp2
  int32_t window;
};

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;  // i is a compile-time constant after unrolling
}

__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
  uint32_t y;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}


__device__ __forceinline__ bool key_visible(int32_t k_pos, int32_t q_pos, int32_t window) {
  return k_pos <= q_pos && (window <= 0 || k_pos > q_pos - window);
}

// Tile flags set by the prologue.
constexpr uint8_t kTileVisible = 1;  // some query sees some key of the tile: read it
constexpr uint8_t kTilePacked = 2;   // the tile's page is a KIVI page

__device__ __forceinline__ void set_word(uint4& v, int i, uint32_t x) {  // i is a compile-time constant
  if (i == 0) v.x = x;
  else if (i == 1) v.y = x;
  else if (i == 2) v.z = x;
  else v.w = x;
}

template <int V>
__device__ __forceinline__ void load_words(uint32_t* w, const uint8_t* p) {  // one shared load of V words
  if constexpr (V == 4) {
    const uint4 x = *reinterpret_cast<const uint4*>(p);
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  } else if constexpr (V == 2) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    w[0] = x.x, w[1] = x.y;
  } else {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  }
}

// Two codes of a word (kivi_layout.h) to the f16 pair min + scale * code: OR-ing a code under the exponent of 1024
// gives 1024 + code exactly, subtracting 1024 gives the code exactly, and one fma rounds the value once.
__device__ __forceinline__ uint32_t kivi_pair(uint32_t word, int shift, uint32_t mask, uint32_t scale2, uint32_t min2) {
  const uint32_t x = ((word >> shift) & mask) | 0x64006400u;
  uint32_t y;
  asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(y) : "r"(x), "r"(0x64006400u));
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(y) : "r"(y), "r"(scale2), "r"(min2));
  return y;
}

// A packed tile in registers, as read from its stage (kivi_layout.h): the lane's code words and its scales and mins.
template <int D, int Bits>
struct KiviRaw {
  static constexpr int W = kivi::code_words(D, Bits);
  uint32_t klo[W], khi[W];  // key rows g and g + 8
  uint32_t v[2][W];         // value token pairs c and 4 + c
  uint4 ks[D / 16];         // key (scale, min) of channel pairs 2 i, 2 i + 1
  uint32_t vs[4][D / 64];   // value (scale, min) of token 2 c + (r & 1) + 8 (r >> 1), group 2 s + g / 4
};

// The shared-memory reads of a packed tile.
template <int D, int Bits>
__device__ __forceinline__ void kivi_load(const uint8_t* st, int g, int c, KiviRaw<D, Bits>& r) {
  constexpr int W = KiviRaw<D, Bits>::W, V = kivi::vec_words(D, Bits);
  const uint8_t* kc = st + kivi::k_scale_bytes(D);
  const uint8_t* vc = kc + kivi::code_bytes(D, Bits);
  const uint32_t* vsm = reinterpret_cast<const uint32_t*>(vc + kivi::code_bytes(D, Bits));
#pragma unroll
  for (int q = 0; q < W / V; ++q) {
    load_words<V>(r.klo + q * V, kc + ((q * kTile + g) * 4 + c) * V * 4);
    load_words<V>(r.khi + q * V, kc + ((q * kTile + g + 8) * 4 + c) * V * 4);
#pragma unroll
    for (int hv = 0; hv < 2; ++hv)
      load_words<V>(r.v[hv] + q * V, vc + ((q * (kTile / 2) + c + 4 * hv) * 8 + g) * V * 4);
  }
#pragma unroll
  for (int p2 = 0; p2 < D / 16; ++p2) r.ks[p2] = *reinterpret_cast<const uint4*>(st + (p2 * 4 + c) * 16);
#pragma unroll
  for (int rr = 0; rr < 4; ++rr)
#pragma unroll
    for (int s = 0; s < D / 64; ++s)
      r.vs[rr][s] = vsm[(2 * c + (rr & 1) + 8 * (rr >> 1)) * (D / kivi::kGroup) + 2 * s + (g >> 2)];
}

// The codes to the same fragment registers as a plain tile's: klo/khi[j] word i = key rows g / g + 8, channels
// 32 j + 8 c + 2 i (+1); v[r][s] word i = value token 2 c + (r & 1) + 8 (r >> 1), channels 64 s + 8 g + 2 i (+1);
// all f16 pairs.
template <int D, int Bits>
__device__ __forceinline__ void kivi_expand(const KiviRaw<D, Bits>& r, uint4 (&klo)[D / 32], uint4 (&khi)[D / 32],
                                            uint4 (&v)[4][D / 64]) {
  constexpr int PPW = kivi::pairs_per_word(Bits);
  constexpr uint32_t mask = ((1u << Bits) - 1) * 0x10001u;
#pragma unroll
  for (int p2 = 0; p2 < D / 16; ++p2)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int pr = 2 * p2 + e, wi = pr / PPW, sh = Bits * (pr % PPW);
      const uint32_t s2 = e ? r.ks[p2].z : r.ks[p2].x, m2 = e ? r.ks[p2].w : r.ks[p2].y;
      set_word(klo[pr / 4], pr % 4, kivi_pair(r.klo[wi], sh, mask, s2, m2));
      set_word(khi[pr / 4], pr % 4, kivi_pair(r.khi[wi], sh, mask, s2, m2));
    }
#pragma unroll
  for (int hv = 0; hv < 2; ++hv)
#pragma unroll
    for (int tok = 0; tok < 2; ++tok) {
      const int rr = 2 * hv + tok;
#pragma unroll
      for (int s = 0; s < D / 64; ++s) {
        const uint32_t s2 = __byte_perm(r.vs[rr][s], 0, 0x1010), m2 = __byte_perm(r.vs[rr][s], 0, 0x3232);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int pr = tok * (D / 16) + 4 * s + i;
          set_word(v[rr][s], i, kivi_pair(r.v[hv][pr / PPW], Bits * (pr % PPW), mask, s2, m2));
        }
      }
    }
}

// S^T += K Q^T over the tile's channels (klo/khi: key rows g / g + 8; qf: Q^T, both with the channel permutation).
template <typename E, int kChunks>
__device__ __forceinline__ void score_products(float (&sc)[4], const uint4 (&klo)[kChunks], const uint4 (&khi)[kChunks],
                                               const uint4 (&qf)[kChunks]) {
  // Two independent chains of mma, added at the end: the tile's math is a latency chain at 2 warps per scheduler,
  // and this halves its longest link (measured 1-3% faster, bf16 and KIVI alike; docs/cuda-backend-notes.md).
  float sb[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    E::mma(sc, klo[j].x, khi[j].x, klo[j].y, khi[j].y, qf[j].x, qf[j].y);
    E::mma(sb, klo[j].z, khi[j].z, klo[j].w, khi[j].w, qf[j].z, qf[j].w);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) sc[i] += sb[i];
}

// O^T += V^T P^T: pb0 / pb1 = P^T for tokens 2c, 2c+1 / +8, +9 (the k pairs), head g.
template <typename E, int kSets>
__device__ __forceinline__ void value_products(float (&o)[4 * kSets][4], const uint4 (&v)[4][kSets], uint32_t pb0,
                                               uint32_t pb1) {
#pragma unroll
  for (int s = 0; s < kSets; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // V^T rows: channel 64s + 8g + 2i (low halves) and +1 (high halves); columns: tokens 2c, 2c+1 | +8, +9.
      const uint32_t a0 = __byte_perm(word(v[0][s], i), word(v[1][s], i), 0x5410);
      const uint32_t a1 = __byte_perm(word(v[0][s], i), word(v[1][s], i), 0x7632);
      const uint32_t a2 = __byte_perm(word(v[2][s], i), word(v[3][s], i), 0x5410);
      const uint32_t a3 = __byte_perm(word(v[2][s], i), word(v[3][s], i), 0x7632);
      E::mma(o[4 * s + i], a0, a1, a2, a3, pb0, pb1);
    }
}

// Output rows row0 .. row0 + group - 1 from the n_splits partial states of each: out = sum_s O_s w_s with
// w_s = 2^(m_s - M) / sum_s' l_s' 2^(m_s' - M). Run by the block of the kernel below that finishes its kv-head last,
// so it is the step's tail and is built for few round trips: one warp per row turns the rows' (m, l) into the
// weights w (in shared memory, sm_w: group * n_splits floats), then every thread's outputs load all their splits'
// partial values at once, kMergeBatch per output and two outputs per thread. The states were written by other
// multiprocessors, so they are read through L2 (ld.cg), never from this one's L1.
template <typename T, int D>
__device__ void merge_splits(const DecodeArgs& a, size_t row0, float* sm_w) {
  constexpr int kMergeBatch = 8;
  const int n = a.n_splits, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int r = warp; r < a.group; r += kWarps) {
    const float2* ml = a.part_ml + (row0 + r) * n;
    float m = kNegInf;
    for (int s = lane; s < n; s += 32) m = fmaxf(m, __ldcg(ml + s).x);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.0f;  // a split that saw no key has m = -inf and l = 0: weight 0
    for (int s = lane; s < n; s += 32) {
      const float2 v = __ldcg(ml + s);
      l += v.x == kNegInf ? 0.0f : v.y * fast_exp2(v.x - m);
    }
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    for (int s = lane; s < n; s += 32) {
      const float ms = __ldcg(ml + s).x;
      sm_w[r * n + s] = l > 0.0f && ms != kNegInf ? fast_exp2(ms - m) / l : 0.0f;
    }
  }
  __syncthreads();
  const int n_out = a.group * D, stride = blockDim.x;
  for (int i0 = threadIdx.x; i0 < n_out; i0 += 2 * stride) {
    const int i1 = i0 + stride;
    const bool has1 = i1 < n_out;
    const float* p0 = a.part_o + ((row0 + i0 / D) * n) * D + i0 % D;
    const float* p1 = a.part_o + ((row0 + (has1 ? i1 : i0) / D) * n) * D + (has1 ? i1 : i0) % D;
    const float* w0 = sm_w + (i0 / D) * n;
    const float* w1 = sm_w + ((has1 ? i1 : i0) / D) * n;
    float acc0 = 0.0f, acc1 = 0.0f;
    for (int s0 = 0; s0 < n; s0 += kMergeBatch) {
      float v0[kMergeBatch], v1[kMergeBatch];
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {  // every load of the batch issued before the first is used
        const int s = s0 + u;
        v0[u] = s < n ? __ldcg(p0 + static_cast<size_t>(s) * D) : 0.0f;
        v1[u] = s < n ? __ldcg(p1 + static_cast<size_t>(s) * D) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const int s = s0 + u;
        if (s < n) {
          acc0 = fmaf(v0[u], w0[s], acc0);
          acc1 = fmaf(v1[u], w1[s], acc1);
        }
      }
    }
    static_cast<T*>(a.out)[(row0 + i0 / D) * D + i0 % D] = Elem<T>::from_float(acc0);
    if (has1) static_cast<T*>(a.out)[(row0 + i1 / D) * D + i1 % D] = Elem<T>::from_float(acc1);
  }
}

// Bits: 0 for views of plain pages alone; 2, 4 or 8 when pages may be KIVI-packed.
template <typename T, int D, int Bits>
__global__ void __launch_bounds__(kWarps * 32) decode_attention_kernel(const DecodeArgs a) {
  static_assert(D % 64 == 0, "head_dim must be a multiple of 64");
  static_assert(Bits == 0 || kivi::k_scale_bytes(D) + kivi::tile_bytes(D, Bits) <= 2 * Smem<D>::kTileBytes,
                "a packed tile must fit the stage of a plain one");
  using L = Smem<D>;
  pdl_wait();  // q and the appended K/V row come from the previous kernel (pdl.cuh)
  pdl_trigger();
  constexpr int kChunks = D / 32;     // 16-byte key reads per lane per row
  constexpr int kSets = D / 64;       // 64-channel sets of V^T rows
  constexpr int kRowChunks = D / 8;   // 16-byte chunks per K or V row
  constexpr int kCopies = kTile * kRowChunks / 32;  // cp.async of 16 bytes per lane for one K (or V) tile
  constexpr int kStride = kWarps * kTile;
  extern __shared__ __align__(16) uint8_t smem[];
  int32_t* sm_page = reinterpret_cast<int32_t*>(smem + L::kRingsBytes);  // (chunk_pages)
  uint8_t* sm_flag = reinterpret_cast<uint8_t*>(sm_page + a.chunk_pages);  // (split_tokens / 16)

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;  // mma fragment coordinates: row group and column pair
  const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
  const int sh = seq * a.n_head_kv + kvh;
  const int pt = a.page_tokens;
  const int32_t* page_ids = a.page_table + static_cast<size_t>(sh) * a.max_pages;
  const int32_t* pos = a.positions + static_cast<size_t>(sh) * a.max_tokens;
  const int t_begin = split * a.split_tokens;
  const int t_lim = min(t_begin + a.split_tokens, a.max_tokens);  // memory bound; needs no load
  const int first_page = t_begin / pt;

  // Prologue, one round trip: n_tokens, q_pos, Q, page ids and positions are independent loads.
  const int n_tok = a.n_tokens[sh];
  const int qp = a.q_pos[seq];
  // Q^T as the B operand: lane (g, c) holds head g of the group, channels 32j + 8c .. +7 (zeros past the group).
  const T* q = static_cast<const T*>(a.q) + (static_cast<size_t>(seq) * a.n_head + static_cast<size_t>(kvh) * a.group) * D;
  uint4 qf[kChunks];
#pragma unroll
  for (int j = 0; j < kChunks; ++j)
    qf[j] = g < a.group ? *reinterpret_cast<const uint4*>(q + g * D + 32 * j + 8 * c) : make_uint4(0, 0, 0, 0);
  // Q^T in f16 for the products of packed tiles (a bf16 query of ordinary size converts exactly).
  uint4 qh[kChunks];
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if constexpr (Bits > 0 && !std::is_same_v<T, __half>) {
      auto cv = [](uint32_t x) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
        return Elem<__half>::pack(f.x, f.y);
      };
      qh[j] = make_uint4(cv(qf[j].x), cv(qf[j].y), cv(qf[j].z), cv(qf[j].w));
    } else {
      qh[j] = qf[j];
    }
  }
  for (int i = threadIdx.x; i < a.chunk_pages && first_page + i < a.max_pages; i += blockDim.x)
    sm_page[i] = page_ids[first_page + i];
  const int n_chunk_tiles = t_lim > t_begin ? (t_lim - t_begin + kTile - 1) / kTile : 0;
  for (int i = threadIdx.x; i < n_chunk_tiles; i += blockDim.x) {
    const int t = t_begin + i * kTile;
    int pv[kTile];
#pragma unroll
    for (int j = 0; j < kTile; ++j) pv[j] = t + j < t_lim ? pos[t + j] : INT_MAX;
    bool any = false;
#pragma unroll
    for (int j = 0; j < kTile; ++j) any |= t + j < n_tok && key_visible(pv[j], qp, a.window);
    uint8_t f = any ? kTileVisible : 0;
    if constexpr (Bits > 0)
      if (any && a.page_packed[static_cast<size_t>(sh) * a.max_pages + t / pt]) f |= kTilePacked;
    sm_flag[i] = f;
  }
  __syncthreads();
  const int t_end = min(n_tok, t_begin + a.split_tokens);

  // This warp's tiles: t_begin + (warp + k * kWarps) * 16 for k < n_k.
  const int t_warp = t_begin + warp * kTile;
  const int n_k = t_end > t_warp ? (t_end - t_warp + kStride - 1) / kStride : 0;
  uint8_t* ring = smem + warp * kStages * L::kStageBytes;
  const uint32_t ring_s = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  auto issue = [&](int k) {
    if (k < n_k) {
      const int t = t_warp + k * kStride;
      const uint8_t flag = sm_flag[(t - t_begin) / kTile];
      if (flag & kTileVisible) {
        const uint32_t dst = ring_s + (k % kStages) * L::kStageBytes;
        const size_t page = static_cast<size_t>(sm_page[t / pt - first_page]);
        bool packed_tile = false;
        if constexpr (Bits > 0) packed_tile = flag & kTilePacked;
        if (packed_tile) {
          if constexpr (Bits > 0) {
            // The page's key block, then the tile: both copied as they lie (the layout is the reading order).
            constexpr int kKeyBlock = static_cast<int>(kivi::k_scale_bytes(D) / 16);
            constexpr int kTileChunks = static_cast<int>(kivi::tile_bytes(D, Bits) / 16);
            const uint8_t* src = a.packed_pool + page * a.packed_page_bytes;
            const uint8_t* ts = src + kivi::k_scale_bytes(D) + static_cast<size_t>((t % pt) / kTile) * kivi::tile_bytes(D, Bits);
#pragma unroll
            for (int i = lane; i < kKeyBlock; i += 32) cp_async16(dst + i * 16, src + i * 16);
#pragma unroll
            for (int i = lane; i < kTileChunks; i += 32) cp_async16(dst + (kKeyBlock + i) * 16, ts + i * 16);
          }
        } else {
          const uint8_t* src = a.pool + page * a.page_bytes + static_cast<size_t>(t % pt) * D * 2;
#pragma unroll
          for (int i = 0; i < kCopies; ++i) {
            const int qd = lane + 32 * i, row = qd / kRowChunks, ch = qd % kRowChunks;
            cp_async16(dst + row * D * 2 + ((ch ^ ((row & 1) << 2)) * 16), src + qd * 16);
            cp_async16(dst + L::kTileBytes + row * D * 2 + ((ch ^ (((row >> 1) & 3) << 1)) * 16),
                       src + static_cast<size_t>(pt) * D * 2 + qd * 16);
          }
        }
        if (lane < kTile) cp_async4(dst + 2 * L::kTileBytes + lane * 4, pos + min(t + lane, a.max_tokens - 1));
      }
    }
    cp_async_commit();  // one group per tile, empty or not, so wait_group counts tiles
  };

  // Running softmax state of heads 2c and 2c + 1 (log2 units); o: O^T tiles, tile 4s + i holds channel rows
  // 64s + 8g + 2i (c0, c1) and 64s + 8g + 2i + 1 (c2, c3), head columns 2c, 2c + 1.
  float m0 = kNegInf, m1 = kNegInf, l0 = 0.0f, l1 = 0.0f;
  float o[4 * kSets][4];
#pragma unroll
  for (int i = 0; i < 4 * kSets; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;

  // Tile k is read from its stage into registers and the stage is refilled with tile k + kStages before tile k is
  // computed, so all kStages tiles of the ring stay in flight while the warp computes. (Measured no faster than
  // refilling after the compute: bytes in flight are not what limits this kernel; docs/cuda-backend-notes.md.)
#pragma unroll
  for (int k = 0; k < kStages; ++k) issue(k);
  for (int k = 0; k < n_k; ++k) {
    cp_async_wait<kStages - 1>();  // tile k has landed
    __syncwarp();                  // ... including the chunks other lanes copied
    const int t0 = t_warp + k * kStride;
    const uint8_t flag = sm_flag[(t0 - t_begin) / kTile];  // warp-uniform
    const bool tile_visible = flag & kTileVisible;
    const bool packed_tile = Bits > 0 && (flag & kTilePacked);
    uint4 klo[kChunks], khi[kChunks], v[4][kSets];  // v[r]: token 2c + (r & 1) + 8 (r >> 1)
    bool vis_lo = false, vis_hi = false;
    if (tile_visible && packed_tile) {
      if constexpr (Bits > 0) {
        const uint8_t* st = ring + (k % kStages) * L::kStageBytes;
        const int32_t* ps = reinterpret_cast<const int32_t*>(st + 2 * L::kTileBytes);
        vis_lo = t0 + g < t_end && key_visible(ps[g], qp, a.window);
        vis_hi = t0 + g + 8 < t_end && key_visible(ps[g + 8], qp, a.window);
        // Expanded before the stage is refilled: expanding after it (the raw words held across the refill) measured
        // the same time with 248 registers instead of 176.
        KiviRaw<D, Bits> raw;
        kivi_load<D, Bits>(st, g, c, raw);
        kivi_expand<D, Bits>(raw, klo, khi, v);
      }
    } else if (tile_visible) {
      const uint8_t* st = ring + (k % kStages) * L::kStageBytes;
      const uint4* ks = reinterpret_cast<const uint4*>(st);
      const uint4* vs = reinterpret_cast<const uint4*>(st + L::kTileBytes);
      const int32_t* ps = reinterpret_cast<const int32_t*>(st + 2 * L::kTileBytes);
      vis_lo = t0 + g < t_end && key_visible(ps[g], qp, a.window);
      vis_hi = t0 + g + 8 < t_end && key_visible(ps[g + 8], qp, a.window);
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        klo[j] = ks[g * kRowChunks + ((4 * j + c) ^ ((g & 1) << 2))];
        khi[j] = ks[(g + 8) * kRowChunks + ((4 * j + c) ^ ((g & 1) << 2))];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int tk = 2 * c + (r & 1) + 8 * (r >> 1);
#pragma unroll
        for (int s = 0; s < kSets; ++s) v[r][s] = vs[tk * kRowChunks + ((8 * s + g) ^ (((tk >> 1) & 3) << 1))];
      }
    }
    __syncwarp();       // every lane has read the stage ...
    issue(k + kStages);  // ... so it can be refilled
    if (!tile_visible) continue;
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (t0 + 2 * c + (r & 1) + 8 * (r >> 1) >= t_end)
        // Rows past the last token hold whatever the page held: zero them, since 0 * NaN would poison the sum.
#pragma unroll
        for (int s = 0; s < kSets; ++s) v[r][s] = make_uint4(0, 0, 0, 0);

    // S^T: sc[0] token g head 2c, sc[1] token g head 2c+1, sc[2] token g+8 head 2c, sc[3] token g+8 head 2c+1.
    float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (packed_tile)
      score_products<Elem<__half>>(sc, klo, khi, qh);
    else
      score_products<Elem<T>>(sc, klo, khi, qf);
    const float s0 = vis_lo ? sc[0] * a.scale_log2 : kNegInf;
    const float s1 = vis_lo ? sc[1] * a.scale_log2 : kNegInf;
    const float s2 = vis_hi ? sc[2] * a.scale_log2 : kNegInf;
    const float s3 = vis_hi ? sc[3] * a.scale_log2 : kNegInf;
    float mx0 = fmaxf(s0, s2), mx1 = fmaxf(s1, s3);
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {  // over the 8 lanes sharing c, i.e. over the tile's tokens
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    // A head that has seen no visible key yet keeps max -inf; subtract 0 then, so exp2 gives 0 and not NaN.
    const float b0 = mn0 == kNegInf ? 0.0f : mn0, b1 = mn1 == kNegInf ? 0.0f : mn1;
    const float corr0 = fast_exp2(m0 - b0), corr1 = fast_exp2(m1 - b1);
    const float p0 = fast_exp2(s0 - b0), p1 = fast_exp2(s1 - b1), p2 = fast_exp2(s2 - b0), p3 = fast_exp2(s3 - b1);
    l0 = l0 * corr0 + (p0 + p2);
    l1 = l1 * corr1 + (p1 + p3);
    m0 = mn0;
    m1 = mn1;
    if (__any_sync(0xffffffffu, corr0 != 1.0f || corr1 != 1.0f)) {  // once the max settles, most tiles skip it
#pragma unroll
      for (int i = 0; i < 4 * kSets; ++i) {
        o[i][0] *= corr0;
        o[i][1] *= corr1;
        o[i][2] *= corr0;
        o[i][3] *= corr1;
      }
    }
    // P (tokens x heads, accumulator layout) -> P^T operand: k = tokens 2c, 2c+1 (and +8), n = head g.
    if (packed_tile) {
      value_products<Elem<__half>>(o, v, transpose8x8(Elem<__half>::pack(p0, p1)),
                                   transpose8x8(Elem<__half>::pack(p2, p3)));
    } else {
      value_products<Elem<T>>(o, v, transpose8x8(Elem<T>::pack(p0, p1)), transpose8x8(Elem<T>::pack(p2, p3)));
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }

  // Merge the block's warps in the (now idle) rings, then write the split's partial state (or the output).
  __syncthreads();
  float* sm_o = reinterpret_cast<float*>(smem);  // (kWarps, kMaxGroup, D)
  float* sm_m = sm_o + kWarps * kMaxGroup * D;    // (kWarps, kMaxGroup)
  float* sm_l = sm_m + kWarps * kMaxGroup;        // (kWarps, kMaxGroup)
  const int h0 = 2 * c, h1 = 2 * c + 1;
#pragma unroll
  for (int s = 0; s < kSets; ++s)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int d = 64 * s + 8 * g + 2 * i;
      if (h0 < a.group) {
        sm_o[(warp * kMaxGroup + h0) * D + d] = o[4 * s + i][0];
        sm_o[(warp * kMaxGroup + h0) * D + d + 1] = o[4 * s + i][2];
      }
      if (h1 < a.group) {
        sm_o[(warp * kMaxGroup + h1) * D + d] = o[4 * s + i][1];
        sm_o[(warp * kMaxGroup + h1) * D + d + 1] = o[4 * s + i][3];
      }
    }
  if (g == 0) {
    if (h0 < a.group) sm_m[warp * kMaxGroup + h0] = m0, sm_l[warp * kMaxGroup + h0] = l0;
    if (h1 < a.group) sm_m[warp * kMaxGroup + h1] = m1, sm_l[warp * kMaxGroup + h1] = l1;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < a.group * D; idx += kWarps * 32) {
    const int h = idx / D, d = idx % D;
    float M = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w * kMaxGroup + h]);
    float acc = 0.0f, sum = 0.0f;
    if (M != kNegInf) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = fast_exp2(sm_m[w * kMaxGroup + h] - M);  // 0 for a warp that saw nothing
        acc += sm_o[(w * kMaxGroup + h) * D + d] * f;
        sum += sm_l[w * kMaxGroup + h] * f;
      }
    }
    const size_t row = static_cast<size_t>(sh) * a.group + h;  // = seq * n_head + kvh * group + h
    if (a.n_splits == 1) {
      static_cast<T*>(a.out)[row * D + d] = Elem<T>::from_float(sum > 0.0f ? acc / sum : 0.0f);
    } else {
      a.part_o[(row * a.n_splits + split) * D + d] = acc;
      if (d == 0) a.part_ml[row * a.n_splits + split] = make_float2(M, sum);
    }
  }
  if (a.n_splits == 1 || a.done == nullptr) return;

  // The last block of this kv-head to get here merges every split's state (the threadfence reduction of the CUDA
  // programming guide): each thread publishes its partial writes before the block counts itself done, and the block
  // that counts last sees them all. It puts the counter back to zero for the next call.
  // The flag lives in the page-id slots (no longer read): a static __shared__ variable would shift the dynamic
  // rings off their alignment.
  int32_t* last = sm_page;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    *last = atomicAdd(&a.done[sh], 1) == a.n_splits - 1;
    if (*last) a.done[sh] = 0;  // no other block of this head touches it again in this call
  }
  __syncthreads();
  if (!*last) return;
  __threadfence();
  merge_splits<T, D>(a, static_cast<size_t>(sh) * a.group, reinterpret_cast<float*>(smem));  // the rings are idle
}

// DecodeMerge::Kernel: one block per query head: thread (split group sg, channel quad dq) folds splits sg, sg +
// kGroups, ... with its own running max (all its loads issued up front: one round trip), then the split groups are
// merged in shared memory: out = sum_s O_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
constexpr int kMergeThreads = 256;
constexpr int kMergeUnroll = 4;

template <typename T, int D>
__global__ void __launch_bounds__(kMergeThreads) decode_attention_merge_kernel(const float* part_o,
                                                                              const float2* part_ml, int32_t n_splits,
                                                                              T* out) {
  pdl_wait();  // the partial states of the attention kernel
  pdl_trigger();
  constexpr int kQuads = D / 4;
  constexpr int kGroups = kMergeThreads / kQuads;
  __shared__ float4 sm_acc[kGroups][kQuads];
  __shared__ float sm_m[kGroups], sm_l[kGroups];
  const size_t row = blockIdx.x;
  const int dq = threadIdx.x % kQuads, sg = threadIdx.x / kQuads;
  float m = kNegInf, sum = 0.0f;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int s0 = sg; s0 < n_splits; s0 += kGroups * kMergeUnroll) {
    float2 ml[kMergeUnroll];
    float4 po[kMergeUnroll];
#pragma unroll
    for (int u = 0; u < kMergeUnroll; ++u) {
      const int s = s0 + u * kGroups;
      ml[u] = s < n_splits ? part_ml[row * n_splits + s] : make_float2(kNegInf, 0.0f);
      po[u] = s < n_splits ? *reinterpret_cast<const float4*>(part_o + (row * n_splits + s) * D + 4 * dq)
                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int u = 0; u < kMergeUnroll; ++u) {
      if (ml[u].x == kNegInf) continue;  // a split that saw no key
      const float mn = fmaxf(m, ml[u].x);
      const float f_old = fast_exp2(m - mn), f_new = fast_exp2(ml[u].x - mn);
      acc.x = acc.x * f_old + po[u].x * f_new;
      acc.y = acc.y * f_old + po[u].y * f_new;
      acc.z = acc.z * f_old + po[u].z * f_new;
      acc.w = acc.w * f_old + po[u].w * f_new;
      sum = sum * f_old + ml[u].y * f_new;
      m = mn;
    }
  }
  sm_acc[sg][dq] = acc;
  if (dq == 0) sm_m[sg] = m, sm_l[sg] = sum;
  __syncthreads();
  if (sg != 0) return;
  float M = kNegInf;
#pragma unroll
  for (int i = 0; i < kGroups; ++i) M = fmaxf(M, sm_m[i]);
  float4 r = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float L = 0.0f;
  if (M != kNegInf) {
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
      const float f = fast_exp2(sm_m[i] - M);
      r.x += sm_acc[i][dq].x * f;
      r.y += sm_acc[i][dq].y * f;
      r.z += sm_acc[i][dq].z * f;
      r.w += sm_acc[i][dq].w * f;
      L += sm_l[i] * f;
    }
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  T* dst = out + row * D + 4 * dq;
  dst[0] = Elem<T>::from_float(r.x * inv);
  dst[1] = Elem<T>::from_float(r.y * inv);
  dst[2] = Elem<T>::from_float(r.z * inv);
  dst[3] = Elem<T>::from_float(r.w * inv);
}

// The kernel may use more than the default 48 KB of shared memory: raise its limit once per instance.
template <typename T, int D, int Bits>
Status prepare_instance() {
  static const cudaError_t e = cudaFuncSetAttribute(decode_attention_kernel<T, D, Bits>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, Smem<D>::kMaxBytes);
  return cuda_status(e, "cudaFuncSetAttribute(decode_attention_kernel)");
}

size_t dynamic_smem_bytes(int head_dim, const DecodeArgs& a) {
  const size_t rings = head_dim == 64 ? Smem<64>::kRingsBytes : Smem<128>::kRingsBytes;
  return rings + static_cast<size_t>(a.chunk_pages) * 4 + static_cast<size_t>(a.split_tokens / kTile);
}

template <typename T, int D, int Bits>
Status launch(const DecodeArgs& a, int32_t n_seq, cudaStream_t stream) {
  if (Status s = prepare_instance<T, D, Bits>(); !s.ok()) return s;
  const dim3 grid(static_cast<unsigned>(a.n_splits), static_cast<unsigned>(a.n_head_kv), static_cast<unsigned>(n_seq));
  LONGCTX_CUDA_TRY(
      launch_pdl(decode_attention_kernel<T, D, Bits>, grid, dim3(kWarps * 32), dynamic_smem_bytes(D, a), stream, a));
  if (a.n_splits > 1 && a.done == nullptr)
    LONGCTX_CUDA_TRY(launch_pdl(decode_attention_merge_kernel<T, D>, dim3(static_cast<unsigned>(n_seq * a.n_head)),
                                dim3(kMergeThreads), 0, stream, a.part_o, a.part_ml, a.n_splits,
                                static_cast<T*>(a.out)));
  return Status::success();
}

template <typename T, int D, int Bits>
Status blocks_per_sm(int* n) {
  static int cached = 0;  // the occupancy of an instance never changes within a process
  if (cached == 0) {
    if (Status s = prepare_instance<T, D, Bits>(); !s.ok()) return s;
    int v = 0;
    LONGCTX_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, decode_attention_kernel<T, D, Bits>,
                                                                   kWarps * 32, Smem<D>::kMaxBytes));
    cached = std::max(v, 1);
  }
  *n = cached;
  return Status::success();
}

// The instances, listed (DESIGN.md, Style 6): {bf16, f16} x head_dim {64, 128} x packing {none, kivi 2, 4, 8}.
// fn is called with a value of Instance<T, D, Bits> for the view's instance.
template <typename T, int D, int Bits>
struct Instance {};

template <typename T, int D, int Bits>
Status occupancy(Instance<T, D, Bits>, int* n) {
  return blocks_per_sm<T, D, Bits>(n);
}
template <typename T, int D, int Bits>
Status launch_instance(Instance<T, D, Bits>, const DecodeArgs& a, int32_t n_seq, cudaStream_t stream) {
  return launch<T, D, Bits>(a, n_seq, stream);
}

template <typename Fn>
Status with_instance(const PagedKvView& kv, Fn&& fn) {
  const int bits = kv_packing_bits(kv.packing);
  auto by_bits = [&](auto t, auto d) -> Status {
    using TT = typename decltype(t)::type;
    constexpr int DD = decltype(d)::value;
    switch (bits) {
      case 2: return fn(Instance<TT, DD, 2>{});
      case 4: return fn(Instance<TT, DD, 4>{});
      case 8: return fn(Instance<TT, DD, 8>{});
      default: return fn(Instance<TT, DD, 0>{});
    }
  };
  auto by_dim = [&](auto t) -> Status {
    return kv.head_dim == 64 ? by_bits(t, std::integral_constant<int, 64>{})
                             : by_bits(t, std::integral_constant<int, 128>{});
  };
  return kv.dtype == KvDtype::BF16 ? by_dim(TypeTag<__nv_bfloat16>{}) : by_dim(TypeTag<__half>{});
}

Status check_shape(const DecodeAttentionParams& p, const PagedKvView& kv) {
  if (kv.head_dim != 64 && kv.head_dim != 128)
    return Status::error("decode attention: head_dim " + std::to_string(kv.head_dim) + " not supported (64, 128)");
  if (kv.page_tokens <= 0 || kv.page_tokens % kTile != 0)
    return Status::error("decode attention: page_tokens " + std::to_string(kv.page_tokens) + " is not a multiple of 16");
  if (kv.n_head_kv <= 0 || kv.n_seq <= 0 || p.n_head % kv.n_head_kv != 0)
    return Status::error("decode attention: n_head must be a multiple of n_head_kv");
  const int32_t group = p.n_head / kv.n_head_kv;
  if (group < 1 || group > kMaxGroup)
    return Status::error("decode attention: GQA group of " + std::to_string(group) + " heads not supported (1..8)");
  if (kv.packing != KvPacking::None && (!kv.packed_pool || !kv.page_packed))
    return Status::error("decode attention: a packed view needs packed_pool and page_packed");
  return Status::success();
}

}  // namespace

Status decode_attention_plan(const DecodeAttentionParams& p, const PagedKvView& kv, int32_t n_tokens_max,
                             DecodeAttentionPlan* plan, int32_t n_splits_override) {
  if (Status s = check_shape(p, kv); !s.ok()) return s;
  int dev = 0, n_sm = 0, per_sm = 1;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  Status s = with_instance(kv, [&](auto inst) { return occupancy(inst, &per_sm); });
  if (!s.ok()) return s;

  const int32_t n_tiles = std::max<int32_t>(1, (n_tokens_max + kTile - 1) / kTile);
  const int32_t n_heads = kv.n_seq * kv.n_head_kv;
  // One wave: never more blocks than fit at once, since a second, partial wave would cost a whole block's time.
  int32_t n_splits = n_splits_override > 0 ? n_splits_override : std::max(1, n_sm * per_sm / n_heads);
  if (n_splits_override <= 0) n_splits = std::min(n_splits, std::max(1, n_tiles / kWarps));  // >= 1 tile per warp
  n_splits = std::min({n_splits, n_tiles, kMaxSplits});
  const int32_t split_tiles = std::min((n_tiles + n_splits - 1) / n_splits, kMaxSplitTokens / kTile);
  n_splits = (n_tiles + split_tiles - 1) / split_tiles;
  plan->n_splits = n_splits;
  plan->split_tokens = split_tiles * kTile;
  plan->merge = DecodeMerge::InKernel;  // a caller may set Kernel after planning (A/B timings)
  plan->counter_bytes = n_splits > 1 ? counter_bytes_for(n_heads) : 0;  // the counters first
  plan->workspace_bytes = n_splits > 1 ? plan->counter_bytes + static_cast<size_t>(kv.n_seq) * p.n_head * n_splits *
                                                                   (kv.head_dim * sizeof(float) + sizeof(float2))
                                       : 0;
  return Status::success();
}

Status decode_attention_workspace_init(const DecodeAttentionPlan& plan, void* workspace, void* stream) {
  if (plan.counter_bytes == 0) return Status::success();
  if (!workspace) return Status::error("decode attention: the plan needs a workspace");
  LONGCTX_CUDA_TRY(cudaMemsetAsync(workspace, 0, plan.counter_bytes, static_cast<cudaStream_t>(stream)));
  return Status::success();
}

Status decode_attention(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan, const void* q,
                        const int32_t* q_pos, const PagedKvView& kv, void* out, void* workspace, void* stream) {
  if (Status s = check_shape(p, kv); !s.ok()) return s;
  if (!q || !q_pos || !out || (!kv.pool && kv.packing == KvPacking::None) || !kv.page_table || !kv.positions ||
      !kv.n_tokens)
    return Status::error("decode attention: null pointer");
  if (plan.n_splits < 1 || plan.split_tokens <= 0 || plan.split_tokens % kTile != 0 ||
      plan.split_tokens > kMaxSplitTokens)
    return Status::error("decode attention: invalid plan");
  if (plan.n_splits > 1 && !workspace) return Status::error("decode attention: the plan needs a workspace");
  if ((reinterpret_cast<uintptr_t>(q) | reinterpret_cast<uintptr_t>(kv.pool) |
       reinterpret_cast<uintptr_t>(kv.packed_pool)) % 16 != 0)
    return Status::error("decode attention: q and the page pools must be 16-byte aligned");

  DecodeArgs a{};
  a.pool = static_cast<const uint8_t*>(kv.pool);
  a.page_bytes = kv.page_bytes();
  a.page_table = kv.page_table;
  a.positions = kv.positions;
  a.n_tokens = kv.n_tokens;
  a.packed_pool = static_cast<const uint8_t*>(kv.packed_pool);
  a.packed_page_bytes = kv.packed_page_bytes();
  a.page_packed = kv.page_packed;
  a.n_head_kv = kv.n_head_kv;
  a.n_head = p.n_head;
  a.group = p.n_head / kv.n_head_kv;
  a.page_tokens = kv.page_tokens;
  a.max_pages = kv.max_pages;
  a.max_tokens = kv.max_tokens;
  a.q = q;
  a.q_pos = q_pos;
  a.out = out;
  a.n_splits = plan.n_splits;
  a.split_tokens = plan.split_tokens;
  a.chunk_pages = plan.split_tokens / kv.page_tokens + 2;
  if (plan.n_splits > 1) {
    const size_t rows = static_cast<size_t>(kv.n_seq) * p.n_head;
    const size_t counter_bytes = counter_bytes_for(kv.n_seq * kv.n_head_kv);
    if (plan.counter_bytes != counter_bytes) return Status::error("decode attention: the plan is for another view");
    a.done = plan.merge == DecodeMerge::InKernel ? static_cast<int32_t*>(workspace) : nullptr;
    a.part_o = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + counter_bytes);
    a.part_ml = reinterpret_cast<float2*>(a.part_o + rows * plan.n_splits * kv.head_dim);
  }
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.window = p.window;

  auto st = static_cast<cudaStream_t>(stream);
  return with_instance(kv, [&](auto inst) { return launch_instance(inst, a, kv.n_seq, st); });
}

}  // namespace longctx::cuda
