// The one backend interface (DESIGN.md, Layers): the ops the forward of every architecture needs, the attention over
// the paged KV store and the scores the policies ask for, and where KV pages live and how their bytes are written
// and read. backend/cpu and backend/cuda implement it; model/ and kv/ include this header and never a backend's own.
//
// Memory: every pointer an op takes is memory of the backend (host memory for cpu, device memory for cuda) unless
// its comment says "host". Activations come from alloc(); weights are the model's host objects, made readable by
// prepare() once (a device copies them and finds its copy by the host object's address afterwards). Ops are
// ordered as issued; to_host() waits for what came before it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/ggml_type.h"
#include "core/kv_format.h"
#include "core/memory_bandwidth.h"
#include "core/thread_pool.h"

namespace longctx {

// ---------------------------------------------------------------------------------------------------------------
// Types the model and the policies describe work with.

enum class RopeOrder {
  Adjacent,  // rotate pairs (x[2i], x[2i+1]) — llama GGUFs (the converter permutes Q and K to this order)
  Halves,    // rotate pairs (x[i], x[i + n_rot/2]) — "NeoX" order, gemma
};

enum class GatedActivation {
  SiLU,      // SwiGLU: silu(gate) * up
  GeluTanh,  // GeGLU with the tanh approximation of GELU
};

// A weight matrix (n_out, n_in) in a GGUF format, in host memory (the file's mapping or synthetic weights).
struct Weight {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t n_out = 0;
  int64_t n_in = 0;
};

// One product of a matmul call: y (n, w.n_out) = x (n, w.n_in) W^T.
struct MatmulOutput {
  const Weight* w = nullptr;
  float* y = nullptr;  // overlapping no other output and not x
};

// One (layer, kv-head) of the paged KV store as the attention reads it: page p holds slots [slot0[p], slot0[p+1])
// in its first rows, at most page_tokens of them, in formats[p] (kv/page_codec.h describes the bytes). Page
// addresses are the pool's memory (the backend's); positions are host memory.
struct KvHeadView {
  std::vector<const uint8_t*> pages;   // (n_pages)
  std::vector<KvFormat> formats;       // (n_pages)
  std::vector<int32_t> slot0;          // (n_pages + 1) first slot of each page; slot0[n_pages] == n_tokens
  const int32_t* positions = nullptr;  // host (n_tokens) original position of each slot, ascending
  int32_t n_tokens = 0;
  // Per page, the element-wise min then max of its keys ((n_pages, 2, head_dim) f32, host), where the store keeps
  // them (Quest's page summaries); null otherwise. Attention does not read it.
  const float* key_summary = nullptr;
  int32_t n_pages() const { return static_cast<int32_t>(pages.size()); }
  int32_t page_rows(int32_t p) const { return slot0[static_cast<size_t>(p) + 1] - slot0[static_cast<size_t>(p)]; }
  int32_t page_of(int32_t slot) const;  // the page holding a slot (binary search)
};

// The view of a head restricted to some of its pages (Quest's query-aware pages, a speculative draft's part of the
// cache): pages in ascending order. The kept slots are renumbered from 0 in order; their original positions are
// gathered into `positions` (host; the returned view points into it, so it must outlive the view). key_summary is
// left null.
KvHeadView keep_pages(const KvHeadView& head, const std::vector<int32_t>& pages, std::vector<int32_t>& positions);

struct KvLayerView {
  std::vector<KvHeadView> heads;  // (n_head_kv)
  int32_t page_tokens = 0;
  int32_t head_dim = 0;
  int32_t n_head = 0;  // query heads of the q handed to a read filter with this view (set by the forward); 0: unset
};

struct AttentionParams {
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  float scale = 1.0f;
  int32_t window = 0;  // sliding window: a query at p sees keys at positions in (p - window, p]; 0: unlimited
};

// How attention_scores folds the probabilities of many queries into one score per slot: their sum (SnapKV's vote,
// H2O's accumulation), or their maximum (KVzip: a token matters if any query of the reconstruction needs it).
enum class ScoreReduce { Sum, Max };

// Where one row goes in KvPageMemory::write_rows: a page of the pool and a row in it.
struct KvRowDest {
  uint8_t* page = nullptr;
  int32_t row = 0;
};

// Where the parts of a packed (KIVI) page start, in bytes from the page's start: kv/page_codec's layout, which every
// backend's codec follows. Key codes channel-major (head_dim rows of page_tokens codes), key scale and min f16 per
// channel, value codes token-major, value scale and min f16 per (token, group of kKiviValueGroup channels).
constexpr int32_t kKiviValueGroup = 32;
struct KiviPageLayout {
  int bits;
  size_t k_codes, k_scale, k_min, v_codes, v_scale, v_min, total;
  size_t k_row_bytes, v_row_bytes;  // one channel's key codes, one token's value codes
};
KiviPageLayout kivi_page_layout(KvFormat f, int32_t page_tokens, int32_t head_dim);
// Bytes of one page (keys then values); for the packed formats head_dim must be a multiple of kKiviValueGroup and
// page_tokens a multiple of 4 (throws Error otherwise).
size_t kv_page_bytes(KvFormat f, int32_t page_tokens, int32_t head_dim);

// RoPE's two halves on the host, for code that turns vectors there (StreamingLLM's in-cache positions, Expected
// Attention's query statistics): the cos and sin (n_rot / 2) of position pos (angles formed in double), then the
// rotation of x (n_heads, head_dim) by them. Backend::rope is exactly the two in a row for each token.
void rope_angles(int32_t pos, int64_t n_rot, float base, float* cos_t, float* sin_t);
void rope_rotate(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float* cos_t, const float* sin_t,
                 RopeOrder order);

// ---------------------------------------------------------------------------------------------------------------
// Where KV pages live, and their bytes written and read in every format (the one codec description, kv/page_codec
// in words; each backend implements the same bytes). The store (kv/kv_store.h) keeps all bookkeeping on the host and
// calls these for the bytes.
class KvPageMemory {
 public:
  virtual ~KvPageMemory() = default;
  // Slabs of pages: reserve address space (committed as written, on the host) and give it back.
  virtual uint8_t* map(size_t bytes) = 0;  // nullptr when it cannot be had
  virtual void unmap(uint8_t* base, size_t bytes) = 0;
  // A run of pages inside a slab that holds no live page any more: its memory may go back to the system.
  virtual void release(uint8_t* base, size_t bytes) = 0;

  // Rows of f32 keys and values written into pages: row i is k + i * row_stride, v + i * row_stride (head_dim
  // floats each), going to dests[i] (host) in a page of format f. k and v are the backend's memory.
  virtual void write_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                          int64_t row_stride, const KvRowDest* dests, int32_t n) = 0;
  // The same from host memory, rows [row0, row0 + n) of one page (a packed format needs a whole page).
  virtual void write_page_rows_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k,
                                    const float* v, int32_t row0, int32_t n, uint8_t* page) = 0;
  // Rows [row0, row0 + n) of a page decoded to f32 into host memory out (n, head_dim).
  virtual void read_keys_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0,
                              int32_t n, float* out) = 0;
  virtual void read_values_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page,
                                int32_t row0, int32_t n, float* out) = 0;
  // Moves rows keep[0..n_keep) (host, ascending) of a page to rows [0, n_keep), in order (packed pages keep the
  // scales they were encoded with).
  virtual void compact(KvFormat f, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
                       int32_t n_keep) = 0;
  // Rows [src_row0, src_row0 + n) of page src to rows [dst_row0, dst_row0 + n) of another page dst, both F32 or
  // both F16 (the store's packing of its open pages), in the memory's own order (no round trip through the host).
  virtual void copy_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* src, int32_t src_row0,
                         int32_t n, uint8_t* dst, int32_t dst_row0) = 0;
  // Copies a page's bytes to another page of the same format (a shared page made private before it is written).
  virtual void copy_page(uint8_t* dst, const uint8_t* src, size_t bytes) = 0;
};

// ---------------------------------------------------------------------------------------------------------------
// The ops.

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // "cpu", "cuda"
  // Whether the backend's memory is the host's (its pointers may be read and written in place by host code).
  virtual bool host_memory() const { return false; }
  // The most rows (tokens) one forward may stack, as several sequences' decode steps, while every row's results
  // stay the bits that row gets alone: how far the matmul's per-row path goes. 1: no such promise.
  virtual int32_t batch_invariant_rows() const { return 1; }
  // The copy bandwidth of the backend's memory (read + write bytes per second, the best of several copies): the
  // roofline decode is held against (bench's "% of copy"). Throws Error when the device fails.
  virtual CopyBandwidth copy_bandwidth() = 0;

  // Activation memory of n floats, freed with the returned handle.
  struct FreeFn {
    Backend* backend = nullptr;
    void operator()(float* p) const { backend->free_floats(p); }
  };
  using Floats = std::unique_ptr<float, FreeFn>;
  Floats alloc_floats(size_t n) { return Floats(allocate_floats(n), FreeFn{this}); }
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void to_backend(void* dst, const void* host_src, size_t bytes) = 0;

  // Makes the weights and norm vectors the ops will be given readable by this backend. A device checks the bytes
  // against its free memory first and throws Error saying both when they do not fit.
  virtual void prepare(const std::vector<const Weight*>& matrices,
                       const std::vector<const std::vector<float>*>& vectors) = 0;

  virtual KvPageMemory& kv_memory() = 0;

  // x (n, E) = scale * table[tokens[t]] (tokens: host, checked against the table by the caller).
  virtual void embed(const Weight& table, const int32_t* tokens, int32_t n, float scale, float* x) = 0;
  // outs[i].y (n, n_out_i) = x (n, n_in) W_i^T for every output; all weights share n_in.
  virtual void matmul(const MatmulOutput* outs, int32_t n_outs, const float* x, int32_t n) = 0;
  // y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, n_rows rows of dim values; x and y may alias. w: a prepared vector.
  virtual void rmsnorm(const float* x, const std::vector<float>& w, float* y, int64_t n_rows, int64_t dim,
                       float eps) = 0;
  // RoPE in place on x (n, n_heads, head_dim), the first n_rot channels of each head (positions: host).
  virtual void rope(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim, int32_t n_rot,
                    float base, RopeOrder order) = 0;
  // gate = act(gate) * up over n values.
  virtual void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act) = 0;
  // x += y over n values.
  virtual void add_in_place(float* x, const float* y, int64_t n) = 0;

  // Grouped-query attention over one layer's pages. q, out: (n, n_head, head_dim); q_pos: host (n). Causal by
  // position; a query that sees no key gets zeros.
  virtual void attention(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                         const KvLayerView& kv, float* out) = 0;
  // The probabilities rows t >= first_row paid to each slot, summed (or max'ed) over those rows and the query heads
  // of each kv-head into scores: host (n_head_kv, stride), accumulated into by the time finish_scores() returns (a
  // device copies them back in stream order rather than waiting for each layer; the host must not touch scores
  // before).
  virtual void attention_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                                int32_t first_row, const KvLayerView& kv, float* scores, int32_t stride,
                                ScoreReduce reduce) = 0;
  // attention, then attention_scores over every row summed (a decode step of TOVA or H2O): a backend may do both in
  // one pass over the pages.
  virtual void attention_with_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                                     const KvLayerView& kv, float* out, float* scores, int32_t stride) {
    attention(p, q, q_pos, n, kv, out);
    attention_scores(p, q, q_pos, n, 0, kv, scores, stride, ScoreReduce::Sum);
  }
  // Waits for the scores of every attention_scores call since the last and adds them into their host arrays.
  virtual void finish_scores() {}

 protected:
  virtual float* allocate_floats(size_t n) = 0;
  virtual void free_floats(float* p) = 0;
};

// A row of a weight tensor in its GGUF format (host memory) as n f32 values, exactly as the CPU's matmul sees it
// (the model's small vectors, read once at load).
void dequantize_row_host(GgmlType t, const void* row, float* out, int64_t n);

// The backends this build has. cpu always; cuda when built with it (make_backend throws Error, saying why, when the
// build lacks it or no GPU is present).
enum class Device { Cpu, Cuda };
const char* device_name(Device d);
Device parse_device(const std::string& name);  // "cpu" | "cuda"; throws Error naming them
bool device_available(Device d, std::string* why_not = nullptr);
// The device a command runs on, from its --device value: "auto" is cuda where this build has the CUDA backend and a
// GPU is usable, else cpu; "cpu" or "cuda" is that device, and Error saying why when it is not available.
Device choose_device(const std::string& name);
std::unique_ptr<Backend> make_backend(Device d, ThreadPool& pool);
// The host's page memory (mmap'ed slabs, the CPU codec): the default of a KvPagePool.
KvPageMemory& host_kv_memory();

}  // namespace longctx
