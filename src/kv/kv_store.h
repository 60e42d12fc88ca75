// The paged KV store (DESIGN.md, "The KV cache"). A pool of fixed-size pages; a sequence holds, for every
// (layer, kv-head), a page list, and the original position of every kept token. Pages are per (layer, kv-head),
// so heads hold different numbers of tokens (eviction, head budgets) and pages hold different formats.
//
// Formats: new tokens go into an open page in the plain format (f16 or f32). A full page may be sealed into a
// packed format (KIVI), so the most recent tokens, those of the open page, stay at full precision until their
// group fills. Keys are stored after RoPE, so kept tokens never need re-rotation; their positions travel with them.
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
  KvFormat format = KvFormat::F16;         // open pages
  KvFormat sealed_format = KvFormat::F16;  // what full pages become when sealed (== format: never repacked)
  int32_t n_recent_full_precision = 0;     // the newest tokens of each head are never sealed (KIVI's residual)
};

struct KvPage {
  int32_t id = -1;
  KvFormat format = KvFormat::F16;
};

// A block pool: pages come from slabs of many pages, one slab list per format; a freed page goes back to its
// free list at once. The pool refuses to grow past max_bytes, so a budget that cannot fit fails with a clear
// error instead of swapping.
class KvPagePool {
 public:
  KvPagePool(int32_t page_tokens, int32_t head_dim, size_t max_bytes);
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  KvPage kv_page_alloc(KvFormat f);  // throws Error when max_bytes would be exceeded
  void kv_page_free(const KvPage& page);
  uint8_t* page_data(const KvPage& page);
  const uint8_t* page_data(const KvPage& page) const;
  size_t page_bytes(KvFormat f) const;
  size_t bytes_reserved() const;  // what the allocator holds from the system
  size_t n_pages_in_use() const { return n_in_use_; }

 private:
  static constexpr int32_t kPagesPerSlab = 64;
  static constexpr int kNumFormats = 5;
  struct FreeDeleter {
    void operator()(uint8_t* p) const;
  };
  struct Slabs {
    std::vector<std::unique_ptr<uint8_t, FreeDeleter>> slabs;
    std::vector<int32_t> free;
  };
  int32_t page_tokens_, head_dim_;
  size_t max_bytes_;
  Slabs by_format_[kNumFormats];
  size_t n_in_use_ = 0;
};

// The tokens one (layer, kv-head) keeps: slot i lives in pages[i / page_tokens] at row i % page_tokens.
struct KvHeadCache {
  std::vector<KvPage> pages;
  std::vector<int32_t> positions;  // (n_tokens) original position of each kept token
  int32_t n_tokens() const { return static_cast<int32_t>(positions.size()); }
};

struct KvBytes {
  size_t payload = 0;   // page bytes of this sequence
  size_t metadata = 0;  // positions and page tables
  size_t total() const { return payload + metadata; }
};

// The slot order that KvSequence::remove_slots leaves: for each removed slot, highest first, the last element
// moves into it. Per-slot state kept beside the store (accumulated scores) follows removals with this.
template <typename T>
void swap_remove(std::vector<T>& v, const std::vector<int32_t>& sorted_slots) {
  for (auto it = sorted_slots.rbegin(); it != sorted_slots.rend(); ++it) {
    v[static_cast<size_t>(*it)] = v.back();
    v.pop_back();
  }
}

// The complement of `keep` (sorted, unique) in [0, n).
std::vector<int32_t> complement_slots(const std::vector<int32_t>& keep, int32_t n);

// One sequence's cache over all layers and kv-heads.
class KvSequence {
 public:
  KvSequence(const KvGeometry& geo, KvPagePool& pool);
  ~KvSequence();
  KvSequence(const KvSequence&) = delete;
  KvSequence& operator=(const KvSequence&) = delete;

  const KvGeometry& geometry() const { return geo_; }
  const KvHeadCache& head(int32_t layer, int32_t kv_head) const { return heads_[index(layer, kv_head)]; }

  // Appends n tokens to every kv-head of a layer. k and v: (n, n_head_kv, head_dim) f32, already rotated.
  // With auto-sealing on, a page that fills is sealed at once.
  void append(int32_t layer, const float* k, const float* v, const int32_t* positions, int32_t n);

  // Packs every full open page into the sealed format (no-op when the two are the same).
  void seal_full_pages();
  // Whether append() seals pages as they fill; off during prefill, so token selection runs before packing.
  void set_auto_seal(bool on) { auto_seal_ = on; }

  // Drops the given slots (sorted ascending, unique) of one head. The last slot moves into each hole, so slot
  // order is not position order afterwards; attention does not depend on order, only on positions.
  void remove_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& slots);
  // Keeps exactly the given slots (sorted ascending, unique); the others are removed as above.
  void keep_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& keep);

  // Reads slot rows as f32 (the kernels' view of any page format); rows [slot, slot + n) lie in one page.
  void read_keys(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const;   // (n, head_dim)
  void read_values(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const; // (n, head_dim)

  // The kernels' view of one layer: page addresses, formats and positions. Valid until the next change.
  cpu::KvLayerView layer_view(int32_t layer) const;

  int32_t n_tokens_max() const;  // tokens held by the most populated head
  int64_t n_tokens_total() const;  // summed over all (layer, kv-head)
  KvBytes bytes() const;
  // What a full f16 cache of n_tokens tokens in every head holds (payload only): the reference for compression.
  size_t full_f16_bytes(int64_t n_tokens) const;
  void clear();

 private:
  size_t index(int32_t layer, int32_t kv_head) const { return static_cast<size_t>(layer) * geo_.n_head_kv + kv_head; }
  void seal_page(KvHeadCache& h, size_t page_index);
  void unseal_page(KvHeadCache& h, size_t page_index);
  void write_row(KvHeadCache& h, int32_t slot, const float* k, const float* v);

  KvGeometry geo_;
  KvPagePool& pool_;
  bool auto_seal_ = false;
  std::vector<KvHeadCache> heads_;  // (n_layer, n_head_kv)
};

}  // namespace longctx::kv
