// RoPE of one token's q and k, and the append of its k and v into one layer of the paged KV store (ops.h).
//
// One block per kv-head: it rotates the group's query heads and its key head and writes the key and value rows into
// the head's next slot. One block owns one head's slot counter, so it reads n_tokens[h], writes, and bumps the
// counter after a barrier: no other block touches that head, and the attention kernel that reads the counter comes
// after this launch in stream order. The prompt form (rope_kv_append_rows) adds a grid row per token; its slots come
// from the host, so no block reads the counter and the first row's block sets it for the whole prompt.
#include <cuda_bf16.h>

#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/rope.cuh"

namespace longctx::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHalf = 64;  // head_dim / 2 for head_dim <= 128

struct RopeAppendArgs {
  const float* qkv;  // (n_head + 2 n_head_kv, D)
  const int32_t* pos;
  __nv_bfloat16* q_out;  // (n_head, D)
  uint8_t* pool;
  size_t page_bytes;
  const int32_t* page_table;  // (n_head_kv, max_pages)
  int32_t* positions;         // (n_head_kv, max_tokens)
  int32_t* n_tokens;          // (n_head_kv)
  int32_t n_head, n_head_kv, head_dim, page_tokens, max_pages, max_tokens;
  double rope_base;
  // A prompt (rope_kv_append_rows) when pos is null: row r of the grid is at position pos0 + r, slot slot0 + r, and
  // its rotated k and its v also go to k_out / v_out (n_rows, n_head_kv, head_dim).
  int32_t pos0, slot0, n_rows;
  __nv_bfloat16* k_out;
  __nv_bfloat16* v_out;
};

__global__ void __launch_bounds__(kThreads) rope_kv_append_kernel(const RopeAppendArgs a) {
  const int32_t g = blockIdx.x;  // kv-head
  const int32_t D = a.head_dim, half = D / 2, group = a.n_head / a.n_head_kv;
  pdl_wait();  // q, k, v come from the previous kernel (pdl.cuh)
  pdl_trigger();
  const bool prompt = a.pos == nullptr;
  const int32_t r = blockIdx.y;  // the prompt's row (0 in a decode step)
  const int32_t p = prompt ? a.pos0 + r : *a.pos;
  const int32_t slot = prompt ? a.slot0 + r : a.n_tokens[g];
  // A full head drops the token's key and value rather than write past the store; its queries are still rotated.
  const bool full = slot >= a.max_tokens;
  const float* qkv = a.qkv + static_cast<size_t>(r) * (a.n_head + 2 * a.n_head_kv) * D;
  __nv_bfloat16* q_out = a.q_out + static_cast<size_t>(r) * a.n_head * D;
  const size_t dense = (static_cast<size_t>(r) * a.n_head_kv + g) * D;  // row (r, g) of k_out and v_out
  __shared__ float cos_t[kMaxHalf], sin_t[kMaxHalf];
  // 64 sin/cos pairs per block (angles in double, rope.cuh): nothing next to the GEMMs.
  for (int32_t i = threadIdx.x; i < half; i += kThreads) rope_cos_sin(a.rope_base, i, D, p, &cos_t[i], &sin_t[i]);
  __syncthreads();

  const int32_t page = full ? 0 : a.page_table[static_cast<size_t>(g) * a.max_pages + slot / a.page_tokens];
  const int32_t row = slot % a.page_tokens;
  __nv_bfloat16* k_dst =
      reinterpret_cast<__nv_bfloat16*>(a.pool + static_cast<size_t>(page) * a.page_bytes) + static_cast<size_t>(row) * D;
  __nv_bfloat16* v_dst = k_dst + static_cast<size_t>(a.page_tokens) * D;

  // Work items: (head, pair) over the group's query heads and the key head, then the value row's pairs.
  const int32_t n_rot_items = (group + 1) * half;
  for (int32_t w = threadIdx.x; w < (full ? group * half : n_rot_items + half); w += kThreads) {
    if (w < n_rot_items) {
      const int32_t j = w / half, i = w % half;  // j < group: query head g*group + j; j == group: the key head
      const int32_t src_head = j < group ? g * group + j : a.n_head + g;
      const float2 x = *reinterpret_cast<const float2*>(qkv + static_cast<size_t>(src_head) * D + 2 * i);
      const float2 r = rope_rotate(x.x, x.y, cos_t[i], sin_t[i]);
      const __nv_bfloat162 rot = __floats2bfloat162_rn(r.x, r.y);
      __nv_bfloat16* dst = j < group ? q_out + static_cast<size_t>(src_head) * D : k_dst;
      *reinterpret_cast<__nv_bfloat162*>(dst + 2 * i) = rot;
      if (prompt && j == group) *reinterpret_cast<__nv_bfloat162*>(a.k_out + dense + 2 * i) = rot;
    } else {
      const int32_t i = w - n_rot_items;
      const float2 x =
          *reinterpret_cast<const float2*>(qkv + static_cast<size_t>(a.n_head + a.n_head_kv + g) * D + 2 * i);
      const __nv_bfloat162 v = __floats2bfloat162_rn(x.x, x.y);
      *reinterpret_cast<__nv_bfloat162*>(v_dst + 2 * i) = v;
      if (prompt) *reinterpret_cast<__nv_bfloat162*>(a.v_out + dense + 2 * i) = v;
    }
  }
  if (full) return;
  if (prompt) {  // nothing here reads n_tokens: row 0 sets the head's count for the whole prompt
    if (threadIdx.x == 0) {
      a.positions[static_cast<size_t>(g) * a.max_tokens + slot] = p;
      if (r == 0) a.n_tokens[g] = a.slot0 + a.n_rows;
    }
    return;
  }
  __syncthreads();  // every thread has read n_tokens[g] before it moves
  if (threadIdx.x == 0) {
    a.positions[static_cast<size_t>(g) * a.max_tokens + slot] = p;
    a.n_tokens[g] = slot + 1;
  }
}

}  // namespace

namespace {

Status check_and_fill(const float* qkv, int32_t n_head, float rope_base, void* q_out, const PagedKvView& kv,
                      RopeAppendArgs* a) {
  if (kv.dtype != KvDtype::BF16) return Status::error("rope_kv_append: only bf16 pages");
  if (kv.n_seq != 1) return Status::error("rope_kv_append: one sequence (batch 1)");
  if (kv.head_dim <= 0 || kv.head_dim % 2 != 0 || kv.head_dim / 2 > kMaxHalf)
    return Status::error("rope_kv_append: head_dim must be even and at most 128");
  if (kv.n_head_kv <= 0 || n_head <= 0 || n_head % kv.n_head_kv != 0)
    return Status::error("rope_kv_append: n_head must be a positive multiple of n_head_kv");
  if (kv.page_tokens <= 0 || kv.max_pages <= 0 || kv.max_tokens <= 0)
    return Status::error("rope_kv_append: empty page table");
  if (!qkv || !q_out || !kv.pool || !kv.page_table || !kv.positions || !kv.n_tokens)
    return Status::error("rope_kv_append: null pointer");
  *a = RopeAppendArgs{};
  a->qkv = qkv;
  a->q_out = static_cast<__nv_bfloat16*>(q_out);
  // The view's pointers are const because attention only reads them; the store that owns them is device memory
  // this op is documented to write (the new slot's K/V row, its position, the head's count).
  a->pool = static_cast<uint8_t*>(const_cast<void*>(kv.pool));
  a->page_bytes = kv.page_bytes();
  a->page_table = kv.page_table;
  a->positions = const_cast<int32_t*>(kv.positions);
  a->n_tokens = const_cast<int32_t*>(kv.n_tokens);
  a->n_head = n_head;
  a->n_head_kv = kv.n_head_kv;
  a->head_dim = kv.head_dim;
  a->page_tokens = kv.page_tokens;
  a->max_pages = kv.max_pages;
  a->max_tokens = kv.max_tokens;
  a->rope_base = rope_base;
  a->n_rows = 1;
  return Status::success();
}

}  // namespace

Status rope_kv_append(const float* qkv, const int32_t* pos, int32_t n_head, float rope_base, void* q_out,
                      const PagedKvView& kv, void* stream) {
  RopeAppendArgs a;
  if (Status s = check_and_fill(qkv, n_head, rope_base, q_out, kv, &a); !s.ok()) return s;
  if (!pos) return Status::error("rope_kv_append: null pointer");
  a.pos = pos;
  return cuda_status(
      launch_pdl(rope_kv_append_kernel, dim3(kv.n_head_kv), dim3(kThreads), 0, static_cast<cudaStream_t>(stream), a),
      "rope_kv_append launch");
}

Status rope_kv_append_rows(const float* qkv, int32_t n_rows, int32_t pos0, int32_t slot0, int32_t n_head,
                           float rope_base, void* q_out, void* k_out, void* v_out, const PagedKvView& kv,
                           void* stream) {
  RopeAppendArgs a;
  if (Status s = check_and_fill(qkv, n_head, rope_base, q_out, kv, &a); !s.ok()) return s;
  if (!k_out || !v_out) return Status::error("rope_kv_append_rows: null pointer");
  if (n_rows <= 0 || n_rows > 65535 || pos0 < 0 || slot0 < 0 || static_cast<int64_t>(slot0) + n_rows > kv.max_tokens)
    return Status::error("rope_kv_append_rows: rows " + std::to_string(slot0) + " + " + std::to_string(n_rows) +
                         " do not fit the store's " + std::to_string(kv.max_tokens) + " slots (or n_rows > 65535)");
  a.pos0 = pos0, a.slot0 = slot0, a.n_rows = n_rows;
  a.k_out = static_cast<__nv_bfloat16*>(k_out);
  a.v_out = static_cast<__nv_bfloat16*>(v_out);
  return cuda_status(launch_pdl(rope_kv_append_kernel, dim3(kv.n_head_kv, n_rows), dim3(kThreads), 0,
                                static_cast<cudaStream_t>(stream), a),
                     "rope_kv_append_rows launch");
}

}  // namespace longctx::cuda
