#include "backend/cpu/cpu_backend.h"

#include <sys/mman.h>

#include <cstring>

#include "backend/cpu/attention.h"
#include "backend/cpu/kv_page_codec.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"
#include "core/error.h"

namespace longctx {

KvPageMemory& host_kv_memory() {
  static cpu::HostKvPageMemory memory;
  return memory;
}

namespace cpu {

uint8_t* HostKvPageMemory::map(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

void HostKvPageMemory::unmap(uint8_t* base, size_t bytes) { munmap(base, bytes); }

void HostKvPageMemory::release(uint8_t* base, size_t bytes) { madvise(base, bytes, MADV_DONTNEED); }

void HostKvPageMemory::write_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                                  int64_t row_stride, const KvRowDest* dests, int32_t n) {
  for (int32_t i = 0; i < n; ++i) {
    const size_t off = static_cast<size_t>(i) * static_cast<size_t>(row_stride);
    kv_page_write(f, page_tokens, head_dim, k + off, v + off, dests[i].row, 1, dests[i].page);
  }
}

void HostKvPageMemory::write_page_rows_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k,
                                            const float* v, int32_t row0, int32_t n, uint8_t* page) {
  kv_page_write(f, page_tokens, head_dim, k, v, row0, n, page);
}

void HostKvPageMemory::read_keys_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page,
                                      int32_t row0, int32_t n, float* out) {
  kv_page_read_keys(f, page_tokens, head_dim, page, row0, n, out);
}

void HostKvPageMemory::read_values_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page,
                                        int32_t row0, int32_t n, float* out) {
  kv_page_read_values(f, page_tokens, head_dim, page, row0, n, out);
}

void HostKvPageMemory::compact(KvFormat f, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
                               int32_t n_keep) {
  kv_page_compact(f, page_tokens, head_dim, page, keep, n_keep);
}

void HostKvPageMemory::copy_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* src,
                                 int32_t src_row0, int32_t n, uint8_t* dst, int32_t dst_row0) {
  kv_page_copy_rows(f, page_tokens, head_dim, src, src_row0, n, dst, dst_row0);
}

void HostKvPageMemory::copy_page(uint8_t* dst, const uint8_t* src, size_t bytes) { std::memcpy(dst, src, bytes); }

int32_t CpuBackend::batch_invariant_rows() const { return static_cast<int32_t>(cpu::kMatmulRowInvariantTok); }

void CpuBackend::to_host(void* host_dst, const void* src, size_t bytes) {
  if (bytes > 0 && host_dst != src) std::memmove(host_dst, src, bytes);
}

void CpuBackend::to_backend(void* dst, const void* host_src, size_t bytes) {
  if (bytes > 0 && dst != host_src) std::memmove(dst, host_src, bytes);
}

void CpuBackend::prepare(const std::vector<const Weight*>& matrices, const std::vector<const std::vector<float>*>&) {
  // Host weights are read in place; what can be checked is that the matmul takes every format.
  for (const Weight* w : matrices) {
    if (w == nullptr || w->data == nullptr) fail("internal: a weight matrix without data");
    if (!quant_supported(w->type))
      fail("the CPU backend cannot multiply weights in format {}", ggml_traits(w->type).name);
  }
}

float* CpuBackend::allocate_floats(size_t n) { return new float[n](); }

void CpuBackend::free_floats(float* p) { delete[] p; }

void CpuBackend::embed(const Weight& table, const int32_t* tokens, int32_t n, float scale, float* x) {
  const int64_t E = table.n_in;
  const size_t row_bytes = ggml_row_bytes(table.type, E);
  for (int32_t t = 0; t < n; ++t) {
    float* xr = x + t * E;
    dequantize_row(table.type, table.data + static_cast<size_t>(tokens[t]) * row_bytes, xr, E);
    if (scale != 1.0f)
      for (int64_t i = 0; i < E; ++i) xr[i] *= scale;
  }
}

void CpuBackend::matmul(const longctx::MatmulOutput* outs, int32_t n_outs, const float* x, int32_t n) {
  constexpr int kMost = 8;
  if (n_outs <= 0 || n_outs > kMost) fail("internal: {} matmul outputs in one call (1 to {})", n_outs, kMost);
  cpu::MatmulOutput o[kMost];
  const int64_t n_in = outs[0].w->n_in;
  for (int32_t i = 0; i < n_outs; ++i) {
    const Weight& w = *outs[i].w;
    if (w.n_in != n_in) fail("internal: matmul outputs of {} and {} inputs in one call", n_in, w.n_in);
    o[i] = cpu::MatmulOutput{w.type, w.data, w.n_out, outs[i].y};
  }
  matmul_multi(pool_, o, n_outs, n_in, x, n);
}

void CpuBackend::rmsnorm(const float* x, const std::vector<float>& w, float* y, int64_t n_rows, int64_t dim,
                         float eps) {
  if (static_cast<int64_t>(w.size()) != dim) fail("internal: rmsnorm of {} values with {} weights", dim, w.size());
  cpu::rmsnorm(x, w.data(), y, n_rows, dim, eps);
}

void CpuBackend::rope(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim, int32_t n_rot,
                      float base, RopeOrder order) {
  cpu::rope(x, positions, n, n_heads, head_dim, n_rot, base, order);
}

void CpuBackend::gated_activation(float* gate, const float* up, int64_t n, GatedActivation act) {
  cpu::gated_activation(gate, up, n, act);
}

void CpuBackend::add_in_place(float* x, const float* y, int64_t n) { cpu::add_in_place(x, y, n); }

void CpuBackend::attention(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                           const KvLayerView& kv, float* out) {
  cpu::attention(pool_, p, q, q_pos, n, kv, out);
}

void CpuBackend::attention_with_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                                       const KvLayerView& kv, float* out, float* scores, int32_t stride) {
  cpu::attention_with_scores(pool_, p, q, q_pos, n, kv, out, scores, stride);
}

void CpuBackend::attention_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                                  int32_t first_row, const KvLayerView& kv, float* scores, int32_t stride,
                                  ScoreReduce reduce) {
  cpu::attention_scores(pool_, p, q, q_pos, n, first_row, kv, scores, stride, reduce);
}

}  // namespace cpu
}  // namespace longctx
