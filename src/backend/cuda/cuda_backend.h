// The CUDA backend behind a plain C++ interface (DESIGN.md, Layers): no CUDA header is included here, so the layers
// above (kv, model, engine) and their tests compile without the toolkit. Pointers named "device" are device memory;
// a stream is passed as an opaque handle (a cudaStream_t, or nullptr for the default stream).
//
// Every call returns a Status instead of throwing or aborting: no device, out of memory, an unsupported shape and a
// failed launch all come back as one line of text, with nothing leaked.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace longctx::cuda {

class Status {
 public:
  static Status success() { return Status(); }
  static Status error(std::string message) { return Status(std::move(message)); }
  bool ok() const { return message_.empty(); }
  const std::string& message() const { return message_; }

 private:
  Status() = default;
  explicit Status(std::string m) : message_(m.empty() ? std::string("unknown CUDA error") : std::move(m)) {}
  std::string message_;
};

struct DeviceInfo {
  std::string name;
  int32_t cc_major = 0, cc_minor = 0;
  int32_t n_sm = 0;
  size_t global_bytes = 0;
  size_t l2_bytes = 0;
};

// Fails with a clear message when the build has no device, the driver is missing, or no GPU is present.
Status device_query(DeviceInfo* info);

Status device_alloc(void** device_ptr, size_t bytes);  // fails (nothing allocated) when the device is out of memory
Status device_free(void* device_ptr);
Status copy_to_device(void* device_dst, const void* host_src, size_t bytes);
// In the default stream's order, without waiting for the work before it: the driver stages pageable host memory at
// once, so host_src may be reused when this returns, and the host runs ahead of the GPU.
Status copy_to_device_async(void* device_dst, const void* host_src, size_t bytes);
Status copy_to_host(void* host_dst, const void* device_src, size_t bytes);
// Page-locked host memory, and a copy into it in the default stream's order that does not wait (the host reads
// host_dst only after device_synchronize).
Status host_alloc_pinned(void** host_ptr, size_t bytes);
Status host_free_pinned(void* host_ptr);
Status copy_to_host_async(void* pinned_host_dst, const void* device_src, size_t bytes);
Status copy_on_device(void* device_dst, const void* device_src, size_t bytes);  // in the default stream's order
Status device_fill_bytes(void* device_ptr, uint8_t value, size_t bytes);  // 0xff poisons f16/bf16 with NaN
Status device_synchronize();
// Whether kernels launch with programmatic dependent launch (pdl.cuh; on unless set off, for A/B timings). A
// setting of the whole process.
void set_programmatic_launch(bool on);
bool programmatic_launch();
// The device's copy bandwidth: device-to-device copies of `bytes` (read + write counted), best of n_reps after one
// warm-up, in bytes per second. Allocates 2 x bytes for the call.
Status device_copy_bandwidth(size_t bytes, int32_t n_reps, double* bytes_per_s);

// ---------------------------------------------------------------------------------------------------------------
// Decode attention over the paged KV store.

enum class KvDtype { F16, BF16 };

// Packed pages a view may hold beside its plain ones: KIVI ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
// Cache"), the CPU's quantization (cpu::kv_page_codec.h) in the device layout of kivi_layout.h.
enum class KvPacking { None, Kivi2, Kivi4, Kivi8 };
int kv_packing_bits(KvPacking f);  // 0 for None

// Marks the few inline functions here that kernels call too; this header is also read by host-only compilers.
#ifdef __CUDACC__
#define LONGCTX_HOST_DEVICE __host__ __device__
#else
#define LONGCTX_HOST_DEVICE
#endif

// Device view of one layer's paged KV cache for a batch of sequences, the device twin of cpu::KvLayerView.
// A page holds one (sequence, layer, kv-head)'s keys (page_tokens, head_dim) then values (page_tokens, head_dim),
// both in `dtype`; slot i of a head lives in page page_table[i / page_tokens], row i % page_tokens. Heads may hold
// different numbers of tokens (eviction, per-head budgets) and positions need not be contiguous.
struct PagedKvView {
  const void* pool = nullptr;           // device; page p starts at pool + p * page_bytes()
  const int32_t* page_table = nullptr;  // device (n_seq, n_head_kv, max_pages)
  const int32_t* positions = nullptr;   // device (n_seq, n_head_kv, max_tokens) original position of each slot
  const int32_t* n_tokens = nullptr;    // device (n_seq, n_head_kv)
  int32_t n_seq = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;     // 64 or 128
  int32_t page_tokens = 0;  // a multiple of 16
  int32_t max_pages = 0;
  int32_t max_tokens = 0;
  KvDtype dtype = KvDtype::BF16;
  // KIVI keeps a head's recent tokens at full precision until a page fills (then seals it packed), so a head holds
  // packed pages and plain ones: page i of head (s, h) is packed when page_packed[(s, h, i)] != 0, and its id then
  // indexes packed_pool (pages of packed_page_bytes()) instead of pool. Any mix is read; all plain when None.
  KvPacking packing = KvPacking::None;
  const void* packed_pool = nullptr;      // device; packed page p starts at packed_pool + p * packed_page_bytes()
  const uint8_t* page_packed = nullptr;   // device (n_seq, n_head_kv, max_pages)
  LONGCTX_HOST_DEVICE size_t page_bytes() const { return 2 * static_cast<size_t>(page_tokens) * head_dim * 2; }
  size_t packed_page_bytes() const;
};

// Lays out one KIVI page for the device from its quantization: the codes and f16 scales and mins the CPU codec
// stores (one code a byte here, < 2^bits). Host memory in and out; dst holds packed_page_bytes() of a view of this
// packing, page_tokens and head_dim (a multiple of 16, and 64 or 128). A page's value = min + scale * code, the
// same on both backends; the kernel rounds it to f16 once (fma) before its tensor-core products.
struct KiviPageCodes {
  const uint8_t* k_codes = nullptr;   // (page_tokens, head_dim)
  const uint16_t* k_scale = nullptr;  // (head_dim) f16 bits: one (scale, min) per channel over the page's tokens
  const uint16_t* k_min = nullptr;    // (head_dim)
  const uint8_t* v_codes = nullptr;   // (page_tokens, head_dim)
  const uint16_t* v_scale = nullptr;  // (page_tokens, head_dim / 32) f16 bits: per token and group of 32 channels
  const uint16_t* v_min = nullptr;    // (page_tokens, head_dim / 32)
};
Status kivi_page_pack(KvPacking f, int32_t page_tokens, int32_t head_dim, const KiviPageCodes& page, uint8_t* dst);

struct DecodeAttentionParams {
  int32_t n_head = 0;  // query heads; n_head / n_head_kv (the GQA group) must be 1..8
  float scale = 1.0f;
  int32_t window = 0;  // sliding window: a query at p sees keys at (p - window, p]; 0 means unlimited
};

// How one decode step is cut: the sequence is split into n_splits chunks of split_tokens (Flash-Decoding), so that
// even one sequence fills every multiprocessor. The partial softmax states are merged by the last block of each
// kv-head to finish (InKernel: one launch, a counter per kv-head at the workspace's start), or by a second small
// kernel (Kernel: no counters to keep).
enum class DecodeMerge { InKernel, Kernel };
struct DecodeAttentionPlan {
  int32_t n_splits = 1;
  int32_t split_tokens = 0;
  DecodeMerge merge = DecodeMerge::InKernel;
  size_t workspace_bytes = 0;  // device scratch the step needs (0 when n_splits == 1)
  size_t counter_bytes = 0;    // of which the counters, at its start (0 when n_splits == 1)
};

// n_tokens_max: the most tokens any head of the batch holds (the host knows it; the kernels read n_tokens on the
// device). n_splits_override > 0 forces the split count (tests use it to cover both paths).
Status decode_attention_plan(const DecodeAttentionParams& p, const PagedKvView& kv, int32_t n_tokens_max,
                             DecodeAttentionPlan* plan, int32_t n_splits_override = 0);

// One query token per sequence. q: device (n_seq, n_head, head_dim) in kv.dtype; q_pos: device (n_seq);
// out: device (n_seq, n_head, head_dim) in kv.dtype. Causal by position: a query sees keys whose position is <= its
// own (and inside the window); a query that sees no key gets zeros, as on the CPU backend.
// Scores and the softmax are computed in f32, products on tensor cores with f32 accumulation.
Status decode_attention(const DecodeAttentionParams& p, const DecodeAttentionPlan& plan, const void* q,
                        const int32_t* q_pos, const PagedKvView& kv, void* out, void* workspace,
                        void* stream = nullptr);
// Zeroes the plan's counters in a workspace: once after allocating it (or after writing over it), before the first
// decode_attention with DecodeMerge::InKernel; every call leaves them zero again, so graphs replay it as it is.
Status decode_attention_workspace_init(const DecodeAttentionPlan& plan, void* workspace, void* stream = nullptr);

// ---------------------------------------------------------------------------------------------------------------
// Prefill attention: n_q query rows per head against n_kv keys and values held densely (the current chunk's K and V,
// or a prefix gathered ahead of it), on tensor cores (prefill_attention.cu). Query row i is at position q_offset + i,
// key j at position j: causal means row i sees keys j <= q_offset + i, and a window w > 0 further only j > position
// - w. Heads: query head h reads kv-head h / (n_head / n_head_kv) (GQA). Every tensor is (rows, heads, head_dim)
// with the given strides in elements (0: the packed (token, head, dim) layout of the QKV product), in `dtype`, the
// output too. Scores and the softmax in f32; P is rounded to `dtype` for its product with V, as FlashAttention does.
// A row that sees no key gets zeros.
enum class PrefillKernel {
  Auto,     // wgmma on Hopper (sm_90), mma.sync elsewhere
  MmaSync,  // FlashAttention-2's design, any device from sm_80
  Wgmma,    // FlashAttention-3's products (sm_90 only; refused elsewhere)
};
struct PrefillAttentionParams {
  int32_t n_q = 0, n_kv = 0;
  int32_t n_head = 0, n_head_kv = 0;
  int32_t head_dim = 0;  // 64 or 128
  int32_t q_offset = 0;
  bool causal = true;
  int32_t window = 0;  // needs causal
  float scale = 1.0f;
  KvDtype dtype = KvDtype::BF16;
  int64_t q_row_stride = 0, q_head_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0, o_row_stride = 0, o_head_stride = 0;
  PrefillKernel kernel = PrefillKernel::Auto;
};

// Pointers 16-byte aligned, strides multiples of 8 elements.
Status prefill_attention(const PrefillAttentionParams& p, const void* q, const void* k, const void* v, void* out,
                         void* stream = nullptr);

// ---------------------------------------------------------------------------------------------------------------
// The attention that queries paid to cached slots, for the token policies (the device twin of
// cpu::attention_scores): SnapKV's observation window (n_q = the window's rows at prefill end) and H2O's
// accumulation (n_q = 1, each decode step). For each sequence's n_q query rows and each query head, the softmax
// probabilities over the head's visible slots (causal by position, inside the window), summed over the rows and
// over the query heads sharing a kv-head, are added to scores. Plain and KIVI pages alike; f32 throughout.

struct AttentionScoresPlan {
  int32_t n_chunks = 1;
  size_t workspace_bytes = 0;  // device scratch the call needs
};

Status attention_scores_plan(const DecodeAttentionParams& p, const PagedKvView& kv, int32_t n_q, int32_t n_tokens_max,
                             AttentionScoresPlan* plan);

// q: device (n_seq, n_q, n_head, head_dim) in kv.dtype; q_pos: device (n_seq, n_q); scores: device
// (n_seq, n_head_kv, stride) f32, accumulated into (not cleared), stride >= kv.max_tokens; slots at or past a
// head's n_tokens are left as they are.
Status attention_scores(const DecodeAttentionParams& p, const AttentionScoresPlan& plan, int32_t n_q, const void* q,
                        const int32_t* q_pos, const PagedKvView& kv, float* scores, int32_t stride, void* workspace,
                        void* stream = nullptr);

}  // namespace longctx::cuda
