#include "kv/kv_store.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/fp16.h"

namespace longctx::kv {

void KvPagePool::FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

KvPagePool::KvPagePool(size_t page_bytes, size_t max_bytes) : page_bytes_(page_bytes), max_bytes_(max_bytes) {}
KvPagePool::~KvPagePool() = default;

int32_t KvPagePool::kv_page_alloc() {
  if (free_.empty()) {
    const size_t slab_bytes = kPagesPerSlab * page_bytes_;
    if (bytes_reserved() + slab_bytes > max_bytes_)
      fail("the KV cache needs more than its limit of {:.1f} MiB: raise --kv-mem or shorten the prompt",
           max_bytes_ / 1048576.0);
    // 64-byte alignment: a page row is read with full-width SIMD loads.
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, (slab_bytes + 63) / 64 * 64));
    if (p == nullptr) fail("out of memory allocating {} bytes of KV cache", slab_bytes);
    const int32_t first = static_cast<int32_t>(slabs_.size()) * kPagesPerSlab;
    slabs_.emplace_back(p);
    for (int32_t i = kPagesPerSlab - 1; i >= 0; --i) free_.push_back(first + i);
  }
  const int32_t page = free_.back();
  free_.pop_back();
  ++n_in_use_;
  return page;
}

void KvPagePool::kv_page_free(int32_t page) {
  free_.push_back(page);
  --n_in_use_;
}

KvSequence::KvSequence(const KvGeometry& geo, KvPagePool& pool)
    : geo_(geo), pool_(pool), heads_(static_cast<size_t>(geo.n_layer) * geo.n_head_kv) {
  if (pool.page_bytes() != geo.page_bytes()) fail("internal: KV pool page size does not match the geometry");
}

KvSequence::~KvSequence() { clear(); }

void KvSequence::clear() {
  for (auto& h : heads_) {
    for (int32_t p : h.pages) pool_.kv_page_free(p);
    h.pages.clear();
    h.positions.clear();
  }
}

uint8_t* KvSequence::slot_ptr(const KvHeadCache& h, int32_t slot, bool value) const {
  const int32_t page = h.pages[slot / geo_.page_tokens];
  const int32_t row = slot % geo_.page_tokens;
  const size_t elem = kv_format_bytes(geo_.format);
  const size_t half = static_cast<size_t>(geo_.page_tokens) * geo_.head_dim * elem;
  return const_cast<uint8_t*>(pool_.page_data(page)) + (value ? half : 0) + static_cast<size_t>(row) * geo_.head_dim * elem;
}

namespace {

void store_row(KvFormat f, const float* src, uint8_t* dst, int32_t n) {
  if (f == KvFormat::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
  } else {
    auto* d = reinterpret_cast<uint16_t*>(dst);
    for (int32_t i = 0; i < n; ++i) d[i] = f32_to_fp16(src[i]);
  }
}

void load_rows(KvFormat f, const uint8_t* src, float* dst, size_t n) {
  if (f == KvFormat::F32) {
    std::memcpy(dst, src, n * 4);
  } else {
    const auto* s = reinterpret_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(s[i]);
  }
}

}  // namespace

void KvSequence::append(int32_t layer, const float* k, const float* v, const int32_t* positions, int32_t n) {
  const int32_t d = geo_.head_dim;
  for (int32_t g = 0; g < geo_.n_head_kv; ++g) {
    KvHeadCache& h = head(layer, g);
    for (int32_t t = 0; t < n; ++t) {
      const int32_t slot = h.n_tokens();
      if (slot % geo_.page_tokens == 0) h.pages.push_back(pool_.kv_page_alloc());
      h.positions.push_back(positions[t]);
      const size_t off = (static_cast<size_t>(t) * geo_.n_head_kv + g) * d;
      store_row(geo_.format, k + off, slot_ptr(h, slot, false), d);
      store_row(geo_.format, v + off, slot_ptr(h, slot, true), d);
    }
  }
}

void KvSequence::read_keys(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const {
  load_rows(geo_.format, slot_ptr(head(layer, kv_head), slot, false), out, static_cast<size_t>(n) * geo_.head_dim);
}

void KvSequence::read_values(int32_t layer, int32_t kv_head, int32_t slot, int32_t n, float* out) const {
  load_rows(geo_.format, slot_ptr(head(layer, kv_head), slot, true), out, static_cast<size_t>(n) * geo_.head_dim);
}

cpu::KvLayerView KvSequence::layer_view(int32_t layer) const {
  cpu::KvLayerView view;
  view.page_tokens = geo_.page_tokens;
  view.head_dim = geo_.head_dim;
  view.format = geo_.format;
  view.heads.resize(static_cast<size_t>(geo_.n_head_kv));
  for (int32_t g = 0; g < geo_.n_head_kv; ++g) {
    const KvHeadCache& h = head(layer, g);
    auto& hv = view.heads[static_cast<size_t>(g)];
    hv.pages.reserve(h.pages.size());
    for (int32_t p : h.pages) hv.pages.push_back(pool_.page_data(p));
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

KvBytes KvSequence::bytes() const {
  KvBytes b;
  for (const auto& h : heads_) {
    b.payload += h.pages.size() * pool_.page_bytes();
    b.metadata += h.pages.capacity() * sizeof(int32_t) + h.positions.capacity() * sizeof(int32_t);
  }
  b.metadata += heads_.capacity() * sizeof(KvHeadCache);
  return b;
}

size_t KvSequence::full_f16_bytes(int64_t n_tokens) const {
  return static_cast<size_t>(n_tokens) * geo_.n_layer * geo_.n_head_kv * geo_.head_dim * 2 * 2;
}

}  // namespace longctx::kv
