#include "kv/kv_store.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "core/error.h"

namespace longctx::kv {

namespace {
// A slab is mapped at least this large, so the number of mappings stays small.
constexpr size_t kSlabMinBytes = size_t{1} << 20;
}  // namespace

size_t kv_pool_chunk_bytes(size_t page_bytes) {
  return std::lcm(page_bytes, static_cast<size_t>(sysconf(_SC_PAGESIZE)));
}

KvPagePool::KvPagePool(int32_t page_tokens, int32_t head_dim, size_t max_bytes, KvPageMemory& memory)
    : page_tokens_(page_tokens), head_dim_(head_dim), max_bytes_(max_bytes), memory_(memory) {
  if (page_tokens <= 0 || head_dim <= 0 || head_dim > 512) fail("unsupported KV geometry: head size {}", head_dim);
}

KvPagePool::~KvPagePool() {
  for (auto& fp : by_format_)
    for (const Slab& s : fp.slabs) memory_.unmap(s.base, s.bytes);
}

size_t KvPagePool::page_bytes(KvFormat f) const { return kv_page_bytes(f, page_tokens_, head_dim_); }

KvPagePool::FormatPages& KvPagePool::format_pages(KvFormat f) {
  FormatPages& fp = by_format_[static_cast<int>(f)];
  if (fp.page_bytes == 0) {
    // Returning a chunk returns exactly its bytes.
    fp.page_bytes = page_bytes(f);
    const size_t chunk = kv_pool_chunk_bytes(fp.page_bytes);
    fp.pages_per_chunk = chunk / fp.page_bytes;
    fp.chunks_per_slab = std::max<size_t>(1, kSlabMinBytes / chunk);
  }
  return fp;
}

uint8_t* KvPagePool::chunk_data(FormatPages& fp, int32_t chunk) {
  const size_t c = static_cast<size_t>(chunk);
  const Slab& s = fp.slabs[c / fp.chunks_per_slab];
  return s.base + (c % fp.chunks_per_slab) * fp.pages_per_chunk * fp.page_bytes;
}

KvPage KvPagePool::kv_page_alloc(KvFormat f) {
  FormatPages& fp = format_pages(f);
  const size_t chunk_bytes = fp.pages_per_chunk * fp.page_bytes;
  if (fp.free.empty()) {
    const size_t slab_bytes = fp.chunks_per_slab * chunk_bytes;
    uint8_t* p = memory_.map(slab_bytes);
    if (p == nullptr) fail("out of memory mapping {} bytes of KV cache", slab_bytes);
    const int32_t first = static_cast<int32_t>(fp.slabs.size() * fp.chunks_per_slab * fp.pages_per_chunk);
    fp.slabs.push_back(Slab{p, slab_bytes});
    fp.chunk_in_use.resize(fp.chunk_in_use.size() + fp.chunks_per_slab, 0);
    fp.holders.resize(fp.holders.size() + fp.chunks_per_slab * fp.pages_per_chunk, 0);
    for (size_t i = 0; i < fp.chunks_per_slab * fp.pages_per_chunk; ++i) {
      fp.free.push_back(first + static_cast<int32_t>(i));
      std::push_heap(fp.free.begin(), fp.free.end(), std::greater<>());
    }
  }
  const int32_t id = fp.free.front();
  int32_t& in_use = fp.chunk_in_use[static_cast<size_t>(page_chunk(fp, id))];
  if (in_use == 0) {
    if (bytes_held_ + chunk_bytes > max_bytes_)
      fail("the KV cache needs more than its limit of {:.1f} MiB: raise --ctx, lower the KV budget or shorten the "
           "prompt", max_bytes_ / 1048576.0);
    bytes_held_ += chunk_bytes;
    bytes_held_peak_ = std::max(bytes_held_peak_, bytes_held_);
  }
  std::pop_heap(fp.free.begin(), fp.free.end(), std::greater<>());
  fp.free.pop_back();
  ++in_use;
  ++n_in_use_;
  fp.holders[static_cast<size_t>(id)] = 1;
  return KvPage{id, f, 0};
}

void KvPagePool::kv_page_share(const KvPage& page) {
  FormatPages& fp = format_pages(page.format);
  int32_t& holders = fp.holders.at(static_cast<size_t>(page.id));
  if (holders <= 0) fail("internal: sharing KV page {} that is not in use", page.id);
  ++holders;
}

int32_t KvPagePool::kv_page_holders(const KvPage& page) const {
  const FormatPages& fp = by_format_[static_cast<int>(page.format)];
  return static_cast<size_t>(page.id) < fp.holders.size() ? fp.holders[static_cast<size_t>(page.id)] : 0;
}

void KvPagePool::kv_page_free(const KvPage& page) {
  FormatPages& fp = format_pages(page.format);
  int32_t& holders = fp.holders.at(static_cast<size_t>(page.id));
  if (holders <= 0) fail("internal: freeing KV page {} that is not in use", page.id);
  if (--holders > 0) return;  // another sequence still reads it
  const int32_t chunk = page_chunk(fp, page.id);
  int32_t& in_use = fp.chunk_in_use[static_cast<size_t>(chunk)];
  if (--in_use == 0) {
    // The chunk's last live page went: its memory goes back to the system now (reads as zeros if reused).
    const size_t chunk_bytes = fp.pages_per_chunk * fp.page_bytes;
    memory_.release(chunk_data(fp, chunk), chunk_bytes);
    bytes_held_ -= chunk_bytes;
  }
  fp.free.push_back(page.id);
  std::push_heap(fp.free.begin(), fp.free.end(), std::greater<>());
  --n_in_use_;
}

uint8_t* KvPagePool::page_data(const KvPage& page) {
  FormatPages& fp = by_format_[static_cast<int>(page.format)];
  return chunk_data(fp, page_chunk(fp, page.id)) + static_cast<size_t>(page.id) % fp.pages_per_chunk * fp.page_bytes;
}

const uint8_t* KvPagePool::page_data(const KvPage& page) const { return const_cast<KvPagePool*>(this)->page_data(page); }

KvSequence::KvSequence(const KvGeometry& geo, KvPagePool& pool)
    : geo_(geo), pool_(pool), mem_(pool.memory()), heads_(static_cast<size_t>(geo.n_layer) * geo.n_head_kv) {
  if (kv_format_is_packed(geo.format)) fail("internal: open KV pages must be f16 or f32");
  if (geo.n_recent_full_precision < 0) fail("internal: negative full-precision window");
  if (pool.page_bytes(geo.format) != kv_page_bytes(geo.format, geo.page_tokens, geo.head_dim))
    fail("internal: KV pool geometry does not match the sequence's");
}

KvSequence::~KvSequence() { clear(); }

void KvSequence::clear() {
  for (auto& h : heads_) {
    for (const KvPage& p : h.pages) pool_.kv_page_free(p);
    h.pages.clear();
    h.positions.clear();
    h.key_summary.clear();
  }
}

std::pair<size_t, int32_t> KvSequence::locate(const KvHeadCache& h, int32_t slot) const {
  if (slot < 0 || slot >= h.n_tokens()) fail("internal: slot {} of {}", slot, h.n_tokens());
  int32_t s0 = 0;
  for (size_t p = 0; p < h.pages.size(); ++p) {
    if (slot < s0 + h.pages[p].n_rows) return {p, slot - s0};
    s0 += h.pages[p].n_rows;
  }
  fail("internal: KV page table does not cover slot {}", slot);
}

size_t KvSequence::first_open_page(const KvHeadCache& h) const {
  // Sealed pages are the oldest: sealing goes front to back and never reopens a page.
  size_t p = 0;
  while (p < h.pages.size() && h.pages[p].format != geo_.format) ++p;
  return p;
}

int32_t KvSequence::holes(const KvHeadCache& h, size_t first) const {
  int32_t n = 0;
  for (size_t p = first; p + 1 < h.pages.size(); ++p) n += geo_.page_tokens - h.pages[p].n_rows;
  return n;
}

bool KvSequence::repack_before_new_page(const KvHeadCache& h, size_t* first) const {
  const int32_t T = geo_.page_tokens;
  if (h.pages.empty() || h.pages.back().format != geo_.format || h.pages.back().n_rows < T) return false;
  *first = first_open_page(h);
  const int32_t n = holes(h, *first);
  return n >= (h.lazy_holes ? T : 1);
}

KvPage KvSequence::copy_of(const KvPage& page, int32_t n_rows) {
  KvPage copy = pool_.kv_page_alloc(page.format);
  mem_.copy_page(pool_.page_data(copy), pool_.page_data(page), pool_.page_bytes(page.format));
  copy.n_rows = n_rows;
  return copy;
}

KvPage& KvSequence::own_page(KvHeadCache& h, size_t p) {
  KvPage& page = h.pages[p];
  if (pool_.kv_page_holders(page) <= 1) return page;
  const KvPage copy = copy_of(page, page.n_rows);
  pool_.kv_page_free(page);  // the others keep it
  page = copy;
  return page;
}

void KvSequence::share_prefix(const KvSequence& src, int32_t n_tokens) {
  const KvGeometry& sg = src.geometry();
  if (&src.pool_ != &pool_ || sg.n_layer != geo_.n_layer || sg.n_head_kv != geo_.n_head_kv ||
      sg.head_dim != geo_.head_dim || sg.page_tokens != geo_.page_tokens || sg.format != geo_.format)
    fail("internal: sharing a prefix between sequences of different pools or layouts");
  if (n_tokens_total() != 0) fail("internal: sharing a prefix into a sequence that holds tokens");
  if (n_tokens <= 0) return;
  for (const KvHeadCache& s : src.heads_) {
    // Positions ascend without repeats, so the (n_tokens - 1)-th being n_tokens - 1 means all of 0 .. n_tokens - 1.
    if (s.n_tokens() < n_tokens || s.positions[static_cast<size_t>(n_tokens) - 1] != n_tokens - 1)
      fail("internal: the shared prefix's {} tokens are not all cached in order", n_tokens);
    for (const KvPage& page : s.pages)
      if (page.format != geo_.format) fail("internal: a shared prefix holds a {} page", kv_format_name(page.format));
  }
  for (size_t i = 0; i < heads_.size(); ++i) {
    const KvHeadCache& s = src.heads_[i];
    KvHeadCache& h = heads_[i];
    int32_t taken = 0;
    for (const KvPage& page : s.pages) {
      if (taken == n_tokens) break;
      if (taken + page.n_rows <= n_tokens) {
        pool_.kv_page_share(page);
        h.pages.push_back(page);
        taken += page.n_rows;
      } else {
        // The prefix ends inside this page: its rows up to there are copied into a page of our own.
        h.pages.push_back(copy_of(page, n_tokens - taken));
        taken = n_tokens;
      }
    }
    h.positions.assign(s.positions.begin(), s.positions.begin() + n_tokens);
    summarize_pages_from(h, 0);
  }
}

KvPage& KvSequence::page_for_next_row(KvHeadCache& h) {
  if (!h.pages.empty() && h.pages.back().format == geo_.format && h.pages.back().n_rows < geo_.page_tokens)
    return own_page(h, h.pages.size() - 1);
  h.pages.push_back(pool_.kv_page_alloc(geo_.format));
  if (geo_.key_summaries) {
    h.key_summary.resize(h.pages.size() * 2 * static_cast<size_t>(geo_.head_dim));
    summarize_page(h, h.pages.size() - 1);  // empty: min +inf, max -inf
  }
  return h.pages.back();
}

void KvSequence::append_row(KvHeadCache& h, const float* k, const float* v, int32_t position) {
  size_t first = 0;
  if (repack_before_new_page(h, &first)) pack_open_pages(h, first);
  KvPage& page = page_for_next_row(h);
  const KvRowDest dst{pool_.page_data(page), page.n_rows};
  mem_.write_page_rows_host(page.format, geo_.page_tokens, geo_.head_dim, k, v, dst.row, 1, dst.page);
  ++page.n_rows;
  h.positions.push_back(position);
  if (geo_.key_summaries) summarize_row(h, dst, static_cast<int32_t>(h.pages.size() - 1));
}

void KvSequence::summarize_page(KvHeadCache& h, size_t p) {
  if (!geo_.key_summaries) return;
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  float* mn = h.key_summary.data() + p * 2 * static_cast<size_t>(d);
  float* mx = mn + d;
  std::fill(mn, mn + d, std::numeric_limits<float>::infinity());
  std::fill(mx, mx + d, -std::numeric_limits<float>::infinity());
  const KvPage& page = h.pages[p];
  if (page.n_rows == 0) return;
  std::vector<float> k(static_cast<size_t>(page.n_rows) * d);
  mem_.read_keys_host(page.format, T, d, pool_.page_data(page), 0, page.n_rows, k.data());
  for (int32_t r = 0; r < page.n_rows; ++r)
    for (int32_t i = 0; i < d; ++i) {
      const float x = k[static_cast<size_t>(r) * d + i];
      mn[i] = std::min(mn[i], x);
      mx[i] = std::max(mx[i], x);
    }
}

void KvSequence::summarize_pages_from(KvHeadCache& h, size_t first) {
  if (!geo_.key_summaries) return;
  h.key_summary.resize(h.pages.size() * 2 * static_cast<size_t>(geo_.head_dim));
  for (size_t p = first; p < h.pages.size(); ++p) summarize_page(h, p);
}

void KvSequence::append(int32_t layer, const float* k, const float* v, const int32_t* positions, int32_t n) {
  const int32_t G = geo_.n_head_kv, d = geo_.head_dim;
  const size_t n_rows = static_cast<size_t>(n) * G;
  dests_.resize(n_rows);
  dest_page_.resize(n_rows);
  pending_begin_.assign(static_cast<size_t>(G), 0);
  append_layer_ = layer;
  // Where every row goes, head by head as append_row places them; the bytes are written at the end in one call,
  // or earlier for a head whose pages are packed or sealed meanwhile (those read its rows back).
  for (int32_t g = 0; g < G; ++g) {
    KvHeadCache& h = heads_[index(layer, g)];
    for (int32_t t = 0; t < n; ++t) {
      dests_[static_cast<size_t>(t) * G + g] = place_row(g, h, k, v, t);
      h.positions.push_back(positions[t]);
    }
    if (auto_seal_ && seal_due(h)) {
      flush_head(g, k, v, n);
      seal_old_pages(h);
    }
  }
  bool all_pending = true;
  for (int32_t b : pending_begin_) all_pending = all_pending && b == 0;
  if (all_pending) {
    mem_.write_rows(geo_.format, geo_.page_tokens, d, k, v, d, dests_.data(), static_cast<int32_t>(n_rows));
    if (geo_.key_summaries)
      for (int32_t g = 0; g < G; ++g)
        for (int32_t t = 0; t < n; ++t) {
          const size_t i = static_cast<size_t>(t) * G + g;
          summarize_row(heads_[index(layer, g)], dests_[i], dest_page_[i]);
        }
  } else {
    for (int32_t g = 0; g < G; ++g) flush_head(g, k, v, n);
  }
}

KvRowDest KvSequence::place_row(int32_t g, KvHeadCache& h, const float* k, const float* v, int32_t t) {
  size_t first = 0;
  if (repack_before_new_page(h, &first)) {
    flush_head(g, k, v, t);  // packing reads the rows: this head's rows placed so far are written first
    pack_open_pages(h, first);
  }
  KvPage& page = page_for_next_row(h);
  const KvRowDest dst{pool_.page_data(page), page.n_rows};
  dest_page_[static_cast<size_t>(t) * geo_.n_head_kv + g] = static_cast<int32_t>(h.pages.size() - 1);
  ++page.n_rows;
  return dst;
}

void KvSequence::flush_head(int32_t g, const float* k, const float* v, int32_t t_end) {
  const int32_t G = geo_.n_head_kv, d = geo_.head_dim;
  const int32_t t0 = pending_begin_[static_cast<size_t>(g)];
  if (t_end <= t0) return;
  head_dests_.clear();
  for (int32_t t = t0; t < t_end; ++t) head_dests_.push_back(dests_[static_cast<size_t>(t) * G + g]);
  const size_t off = (static_cast<size_t>(t0) * G + g) * d;
  mem_.write_rows(geo_.format, geo_.page_tokens, d, k + off, v + off, static_cast<int64_t>(G) * d, head_dests_.data(),
                  t_end - t0);
  if (geo_.key_summaries) {
    KvHeadCache& h = heads_[index(append_layer_, g)];
    for (int32_t t = t0; t < t_end; ++t) {
      const size_t i = static_cast<size_t>(t) * G + g;
      summarize_row(h, dests_[i], dest_page_[i]);
    }
  }
  pending_begin_[static_cast<size_t>(g)] = t_end;
}

void KvSequence::summarize_row(KvHeadCache& h, const KvRowDest& dst, int32_t page) {
  // The row as stored (f16 rounds), so the page's bound covers the key the kernel reads.
  const int32_t d = geo_.head_dim;
  float stored[512];
  mem_.read_keys_host(geo_.format, geo_.page_tokens, d, dst.page, dst.row, 1, stored);
  float* mn = h.key_summary.data() + static_cast<size_t>(page) * 2 * static_cast<size_t>(d);
  float* mx = mn + d;
  for (int32_t i = 0; i < d; ++i) {
    mn[i] = std::min(mn[i], stored[i]);
    mx[i] = std::max(mx[i], stored[i]);
  }
}

void KvSequence::append_head(int32_t layer, int32_t kv_head, const float* k, const float* v, int32_t position) {
  KvHeadCache& h = heads_[index(layer, kv_head)];
  append_row(h, k, v, position);
  if (auto_seal_) seal_old_pages(h);
}

void KvSequence::seal_page(KvHeadCache& h, size_t pi) {
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  KvPage& page = h.pages[pi];
  if (page.n_rows != T) fail("internal: sealing a page of {} rows", page.n_rows);
  std::vector<float> K(static_cast<size_t>(T) * d), V(K.size());
  const uint8_t* src = pool_.page_data(page);
  mem_.read_keys_host(page.format, T, d, src, 0, T, K.data());
  mem_.read_values_host(page.format, T, d, src, 0, T, V.data());
  KvPage packed = pool_.kv_page_alloc(geo_.sealed_format);
  mem_.write_page_rows_host(geo_.sealed_format, T, d, K.data(), V.data(), 0, T, pool_.page_data(packed));
  packed.n_rows = T;
  pool_.kv_page_free(page);  // the packed page replaces the open one: never both held
  page = packed;
  // The key summary stays the one of the exact keys read above: packing does not touch it.
}

bool KvSequence::seal_due(const KvHeadCache& h) const {
  if (geo_.sealed_format == geo_.format) return false;
  const size_t first = first_open_page(h);
  int32_t n_open = 0;
  for (size_t p = first; p < h.pages.size(); ++p) n_open += h.pages[p].n_rows;
  return first < h.pages.size() && n_open >= geo_.page_tokens + geo_.n_recent_full_precision;
}

void KvSequence::seal_old_pages(KvHeadCache& h) {
  if (geo_.sealed_format == geo_.format) return;
  const int32_t T = geo_.page_tokens, R = geo_.n_recent_full_precision;
  while (true) {
    const size_t first = first_open_page(h);
    if (first == h.pages.size()) return;
    int32_t n_open = 0;
    for (size_t p = first; p < h.pages.size(); ++p) n_open += h.pages[p].n_rows;
    // KIVI: the newest R tokens stay in full precision, so a page is packed only when all of it is older.
    if (n_open < T + R) return;
    if (h.pages[first].n_rows < T) pack_open_pages(h, first);
    seal_page(h, first);
  }
}

void KvSequence::seal_full_pages() {
  for (auto& h : heads_) seal_old_pages(h);
}

void KvSequence::pack_open_pages(KvHeadCache& h, size_t first) {
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  std::vector<int32_t> n_written(h.pages.size(), 0), keep;
  // The write cursor (page w, row wr) never passes the read cursor (page r, row i), so no row is overwritten
  // before it is read; a run that stays in its own page moves down within it.
  size_t w = first;
  int32_t wr = 0;
  for (size_t r = first; r < h.pages.size(); ++r) {
    const int32_t n_rows = h.pages[r].n_rows;
    int32_t i = 0;
    while (i < n_rows) {
      if (w == r) {
        if (wr != i) {
          keep.resize(static_cast<size_t>(wr + n_rows - i));
          std::iota(keep.begin(), keep.begin() + wr, 0);
          std::iota(keep.begin() + wr, keep.end(), i);
          own_page(h, r);
          mem_.compact(h.pages[r].format, T, d, pool_.page_data(h.pages[r]), keep.data(),
                               static_cast<int32_t>(keep.size()));
        }
        wr += n_rows - i;
        i = n_rows;
        n_written[w] = wr;
        break;
      }
      const int32_t n = std::min(T - wr, n_rows - i);
      const KvPage& src = h.pages[r];
      own_page(h, w);
      if (h.pages[w].format != src.format) fail("internal: packing open pages of two formats");
      mem_.copy_rows(src.format, T, d, pool_.page_data(src), i, n, pool_.page_data(h.pages[w]), wr);
      wr += n;
      i += n;
      n_written[w] = wr;
      if (wr == T) {
        ++w;
        wr = 0;
      }
    }
  }
  for (size_t p = first; p < h.pages.size(); ++p) h.pages[p].n_rows = n_written[p];
  // Emptied pages are now all at the end.
  while (h.pages.size() > first && h.pages.back().n_rows == 0) {
    pool_.kv_page_free(h.pages.back());
    h.pages.pop_back();
  }
  summarize_pages_from(h, first);  // open pages hold exact keys (f16/f32): their rows moved
  h.lazy_holes = false;
}

void KvSequence::remove_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& slots) {
  if (slots.empty()) return;
  KvHeadCache& h = heads_[index(layer, kv_head)];
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  for (size_t i = 0; i < slots.size(); ++i)
    if (slots[i] < 0 || slots[i] >= h.n_tokens() || (i > 0 && slots[i] <= slots[i - 1]))
      fail("internal: removing slot {} of {} (slots must be sorted, unique, in range)", slots[i], h.n_tokens());
  // Each touched page keeps its other rows, moved to its front in order: plain pages lose nothing, packed pages
  // keep the scales they were encoded with.
  std::vector<int32_t> keep;
  size_t j = 0;
  int32_t s0 = 0;
  for (size_t p = 0; p < h.pages.size(); ++p) {
    KvPage& page = h.pages[p];
    const int32_t s1 = s0 + page.n_rows;
    if (j < slots.size() && slots[j] < s1) {
      keep.clear();
      for (int32_t s = s0; s < s1; ++s) {
        if (j < slots.size() && slots[j] == s) {
          ++j;
        } else {
          keep.push_back(s - s0);
        }
      }
      if (!keep.empty()) {  // an emptied page is only let go (a shared one is not copied for that)
        own_page(h, p);
        mem_.compact(page.format, T, d, pool_.page_data(page), keep.data(), static_cast<int32_t>(keep.size()));
      }
      page.n_rows = static_cast<int32_t>(keep.size());
      // The compacted page's summary, from the rows it still holds (a packed page: as dequantized, which is what
      // attention reads of it; the exact keys are gone).
      summarize_page(h, p);
    }
    s0 = s1;
  }
  erase_slots(h.positions, slots);
  // Emptied pages go back to the pool at once.
  size_t w = 0;
  const size_t sd = 2 * static_cast<size_t>(d);
  for (size_t p = 0; p < h.pages.size(); ++p) {
    if (h.pages[p].n_rows == 0) {
      pool_.kv_page_free(h.pages[p]);
    } else {
      if (geo_.key_summaries && w != p)
        std::copy_n(h.key_summary.begin() + static_cast<std::ptrdiff_t>(p * sd), sd,
                    h.key_summary.begin() + static_cast<std::ptrdiff_t>(w * sd));
      h.pages[w++] = h.pages[p];
    }
  }
  h.pages.resize(w);
  if (geo_.key_summaries) h.key_summary.resize(w * sd);
  // Packing moves every open row after the first hole. A cut of a page of slots or more (a prompt's end, a prefill
  // chunk, window expiry of a chunk) packs as soon as the open pages' free rows, the last page's included, add up to
  // a page, so they stay the fewest that hold their rows. A smaller one (a decode step's eviction: one slot for H2O
  // and TOVA, two with a compensation token) would then repack the whole head every step, since each step's append
  // opens a page beside the new hole; its holes wait until they add up to a page (KvHeadCache::lazy_holes): a pack
  // every page_tokens evictions at most, and one page more than the fewest at most.
  const size_t first = first_open_page(h);
  int32_t n_free = 0;
  for (size_t p = first; p < h.pages.size(); ++p) n_free += T - h.pages[p].n_rows;
  h.lazy_holes = static_cast<int32_t>(slots.size()) < T;
  if (n_free >= T && (!h.lazy_holes || holes(h, first) >= T)) pack_open_pages(h, first);
  if (auto_seal_) seal_old_pages(h);
  // Accounting counts what is allocated, so a head cut from thousands of tokens to its budget gives back the
  // capacity of its tables too (otherwise they are a third of a 2-bit cache's bytes). The slack of one page
  // keeps a decode step's append and eviction from reallocating each time.
  if (h.positions.capacity() > 2 * h.positions.size() + static_cast<size_t>(T)) {
    h.positions.shrink_to_fit();
    h.pages.shrink_to_fit();
    h.key_summary.shrink_to_fit();
  }
}

std::vector<int32_t> complement_slots(const std::vector<int32_t>& keep, int32_t n) {
  std::vector<int32_t> drop;
  drop.reserve(static_cast<size_t>(n));
  size_t j = 0;
  for (int32_t s = 0; s < n; ++s) {
    if (j < keep.size() && keep[j] == s) {
      ++j;
    } else {
      drop.push_back(s);
    }
  }
  if (j != keep.size()) fail("internal: kept slots must be sorted, unique and below {}", n);
  return drop;
}

void KvSequence::keep_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& keep) {
  remove_slots(layer, kv_head, complement_slots(keep, heads_[index(layer, kv_head)].n_tokens()));
}

void KvSequence::read_rows(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, bool keys, float* out) const {
  if (n <= 0) return;
  const KvHeadCache& h = head(layer, kv_head);
  if (slot + n > h.n_tokens()) fail("internal: reading slots {}..{} of {}", slot, slot + n, h.n_tokens());
  auto [p, row] = locate(h, slot);
  // Page by page: each page's rows in its own format.
  for (; n > 0; ++p, row = 0) {
    const KvPage& page = h.pages[p];
    const int32_t m = std::min(n, page.n_rows - row);
    if (keys)
      mem_.read_keys_host(page.format, geo_.page_tokens, geo_.head_dim, pool_.page_data(page), row, m, out);
    else
      mem_.read_values_host(page.format, geo_.page_tokens, geo_.head_dim, pool_.page_data(page), row, m, out);
    out += static_cast<size_t>(m) * geo_.head_dim;
    n -= m;
  }
}

void KvSequence::read_keys(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const {
  read_rows(layer, kv_head, slot, n, true, out);
}

void KvSequence::read_values(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const {
  read_rows(layer, kv_head, slot, n, false, out);
}

KvLayerView KvSequence::layer_view(int32_t layer) const {
  KvLayerView view;
  view.page_tokens = geo_.page_tokens;
  view.head_dim = geo_.head_dim;
  view.heads.resize(static_cast<size_t>(geo_.n_head_kv));
  for (int32_t g = 0; g < geo_.n_head_kv; ++g) {
    const KvHeadCache& h = head(layer, g);
    auto& hv = view.heads[static_cast<size_t>(g)];
    hv.pages.reserve(h.pages.size());
    hv.formats.reserve(h.pages.size());
    hv.slot0.reserve(h.pages.size() + 1);
    int32_t s0 = 0;
    for (const KvPage& p : h.pages) {
      hv.pages.push_back(pool_.page_data(p));
      hv.formats.push_back(p.format);
      hv.slot0.push_back(s0);
      s0 += p.n_rows;
    }
    hv.slot0.push_back(s0);
    hv.positions = h.positions.data();
    hv.n_tokens = h.n_tokens();
    hv.key_summary = geo_.key_summaries ? h.key_summary.data() : nullptr;
  }
  return view;
}

int32_t KvSequence::n_tokens_max() const {
  int32_t n = 0;
  for (const auto& h : heads_) n = std::max(n, h.n_tokens());
  return n;
}

int64_t KvSequence::n_tokens_total() const {
  int64_t n = 0;
  for (const auto& h : heads_) n += h.n_tokens();
  return n;
}

KvBytes KvSequence::bytes() const {
  KvBytes b;
  for (const auto& h : heads_) {
    for (const KvPage& p : h.pages) {
      b.payload += pool_.page_bytes(p.format);
      if (pool_.kv_page_holders(p) > 1) b.shared += pool_.page_bytes(p.format);
    }
    b.metadata += h.pages.capacity() * sizeof(KvPage) + h.positions.capacity() * sizeof(int32_t);
    b.summaries += h.key_summary.capacity() * sizeof(float);
  }
  b.metadata += heads_.capacity() * sizeof(KvHeadCache);
  return b;
}

size_t KvSequence::full_f16_bytes(int64_t n_tokens) const {
  return static_cast<size_t>(n_tokens) * geo_.n_layer * geo_.n_head_kv * geo_.head_dim * 2 * 2;
}

}  // namespace longctx::kv
