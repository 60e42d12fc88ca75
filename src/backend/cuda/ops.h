// The element-wise and row-wise ops of a llama decode step on the device, behind the plain
// interface of cuda_backend.h: no CUDA header, device pointers as void* / typed pointers, streams as opaque handles,
// every call returns a Status (a bad shape is refused before anything is launched).
//
// Dtypes follow one rule: the residual stream and everything a GEMM writes are f32 (cuBLASLt accumulates in f32 and
// the residual adds its output in place), everything a GEMM or the attention kernel reads is bf16. Scalars that change
// every step (the token id, the position) are read from device memory, so a CUDA graph captured once replays for
// every step. One kernel per op, each in its own file beside its launcher (DESIGN.md, Style 3).
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cuda/cuda_backend.h"

namespace longctx::cuda {

// x (n_tokens, n_embd) f32: row t = table[tokens[t]], table: (n_vocab, n_embd) bf16, tokens in device memory. A
// token outside [0, n_vocab) gives a row of NaN, so a bad id shows in the logits (a graph replay cannot return an
// error). n_tokens: 1 in a decode step, the prompt's length in a prefill.
Status embedding_lookup(const void* table, const int32_t* tokens, int32_t n_tokens, int32_t n_vocab, int32_t n_embd,
                        float* x, void* stream = nullptr);

// y[r] (bf16) = x[r] / sqrt(mean(x[r]^2) + eps) * w (bf16), for n_rows rows of n f32 values. Sum of squares in f32.
Status rmsnorm(const float* x, const void* w, void* y, int32_t n_rows, int32_t n, float eps, void* stream = nullptr);

// RoPE ("RoFormer: Enhanced Transformer with Rotary Position Embedding") of one token's q and k, and the append of
// its k and v into one layer of the paged KV store, in one launch: the new k must be rotated before it is stored,
// and all three come out of one fused QKV product.
//   qkv: (n_head + 2 n_head_kv, head_dim) f32: q heads, then k heads, then v heads (the fused product's rows).
//   q_out: (n_head, head_dim) bf16, rotated: the query of decode_attention.
//   Rotation in adjacent pairs (x[2i], x[2i+1]) by angle pos * base^(-2i/head_dim), angles in double, as the CPU
//   backend's llama forward does (cpu::RopeOrder::Adjacent: the GGUF converter permutes Q and K to this order).
//   kv: the layer's view (bf16 pages, n_seq = 1); head h's new slot is n_tokens[h]: k and v go to page
//   page_table[h][slot / page_tokens], row slot % page_tokens, positions[h][slot] = *pos, then n_tokens[h] += 1.
//   The caller guarantees the pages exist (the slot's page in the table); a head already at max_tokens drops the
//   token's key and value (its count stays), its queries are still rotated.
Status rope_kv_append(const float* qkv, const int32_t* pos, int32_t n_head, float rope_base, void* q_out,
                      const PagedKvView& kv, void* stream = nullptr);
// The same for a prompt of n_rows tokens at positions pos0 .. pos0 + n_rows - 1 (a prefill), into slots slot0 ..
// slot0 + n_rows - 1 of every head: qkv (n_rows, n_head + 2 n_head_kv, head_dim) f32, q_out (n_rows, n_head,
// head_dim) bf16, and the rotated keys and the values also densely into k_out and v_out (n_rows, n_head_kv,
// head_dim) bf16, the layout prefill_attention reads. Positions and slots come from the host (a prefill is not
// replayed); n_tokens[h] becomes slot0 + n_rows. The caller guarantees slot0 + n_rows <= max_tokens.
Status rope_kv_append_rows(const float* qkv, int32_t n_rows, int32_t pos0, int32_t slot0, int32_t n_head,
                           float rope_base, void* q_out, void* k_out, void* v_out, const PagedKvView& kv,
                           void* stream = nullptr);

// h (n_rows, n_ff) bf16 = silu(gate) * up, gate_up: (n_rows, 2, n_ff) f32 (the fused gate/up product of each row:
// gate, then up).
Status swiglu(const float* gate_up, void* h, int32_t n_rows, int32_t n_ff, void* stream = nullptr);
// The same with gelu (tanh approximation, as gemma and cpu::GatedActivation::GeluTanh): h = gelu(gate) * up.
Status geglu(const float* gate_up, void* h, int32_t n_rows, int32_t n_ff, void* stream = nullptr);

// x += y over n f32 values. The decode step folds its residual adds into the GEMMs (beta = 1); this op is for
// architectures whose residual branch ends in a norm (gemma3's post-norms), where the add cannot fold.
Status add_in_place(float* x, const float* y, int64_t n, void* stream = nullptr);

// *index = argmax(logits[0..n)), the smallest index among equal maxima (as std::max_element); a NaN logit wins, so
// a broken forward is not hidden. One launch: blocks reduce their share and the last block to finish publishes the
// result and resets the workspace. workspace: argmax_workspace_bytes() of device memory, zeroed once before the first
// call (device_fill_bytes(ws, 0, ...)); it is left zeroed after every call, so a graph can replay it.
size_t argmax_workspace_bytes();
Status argmax(const float* logits, int32_t n, int32_t* index, void* workspace, void* stream = nullptr);

// y = W x at batch 1, bf16 W (n_out, n_in) row-major, f32 accumulation, with the step's neighbours fused in
// (gemv.cu says why this exists beside cuBLASLt). Input: x_bf16 (n_in), or x_f32 (n_in) with norm_w (n_in) bf16,
// which applies RMSNorm first, rounded to bf16 exactly as the rmsnorm op. Output by epilogue:
//   Store:  y (n_out) f32 = W x;   Add: y += W x (the residual add);
//   SwiGLU: rows [0, n_out/2) are gate rows and [n_out/2, n_out) their up rows: h (n_out/2) bf16 = silu(g) * u.
//   RopeAppend: W is the fused QKV product (rows: n_head q heads, then the k heads, then the v heads of the view,
//     head_dim each), and its outputs go where rope_kv_append would put them from y, with the same bits: q rotated
//     into q_out, k rotated and v appended to each head's next slot of kv, its position and count moved on; no y.
//     rope.done: one int32 of device memory, zero before the first call; each call leaves it zero (the last block
//     to finish moves the counts on, after every block has read them).
// n_out even, n_in a multiple of 8 and at most 16384; W and x 16-byte aligned.
enum class GemvEpilogue { Store, Add, SwiGLU, RopeAppend };
struct GemvRopeAppend {
  const int32_t* pos = nullptr;  // device: the token's position
  int32_t n_head = 0;
  float rope_base = 0.0f;
  void* q_out = nullptr;  // (n_head, head_dim) bf16
  PagedKvView kv;         // bf16 pages, n_seq = 1; the caller guarantees each head's next slot has its page
  int32_t* done = nullptr;
};
struct GemvArgs {
  const void* w = nullptr;
  int32_t n_out = 0, n_in = 0;
  const void* x_bf16 = nullptr;
  const float* x_f32 = nullptr;
  const void* norm_w = nullptr;
  float eps = 1e-5f;
  GemvEpilogue epilogue = GemvEpilogue::Store;
  float* y = nullptr;
  void* h = nullptr;
  GemvRopeAppend rope;
  int32_t unroll = 0;  // loads in flight per lane: 0 chosen per product (gemv.cu), or 4 or 8 (A/B timings)
};
Status gemv(const GemvArgs& a, void* stream = nullptr);

// Asks L2 to fetch [device_ptr, device_ptr + bytes) (16-byte aligned and sized) and returns at once: the transfer
// runs beside whatever the stream does next. A hint only (l2_prefetch.cu says when it pays). EvictLast marks the
// lines to be kept ahead of others, so that a stream of other data through L2 does not push them out first.
enum class L2Priority { Normal, EvictLast };
Status l2_prefetch(const void* device_ptr, size_t bytes, L2Priority priority, void* stream = nullptr);

}  // namespace longctx::cuda
