// CudaBackend: the one backend interface (backend/backend.h) on the GPU, over the kernels of backend_ops.h, quant.h,
// gemm.h and ops.h. cuda_engine.h says what each part does and what it does not do yet.
#include "backend/cuda/cuda_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/cpu/kv_page_codec.h"
#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/quant.h"
#include "core/error.h"

namespace longctx {
namespace {

void check(const cuda::Status& s) {
  if (!s.ok()) fail("CUDA backend: {}", s.message());
}

// Memory that grows when asked for more and is kept between calls, from an allocator pair: device memory (Scratch:
// the stream orders its uses; a reallocation frees the old block with cudaFree, which waits for the device), or
// page-locked host memory (PinnedScratch: device-to-host copies into it need not wait).
template <cuda::Status (*Alloc)(void**, size_t), cuda::Status (*Free)(void*)>
class Growing {
 public:
  Growing() = default;
  Growing(Growing&& o) noexcept : p_(std::exchange(o.p_, nullptr)), cap_(std::exchange(o.cap_, 0)) {}
  Growing(const Growing&) = delete;
  Growing& operator=(const Growing&) = delete;
  ~Growing() {
    if (p_) Free(p_);
  }
  void* get(size_t bytes) {
    if (bytes > cap_) {
      const size_t want = std::max(bytes, cap_ * 2);  // doubling: a growing prompt reallocates a few times only
      if (p_) check(Free(p_));
      p_ = nullptr;
      cap_ = 0;
      check(Alloc(&p_, want));
      cap_ = want;
    }
    return p_;
  }
  const void* data() const { return p_; }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};
using Scratch = Growing<cuda::device_alloc, cuda::device_free>;
using PinnedScratch = Growing<cuda::host_alloc_pinned, cuda::host_free_pinned>;

// Host arrays packed into one upload (8-byte aligned each): one copy a call instead of one an array, queued behind
// the ops before it (the device buffer is reused only in stream order), so the host does not wait for the GPU.
class Upload {
 public:
  template <typename T>
  size_t add(const T* p, size_t n) {
    const size_t off = (bytes_.size() + 7) / 8 * 8;
    bytes_.resize(off + n * sizeof(T));
    if (n) std::memcpy(bytes_.data() + off, p, n * sizeof(T));
    return off;
  }
  uint8_t* send(Scratch& s) {
    auto* base = static_cast<uint8_t*>(s.get(std::max<size_t>(bytes_.size(), 8)));
    if (!bytes_.empty()) check(cuda::copy_to_device_async(base, bytes_.data(), bytes_.size()));
    return base;
  }

 private:
  std::vector<uint8_t> bytes_;
};

const char* format_list() { return "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K"; }

// KV pages in device memory, the CPU codec's bytes.
class CudaKvMemory final : public KvPageMemory {
 public:
  uint8_t* map(size_t bytes) override {
    void* p = nullptr;
    if (!cuda::device_alloc(&p, bytes).ok()) return nullptr;
    return static_cast<uint8_t*>(p);
  }
  void unmap(uint8_t* base, size_t) override { check(cuda::device_free(base)); }
  // Device memory is not given back page by page: the slab keeps it until it is unmapped.
  void release(uint8_t*, size_t) override {}

  void write_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                  int64_t row_stride, const KvRowDest* dests, int32_t n) override {
    if (kv_format_is_packed(f))
      fail("CUDA backend: rows cannot be written into {} pages directly (open pages are f16 or f32)",
           kv_format_name(f));
    if (n <= 0) return;
    std::vector<uint64_t> pages(static_cast<size_t>(n));
    std::vector<int32_t> rows(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      if (dests[i].row < 0 || dests[i].row >= page_tokens) fail("CUDA backend: KV row {} outside its page", dests[i].row);
      pages[static_cast<size_t>(i)] = reinterpret_cast<uint64_t>(dests[i].page);
      rows[static_cast<size_t>(i)] = dests[i].row;
    }
    Upload up;
    const size_t o_pages = up.add(pages.data(), pages.size());
    const size_t o_rows = up.add(rows.data(), rows.size());
    uint8_t* base = up.send(scratch_);
    check(cuda::kv_rows_write(f == KvFormat::F16, page_tokens, head_dim, k, v, row_stride,
                              reinterpret_cast<const uint64_t*>(base + o_pages),
                              reinterpret_cast<const int32_t*>(base + o_rows), n));
  }

  void write_page_rows_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                            int32_t row0, int32_t n, uint8_t* page) override {
    std::vector<uint8_t>& h = fetch(f, page_tokens, head_dim, page);
    cpu::kv_page_write(f, page_tokens, head_dim, k, v, row0, n, h.data());
    check(cuda::copy_to_device(page, h.data(), h.size()));
  }
  void read_keys_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0, int32_t n,
                      float* out) override {
    cpu::kv_page_read_keys(f, page_tokens, head_dim, fetch(f, page_tokens, head_dim, page).data(), row0, n, out);
  }
  void read_values_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0,
                        int32_t n, float* out) override {
    cpu::kv_page_read_values(f, page_tokens, head_dim, fetch(f, page_tokens, head_dim, page).data(), row0, n, out);
  }
  void copy_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* src, int32_t src_row0, int32_t n,
                 uint8_t* dst, int32_t dst_row0) override {
    if (kv_format_is_packed(f)) fail("CUDA backend: rows of {} pages are not copied between pages", kv_format_name(f));
    check(cuda::kv_page_copy_rows(f == KvFormat::F16, page_tokens, head_dim, src, src_row0, n, dst, dst_row0));
  }
  void copy_page(uint8_t* dst, const uint8_t* src, size_t bytes) override {
    check(cuda::copy_on_device(dst, src, bytes));
  }
  void compact(KvFormat f, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
               int32_t n_keep) override {
    if (!kv_format_is_packed(f)) {  // on the device; packed pages still through the host codec
      check(cuda::kv_page_compact(f == KvFormat::F16, page_tokens, head_dim, page, keep, n_keep));
      return;
    }
    std::vector<uint8_t>& h = fetch(f, page_tokens, head_dim, page);
    cpu::kv_page_compact(f, page_tokens, head_dim, h.data(), keep, n_keep);
    check(cuda::copy_to_device(page, h.data(), h.size()));
  }

 private:
  // The page's bytes on the host (after the work issued before).
  std::vector<uint8_t>& fetch(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page) {
    host_.resize(cpu::kv_page_bytes(f, page_tokens, head_dim));
    check(cuda::copy_to_host(host_.data(), page, host_.size()));
    return host_;
  }
  Scratch scratch_;
  std::vector<uint8_t> host_;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(ThreadPool& pool, std::unique_ptr<cuda::GemmRunner> gemm) : pool_(pool), gemm_(std::move(gemm)) {}
  ~CudaBackend() override {
    for (auto& [host, dw] : weights_) cuda::device_free(dw.dev);
    for (auto& [host, dv] : vectors_) cuda::device_free(dv.dev);
  }

  const char* name() const override { return "cuda"; }
  // Up to kMatmulF32MaxRows rows, matmul gives each row the bits it gets alone: the quantized GEMV forms each row's
  // sums in the same order whatever the row count (quant.h), so does matmul_f32, and every other op is row-wise or
  // (attention) per sequence.
  int32_t batch_invariant_rows() const override { return cuda::kMatmulF32MaxRows; }

  CopyBandwidth copy_bandwidth() override {
    // Device to device, 2 x 1 GiB.
    CopyBandwidth bw;
    bw.buffer_bytes = size_t{1} << 30;
    bw.n_reps = 10;
    check(cuda::device_copy_bandwidth(bw.buffer_bytes, bw.n_reps, &bw.bytes_per_s));
    return bw;
  }

  void to_host(void* host_dst, const void* src, size_t bytes) override {
    if (bytes) check(cuda::copy_to_host(host_dst, src, bytes));
  }
  void to_backend(void* dst, const void* host_src, size_t bytes) override {
    if (bytes) check(cuda::copy_to_device(dst, host_src, bytes));
  }

  void prepare(const std::vector<const Weight*>& matrices,
               const std::vector<const std::vector<float>*>& vectors) override {
    // What is new, and its bytes, before anything is copied.
    std::vector<const Weight*> new_m;
    std::vector<const std::vector<float>*> new_v;
    size_t need = 0;
    for (const Weight* w : matrices) {
      if (!w) continue;
      if (const auto it = weights_.find(w->data);
          it != weights_.end() && it->second.type == w->type && it->second.n_out == w->n_out && it->second.n_in == w->n_in)
        continue;
      bool seen = false;  // tied weights (gemma's embedding is its output too) share one copy
      for (const Weight* o : new_m) seen = seen || o->data == w->data;
      if (seen) continue;
      check_format(*w);
      need += weight_bytes(*w);
      new_m.push_back(w);
    }
    for (const std::vector<float>* v : vectors) {
      if (!v || v->empty() || std::count(new_v.begin(), new_v.end(), v)) continue;
      if (const auto it = vectors_.find(v->data()); it != vectors_.end() && it->second.size == v->size()) continue;
      need += v->size() * sizeof(float);
      new_v.push_back(v);
    }
    size_t free_b = 0, total_b = 0;
    check(cuda::device_memory_info(&free_b, &total_b));
    constexpr size_t kHeadroom = size_t{512} << 20;  // activations, bf16 weight tiles, the KV pool's first slabs
    if (need + kHeadroom > free_b)
      fail("CUDA backend: the model's weights need {} bytes on the GPU (plus {} of working memory), but only {} of "
           "its {} are free",
           need, kHeadroom, free_b, total_b);
    // An address seen before with another shape held a weight since freed: its copy goes.
    for (const Weight* w : new_m) {
      if (const auto it = weights_.find(w->data); it != weights_.end()) cuda::device_free(it->second.dev);
      weights_[w->data] = {upload(w->data, weight_bytes(*w)), w->type, w->n_out, w->n_in};
    }
    for (const std::vector<float>* v : new_v) {
      if (const auto it = vectors_.find(v->data()); it != vectors_.end()) cuda::device_free(it->second.dev);
      vectors_[v->data()] = {static_cast<float*>(upload(v->data(), v->size() * sizeof(float))), v->size()};
    }
  }

  KvPageMemory& kv_memory() override { return kv_memory_; }

  void embed(const Weight& table, const int32_t* tokens, int32_t n, float scale, float* x) override {
    if (n <= 0) return;
    const void* w = device_weight(table);
    Upload up;
    const size_t o = up.add(tokens, static_cast<size_t>(n));
    uint8_t* base = up.send(upload_);
    check(cuda::dequantize_rows_f32(table.type, w, static_cast<int32_t>(table.n_in),
                                    reinterpret_cast<const int32_t*>(base + o), n, scale, x));
  }

  void matmul(const MatmulOutput* outs, int32_t n_outs, const float* x, int32_t n) override {
    if (n <= 0 || n_outs <= 0) return;
    const int64_t n_in = outs[0].w->n_in;
    for (int32_t i = 0; i < n_outs; ++i)
      if (outs[i].w->n_in != n_in) fail("CUDA backend: matmul outputs differ in n_in ({} vs {})", outs[i].w->n_in, n_in);
    void* xb = nullptr;  // x in bf16, made once for the outputs that need it
    auto x_bf16 = [&]() {
      if (!xb) {
        xb = x_bf16_.get(static_cast<size_t>(n) * static_cast<size_t>(n_in) * 2);
        check(cuda::f32_to_bf16(x, xb, static_cast<int64_t>(n) * n_in));
      }
      return xb;
    };
    for (int32_t i = 0; i < n_outs; ++i) {
      const Weight& W = *outs[i].w;
      const void* w = device_weight(W);
      const auto n_out = static_cast<int32_t>(W.n_out), k = static_cast<int32_t>(W.n_in);
      float* y = outs[i].y;
      if (n <= cuda::kMatmulF32MaxRows) {
        if (cuda::quant_supported(W.type) && k <= cuda::quant_gemv_max_in()) {
          cuda::QuantGemvArgs a;
          a.type = W.type;
          a.w = w;
          a.n_out = n_out;
          a.n_in = k;
          a.x_bf16 = x_bf16();
          a.y = y;
          a.n_rows = n;
          check(cuda::quant_gemv(a));
        } else {
          check(cuda::matmul_f32(W.type, w, n_out, k, x, n, y));
        }
        continue;
      }
      const void* wb = w;  // bf16 weights go to the GEMM as they are; others are dequantized to bf16 first
      if (W.type != GgmlType::BF16) {
        void* d = w_bf16_.get(static_cast<size_t>(n_out) * static_cast<size_t>(k) * 2);
        check(cuda::dequantize_bf16(W.type, w, k, 0, n_out, d));
        wb = d;
      }
      check(gemm_->run(gemm_shape(n_out, k, n), wb, x_bf16(), y, nullptr));
    }
  }

  void rmsnorm(const float* x, const std::vector<float>& w, float* y, int64_t n_rows, int64_t dim,
               float eps) override {
    if (static_cast<int64_t>(w.size()) != dim) fail("CUDA backend: rmsnorm weight has {} values for rows of {}", w.size(), dim);
    check(cuda::rmsnorm_f32(x, device_vector(w), y, n_rows, static_cast<int32_t>(dim), eps));
  }

  void rope(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim, int32_t n_rot,
            float base, RopeOrder order) override {
    if (n <= 0) return;
    Upload up;
    const size_t o = up.add(positions, static_cast<size_t>(n));
    uint8_t* base_p = up.send(upload_);
    check(cuda::rope_f32(x, reinterpret_cast<const int32_t*>(base_p + o), n, n_heads, head_dim, n_rot, base,
                         order == RopeOrder::Halves));
  }

  void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act) override {
    check(cuda::gated_activation_f32(gate, up, n,
                                     act == GatedActivation::SiLU ? cuda::GateAct::SiLU : cuda::GateAct::GeluTanh));
  }

  void add_in_place(float* x, const float* y, int64_t n) override {
    if (n > 0) check(cuda::add_in_place(x, y, n));
  }

  void attention(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n, const KvLayerView& kv,
                 float* out) override {
    if (n <= 0) return;
    Upload up;
    const size_t o_qpos = up.add(q_pos, static_cast<size_t>(n));
    const LayerOffsets lo = pack_layer(p, kv, q_pos, n, up);
    uint8_t* base = up.send(upload_);
    int32_t max_pages = 0;
    for (const KvHeadView& h : kv.heads) max_pages = std::max(max_pages, h.n_pages());
    int32_t q_offset = 0;
    if (n >= kDenseMinRows && (p.head_dim == 64 || p.head_dim == 128) && dense_run(kv, q_pos, n, &q_offset)) {
      dense_attention(p, q, n, q_offset, layer_at(lo, kv, base), max_pages, kv.heads[0].n_tokens, out);
      return;
    }
    const size_t ws = cuda::paged_attention_workspace_bytes(n, p.n_head, p.head_dim, max_pages);
    check(cuda::paged_attention(params(p), q, reinterpret_cast<const int32_t*>(base + o_qpos), n,
                                layer_at(lo, kv, base), max_pages, out, ws > 0 ? attention_parts_.get(ws) : nullptr));
  }

  void attention_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n, int32_t first_row,
                        const KvLayerView& kv, float* scores, int32_t stride, ScoreReduce reduce) override {
    if (first_row >= n) return;
    for (const KvHeadView& h : kv.heads)
      if (h.n_tokens > stride) fail("CUDA backend: attention_scores stride {} below a head's {} tokens", stride, h.n_tokens);
    Upload up;
    const size_t o_qpos = up.add(q_pos, static_cast<size_t>(n));
    const LayerOffsets lo = pack_layer(p, kv, q_pos, n, up);
    uint8_t* base = up.send(upload_);
    // On the device, rows as long as the longest head: a decode step's stride is the whole context. Each call has
    // its own device rows and page-locked host rows, copied back in stream order and added in finish_scores, so a
    // step's layers run without the host waiting for each one.
    int32_t dev_stride = 1, max_pages = 0;
    PendingScores pending{scores, stride, 1, reduce == ScoreReduce::Max, {}};
    for (const KvHeadView& h : kv.heads) {
      dev_stride = std::max(dev_stride, h.n_tokens);
      max_pages = std::max(max_pages, h.n_pages());
      pending.n_tokens.push_back(h.n_tokens);
    }
    pending.dev_stride = dev_stride;
    const size_t i = pending_.size();
    if (scores_dev_.size() <= i) {
      scores_dev_.resize(i + 1);
      scores_host_.resize(i + 1);
    }
    const size_t bytes = static_cast<size_t>(p.n_head_kv) * static_cast<size_t>(dev_stride) * sizeof(float);
    auto* dev = static_cast<float*>(scores_dev_[i].get(bytes));
    // Max: 0xffffffff is a negative int (below every probability's bits) and a NaN: untouched slots are told apart.
    check(cuda::device_fill_bytes(dev, pending.max ? 0xff : 0x00, bytes));
    const size_t ws = cuda::paged_attention_scores_workspace_bytes(n - first_row, p.n_head, max_pages);
    check(cuda::paged_attention_scores(params(p), q, reinterpret_cast<const int32_t*>(base + o_qpos), n, first_row,
                                       layer_at(lo, kv, base), max_pages, dev, dev_stride, pending.max,
                                       ws > 0 ? attention_parts_.get(ws) : nullptr));
    check(cuda::copy_to_host_async(scores_host_[i].get(bytes), dev, bytes));
    pending_.push_back(std::move(pending));
  }

  void finish_scores() override {
    if (pending_.empty()) return;
    check(cuda::device_synchronize());
    for (size_t i = 0; i < pending_.size(); ++i) {
      const PendingScores& ps = pending_[i];
      const auto* got = static_cast<const float*>(scores_host_[i].data());
      for (size_t h = 0; h < ps.n_tokens.size(); ++h) {
        const float* src = got + h * static_cast<size_t>(ps.dev_stride);
        float* dst = ps.host + h * static_cast<size_t>(ps.stride);
        for (int32_t j = 0; j < ps.n_tokens[h]; ++j) {
          if (!ps.max) {
            dst[j] += src[j];
          } else if (!std::isnan(src[j])) {
            dst[j] = std::max(dst[j], src[j]);
          }
        }
      }
    }
    pending_.clear();
  }

 protected:
  float* allocate_floats(size_t n) override {
    void* p = nullptr;
    const cuda::Status s = cuda::device_alloc(&p, std::max<size_t>(n, 1) * sizeof(float));
    if (!s.ok()) fail("CUDA backend: activations of {} floats: {}", n, s.message());
    return static_cast<float*>(p);
  }
  void free_floats(float* p) override {
    if (p) cuda::device_free(p);
  }

 private:
  static size_t weight_bytes(const Weight& w) {
    return static_cast<size_t>(w.n_out) * ggml_row_bytes(w.type, w.n_in);
  }
  static void check_format(const Weight& w) {
    const auto traits = ggml_type_traits(static_cast<uint32_t>(w.type));
    const std::string name = traits ? std::string(traits->name) : std::to_string(static_cast<uint32_t>(w.type));
    if (!cuda::dequantize_supported(w.type))
      fail("CUDA backend: weight format {} ({} x {}) is not supported on the GPU (it has {})", name, w.n_out, w.n_in,
           format_list());
    const int64_t block = std::max<int64_t>(32, traits->block_values);
    if (w.n_in % block != 0 || w.n_out < 1 || w.n_out > INT32_MAX || w.n_in > INT32_MAX)
      fail("CUDA backend: weight {} x {} in {}: rows must be a multiple of {} values", w.n_out, w.n_in, name, block);
  }
  static void* upload(const void* host, size_t bytes) {
    void* p = nullptr;
    check(cuda::device_alloc(&p, std::max<size_t>(bytes, 1)));
    check(cuda::copy_to_device(p, host, bytes));
    return p;
  }
  const void* device_weight(const Weight& w) const {
    const auto it = weights_.find(w.data);
    if (it == weights_.end())
      fail("CUDA backend: a weight ({} x {}) was used before prepare() copied it to the GPU", w.n_out, w.n_in);
    if (it->second.type != w.type || it->second.n_out != w.n_out || it->second.n_in != w.n_in)
      fail("CUDA backend: a weight ({} x {}) is not the one prepare() copied from its address ({} x {}): host weights "
           "must outlive the backend's use of them",
           w.n_out, w.n_in, it->second.n_out, it->second.n_in);
    return it->second.dev;
  }
  const float* device_vector(const std::vector<float>& v) const {
    const auto it = vectors_.find(v.data());
    if (it == vectors_.end())
      fail("CUDA backend: a norm vector ({} values) was used before prepare() copied it to the GPU", v.size());
    if (it->second.size != v.size())
      fail("CUDA backend: a norm vector of {} values is not the one prepare() copied from its address ({} values)",
           v.size(), it->second.size);
    return it->second.dev;
  }
  int32_t gemm_shape(int32_t n_out, int32_t n_in, int32_t n) {
    const auto key = std::make_tuple(n_out, n_in, n);
    const auto it = gemm_shapes_.find(key);
    if (it != gemm_shapes_.end()) return it->second;
    int32_t id = -1;
    check(gemm_->add_shape(n_out, n_in, n, cuda::GemmAccumulate::Overwrite, &id));
    gemm_shapes_[key] = id;
    return id;
  }
  static cuda::PagedAttentionParams params(const AttentionParams& p) {
    cuda::PagedAttentionParams c;
    c.n_head = p.n_head;
    c.scale = p.scale;
    c.window = p.window;
    return c;
  }

  // A chunk of queries (prefill) goes to the tensor-core attention over dense keys when the cache under it is one run
  // of consecutive positions in every head (a prompt before any policy evicted from it; the front of a sliding-window
  // layer may be gone) and the queries follow one another: slot j is then position j + (the run's first), which is
  // the dense kernel's mask. Otherwise (evicted slots, few rows) the paged kernel reads the pages as they are.
  static constexpr int32_t kDenseMinRows = 32;
  static bool dense_run(const KvLayerView& kv, const int32_t* q_pos, int32_t n, int32_t* q_offset) {
    const KvHeadView& h0 = kv.heads[0];
    if (h0.n_tokens <= 0) return false;
    for (int32_t i = 1; i < n; ++i)
      if (q_pos[i] != q_pos[0] + i) return false;
    const int32_t first = h0.positions[0];
    for (const KvHeadView& h : kv.heads) {
      if (h.n_tokens != h0.n_tokens || h.positions[0] != first) return false;
      for (int32_t j = 1; j < h.n_tokens; ++j)
        if (h.positions[j] != first + j) return false;
    }
    if (q_pos[0] < first) return false;
    *q_offset = q_pos[0] - first;
    return true;
  }
  // Every head's n_rows slots gathered to f16, q rounded to f16, FlashAttention-2/3 on tensor cores
  // (cuda::prefill_attention), the output back to f32.
  void dense_attention(const AttentionParams& p, const float* q, int32_t n, int32_t q_offset, const cuda::PagedLayer& l,
                       int32_t max_pages, int32_t n_rows, float* out) {
    const size_t kv_elems = static_cast<size_t>(p.n_head_kv) * static_cast<size_t>(n_rows) * p.head_dim;
    const size_t q_elems = static_cast<size_t>(n) * p.n_head * p.head_dim;
    void* k16 = dense_k_.get(kv_elems * 2);
    void* v16 = dense_v_.get(kv_elems * 2);
    auto* q16 = static_cast<uint8_t*>(dense_q_.get(q_elems * 4));  // q, then the output, f16
    check(cuda::paged_gather_f16(l, max_pages, n_rows, k16, v16));
    check(cuda::f32_to_f16(q, q16, static_cast<int64_t>(q_elems)));
    cuda::PrefillAttentionParams a;
    a.n_q = n, a.n_kv = n_rows, a.n_head = p.n_head, a.n_head_kv = p.n_head_kv, a.head_dim = p.head_dim;
    a.q_offset = q_offset, a.causal = true, a.window = p.window, a.scale = p.scale, a.dtype = cuda::KvDtype::F16;
    a.k_row_stride = a.v_row_stride = p.head_dim;
    a.k_head_stride = a.v_head_stride = static_cast<int64_t>(n_rows) * p.head_dim;
    check(cuda::prefill_attention(a, q16, k16, v16, q16 + q_elems * 2));
    check(cuda::f16_to_f32(q16 + q_elems * 2, out, static_cast<int64_t>(q_elems)));
  }

  struct LayerOffsets {
    size_t page_addr, page_fmt, page_begin, slot0, token_begin, positions;
  };
  static constexpr size_t kNoPositions = SIZE_MAX;
  // The host view flattened into the arrays of cuda::PagedLayer (checked: formats, shapes).
  // The queries see every slot (no window, none of a head's positions past the earliest query's: the positions
  // ascend, so the last is the largest) in decode and in a chunk appended after the cache: then the kernels need no
  // positions, and a deep cache's (4 bytes a slot a head) are not copied and uploaded every layer of every step.
  static bool every_slot_visible(const AttentionParams& p, const KvLayerView& kv, const int32_t* q_pos, int32_t n) {
    if (p.window > 0) return false;
    const int32_t q_min = *std::min_element(q_pos, q_pos + n);
    for (const KvHeadView& h : kv.heads)
      if (h.n_tokens > 0 && h.positions[h.n_tokens - 1] > q_min) return false;
    return true;
  }
  LayerOffsets pack_layer(const AttentionParams& p, const KvLayerView& kv, const int32_t* q_pos, int32_t n, Upload& up) {
    const bool with_positions = !every_slot_visible(p, kv, q_pos, n);
    if (static_cast<int32_t>(kv.heads.size()) != p.n_head_kv)
      fail("CUDA backend: the KV view has {} heads for {} kv-heads", kv.heads.size(), p.n_head_kv);
    if (kv.head_dim != p.head_dim) fail("CUDA backend: the KV view's head_dim {} is not {}", kv.head_dim, p.head_dim);
    std::vector<uint64_t> addr;
    std::vector<uint8_t> fmt;
    std::vector<int32_t> page_begin{0}, slot0, token_begin{0}, positions;
    for (const KvHeadView& h : kv.heads) {
      const int32_t np = h.n_pages();
      if (static_cast<int32_t>(h.formats.size()) != np) fail("CUDA backend: KV view with {} formats for {} pages", h.formats.size(), np);
      for (int32_t i = 0; i < np; ++i) {
        const KvFormat f = h.formats[static_cast<size_t>(i)];
        if (kv_format_is_packed(f) && (kv.head_dim % cpu::kKiviValueGroup != 0 || kv.page_tokens % 4 != 0))
          fail("CUDA backend: {} pages need head_dim a multiple of {} and page_tokens of 4 ({} and {} given)",
               kv_format_name(f), cpu::kKiviValueGroup, kv.head_dim, kv.page_tokens);
        addr.push_back(reinterpret_cast<uint64_t>(h.pages[static_cast<size_t>(i)]));
        fmt.push_back(static_cast<uint8_t>(f == KvFormat::F32   ? cuda::kPageF32
                                           : f == KvFormat::F16 ? cuda::kPageF16
                                                                : kv_format_bits(f)));
      }
      if (np == 0) {
        slot0.push_back(0);
      } else {
        if (static_cast<int32_t>(h.slot0.size()) != np + 1 || h.slot0[static_cast<size_t>(np)] != h.n_tokens)
          fail("CUDA backend: KV view's slot table does not match its {} pages and {} tokens", np, h.n_tokens);
        for (int32_t i = 0; i < np; ++i)
          if (h.page_rows(i) < 0 || h.page_rows(i) > kv.page_tokens) fail("CUDA backend: KV page with {} rows", h.page_rows(i));
        slot0.insert(slot0.end(), h.slot0.begin(), h.slot0.end());
      }
      page_begin.push_back(page_begin.back() + np);
      token_begin.push_back(token_begin.back() + h.n_tokens);
      if (with_positions && h.n_tokens > 0) positions.insert(positions.end(), h.positions, h.positions + h.n_tokens);
    }
    LayerOffsets o;
    o.page_addr = up.add(addr.data(), addr.size());
    o.page_begin = up.add(page_begin.data(), page_begin.size());
    o.slot0 = up.add(slot0.data(), slot0.size());
    o.token_begin = up.add(token_begin.data(), token_begin.size());
    o.positions = with_positions ? up.add(positions.data(), positions.size()) : kNoPositions;
    o.page_fmt = up.add(fmt.data(), fmt.size());
    return o;
  }
  static cuda::PagedLayer layer_at(const LayerOffsets& o, const KvLayerView& kv, uint8_t* base) {
    cuda::PagedLayer l;
    l.page_addr = reinterpret_cast<const uint64_t*>(base + o.page_addr);
    l.page_fmt = base + o.page_fmt;
    l.page_begin = reinterpret_cast<const int32_t*>(base + o.page_begin);
    l.slot0 = reinterpret_cast<const int32_t*>(base + o.slot0);
    l.token_begin = reinterpret_cast<const int32_t*>(base + o.token_begin);
    l.positions = o.positions == kNoPositions ? nullptr : reinterpret_cast<const int32_t*>(base + o.positions);
    l.n_head_kv = static_cast<int32_t>(kv.heads.size());
    l.head_dim = kv.head_dim;
    l.page_tokens = kv.page_tokens;
    return l;
  }

  ThreadPool& pool_;
  std::unique_ptr<cuda::GemmRunner> gemm_;
  CudaKvMemory kv_memory_;
  struct DeviceWeight {
    void* dev;
    GgmlType type;
    int64_t n_out, n_in;
  };
  std::unordered_map<const void*, DeviceWeight> weights_;  // by the host address of the weight's bytes
  struct DeviceVector {
    float* dev;
    size_t size;
  };
  std::unordered_map<const float*, DeviceVector> vectors_;
  std::map<std::tuple<int32_t, int32_t, int32_t>, int32_t> gemm_shapes_;
  Scratch upload_, x_bf16_, w_bf16_, attention_parts_, dense_k_, dense_v_, dense_q_;
  // attention_scores calls not yet added into their host arrays (finish_scores), and each call's buffers.
  struct PendingScores {
    float* host;  // the caller's (n_head_kv, stride)
    int32_t stride;
    int32_t dev_stride;
    bool max;
    std::vector<int32_t> n_tokens;  // per kv-head
  };
  std::vector<PendingScores> pending_;
  std::vector<Scratch> scores_dev_;
  std::vector<PinnedScratch> scores_host_;
};

}  // namespace

bool cuda_device_usable(std::string* why_not) {
  cuda::DeviceInfo info;
  const cuda::Status s = cuda::device_query(&info);
  if (!s.ok() && why_not) *why_not = s.message();
  return s.ok();
}

std::unique_ptr<Backend> make_cuda_backend(ThreadPool& pool) {
  cuda::DeviceInfo info;
  if (const cuda::Status s = cuda::device_query(&info); !s.ok()) fail("the CUDA backend cannot start: {}", s.message());
  std::unique_ptr<cuda::GemmRunner> gemm;
  check(cuda::GemmRunner::create(size_t{32} << 20, &gemm));
  return std::make_unique<CudaBackend>(pool, std::move(gemm));
}

}  // namespace longctx
