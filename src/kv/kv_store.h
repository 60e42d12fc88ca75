// The paged KV store (DESIGN.md, "The KV cache"). A pool of fixed-size pages; a sequence holds, for every
// (layer, kv-head), a page list, a token count and the original position of every kept token. Pages are per
// (layer, kv-head) so heads can later hold different numbers of tokens and formats; the full-cache policy
// appends every token to every head.
//
// Page layout, format F: keys (page_tokens, head_dim) then values (page_tokens, head_dim), both in F.
// Keys are stored after RoPE, so kept tokens never need re-rotation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cpu/attention.h"
#include "core/kv_format.h"

namespace longctx::kv {


struct KvGeometry {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t page_tokens = 64;
  KvFormat format = KvFormat::F16;
  size_t page_bytes() const { return 2 * static_cast<size_t>(page_tokens) * head_dim * kv_format_bytes(format); }
};

// A block pool: pages come from slabs of many pages; a freed page goes back to the free list at once. The pool
// refuses to grow past max_bytes, so a budget that cannot fit fails with a clear error instead of swapping.
class KvPagePool {
 public:
  KvPagePool(size_t page_bytes, size_t max_bytes);
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  int32_t kv_page_alloc();  // throws Error when max_bytes would be exceeded
  void kv_page_free(int32_t page);
  uint8_t* page_data(int32_t page) { return slabs_[page / kPagesPerSlab].get() + (page % kPagesPerSlab) * page_bytes_; }
  const uint8_t* page_data(int32_t page) const {
    return slabs_[page / kPagesPerSlab].get() + (page % kPagesPerSlab) * page_bytes_;
  }
  size_t page_bytes() const { return page_bytes_; }
  size_t bytes_reserved() const { return slabs_.size() * kPagesPerSlab * page_bytes_; }  // what the allocator holds
  size_t n_pages_in_use() const { return n_in_use_; }

 private:
  static constexpr int32_t kPagesPerSlab = 64;
  struct FreeDeleter {
    void operator()(uint8_t* p) const;
  };
  size_t page_bytes_;
  size_t max_bytes_;
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> slabs_;
  std::vector<int32_t> free_;
  size_t n_in_use_ = 0;
};

// The tokens one (layer, kv-head) keeps: slot i lives in pages[i / page_tokens] at row i % page_tokens.
struct KvHeadCache {
  std::vector<int32_t> pages;
  std::vector<int32_t> positions;  // (n_tokens) original position of each kept token
  int32_t n_tokens() const { return static_cast<int32_t>(positions.size()); }
};

struct KvBytes {
  size_t payload = 0;   // page bytes of this sequence
  size_t metadata = 0;  // positions and page tables
  size_t total() const { return payload + metadata; }
};

// One sequence's cache over all layers and kv-heads.
class KvSequence {
 public:
  KvSequence(const KvGeometry& geo, KvPagePool& pool);
  ~KvSequence();
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  const KvGeometry& geometry() const { return geo_; }
  KvHeadCache& head(int32_t layer, int32_t kv_head) { return heads_[layer * geo_.n_head_kv + kv_head]; }
  const KvHeadCache& head(int32_t layer, int32_t kv_head) const { return heads_[layer * geo_.n_head_kv + kv_head]; }

  // Appends n tokens to every kv-head of a layer. k and v: (n, n_head_kv, head_dim) f32, already rotated.
  void append(int32_t layer, const float* k, const float* v, const int32_t* positions, int32_t n);

  // Reads slot rows as f32 (the attention kernel's view of any page format).
  // out: (n, head_dim); rows [slot, slot + n) must lie in one page.
  void read_keys(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const;
  void read_values(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const;
  // The kernels' view of one layer: page addresses and positions of every kv-head. Valid until the next append.
  cpu::KvLayerView layer_view(int32_t layer) const;

  // Tokens held by the most populated head (for the full policy, every head holds the same count).
  int32_t n_tokens_max() const;
  KvBytes bytes() const;
  // What a full f16 cache of the same token count would hold (payload only), the reference for compression.
  size_t full_f16_bytes(int64_t n_tokens) const;
  void clear();

 private:
  uint8_t* slot_ptr(const KvHeadCache& h, int32_t slot, bool value) const;

  KvGeometry geo_;
  KvPagePool& pool_;
  std::vector<KvHeadCache> heads_;  // (n_layer, n_head_kv)
};

}  // namespace longctx::kv
