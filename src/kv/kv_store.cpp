#include "kv/kv_store.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include "backend/cpu/kv_page_codec.h"
#include "core/error.h"

namespace longctx::kv {

void KvPagePool::FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

KvPagePool::KvPagePool(int32_t page_tokens, int32_t head_dim, size_t max_bytes)
    : page_tokens_(page_tokens), head_dim_(head_dim), max_bytes_(max_bytes) {
  if (page_tokens <= 0 || head_dim <= 0 || head_dim > 512) fail("unsupported KV geometry: head size {}", head_dim);
}
KvPagePool::~KvPagePool() = default;

size_t KvPagePool::page_bytes(KvFormat f) const { return cpu::kv_page_bytes(f, page_tokens_, head_dim_); }

size_t KvPagePool::bytes_reserved() const {
  size_t n = 0;
  for (int f = 0; f < kNumFormats; ++f)
    if (!by_format_[f].slabs.empty()) n += by_format_[f].slabs.size() * kPagesPerSlab * page_bytes(static_cast<KvFormat>(f));
  return n;
}

KvPage KvPagePool::kv_page_alloc(KvFormat f) {
  Slabs& s = by_format_[static_cast<int>(f)];
  const size_t pb = page_bytes(f);
  if (s.free.empty()) {
    const size_t slab_bytes = kPagesPerSlab * pb;
    if (bytes_reserved() + slab_bytes > max_bytes_)
      fail("the KV cache needs more than its limit of {:.1f} MiB: raise --ctx or shorten the prompt",
           max_bytes_ / 1048576.0);
    // 64-byte alignment: page rows are read with full-width SIMD loads.
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, (slab_bytes + 63) / 64 * 64));
    if (p == nullptr) fail("out of memory allocating {} bytes of KV cache", slab_bytes);
    const int32_t first = static_cast<int32_t>(s.slabs.size()) * kPagesPerSlab;
    s.slabs.emplace_back(p);
    for (int32_t i = kPagesPerSlab - 1; i >= 0; --i) s.free.push_back(first + i);
  }
  KvPage page{s.free.back(), f};
  s.free.pop_back();
  ++n_in_use_;
  return page;
}

void KvPagePool::kv_page_free(const KvPage& page) {
  by_format_[static_cast<int>(page.format)].free.push_back(page.id);
  --n_in_use_;
}

uint8_t* KvPagePool::page_data(const KvPage& page) {
  const Slabs& s = by_format_[static_cast<int>(page.format)];
  return s.slabs[static_cast<size_t>(page.id / kPagesPerSlab)].get() +
         static_cast<size_t>(page.id % kPagesPerSlab) * page_bytes(page.format);
}

const uint8_t* KvPagePool::page_data(const KvPage& page) const { return const_cast<KvPagePool*>(this)->page_data(page); }

KvSequence::KvSequence(const KvGeometry& geo, KvPagePool& pool)
    : geo_(geo), pool_(pool), heads_(static_cast<size_t>(geo.n_layer) * geo.n_head_kv) {
  if (kv_format_is_packed(geo.format)) fail("internal: open KV pages must be f16 or f32");
  if (pool.page_bytes(geo.format) != cpu::kv_page_bytes(geo.format, geo.page_tokens, geo.head_dim))
    fail("internal: KV pool geometry does not match the sequence's");
}

KvSequence::~KvSequence() { clear(); }

void KvSequence::clear() {
  for (auto& h : heads_) {
    for (const KvPage& p : h.pages) pool_.kv_page_free(p);
    h.pages.clear();
    h.positions.clear();
  }
}

void KvSequence::write_row(KvHeadCache& h, int32_t slot, const float* k, const float* v) {
  const size_t pi = static_cast<size_t>(slot / geo_.page_tokens);
  const int32_t row = slot % geo_.page_tokens;
  if (kv_format_is_packed(h.pages[pi].format)) {
    // A packed page is re-encoded whole: its key scales span all its rows.
    const int32_t T = geo_.page_tokens, d = geo_.head_dim;
    std::vector<float> K(static_cast<size_t>(T) * d), V(K.size());
    const uint8_t* src = pool_.page_data(h.pages[pi]);
    cpu::kv_page_read_keys(h.pages[pi].format, T, d, src, 0, T, K.data());
    cpu::kv_page_read_values(h.pages[pi].format, T, d, src, 0, T, V.data());
    std::memcpy(K.data() + static_cast<size_t>(row) * d, k, static_cast<size_t>(d) * sizeof(float));
    std::memcpy(V.data() + static_cast<size_t>(row) * d, v, static_cast<size_t>(d) * sizeof(float));
    cpu::kv_page_write(h.pages[pi].format, T, d, K.data(), V.data(), 0, T, pool_.page_data(h.pages[pi]));
    return;
  }
  cpu::kv_page_write(h.pages[pi].format, geo_.page_tokens, geo_.head_dim, k, v, row, 1, pool_.page_data(h.pages[pi]));
}

void KvSequence::append(int32_t layer, const float* k, const float* v, const int32_t* positions, int32_t n) {
  const int32_t d = geo_.head_dim;
  for (int32_t g = 0; g < geo_.n_head_kv; ++g) {
    KvHeadCache& h = heads_[index(layer, g)];
    for (int32_t t = 0; t < n; ++t) {
      const int32_t slot = h.n_tokens();
      if (slot % geo_.page_tokens == 0) {
        h.pages.push_back(pool_.kv_page_alloc(geo_.format));
      } else if (kv_format_is_packed(h.pages.back().format)) {
        unseal_page(h, h.pages.size() - 1);  // a partial sealed page (after eviction) takes new rows unpacked
      }
      h.positions.push_back(positions[t]);
      const size_t off = (static_cast<size_t>(t) * geo_.n_head_kv + g) * d;
      write_row(h, slot, k + off, v + off);
      if (auto_seal_ && (slot + 1) % geo_.page_tokens == 0) seal_page(h, h.pages.size() - 1);
    }
  }
}

void KvSequence::seal_page(KvHeadCache& h, size_t pi) {
  if (h.pages[pi].format != geo_.format || geo_.sealed_format == geo_.format) return;
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  std::vector<float> K(static_cast<size_t>(T) * d), V(K.size());
  const uint8_t* src = pool_.page_data(h.pages[pi]);
  cpu::kv_page_read_keys(geo_.format, T, d, src, 0, T, K.data());
  cpu::kv_page_read_values(geo_.format, T, d, src, 0, T, V.data());
  const KvPage packed = pool_.kv_page_alloc(geo_.sealed_format);
  cpu::kv_page_write(geo_.sealed_format, T, d, K.data(), V.data(), 0, T, pool_.page_data(packed));
  pool_.kv_page_free(h.pages[pi]);
  h.pages[pi] = packed;
}

void KvSequence::unseal_page(KvHeadCache& h, size_t pi) {
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  std::vector<float> K(static_cast<size_t>(T) * d), V(K.size());
  const uint8_t* src = pool_.page_data(h.pages[pi]);
  cpu::kv_page_read_keys(h.pages[pi].format, T, d, src, 0, T, K.data());
  cpu::kv_page_read_values(h.pages[pi].format, T, d, src, 0, T, V.data());
  const KvPage open = pool_.kv_page_alloc(geo_.format);
  const int32_t rows = std::min(T, h.n_tokens() - static_cast<int32_t>(pi) * T);
  cpu::kv_page_write(geo_.format, T, d, K.data(), V.data(), 0, rows, pool_.page_data(open));
  pool_.kv_page_free(h.pages[pi]);
  h.pages[pi] = open;
}

void KvSequence::seal_full_pages() {
  if (geo_.sealed_format == geo_.format) return;
  for (auto& h : heads_) {
    const size_t n_full = static_cast<size_t>(h.n_tokens() / geo_.page_tokens);
    for (size_t pi = 0; pi < n_full; ++pi) seal_page(h, pi);
  }
}

void KvSequence::remove_slots(int32_t layer, int32_t kv_head, const std::vector<int32_t>& slots) {
  KvHeadCache& h = heads_[index(layer, kv_head)];
  const int32_t T = geo_.page_tokens, d = geo_.head_dim;
  // Packed pages touched by this call are decoded once, edited in f32 and re-encoded once at the end, so a page
  // losing many rows is quantized again only once.
  struct Decoded {
    std::vector<float> k, v;  // (page_tokens, head_dim)
  };
  std::map<size_t, Decoded> decoded;
  auto packed_page = [&](size_t pi) -> Decoded* {
    if (!kv_format_is_packed(h.pages[pi].format)) return nullptr;
    auto it = decoded.find(pi);
    if (it == decoded.end()) {
      Decoded dp{std::vector<float>(static_cast<size_t>(T) * d), std::vector<float>(static_cast<size_t>(T) * d)};
      const uint8_t* src = pool_.page_data(h.pages[pi]);
      cpu::kv_page_read_keys(h.pages[pi].format, T, d, src, 0, T, dp.k.data());
      cpu::kv_page_read_values(h.pages[pi].format, T, d, src, 0, T, dp.v.data());
      it = decoded.emplace(pi, std::move(dp)).first;
    }
    return &it->second;
  };
  std::vector<float> k(static_cast<size_t>(d)), v(static_cast<size_t>(d));
  // Descending: every removed slot above the current one is already gone, so the last slot is always kept.
  for (auto it = slots.rbegin(); it != slots.rend(); ++it) {
    const int32_t s = *it;
    if (s < 0 || s >= h.n_tokens()) fail("internal: removing slot {} of {}", s, h.n_tokens());
    const int32_t last = h.n_tokens() - 1;
    if (s != last) {
      const size_t lp = static_cast<size_t>(last / T), sp = static_cast<size_t>(s / T);
      const size_t lrow = static_cast<size_t>(last % T) * d, srow = static_cast<size_t>(s % T) * d;
      if (Decoded* src = packed_page(lp)) {
        std::copy_n(src->k.data() + lrow, d, k.data());
        std::copy_n(src->v.data() + lrow, d, v.data());
      } else {
        read_keys(layer, kv_head, last, 1, k.data());
        read_values(layer, kv_head, last, 1, v.data());
      }
      if (Decoded* dst = packed_page(sp)) {
        std::copy_n(k.data(), d, dst->k.data() + srow);
        std::copy_n(v.data(), d, dst->v.data() + srow);
      } else {
        cpu::kv_page_write(h.pages[sp].format, T, d, k.data(), v.data(), s % T, 1, pool_.page_data(h.pages[sp]));
      }
      h.positions[static_cast<size_t>(s)] = h.positions[static_cast<size_t>(last)];
    }
    h.positions.pop_back();
    if (h.n_tokens() % T == 0) {  // the last page emptied
      decoded.erase(h.pages.size() - 1);
      pool_.kv_page_free(h.pages.back());
      h.pages.pop_back();
    }
  }
  for (auto& [pi, dp] : decoded) {
    if (pi + 1 == h.pages.size() && h.n_tokens() % T != 0) {
      // A partial last page must be open, since new tokens append into it.
      const KvPage open = pool_.kv_page_alloc(geo_.format);
      cpu::kv_page_write(geo_.format, T, d, dp.k.data(), dp.v.data(), 0, h.n_tokens() % T, pool_.page_data(open));
      pool_.kv_page_free(h.pages[pi]);
      h.pages[pi] = open;
    } else {
      cpu::kv_page_write(h.pages[pi].format, T, d, dp.k.data(), dp.v.data(), 0, T, pool_.page_data(h.pages[pi]));
    }
  }
  if (!h.pages.empty() && h.n_tokens() % T != 0 && kv_format_is_packed(h.pages.back().format))
    unseal_page(h, h.pages.size() - 1);
  // Accounting counts what is allocated, so a head cut from thousands of tokens to its budget gives back the
  // capacity of its tables too (otherwise they are a third of a 2-bit cache's bytes). The slack of one page
  // keeps a decode step's append and eviction from reallocating each time.
  if (h.positions.capacity() > 2 * h.positions.size() + static_cast<size_t>(T)) {
    h.positions.shrink_to_fit();
    h.pages.shrink_to_fit();
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

void KvSequence::read_keys(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const {
  const KvHeadCache& h = head(layer, kv_head);
  const KvPage& p = h.pages[static_cast<size_t>(slot / geo_.page_tokens)];
  cpu::kv_page_read_keys(p.format, geo_.page_tokens, geo_.head_dim, pool_.page_data(p), slot % geo_.page_tokens, n, out);
}

void KvSequence::read_values(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const {
  const KvHeadCache& h = head(layer, kv_head);
  const KvPage& p = h.pages[static_cast<size_t>(slot / geo_.page_tokens)];
  cpu::kv_page_read_values(p.format, geo_.page_tokens, geo_.head_dim, pool_.page_data(p), slot % geo_.page_tokens, n, out);
}

cpu::KvLayerView KvSequence::layer_view(int32_t layer) const {
  cpu::KvLayerView view;
  view.page_tokens = geo_.page_tokens;
  view.head_dim = geo_.head_dim;
  view.heads.resize(static_cast<size_t>(geo_.n_head_kv));
  for (int32_t g = 0; g < geo_.n_head_kv; ++g) {
    const KvHeadCache& h = head(layer, g);
    auto& hv = view.heads[static_cast<size_t>(g)];
    hv.pages.reserve(h.pages.size());
    hv.formats.reserve(h.pages.size());
    for (const KvPage& p : h.pages) {
      hv.pages.push_back(pool_.page_data(p));
      hv.formats.push_back(p.format);
    }
    hv.positions = h.positions.data();
    hv.n_tokens = h.n_tokens();
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
    for (const KvPage& p : h.pages) b.payload += pool_.page_bytes(p.format);
    b.metadata += h.pages.capacity() * sizeof(KvPage) + h.positions.capacity() * sizeof(int32_t);
  }
  b.metadata += heads_.capacity() * sizeof(KvHeadCache);
  return b;
}

size_t KvSequence::full_f16_bytes(int64_t n_tokens) const {
  return static_cast<size_t>(n_tokens) * geo_.n_layer * geo_.n_head_kv * geo_.head_dim * 2 * 2;
}

}  // namespace longctx::kv
