// The decode step's matrix-vector products (batch 1) with their neighbours fused in (ops.h, gemv).
//
// Why not cuBLASLt alone: at n_cols = 1 its kernels read the small matrices of a llama layer well under the
// bandwidth (measured on the H200, docs/cuda-backend-notes.md: 2.45 TB/s for 4096 x 4096, 2.84 for 6144 x 4096, 3.6 for
// 4096 x 14336, against 4.54 for a read-only kernel), and every product is flanked by a norm or an activation that
// costs a launch of its own. Here each warp streams rows of W with 16-byte loads, many in flight (kUnroll per row,
// two rows at once), against x held in shared memory; the block's prologue builds that x (a bf16 copy, or the RMSNorm
// of the f32 residual stream), and the epilogue writes f32, adds into the residual stream, applies SwiGLU to a
// (gate, up) row pair, or rotates a RoPE pair of the QKV product and appends it to the KV store. The grid is sized
// to the rows, so every warp owns one or a few row pairs.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/rope.cuh"

namespace longctx::cuda {
namespace {

constexpr int kWarps = 8;    // warps per block
constexpr int kMaxIn = 16384;  // x in shared memory as bf16: 32 KB, inside the default 48 KB

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  // Weights are read once per token and are far larger than L2: do not keep them in L1.
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Dot product of 8 bf16 weights and 8 bf16 inputs, both packed in pairs; bf16 -> f32 is a shift or a mask.
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const uint32_t ws[4] = {w.x, w.y, w.z, w.w}, xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    acc = fmaf(__uint_as_float(ws[j] << 16), __uint_as_float(xs[j] << 16), acc);
    acc = fmaf(__uint_as_float(ws[j] & 0xffff0000u), __uint_as_float(xs[j] & 0xffff0000u), acc);
  }
  return acc;
}

// Where a row pair of the fused QKV product goes (GemvEpilogue::RopeAppend): rows (2i, 2i + 1) of a head are RoPE's
// pair i, so a warp's unit is one rotation. Worked out before the unit's dot product (the angle in double, the slot
// from the head's count and page table), while its first weights are in flight. dst null: a full head drops the
// token, as rope_kv_append does.
struct RopeTarget {
  float c = 1.0f, s = 0.0f;
  bool rotate = false;
  __nv_bfloat16* dst = nullptr;
};

__device__ __forceinline__ RopeTarget rope_target(const GemvRopeAppend& r, int32_t row) {
  const PagedKvView& kv = r.kv;
  const int32_t D = kv.head_dim, head = row / D, pair = (row % D) / 2, n_q = r.n_head, n_kv = kv.n_head_kv;
  RopeTarget t;
  t.rotate = head < n_q + n_kv;
  if (t.rotate) rope_cos_sin(static_cast<double>(r.rope_base), pair, D, *r.pos, &t.c, &t.s);
  if (head < n_q) {
    t.dst = static_cast<__nv_bfloat16*>(r.q_out) + static_cast<size_t>(head) * D + 2 * pair;
    return t;
  }
  const int32_t g = t.rotate ? head - n_q : head - n_q - n_kv;  // the key or the value head
  const int32_t slot = kv.n_tokens[g];
  if (slot >= kv.max_tokens) return t;
  const int32_t page = kv.page_table[static_cast<size_t>(g) * kv.max_pages + slot / kv.page_tokens];
  __nv_bfloat16* k_row = reinterpret_cast<__nv_bfloat16*>(static_cast<uint8_t*>(const_cast<void*>(kv.pool)) +
                                                          static_cast<size_t>(page) * kv.page_bytes()) +
                         static_cast<size_t>(slot % kv.page_tokens) * D;
  t.dst = (t.rotate ? k_row : k_row + static_cast<size_t>(kv.page_tokens) * D) + 2 * pair;
  return t;
}

// kUnroll: 16-byte loads in flight per row per lane. Two instances (4 and 8): more bytes in flight against more
// registers, hence fewer resident blocks; pick_unroll chooses per product.
template <int kUnroll>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(const GemvArgs a) {
  __shared__ __align__(16) __nv_bfloat16 xs[kMaxIn];
  __shared__ float red[kWarps];
  const int32_t n_in = a.n_in;
  const int32_t lane = threadIdx.x % 32;
  const int32_t n_chunks = n_in / 8;    // 16-byte chunks per row
  const int32_t n_units = a.n_out / 2;  // row pairs
  // A unit is two rows: (2u, 2u + 1), or for SwiGLU the gate row u and its up row n_out / 2 + u.
  auto row_pair = [&](int32_t u, const uint4** w0, const uint4** w1, int32_t* r0, int32_t* r1) {
    *r0 = a.epilogue == GemvEpilogue::SwiGLU ? u : 2 * u;
    *r1 = a.epilogue == GemvEpilogue::SwiGLU ? u + n_units : 2 * u + 1;
    *w0 = static_cast<const uint4*>(a.w) + static_cast<size_t>(*r0) * n_chunks;
    *w1 = static_cast<const uint4*>(a.w) + static_cast<size_t>(*r1) * n_chunks;
  };
  auto load_batch = [&](const uint4* w0, const uint4* w1, int32_t c0, uint4 (&b0)[kUnroll], uint4 (&b1)[kUnroll]) {
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {  // every load of the batch is issued before the first is used
      const int32_t c = c0 + 32 * j;
      if (c < n_chunks) {
        b0[j] = load_stream(w0 + c);
        b1[j] = load_stream(w1 + c);
      }
    }
  };

  // The weights depend on nothing the previous kernel writes, so the first batch is loaded before waiting for it:
  // launched with programmatic dependent launch (pdl.cuh), this kernel starts streaming W while the previous drains.
  const int32_t u_first = blockIdx.x * kWarps + threadIdx.x / 32;
  uint4 b0[kUnroll], b1[kUnroll];
  if (u_first < n_units) {
    const uint4 *w0, *w1;
    int32_t r0, r1;
    row_pair(u_first, &w0, &w1, &r0, &r1);
    load_batch(w0, w1, lane, b0, b1);
  }
  pdl_trigger();
  pdl_wait();

  // Prologue: x into shared memory as bf16. Its loads go in batches of kBatch per thread, all issued before the
  // first use: x sits in L2, and a chain of dependent round trips here is time in which no weight streams (a loop
  // of one load per iteration measured ~2.5 us for the RMSNorm prologue; docs/cuda-backend-notes.md).
  constexpr int kBatch = 4;
  const int32_t stride = blockDim.x * kBatch;
  if (a.x_f32 == nullptr) {
    const uint4* src = static_cast<const uint4*>(a.x_bf16);
    for (int32_t i0 = threadIdx.x; i0 < n_in / 8; i0 += stride) {
      uint4 v[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (i0 + j * static_cast<int32_t>(blockDim.x) < n_in / 8) v[j] = src[i0 + j * blockDim.x];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (i0 + j * static_cast<int32_t>(blockDim.x) < n_in / 8) reinterpret_cast<uint4*>(xs)[i0 + j * blockDim.x] = v[j];
    }
  } else {
    // RMSNorm of the f32 stream, rounded as the rmsnorm op: y = bf16(x * rsqrt(mean(x^2) + eps) * w).
    const float4* x4f = reinterpret_cast<const float4*>(a.x_f32);
    const uint2* nw = static_cast<const uint2*>(a.norm_w);  // 4 bf16 weights per 8 bytes
    const int32_t n4 = n_in / 4;
    float ss = 0.0f;
    for (int32_t i0 = threadIdx.x; i0 < n4; i0 += stride) {
      float4 v[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        v[j] = i0 + j * static_cast<int32_t>(blockDim.x) < n4 ? x4f[i0 + j * blockDim.x] : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int j = 0; j < kBatch; ++j) ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    }
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int i = 0; i < kWarps; ++i) total += red[i];
    const float scale = rsqrtf(total / static_cast<float>(n_in) + a.eps);
    for (int32_t i0 = threadIdx.x; i0 < n4; i0 += stride) {
      float4 v[kBatch];
      uint2 w[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j)
        if (i0 + j * static_cast<int32_t>(blockDim.x) < n4) {
          v[j] = x4f[i0 + j * blockDim.x];
          w[j] = nw[i0 + j * blockDim.x];
        }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int32_t i = i0 + j * blockDim.x;
        if (i < n4) {
          const float w0 = __uint_as_float(w[j].x << 16), w1 = __uint_as_float(w[j].x & 0xffff0000u);
          const float w2 = __uint_as_float(w[j].y << 16), w3 = __uint_as_float(w[j].y & 0xffff0000u);
          __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(xs + 4 * i);
          dst[0] = __floats2bfloat162_rn(v[j].x * scale * w0, v[j].y * scale * w1);
          dst[1] = __floats2bfloat162_rn(v[j].z * scale * w2, v[j].w * scale * w3);
        }
      }
    }
  }
  __syncthreads();

  const uint4* x4 = reinterpret_cast<const uint4*>(xs);
  bool prefetched = true;  // the first batch of the first unit is already in b0, b1
  for (int32_t u = u_first; u < n_units; u += gridDim.x * kWarps) {
    const uint4 *w0, *w1;
    int32_t r0, r1;
    row_pair(u, &w0, &w1, &r0, &r1);
    RopeTarget rope;
    if (a.epilogue == GemvEpilogue::RopeAppend) rope = rope_target(a.rope, r0);
    float acc0 = 0.0f, acc1 = 0.0f;
    for (int32_t c0 = lane; c0 < n_chunks; c0 += 32 * kUnroll) {
      if (!prefetched) load_batch(w0, w1, c0, b0, b1);
      prefetched = false;
#pragma unroll
      for (int j = 0; j < kUnroll; ++j) {
        const int32_t c = c0 + 32 * j;
        if (c < n_chunks) {
          const uint4 xv = x4[c];
          acc0 = dot8(b0[j], xv, acc0);
          acc1 = dot8(b1[j], xv, acc1);
        }
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      acc0 += __shfl_xor_sync(0xffffffffu, acc0, o);
      acc1 += __shfl_xor_sync(0xffffffffu, acc1, o);
    }
    if (lane == 0) {
      switch (a.epilogue) {
        case GemvEpilogue::Store:
          a.y[r0] = acc0;
          a.y[r1] = acc1;
          break;
        case GemvEpilogue::Add:
          a.y[r0] += acc0;
          a.y[r1] += acc1;
          break;
        case GemvEpilogue::SwiGLU: {
          const float silu = acc0 / (1.0f + expf(fminf(-acc0, 88.0f)));  // as the swiglu op
          static_cast<__nv_bfloat16*>(a.h)[u] = __float2bfloat16_rn(silu * acc1);
          break;
        }
        case GemvEpilogue::RopeAppend:
          if (rope.dst) {
            const float2 v = rope.rotate ? rope_rotate(acc0, acc1, rope.c, rope.s) : make_float2(acc0, acc1);
            *reinterpret_cast<__nv_bfloat162*>(rope.dst) = __floats2bfloat162_rn(v.x, v.y);
          }
          break;
      }
    }
  }

  // RopeAppend: the heads' counts move on once every block has read them (the threadfence reduction: the block that
  // counts last runs after all the others' reads), and the counter goes back to zero for the next call.
  if (a.epilogue == GemvEpilogue::RopeAppend) {
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      if (atomicAdd(a.rope.done, 1) == static_cast<int>(gridDim.x) - 1) {
        *a.rope.done = 0;
        const PagedKvView& kv = a.rope.kv;
        int32_t* n_tokens = const_cast<int32_t*>(kv.n_tokens);
        int32_t* positions = const_cast<int32_t*>(kv.positions);
        const int32_t p = *a.rope.pos;
        for (int32_t g = 0; g < kv.n_head_kv; ++g) {
          const int32_t slot = n_tokens[g];
          if (slot >= kv.max_tokens) continue;  // dropped, as rope_kv_append does
          positions[static_cast<size_t>(g) * kv.max_tokens + slot] = p;
          n_tokens[g] = slot + 1;
        }
      }
    }
  }
}

// The instance for one product. A warp's time is about its row pairs times its rounds of loads per row pair (each
// round a full memory latency), so the busiest warp's count, ceil(units / warps) * ceil(chunks / (32 * kUnroll)),
// is what the choice minimizes; 8 loads in flight halve the rounds but, at ~116 registers against 76, leave 2 blocks
// a multiprocessor instead of 3. A tie keeps 4 (its spare warps hide more of the ramp). GemvArgs::unroll = 4 or 8
// forces one instance (docs/cuda-backend-notes.md has the measurements).
int pick_unroll(int32_t n_units, int32_t n_chunks, int32_t warps4, int32_t warps8) {
  auto busiest = [&](int32_t warps, int32_t unroll) {
    return static_cast<int64_t>((n_units + warps - 1) / warps) * ((n_chunks + 32 * unroll - 1) / (32 * unroll));
  };
  return busiest(warps8, 8) < busiest(warps4, 4) ? 8 : 4;
}

}  // namespace

Status gemv(const GemvArgs& a, void* stream) {
  if (a.n_out <= 0 || a.n_out % 2 != 0) return Status::error("gemv: n_out must be positive and even");
  if (a.n_in <= 0 || a.n_in % 8 != 0 || a.n_in > kMaxIn)
    return Status::error("gemv: n_in must be a positive multiple of 8, at most " + std::to_string(kMaxIn));
  if (!a.w || (!a.x_bf16 && !a.x_f32)) return Status::error("gemv: null pointer");
  if (a.x_f32 && !a.norm_w) return Status::error("gemv: an f32 input needs its norm weights (the fused RMSNorm)");
  if (a.epilogue == GemvEpilogue::SwiGLU ? !a.h : a.epilogue != GemvEpilogue::RopeAppend && !a.y)
    return Status::error("gemv: null output");
  if (a.epilogue == GemvEpilogue::RopeAppend) {
    const GemvRopeAppend& r = a.rope;
    const PagedKvView& kv = r.kv;
    if (kv.dtype != KvDtype::BF16 || kv.n_seq != 1 || kv.head_dim <= 0 || kv.head_dim % 2 != 0 || kv.n_head_kv <= 0 ||
        r.n_head <= 0 || r.n_head % kv.n_head_kv != 0 || kv.page_tokens <= 0 || kv.max_pages <= 0 || kv.max_tokens <= 0)
      return Status::error(
          "gemv: RoPE + append needs one sequence of bf16 pages, an even head_dim and whole GQA groups");
    if (static_cast<int64_t>(a.n_out) != static_cast<int64_t>(r.n_head + 2 * kv.n_head_kv) * kv.head_dim)
      return Status::error("gemv: RoPE + append: n_out must be (n_head + 2 n_head_kv) * head_dim");
    if (!r.pos || !r.q_out || !r.done || !kv.pool || !kv.page_table || !kv.positions || !kv.n_tokens)
      return Status::error("gemv: RoPE + append: null pointer");
  }
  const uintptr_t align = reinterpret_cast<uintptr_t>(a.w) | reinterpret_cast<uintptr_t>(a.x_bf16) |
                          reinterpret_cast<uintptr_t>(a.x_f32) | reinterpret_cast<uintptr_t>(a.norm_w);
  if (align % 16 != 0) return Status::error("gemv: W and x must be 16-byte aligned");
  const int32_t n_units = a.n_out / 2, n_chunks = a.n_in / 8;
  // One wave: as many blocks as fit at once, and the warps loop over row pairs, so no second, partial wave idles
  // half the machine and the output head does its prologue ~300 times, not 8000.
  int dev = 0, n_sm = 0, per_sm4 = 0, per_sm8 = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  LONGCTX_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm4, gemv_kernel<4>, kWarps * 32, 0));
  LONGCTX_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm8, gemv_kernel<8>, kWarps * 32, 0));
  if (a.unroll != 0 && a.unroll != 4 && a.unroll != 8) return Status::error("gemv: unroll must be 0, 4 or 8");
  const int unroll = a.unroll != 0 ? a.unroll
                                   : pick_unroll(n_units, n_chunks, n_sm * std::max(per_sm4, 1) * kWarps,
                                                 n_sm * std::max(per_sm8, 1) * kWarps);
  auto kernel = unroll == 4 ? gemv_kernel<4> : gemv_kernel<8>;
  const int per_sm = unroll == 4 ? per_sm4 : per_sm8;
  const int32_t blocks = std::max(1, std::min((n_units + kWarps - 1) / kWarps, n_sm * std::max(per_sm, 1)));
  return cuda_status(
      launch_pdl(kernel, dim3(static_cast<unsigned>(blocks)), dim3(kWarps * 32), 0, static_cast<cudaStream_t>(stream), a),
      "gemv launch");
}

}  // namespace longctx::cuda
