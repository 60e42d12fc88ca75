// The device kernels behind CudaBackend (cuda_engine.h): the ops of backend.h with its semantics, f32 activations in
// and out, over the KV page layout of the CPU codec (cpu/kv_page_codec.h). Plain C++ interface (no CUDA header),
// device pointers, every call returns a Status and refuses a bad shape before launching anything. Each op's kernel
// is in its own file, named after it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cuda/cuda_backend.h"
#include "core/ggml_type.h"

namespace longctx::cuda {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w over n_rows rows of n f32 values (w: n f32); x and y may alias. The sum
// of squares in double, as cpu::rmsnorm. (rmsnorm_f32.cu)
Status rmsnorm_f32(const float* x, const float* w, float* y, int64_t n_rows, int32_t n, float eps,
                   void* stream = nullptr);

// RoPE ("RoFormer: Enhanced Transformer with Rotary Position Embedding") in place on x (n, n_heads, head_dim), the
// first n_rot channels of each head, pairs (2i, 2i+1) (halves = false) or (i, i + n_rot/2) (halves = true), angle
// pos * base^(-2i/n_rot) in double, cos and sin rounded to f32, the rotation in f32 without contraction: the
// operations of cpu::rope. positions: device (n). (rope_f32.cu)
Status rope_f32(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim, int32_t n_rot,
                float base, bool halves, void* stream = nullptr);

// gate = act(gate) * up over n values: silu(g) = g / (1 + e^-g), or GELU's tanh form 0.5 g (1 + tanh(sqrt(2/pi)
// (g + 0.044715 g^3))). (gated_activation_f32.cu)
enum class GateAct { SiLU, GeluTanh };
Status gated_activation_f32(float* gate, const float* up, int64_t n, GateAct act, void* stream = nullptr);

// y (n, n_out) = x (n, n_in) W^T in f32, W (n_out, n_in) a GGUF tensor in any dequantize_supported format, each
// value decoded exactly (dequantize_unit.cuh) and multiplied with f32 x, f32 sums. One warp per output row reads the
// row once for all n rows of x (n <= 8). The decode product for the formats quant_gemv lacks (Q5_0, Q5_1), and the
// plain f32 reference path. n_in a multiple of 32 (256 for the K-quants). (matmul_f32.cu)
constexpr int32_t kMatmulF32MaxRows = 8;
Status matmul_f32(GgmlType type, const void* w, int32_t n_out, int32_t n_in, const float* x, int32_t n, float* y,
                  void* stream = nullptr);

// y (n) bf16 = x (n) f32 rounded to nearest even: the activations of the bf16 GEMMs and of quant_gemv. (to_bf16.cu)
Status f32_to_bf16(const float* x, void* y, int64_t n, void* stream = nullptr);
// y = x rounded to f16 (nearest even), and back: the queries into and the output out of the tensor-core prefill
// attention. (to_f16.cu)
Status f32_to_f16(const float* x, void* y, int64_t n, void* stream = nullptr);
Status f16_to_f32(const void* x, float* y, int64_t n, void* stream = nullptr);

// One layer of the paged KV store on the device as the kernels below read it (the device twin of
// backend.h's KvLayerView): pages in the CPU codec's layout, any format. Every array is device memory, built by the
// caller from the host view for each call. For kv-head h: pages [page_begin[h], page_begin[h+1]) of page_addr, page
// i holding slots [slot0[i + h] - slot0[page_begin[h] + h], ...) in its first rows (slot0 has n_pages + 1 entries a
// head, so head h's start at page_begin[h] + h), the slots' positions at positions[token_begin[h] + slot].
struct PagedLayer {
  const uint64_t* page_addr = nullptr;
  const uint8_t* page_fmt = nullptr;     // kPageF32, kPageF16, or a KIVI page's bits (2, 4, 8)
  const int32_t* page_begin = nullptr;   // (n_head_kv + 1)
  const int32_t* slot0 = nullptr;        // (n_pages + n_head_kv)
  const int32_t* token_begin = nullptr;  // (n_head_kv + 1)
  const int32_t* positions = nullptr;    // (sum of the heads' tokens); null: every slot visible to every query
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;  // at most kPagedMaxHeadDim
  int32_t page_tokens = 0;
};
constexpr int32_t kPagedMaxHeadDim = 512;
constexpr int kPageF32 = 0, kPageF16 = 1;  // page_fmt codes; 2, 4 and 8 are KIVI pages of that many bits
// KIVI pages need head_dim a multiple of 32 and page_tokens a multiple of 4 (the codec's rule).

struct PagedAttentionParams {
  int32_t n_head = 0;  // a multiple of n_head_kv
  float scale = 1.0f;
  int32_t window = 0;  // a query at p sees keys at positions in (p - window, p]; 0: unlimited
};

// q, out: device (n, n_head, head_dim) f32; q_pos: device (n). Causal by position; online softmax in f32 over the
// head's pages, packed pages decoded in place as the CPU codec decodes them; a query that sees no key gets zeros.
// Few rows (decode) split each head's pages into ranges reduced by blocks of their own and combined after
// ("Flash-Decoding for long-context inference"), so a long cache is read by many SMs at once: max_pages is the most
// pages any kv-head has, workspace device memory of paged_attention_workspace_bytes(...) bytes. (paged_attention.cu)
size_t paged_attention_workspace_bytes(int32_t n, int32_t n_head, int32_t head_dim, int32_t max_pages);
Status paged_attention(const PagedAttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                       const PagedLayer& kv, int32_t max_pages, float* out, void* workspace, void* stream = nullptr);

// The softmax probabilities rows [first_row, n) of q paid to each slot, reduced over those rows and the query heads of
// each kv-head into scores: device (n_head_kv, stride) f32, stride >= every head's tokens. Sum: added into scores;
// max: scores[s] = max(scores[s], p) with p >= 0 (the caller starts the buffer at -1 to tell untouched slots). A row
// that sees no key adds nothing; a row that sees some writes every slot of its head (0 for those it cannot see), as
// cpu::attention_scores_reference does. Few rows (decode) split each head's pages into ranges of their own blocks:
// max_pages is the most pages any kv-head has, workspace device memory of
// paged_attention_scores_workspace_bytes(n - first_row, ...) bytes (null when that is 0). (paged_attention_scores.cu)
size_t paged_attention_scores_workspace_bytes(int32_t n_rows, int32_t n_head, int32_t max_pages);
Status paged_attention_scores(const PagedAttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                              int32_t first_row, const PagedLayer& kv, int32_t max_pages, float* scores,
                              int32_t stride, bool reduce_max, void* workspace, void* stream = nullptr);

// An F32 or F16 page compacted in place: row keep[i] moves to row i (keep: host, ascending, keep[i] >= i), the rows
// from n_keep on unchanged, byte for byte what cpu::kv_page_compact leaves. One launch, nothing uploaded; pages of at
// most kCompactMaxRows tokens. (kv_rows_write.cu)
constexpr int32_t kCompactMaxRows = 1024;
// Rows [src_row0, src_row0 + n) of an F32 or F16 page to rows [dst_row0, + n) of another, byte for byte what
// cpu::kv_page_copy_rows does. One launch. (kv_rows_write.cu)
Status kv_page_copy_rows(bool f16, int32_t page_tokens, int32_t head_dim, const uint8_t* src, int32_t src_row0,
                         int32_t n, uint8_t* dst, int32_t dst_row0, void* stream = nullptr);
Status kv_page_compact(bool f16, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
                       int32_t n_keep, void* stream = nullptr);

// n rows of keys and values into F32 or F16 pages of the codec's layout (keys channel-major (head_dim, page_tokens),
// then values (page_tokens, head_dim)): row i is k + i row_stride and v + i row_stride (head_dim f32 each), going to
// row dest_row[i] of the page at dest_page[i] (both device). F16 rounds to nearest even, as cpu::kv_page_write.
// (kv_rows_write.cu)
Status kv_rows_write(bool f16, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                     int64_t row_stride, const uint64_t* dest_page, const int32_t* dest_row, int32_t n,
                     void* stream = nullptr);

// Slots [0, n_rows) of every kv-head of the layer into dense f16 keys and values, k and v: device
// (n_head_kv, n_rows, head_dim), each value decoded as the CPU codec decodes it and rounded to f16 (exact for F16
// pages). Every head must hold n_rows slots; max_pages is the most pages a head has. (paged_gather.cu)
Status paged_gather_f16(const PagedLayer& kv, int32_t max_pages, int32_t n_rows, void* k, void* v,
                        void* stream = nullptr);
// Free and total device memory, in bytes.
Status device_memory_info(size_t* free_bytes, size_t* total_bytes);

}  // namespace longctx::cuda
