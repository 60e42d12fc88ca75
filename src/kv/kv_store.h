// The paged KV store (DESIGN.md, "The KV cache"). A pool of fixed-size pages; a sequence holds, for every
// (layer, kv-head), a page list, and the original position of every kept token. Pages are per (layer, kv-head),
// so heads hold different numbers of tokens (eviction, head budgets) and pages hold different formats.
//
// Slots keep position order: eviction compacts, it never moves a newer token in front of an older one. A page's
// tokens are its first rows; a page need not be full. New tokens go into the last open page (f16 or f32); with a
// packed sealed format (KIVI) an open page is sealed once it is full and at least n_recent_full_precision newer
// tokens follow it, so the newest tokens of every head stay at full precision whatever is evicted. Eviction inside
// a packed page compacts its codes in place under the scales it was encoded with (kv_page_compact); a packed page
// is never re-encoded. Keys are stored after RoPE, so kept tokens never need re-rotation; positions travel with them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "backend/backend.h"
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
  bool key_summaries = false;              // keep each page's key min/max (KvHeadCache::key_summary), for Quest
};

struct KvPage {
  int32_t id = -1;
  KvFormat format = KvFormat::F16;
  int32_t n_rows = 0;  // tokens held, in rows [0, n_rows)
};

// The bytes the pool takes from and gives back to the system at a time for pages of page_bytes: the smallest run of
// whole pages that is also a run of whole system pages.
size_t kv_pool_chunk_bytes(size_t page_bytes);

// A block pool: pages come from slabs mapped from the system, one slab list per format, cut into chunks of whole
// system pages. A freed page goes back to its free list at once, and a chunk whose pages are all free goes back to
// the system at once (madvise), so what the pool reports is what the process holds. Pages are handed out lowest
// address first, so live pages gather in few chunks and emptied chunks can be returned. The pool refuses to hold
// more than max_bytes, so a budget that cannot fit fails with a clear error instead of swapping. The slabs are the
// backend's memory (KvPageMemory: the host's by default), and every page byte is written and read through it.
//
// A page may be held by several sequences at once (KvSequence::share_prefix: a prefix cached once, read by many
// requests): the pool counts its holders, kv_page_free drops one, and the page goes back with the last. A holder
// never writes a page another holds: it takes a private copy first (copy on write, in KvSequence).
class KvPagePool {
 public:
  KvPagePool(int32_t page_tokens, int32_t head_dim, size_t max_bytes, KvPageMemory& memory = host_kv_memory());
  ~KvPagePool();
  KvPagePool(const KvPagePool&) = delete;
  KvPagePool& operator=(const KvPagePool&) = delete;

  KvPage kv_page_alloc(KvFormat f);  // throws Error when max_bytes would be exceeded; one holder
  void kv_page_share(const KvPage& page);  // one more holder
  void kv_page_free(const KvPage& page);   // one holder fewer; the page goes back with the last
  int32_t kv_page_holders(const KvPage& page) const;
  uint8_t* page_data(const KvPage& page);
  const uint8_t* page_data(const KvPage& page) const;
  size_t page_bytes(KvFormat f) const;
  size_t bytes_reserved() const { return bytes_held_; }  // chunks holding a live page: what the system gave
  size_t bytes_reserved_peak() const { return bytes_held_peak_; }
  size_t n_pages_in_use() const { return n_in_use_; }  // each page once, however many hold it
  size_t max_bytes() const { return max_bytes_; }  // the limit bytes_reserved() may not pass
  KvPageMemory& memory() const { return memory_; }

 private:
  static constexpr int kNumFormats = 5;
  struct Slab {
    uint8_t* base = nullptr;
    size_t bytes = 0;
  };
  struct FormatPages {
    size_t page_bytes = 0, pages_per_chunk = 0, chunks_per_slab = 0;
    std::vector<Slab> slabs;
    std::vector<int32_t> free;            // min-heap of free page ids: the lowest address goes out first
    std::vector<int32_t> chunk_in_use;    // (n_chunks) live pages of each chunk
    std::vector<int32_t> holders;         // (n_pages) sequences holding each page; 0: free
  };
  FormatPages& format_pages(KvFormat f);
  int32_t page_chunk(const FormatPages& fp, int32_t id) const { return id / static_cast<int32_t>(fp.pages_per_chunk); }
  uint8_t* chunk_data(FormatPages& fp, int32_t chunk);

  int32_t page_tokens_, head_dim_;
  size_t max_bytes_;
  KvPageMemory& memory_;
  FormatPages by_format_[kNumFormats];
  size_t n_in_use_ = 0;
  size_t bytes_held_ = 0, bytes_held_peak_ = 0;
};

// The tokens one (layer, kv-head) keeps, in position order: page p holds the next pages[p].n_rows slots.
struct KvHeadCache {
  std::vector<KvPage> pages;
  std::vector<int32_t> positions;  // (n_tokens) original position of each kept token
  // With KvGeometry::key_summaries, per page the element-wise min then max of its keys, (n_pages, 2, head_dim) f32
  // ("Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"); empty otherwise. The keys summarized
  // are the ones the page holds as read back from its format (so the bound covers what attention reads), except
  // that a page packed by sealing keeps the summary of its exact keys from before packing.
  std::vector<float> key_summary;
  // The open pages' holes were left by a removal of less than a page of slots (a decode step's eviction): they are
  // packed only once they add up to a page (KvSequence::remove_slots says why). Cleared by packing.
  bool lazy_holes = false;
  int32_t n_tokens() const { return static_cast<int32_t>(positions.size()); }
};

struct KvBytes {
  size_t payload = 0;   // page bytes of this sequence
  size_t shared = 0;    // of payload, the bytes of pages other sequences hold too (counted once in the pool)
  size_t metadata = 0;  // positions and page tables
  size_t summaries = 0;  // per-page key summaries (KvGeometry::key_summaries), 0 when none are kept
  // Tokens a read policy holds beside the store (ShadowKV), filled in by the engine session: in fast memory (counted
  // in total()) and in the cold tier (not counted: host memory on a GPU).
  size_t beside_fast = 0, beside_cold = 0;
  size_t total() const { return payload + metadata + summaries + beside_fast; }
};

// What KvSequence::remove_slots does to slot numbers: the removed slots go, the rest keep their order. Per-slot
// state kept beside the store (accumulated scores) follows removals with this.
template <typename T>
void erase_slots(std::vector<T>& v, const std::vector<int32_t>& sorted_slots) {
  size_t w = 0, j = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (j < sorted_slots.size() && static_cast<size_t>(sorted_slots[j]) == i) {
      ++j;
      continue;
    }
    if (w != i) v[w] = std::move(v[i]);
    ++w;
  }
  v.resize(w);
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

  // Appends n tokens to every kv-head of a layer. k and v: (n, n_head_kv, head_dim) f32, already rotated, in the
  // pool's memory (the backend's). The rows' places are found on the host and written in one
  // KvPageMemory::write_rows call (more only when a head's open pages are packed or sealed in between, which
  // reads rows back). With auto-sealing on, pages that left the full-precision window are sealed at once.
  void append(int32_t layer, const float* k, const float* v, const int32_t* positions, int32_t n);
  // Appends one row to one kv-head only (a token that is not the text's, such as a compensation token).
  // k, v: (head_dim) f32 in host memory, already rotated.
  void append_head(int32_t layer, int32_t kv_head, const float* k, const float* v, int32_t position);

  // Makes this empty sequence hold the first n_tokens tokens of src (every head of src must hold positions 0 ..
  // n_tokens - 1 in its first n_tokens slots, in pages of this sequence's open format and page size): src's whole
  // pages are shared, not copied, and the page the prefix ends inside is copied. Neither sequence writes a shared
  // page afterwards (appends open new pages; eviction and packing copy a shared page before changing it), so src
  // stays as it was. Key summaries, where this sequence keeps them, are computed for the pages taken.
  void share_prefix(const KvSequence& src, int32_t n_tokens);

  // Packs every full open page older than the full-precision window (no-op when nothing is packed).
  void seal_full_pages();
  // Whether append() seals pages as they fill; off during prefill, so token selection runs before packing.
  void set_auto_seal(bool on) { auto_seal_ = on; }

  // Drops the given slots (sorted ascending, unique) of one head; the others keep their order (erase_slots).
  // Emptied pages go back to the pool at once; open pages are packed into the fewest that hold their rows, after
  // fewer than page_tokens slots (a decode step's eviction) only once a page of holes has gathered.
  void remove_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& slots);
  // Keeps exactly the given slots (sorted ascending, unique); the others are removed as above.
  void keep_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& keep);

  // Reads slot rows [slot, slot + n) as f32 into host memory (the kernels' view of any page format), across as
  // many pages as they span.
  void read_keys(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const;   // (n, head_dim)
  void read_values(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const; // (n, head_dim)

  // The kernels' view of one layer: page addresses, formats and positions. Valid until the next change.
  KvLayerView layer_view(int32_t layer) const;

  int32_t n_tokens_max() const;  // tokens held by the most populated head
  int64_t n_tokens_total() const;  // summed over all (layer, kv-head)
  KvBytes bytes() const;
  // What a full f16 cache of n_tokens tokens in every head holds (payload only): the reference for compression.
  size_t full_f16_bytes(int64_t n_tokens) const;
  void clear();

 private:
  size_t index(int32_t layer, int32_t kv_head) const { return static_cast<size_t>(layer) * geo_.n_head_kv + kv_head; }
  void append_row(KvHeadCache& h, const float* k, const float* v, int32_t position);  // k, v: host
  // append's bookkeeping of one row: opens a page where needed (packing the open pages first, as append_row does,
  // after writing out this head's rows so far with flush_head) and returns where the row goes.
  KvRowDest place_row(int32_t kv_head, KvHeadCache& h, const float* k, const float* v, int32_t t);
  // Writes rows [pending_begin_[kv_head], t_end) of a head that append placed but has not written, and updates the
  // key summaries of their pages.
  void flush_head(int32_t kv_head, const float* k, const float* v, int32_t t_end);
  // Widens page `page`'s key summary by a row as stored.
  void summarize_row(KvHeadCache& h, const KvRowDest& dst, int32_t page);
  // The page holding a slot, and the slot's row in it.
  std::pair<size_t, int32_t> locate(const KvHeadCache& h, int32_t slot) const;
  // read_keys and read_values: keys or values of slots [slot, slot + n), page by page.
  void read_rows(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, bool keys, float* out) const;
  void seal_page(KvHeadCache& h, size_t page_index);
  // Key summaries (no-ops without KvGeometry::key_summaries): page p's min/max recomputed from the keys it holds;
  // the summaries of pages [first, end) recomputed and the table cut to the page count.
  void summarize_page(KvHeadCache& h, size_t p);
  void summarize_pages_from(KvHeadCache& h, size_t first);
  // Seals the oldest open pages while a full page's worth of tokens beyond the full-precision window is open.
  void seal_old_pages(KvHeadCache& h);
  bool seal_due(const KvHeadCache& h) const;  // whether seal_old_pages would seal a page now
  // Moves the rows of the open pages from page `first` on to the front, in order, and frees emptied pages.
  void pack_open_pages(KvHeadCache& h, size_t first);
  size_t first_open_page(const KvHeadCache& h) const;
  // Free rows of the open pages from first on, the last page's not counted: what evictions left behind.
  int32_t holes(const KvHeadCache& h, size_t first) const;
  // Whether the open pages must be packed before a new one opens: the last is full and the pages before it have
  // holes, which packing takes back so the open pages stay the fewest that hold their rows; holes left by decode-step
  // evictions (KvHeadCache::lazy_holes) only once they add up to a page. first: the first open page.
  bool repack_before_new_page(const KvHeadCache& h, size_t* first) const;
  // The page the next row goes to: the last open one, or a new one (with its empty key summary) when that is full.
  KvPage& page_for_next_row(KvHeadCache& h);
  // Page p of a head, made this sequence's own before it is written: a page others hold too is replaced by a copy.
  KvPage& own_page(KvHeadCache& h, size_t p);
  // A new page holding a copy of page's bytes, its first n_rows rows counted.
  KvPage copy_of(const KvPage& page, int32_t n_rows);

  KvGeometry geo_;
  KvPagePool& pool_;
  KvPageMemory& mem_;
  // append's rows of the layer being appended: where each goes ((n, n_head_kv) order) and its page's index in its
  // head; per head the first row not yet written.
  std::vector<KvRowDest> dests_;
  std::vector<int32_t> dest_page_;
  std::vector<int32_t> pending_begin_;
  std::vector<KvRowDest> head_dests_;
  int32_t append_layer_ = 0;
  bool auto_seal_ = false;
  std::vector<KvHeadCache> heads_;  // (n_layer, n_head_kv)
};

}  // namespace longctx::kv
