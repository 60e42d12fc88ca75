// The CPU implementation of the one backend interface (backend/backend.h): host memory, the cpu:: kernels on a
// thread pool, and the host's KV page memory (mapped slabs and the CPU page codec).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace longctx::cpu {

// KV pages in host memory: slabs are anonymous mappings (MAP_NORESERVE, so a slab costs what is written), a released
// run of pages is handed back with madvise(MADV_DONTNEED) (it reads as zeros when used again), and the bytes are
// written and read with the CPU page codec (kv_page_codec.h).
class HostKvPageMemory : public KvPageMemory {
 public:
  uint8_t* map(size_t bytes) override;
  void unmap(uint8_t* base, size_t bytes) override;
  void release(uint8_t* base, size_t bytes) override;
  void write_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                  int64_t row_stride, const KvRowDest* dests, int32_t n) override;
  void write_page_rows_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v,
                            int32_t row0, int32_t n, uint8_t* page) override;
  void read_keys_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0,
                      int32_t n, float* out) override;
  void read_values_host(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0,
                        int32_t n, float* out) override;
  void compact(KvFormat f, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
               int32_t n_keep) override;
  void copy_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* src, int32_t src_row0, int32_t n,
                 uint8_t* dst, int32_t dst_row0) override;
  void copy_page(uint8_t* dst, const uint8_t* src, size_t bytes) override;
};

// The ops on the host's threads. Activations are plain heap memory; weights are read in place (prepare only checks
// that every matrix's format is one the CPU matmul takes).
class CpuBackend : public Backend {
 public:
  explicit CpuBackend(ThreadPool& pool) : pool_(pool) {}
  const char* name() const override { return "cpu"; }
  bool host_memory() const override { return true; }
  int32_t batch_invariant_rows() const override;
  CopyBandwidth copy_bandwidth() override { return measure_copy_bandwidth(pool_); }
  ThreadPool& pool() { return pool_; }

  void to_host(void* host_dst, const void* src, size_t bytes) override;
  void to_backend(void* dst, const void* host_src, size_t bytes) override;
  void prepare(const std::vector<const Weight*>& matrices,
               const std::vector<const std::vector<float>*>& vectors) override;
  KvPageMemory& kv_memory() override { return host_kv_memory(); }

  void embed(const Weight& table, const int32_t* tokens, int32_t n, float scale, float* x) override;
  void matmul(const longctx::MatmulOutput* outs, int32_t n_outs, const float* x, int32_t n) override;
  void rmsnorm(const float* x, const std::vector<float>& w, float* y, int64_t n_rows, int64_t dim,
               float eps) override;
  void rope(float* x, const int32_t* positions, int32_t n, int32_t n_heads, int32_t head_dim, int32_t n_rot,
            float base, RopeOrder order) override;
  void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act) override;
  void add_in_place(float* x, const float* y, int64_t n) override;
  void attention(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n, const KvLayerView& kv,
                 float* out) override;
  void attention_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n, int32_t first_row,
                        const KvLayerView& kv, float* scores, int32_t stride, ScoreReduce reduce) override;
  void attention_with_scores(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n,
                             const KvLayerView& kv, float* out, float* scores, int32_t stride) override;

 protected:
  float* allocate_floats(size_t n) override;
  void free_floats(float* p) override;

 private:
  ThreadPool& pool_;
};

}  // namespace longctx::cpu
