// Pages shared between sequences (KvSequence::share_prefix, copy on write): a sequence that starts from another's
// prefix and then appends, evicts and packs ends exactly as one that wrote the same rows itself, the sequence it
// shares with never changes, and the pool counts every page once and gets all of them back.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "kv/kv_store.h"

namespace longctx {
namespace {

constexpr int32_t kLayers = 2, kHeads = 2, kDim = 32, kPage = 8;

struct Rows {
  std::vector<float> k, v;  // (n, kHeads, kDim)
  std::vector<int32_t> positions;
};

Rows random_rows(int32_t pos0, int32_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-2, 2);
  Rows r{std::vector<float>(size_t(n) * kHeads * kDim), {}, std::vector<int32_t>(size_t(n))};
  r.v.resize(r.k.size());
  for (auto& x : r.k) x = u(rng);
  for (auto& x : r.v) x = u(rng);
  for (int32_t i = 0; i < n; ++i) r.positions[size_t(i)] = pos0 + i;
  return r;
}

void append(kv::KvSequence& s, const Rows& r) {
  for (int32_t l = 0; l < kLayers; ++l)
    s.append(l, r.k.data(), r.v.data(), r.positions.data(), static_cast<int32_t>(r.positions.size()));
}

// Every (layer, head): positions, page formats and the rows as read back.
struct Contents {
  std::vector<std::vector<int32_t>> positions;
  std::vector<std::vector<KvFormat>> formats;
  std::vector<std::vector<float>> k, v;
};

Contents contents(const kv::KvSequence& s) {
  Contents c;
  for (int32_t l = 0; l < kLayers; ++l)
    for (int32_t g = 0; g < kHeads; ++g) {
      const kv::KvHeadCache& h = s.head(l, g);
      c.positions.push_back(h.positions);
      c.formats.emplace_back();
      for (const kv::KvPage& p : h.pages) c.formats.back().push_back(p.format);
      std::vector<float> k(size_t(h.n_tokens()) * kDim), v(k.size());
      for (int32_t t = 0; t < h.n_tokens(); ++t) {
        s.read_keys(l, g, t, 1, k.data() + size_t(t) * kDim);
        s.read_values(l, g, t, 1, v.data() + size_t(t) * kDim);
      }
      c.k.push_back(std::move(k));
      c.v.push_back(std::move(v));
    }
  return c;
}

void expect_same(const Contents& a, const Contents& b) {
  ASSERT_EQ(a.positions.size(), b.positions.size());
  for (size_t i = 0; i < a.positions.size(); ++i) {
    EXPECT_EQ(a.positions[i], b.positions[i]) << "head " << i;
    EXPECT_EQ(a.formats[i], b.formats[i]) << "head " << i;
    ASSERT_EQ(a.k[i].size(), b.k[i].size()) << "head " << i;
    EXPECT_EQ(0, std::memcmp(a.k[i].data(), b.k[i].data(), a.k[i].size() * sizeof(float))) << "keys, head " << i;
    EXPECT_EQ(0, std::memcmp(a.v[i].data(), b.v[i].data(), a.v[i].size() * sizeof(float))) << "values, head " << i;
  }
}

// The same operations on the sharing sequence and on one that wrote everything itself: appends past the prefix,
// eviction on every head (some evicting inside shared pages, one removing a whole shared page), then KIVI packing.
void drive(kv::KvSequence& s, const Rows& more) {
  append(s, more);
  for (int32_t l = 0; l < kLayers; ++l)
    for (int32_t g = 0; g < kHeads; ++g) {
      std::vector<int32_t> keep;
      for (int32_t t = 0; t < s.head(l, g).n_tokens(); ++t)
        if ((t + l + g) % 3 != 0 && !(l == 1 && g == 0 && t >= kPage && t < 2 * kPage)) keep.push_back(t);
      s.keep_slots(l, g, keep);
    }
  s.set_auto_seal(true);
  s.seal_full_pages();
}

TEST(KvSharedPrefix, ASharerEndsAsIfItWroteThePrefixAndTheSourceNeverChanges) {
  for (int32_t n_shared : {29, 24, 37}) {  // inside a page, on a page boundary, everything the source holds
    SCOPED_TRACE(n_shared);
    const kv::KvGeometry plain{kLayers, kHeads, kDim, kPage, KvFormat::F16, KvFormat::F16};
    kv::KvGeometry kivi = plain;
    kivi.sealed_format = KvFormat::Kivi4;
    kivi.n_recent_full_precision = 4;
    kv::KvPagePool pool(kPage, kDim, size_t{1} << 24);
    kv::KvSequence src(plain, pool);
    const Rows prompt = random_rows(0, 37, 1);
    append(src, prompt);
    const Contents src_before = contents(src);
    const size_t src_pages = pool.n_pages_in_use();
    ASSERT_EQ(src_pages, size_t(kLayers * kHeads * 5));  // 37 rows in pages of 8

    const Rows prefix{std::vector<float>(prompt.k.begin(), prompt.k.begin() + size_t(n_shared) * kHeads * kDim),
                      std::vector<float>(prompt.v.begin(), prompt.v.begin() + size_t(n_shared) * kHeads * kDim),
                      std::vector<int32_t>(prompt.positions.begin(), prompt.positions.begin() + n_shared)};
    const Rows more = random_rows(n_shared, 20, 2);
    kv::KvPagePool ref_pool(kPage, kDim, size_t{1} << 24);
    kv::KvSequence ref(kivi, ref_pool);
    append(ref, prefix);

    {
      kv::KvSequence sharer(kivi, pool);
      sharer.share_prefix(src, n_shared);
      // The source's pages the prefix covers are held twice and counted once (its last, not yet full page too,
      // when the prefix is all it holds); the page the prefix ends inside is copied.
      const int32_t copied = n_shared % kPage != 0 && n_shared < 37 ? 1 : 0;
      const int32_t shared = (n_shared + kPage - 1) / kPage - copied;
      EXPECT_EQ(pool.n_pages_in_use(), src_pages + size_t(kLayers * kHeads * copied));
      const size_t page_bytes = pool.page_bytes(KvFormat::F16);
      EXPECT_EQ(sharer.bytes().shared, size_t(kLayers * kHeads * shared) * page_bytes);
      EXPECT_EQ(src.bytes().shared, sharer.bytes().shared);
      EXPECT_EQ(sharer.bytes().payload, size_t(kLayers * kHeads * (shared + copied)) * page_bytes);
      expect_same(contents(sharer), contents(ref));

      drive(sharer, more);
      drive(ref, more);
      expect_same(contents(sharer), contents(ref));
      expect_same(contents(src), src_before);
      // Every page of the sharer was written, so nothing is shared any more.
      EXPECT_EQ(sharer.bytes().shared, 0u);
      EXPECT_EQ(pool.n_pages_in_use(), src_pages + ref_pool.n_pages_in_use());
    }
    EXPECT_EQ(pool.n_pages_in_use(), src_pages);
    EXPECT_EQ(src.bytes().shared, 0u);
    expect_same(contents(src), src_before);
    src.clear();
    EXPECT_EQ(pool.n_pages_in_use(), 0u);
    EXPECT_EQ(pool.bytes_reserved(), 0u);
  }
}

// The source goes first: the pages it shared stay with the sharer, which can still write and free them.
TEST(KvSharedPrefix, PagesOutliveTheSequenceThatWroteThem) {
  const kv::KvGeometry geo{kLayers, kHeads, kDim, kPage, KvFormat::F16, KvFormat::F16};
  kv::KvPagePool pool(kPage, kDim, size_t{1} << 24);
  auto src = std::make_unique<kv::KvSequence>(geo, pool);
  const Rows prompt = random_rows(0, 32, 3);
  append(*src, prompt);
  kv::KvSequence sharer(geo, pool);
  sharer.share_prefix(*src, 32);
  const Contents want = contents(*src);
  src.reset();
  EXPECT_EQ(pool.n_pages_in_use(), size_t(kLayers * kHeads * 4));
  EXPECT_EQ(sharer.bytes().shared, 0u);
  expect_same(contents(sharer), want);
  sharer.keep_slots(0, 0, {0, 5, 31});
  EXPECT_EQ(sharer.head(0, 0).n_tokens(), 3);
  sharer.clear();
  EXPECT_EQ(pool.n_pages_in_use(), 0u);
}

TEST(KvSharedPrefix, OnlyAPrefixCachedInOrderIntoAnEmptySequence) {
  const kv::KvGeometry geo{kLayers, kHeads, kDim, kPage, KvFormat::F16, KvFormat::F16};
  kv::KvPagePool pool(kPage, kDim, size_t{1} << 24);
  kv::KvSequence src(geo, pool);
  append(src, random_rows(0, 20, 4));
  {
    kv::KvSequence too_long(geo, pool);
    EXPECT_THROW(too_long.share_prefix(src, 21), Error);
  }
  {
    kv::KvSequence not_empty(geo, pool);
    append(not_empty, random_rows(0, 3, 5));
    EXPECT_THROW(not_empty.share_prefix(src, 10), Error);
  }
  {
    kv::KvGeometry f32 = geo;
    f32.format = f32.sealed_format = KvFormat::F32;
    kv::KvPagePool pool32(kPage, kDim, size_t{1} << 24);
    kv::KvSequence other_format(f32, pool32);
    EXPECT_THROW(other_format.share_prefix(src, 10), Error);
  }
  src.remove_slots(1, 1, {3});  // a gap in the positions of one head
  kv::KvSequence gap(geo, pool);
  EXPECT_THROW(gap.share_prefix(src, 10), Error);
  gap.clear();
  EXPECT_EQ(pool.n_pages_in_use(), size_t(kLayers * kHeads * 3));
}

}  // namespace
}  // namespace longctx
