// The paged store: round trip in every format, page accounting, pages back to the pool, the pool's limit.
#include "kv/kv_store.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "kv/policy.h"

namespace longctx {
namespace {

TEST(KvStore, AppendReadRoundTripAndAccounting) {
  for (KvFormat f : {KvFormat::F32, KvFormat::F16}) {
    kv::KvGeometry geo{2, 3, 8, 4, f, f};
    kv::KvPagePool pool(geo.page_tokens, geo.head_dim, size_t{1} << 24);
    kv::KvSequence seq(geo, pool);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-3, 3);
    const int32_t n = 11;
    std::vector<float> k(n * 3 * 8), v(k.size());
    for (auto& x : k) x = u(rng);
    for (auto& x : v) x = u(rng);
    std::vector<int32_t> pos(n);
    for (int32_t i = 0; i < n; ++i) pos[i] = 100 + 2 * i;
    seq.append(1, k.data(), v.data(), pos.data(), 6);
    seq.append(1, k.data() + 6 * 24, v.data() + 6 * 24, pos.data() + 6, n - 6);
    for (int32_t g = 0; g < 3; ++g) {
      const auto& h = seq.head(1, g);
      ASSERT_EQ(h.n_tokens(), n);
      EXPECT_EQ(h.pages.size(), 3u);  // 11 tokens in pages of 4
      for (int32_t t = 0; t < n; ++t) {
        EXPECT_EQ(h.positions[t], pos[t]);
        float kr[8], vr[8];
        seq.read_keys(1, g, t, 1, kr);
        seq.read_values(1, g, t, 1, vr);
        for (int i = 0; i < 8; ++i) {
          const float ek = k[(t * 3 + g) * 8 + i], ev = v[(t * 3 + g) * 8 + i];
          // f16 storage: round to nearest, relative error at most 2^-11.
          const float tol = f == KvFormat::F32 ? 0.0f : std::abs(ek) * 4.9e-4f + 1e-7f;
          EXPECT_NEAR(kr[i], ek, tol);
          EXPECT_NEAR(vr[i], ev, f == KvFormat::F32 ? 0.0f : std::abs(ev) * 4.9e-4f + 1e-7f);
        }
      }
    }
    // A read spanning pages (slots 2..10 lie in all three) gives the rows read one at a time; past the end: an error.
    for (int32_t g = 0; g < 3; ++g) {
      std::vector<float> span_k(9 * 8), span_v(9 * 8), one(8);
      seq.read_keys(1, g, 2, 9, span_k.data());
      seq.read_values(1, g, 2, 9, span_v.data());
      for (int32_t t = 2; t < n; ++t) {
        seq.read_keys(1, g, t, 1, one.data());
        for (int i = 0; i < 8; ++i) ASSERT_EQ(span_k[(t - 2) * 8 + i], one[i]) << "slot " << t;
        seq.read_values(1, g, t, 1, one.data());
        for (int i = 0; i < 8; ++i) ASSERT_EQ(span_v[(t - 2) * 8 + i], one[i]) << "slot " << t;
      }
      EXPECT_THROW(seq.read_keys(1, g, 2, 10, span_k.data()), Error);
    }
    EXPECT_EQ(seq.head(0, 0).n_tokens(), 0);
    EXPECT_EQ(pool.n_pages_in_use(), 9u);
    EXPECT_EQ(seq.bytes().payload, 9 * pool.page_bytes(f));
    EXPECT_GT(seq.bytes().metadata, 0u);
    EXPECT_EQ(seq.full_f16_bytes(n), size_t{n} * 2 * 3 * 8 * 2 * 2);
    seq.clear();
    EXPECT_EQ(pool.n_pages_in_use(), 0u);
    EXPECT_EQ(seq.bytes().payload, 0u);
  }
}

TEST(KvStore, PoolRefusesToHoldMoreThanItsLimit) {
  kv::KvGeometry geo{1, 1, 8, 4, KvFormat::F32, KvFormat::F32};
  const size_t page = 2 * 4 * 8 * 4;  // 256 bytes: 16 pages to a 4 KiB chunk
  kv::KvPagePool pool(geo.page_tokens, geo.head_dim, 2 * 4096);
  kv::KvSequence seq(geo, pool);
  std::vector<float> k(8, 1.0f);
  int32_t p = 0;
  const int32_t n_fit = static_cast<int32_t>(2 * 4096 / page) * 4;
  for (int32_t i = 0; i < n_fit; ++i, ++p) seq.append(0, k.data(), k.data(), &p, 1);
  EXPECT_EQ(pool.bytes_reserved(), 2u * 4096);
  try {
    seq.append(0, k.data(), k.data(), &p, 1);
    FAIL() << "the pool grew past its limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache needs more"), std::string::npos) << e.what();
  }
}

size_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  long size = 0, resident = 0;
  if (f == nullptr || std::fscanf(f, "%ld %ld", &size, &resident) != 2) ADD_FAILURE() << "cannot read statm";
  if (f != nullptr) std::fclose(f);
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// What the pool reports is what the process holds: pages freed go back to the system at once.
TEST(KvStore, FreedPagesLeaveTheProcess) {
  kv::KvGeometry geo{1, 1, 64, 64, KvFormat::F16, KvFormat::F16};  // 16 KiB pages
  kv::KvPagePool pool(geo.page_tokens, geo.head_dim, size_t{1} << 30);
  const size_t n_pages = 2048;  // 32 MiB
  std::vector<kv::KvPage> pages;
  pages.reserve(n_pages);
  const size_t rss0 = resident_bytes();
  for (size_t i = 0; i < n_pages; ++i) {
    pages.push_back(pool.kv_page_alloc(KvFormat::F16));
    std::memset(pool.page_data(pages.back()), 0x5a, pool.page_bytes(KvFormat::F16));
  }
  const size_t held = n_pages * pool.page_bytes(KvFormat::F16);
  EXPECT_EQ(pool.bytes_reserved(), held);
  const size_t rss1 = resident_bytes();
  EXPECT_GE(rss1, rss0 + held - (held / 50)) << "pages written must be resident";
  // Free every other page: no chunk (one page here) empties twice, half the bytes go back.
  for (size_t i = 0; i < n_pages; i += 2) pool.kv_page_free(pages[i]);
  EXPECT_EQ(pool.bytes_reserved(), held / 2);
  EXPECT_LE(resident_bytes(), rss1 - held / 2 + (held / 50));
  for (size_t i = 1; i < n_pages; i += 2) pool.kv_page_free(pages[i]);
  EXPECT_EQ(pool.bytes_reserved(), 0u);
  EXPECT_EQ(pool.bytes_reserved_peak(), held);
  // Measured from the peak, not from rss0: the pool's own bookkeeping (a few KiB that malloc keeps) may stay.
  EXPECT_LE(resident_bytes(), rss1 - held + (held / 50));
  // Reused pages read as written again.
  const kv::KvPage again = pool.kv_page_alloc(KvFormat::F16);
  std::memset(pool.page_data(again), 1, 16);
  EXPECT_EQ(pool.page_data(again)[15], 1);
  pool.kv_page_free(again);
}

// Pages smaller than a system page share chunks: a chunk goes back only when all its pages are free, and the
// lowest free page is handed out first so live pages gather in few chunks.
TEST(KvStore, SmallPagesShareChunks) {
  kv::KvPagePool pool(64, 64, size_t{1} << 30);
  const size_t pb = pool.page_bytes(KvFormat::Kivi2);
  const size_t chunk = std::lcm(pb, size_t(sysconf(_SC_PAGESIZE)));
  const size_t per_chunk = chunk / pb;
  ASSERT_GT(per_chunk, 1u);
  std::vector<kv::KvPage> pages;
  for (size_t i = 0; i < 3 * per_chunk; ++i) pages.push_back(pool.kv_page_alloc(KvFormat::Kivi2));
  EXPECT_EQ(pool.bytes_reserved(), 3 * chunk);
  pool.kv_page_free(pages[0]);
  EXPECT_EQ(pool.bytes_reserved(), 3 * chunk);  // the chunk still holds live pages
  for (size_t i = per_chunk; i < 2 * per_chunk; ++i) pool.kv_page_free(pages[i]);
  EXPECT_EQ(pool.bytes_reserved(), 2 * chunk);  // the second chunk emptied
  const kv::KvPage p = pool.kv_page_alloc(KvFormat::Kivi2);
  EXPECT_EQ(p.id, pages[0].id);  // the lowest free page, in a live chunk
  EXPECT_EQ(pool.bytes_reserved(), 2 * chunk);
}

TEST(KvPolicy, SpecParsing) {
  EXPECT_EQ(kv::make_kv_policy("full", 2, 2)->page_format(), KvFormat::F16);
  EXPECT_EQ(kv::make_kv_policy("full:type=f32", 2, 2)->page_format(), KvFormat::F32);
  EXPECT_EQ(kv::make_kv_policy("snapkv:budget=64+kivi:bits=2", 2, 2)->sealed_format(), KvFormat::Kivi2);
  for (const char* bad : {"snapkvv", "full:type=q4", "full:budget=3", "", "kivi:bits=3", "snapkv+h2o",
                          "snapkv:budget=abc", "snapkv:budget", "heads", "streaming:budget=4,sink=4"}) {
    try {
      kv::make_kv_policy(bad, 2, 2);
      FAIL() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      // The message quotes the spec or names the bad part.
      const std::string msg = e.what(), spec = bad;
      const std::string part = spec.substr(0, spec.find_first_of(":+"));
      EXPECT_TRUE(msg.find(part) != std::string::npos || spec.empty()) << bad << " -> " << msg;
    }
  }
}

}  // namespace
}  // namespace longctx

namespace longctx {
namespace {

// Rows of one head as read back: (n_tokens, head_dim) keys then values.
struct HeadRows {
  std::vector<int32_t> positions;
  std::vector<float> k, v;
};
HeadRows read_head(const kv::KvSequence& seq, int32_t layer, int32_t g) {
  const auto& h = seq.head(layer, g);
  const int32_t d = seq.geometry().head_dim;
  HeadRows r{h.positions, std::vector<float>(size_t(h.n_tokens()) * d), std::vector<float>(size_t(h.n_tokens()) * d)};
  for (int32_t s = 0; s < h.n_tokens(); ++s) {
    seq.read_keys(layer, g, s, 1, r.k.data() + size_t(s) * d);
    seq.read_values(layer, g, s, 1, r.v.data() + size_t(s) * d);
  }
  return r;
}

// Removal keeps the others in order, bit for bit: plain rows move losslessly, packed rows keep the codes and
// scales they were encoded with.
TEST(KvStore, RemoveSlotsKeepsTheOthersInOrderBitForBit) {
  for (KvFormat sealed : {KvFormat::F16, KvFormat::Kivi8, KvFormat::Kivi2}) {
    kv::KvGeometry geo{1, 1, 32, 8, KvFormat::F16, sealed};
    kv::KvPagePool pool(8, 32, size_t{1} << 24);
    kv::KvSequence seq(geo, pool);
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-1, 1);
    const int32_t n = 45;
    std::vector<float> k(size_t(n) * 32), v(k.size());
    for (auto& x : k) x = u(rng);
    for (auto& x : v) x = u(rng);
    std::vector<int32_t> pos(n);
    for (int32_t i = 0; i < n; ++i) pos[size_t(i)] = 1000 + i;
    seq.append(0, k.data(), v.data(), pos.data(), n);
    seq.seal_full_pages();
    const HeadRows before = read_head(seq, 0, 0);
    const size_t bytes_before = seq.bytes().payload;
    std::vector<int32_t> keep;
    for (int32_t s = 0; s < n; ++s)
      if (s % 3 == 0 || s > 40) keep.push_back(s);
    seq.keep_slots(0, 0, keep);
    const HeadRows after = read_head(seq, 0, 0);
    ASSERT_EQ(after.positions.size(), keep.size());
    for (size_t i = 0; i < keep.size(); ++i) {
      const size_t src = size_t(keep[i]);
      EXPECT_EQ(after.positions[i], 1000 + keep[i]);
      EXPECT_EQ(0, std::memcmp(&after.k[i * 32], &before.k[src * 32], 32 * sizeof(float))) << "slot " << i;
      EXPECT_EQ(0, std::memcmp(&after.v[i * 32], &before.v[src * 32], 32 * sizeof(float))) << "slot " << i;
    }
    // Plain pages are packed together; packed pages shrink in place and go back only once empty.
    if (sealed == KvFormat::F16) {
      EXPECT_EQ(seq.head(0, 0).pages.size(), (keep.size() + 7) / 8);
      EXPECT_LT(seq.bytes().payload, bytes_before);
    } else {
      const kv::KvPage first = seq.head(0, 0).pages.front();
      ASSERT_TRUE(kv_format_is_packed(first.format));
      std::vector<int32_t> all_of_first(size_t(first.n_rows));
      std::iota(all_of_first.begin(), all_of_first.end(), 0);
      const size_t n_pages = seq.head(0, 0).pages.size();
      seq.remove_slots(0, 0, all_of_first);
      EXPECT_EQ(seq.head(0, 0).pages.size(), n_pages - 1);
      EXPECT_LT(seq.bytes().payload, bytes_before);
    }
    EXPECT_EQ(pool.n_pages_in_use(), seq.head(0, 0).pages.size());
    int32_t p = 5000;
    seq.append(0, k.data(), v.data(), &p, 1);
    EXPECT_EQ(seq.head(0, 0).positions.back(), 5000);
    EXPECT_FALSE(kv_format_is_packed(seq.head(0, 0).pages.back().format));
  }
}

// The host's page memory, counting the rows it writes and moves (appends, compaction, packing across pages).
class CountingPageMemory : public KvPageMemory {
 public:
  int64_t rows = 0;
  uint8_t* map(size_t bytes) override { return host_kv_memory().map(bytes); }
  void unmap(uint8_t* base, size_t bytes) override { host_kv_memory().unmap(base, bytes); }
  void release(uint8_t* base, size_t bytes) override { host_kv_memory().release(base, bytes); }
  void write_rows(KvFormat f, int32_t T, int32_t d, const float* k, const float* v, int64_t stride,
                  const KvRowDest* dests, int32_t n) override {
    rows += n;
    host_kv_memory().write_rows(f, T, d, k, v, stride, dests, n);
  }
  void write_page_rows_host(KvFormat f, int32_t T, int32_t d, const float* k, const float* v, int32_t row0,
                            int32_t n, uint8_t* page) override {
    rows += n;
    host_kv_memory().write_page_rows_host(f, T, d, k, v, row0, n, page);
  }
  void read_keys_host(KvFormat f, int32_t T, int32_t d, const uint8_t* page, int32_t row0, int32_t n,
                      float* out) override {
    host_kv_memory().read_keys_host(f, T, d, page, row0, n, out);
  }
  void read_values_host(KvFormat f, int32_t T, int32_t d, const uint8_t* page, int32_t row0, int32_t n,
                        float* out) override {
    host_kv_memory().read_values_host(f, T, d, page, row0, n, out);
  }
  void compact(KvFormat f, int32_t T, int32_t d, uint8_t* page, const int32_t* keep, int32_t n_keep) override {
    rows += n_keep;
    host_kv_memory().compact(f, T, d, page, keep, n_keep);
  }
  void copy_rows(KvFormat f, int32_t T, int32_t d, const uint8_t* src, int32_t src_row0, int32_t n, uint8_t* dst,
                 int32_t dst_row0) override {
    rows += n;
    host_kv_memory().copy_rows(f, T, d, src, src_row0, n, dst, dst_row0);
  }
  void copy_page(uint8_t* dst, const uint8_t* src, size_t bytes) override { host_kv_memory().copy_page(dst, src, bytes); }
};

// Eviction during decode (H2O, TOVA: append one token, evict one anywhere, every step) may not repack the head every
// step: packing moves every row after the first hole, so the store waits until the holes add up to a page. Rows
// written or moved stay within the appends plus a full repack of the head every page_tokens steps (packing at every
// page of free rows, with the budget a whole number of pages, repacks every step: 66,304 rows here against 16,289),
// the head holds at most one page more than the fewest, and every row is still the one appended, bit for bit. A
// cut of many slots still packs into the fewest pages.
TEST(KvStore, DecodeEvictionPacksOncePerPageOfHoles) {
  const int32_t T = 16, d = 32, n_prompt = 400, budget = 192, n_steps = 640;
  CountingPageMemory mem;
  kv::KvGeometry geo{1, 1, d, T, KvFormat::F16, KvFormat::F16};
  kv::KvPagePool pool(T, d, size_t{1} << 24, mem);
  kv::KvSequence seq(geo, pool);
  std::mt19937 rng(5);
  // Token t's key and value: what the store must still return for it whenever it holds it (f16-exact values).
  const auto row = [&](int32_t t, int32_t c, bool value) { return fp16_to_f32(f32_to_fp16(std::sin(0.37f * t + 0.11f * c + (value ? 1.0f : 0.0f)))); };
  const auto append = [&](int32_t t) {
    std::vector<float> k(d), v(d);
    for (int32_t c = 0; c < d; ++c) k[size_t(c)] = row(t, c, false), v[size_t(c)] = row(t, c, true);
    seq.append(0, k.data(), v.data(), &t, 1);
  };
  for (int32_t t = 0; t < n_prompt; ++t) append(t);
  std::vector<int32_t> keep(n_prompt);
  std::iota(keep.begin(), keep.end(), 0);
  std::shuffle(keep.begin(), keep.end(), rng);
  keep.resize(budget);
  std::sort(keep.begin(), keep.end());
  seq.keep_slots(0, 0, keep);
  EXPECT_EQ(seq.head(0, 0).pages.size(), size_t((budget + T - 1) / T));  // a cut packs into the fewest pages

  mem.rows = 0;
  for (int32_t i = 0; i < n_steps; ++i) {
    append(n_prompt + i);
    const int32_t n = seq.head(0, 0).n_tokens();
    seq.remove_slots(0, 0, {int32_t(rng() % uint32_t(n - 1))});  // any but the newest
    ASSERT_LE(seq.head(0, 0).pages.size(), size_t((budget + T - 1) / T + 1)) << "step " << i;
  }
  const int64_t repack = 2 * (budget + 1);  // a pack writes or moves each row at most twice (compact, then across)
  EXPECT_LE(mem.rows, n_steps + (n_steps / T + 1) * repack) << "rows written or moved";
  const HeadRows got = read_head(seq, 0, 0);
  ASSERT_EQ(got.positions.size(), size_t(budget));
  for (size_t s = 0; s < got.positions.size(); ++s) {
    if (s > 0) {
      ASSERT_LT(got.positions[s - 1], got.positions[s]);
    }
    for (int32_t c = 0; c < d; ++c) {
      ASSERT_EQ(got.k[s * d + size_t(c)], row(got.positions[s], c, false)) << "slot " << s;
      ASSERT_EQ(got.v[s * d + size_t(c)], row(got.positions[s], c, true)) << "slot " << s;
    }
  }
  EXPECT_EQ(pool.n_pages_in_use(), seq.head(0, 0).pages.size());
}

// KIVI as published ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"): the newest R tokens of
// every head stay in full precision, and a group is packed only when it has left that window, under any eviction.
// Driven the way decode-time eviction drives it: append one, evict one older token, many times over.
TEST(KvStore, KiviKeepsTheNewestTokensFullAndNeverRequantizes) {
  const int32_t T = 8, d = 32, R = 12;
  for (int32_t budget : {20, 60}) {
    kv::KvGeometry geo{1, 1, d, T, KvFormat::F16, KvFormat::Kivi2, R};
    kv::KvPagePool pool(T, d, size_t{1} << 24);
    kv::KvSequence seq(geo, pool);
    seq.set_auto_seal(true);
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-2, 2);
    std::map<int32_t, std::vector<float>> first_packed;  // position -> its key and value when first seen packed
    std::vector<float> k(d), v(d);
    for (int32_t step = 0; step < 400; ++step) {
      for (auto& x : k) x = u(rng);
      for (auto& x : v) x = u(rng);
      seq.append(0, k.data(), v.data(), &step, 1);
      const auto& h = seq.head(0, 0);
      if (h.n_tokens() > budget) {  // evict a random token older than the window, as H2O or TOVA may
        std::uniform_int_distribution<int32_t> pick(0, h.n_tokens() - R - 1);
        seq.remove_slots(0, 0, {pick(rng)});
      }
      ASSERT_TRUE(std::is_sorted(h.positions.begin(), h.positions.end()));
      ASSERT_LE(h.n_tokens(), budget);
      // The newest R tokens (all, while fewer) lie in open pages; packed pages come first.
      int32_t s0 = 0;
      bool seen_open = false;
      for (const kv::KvPage& page : h.pages) {
        const bool packed = kv_format_is_packed(page.format);
        ASSERT_FALSE(packed && seen_open) << "a packed page after an open one";
        seen_open = seen_open || !packed;
        if (packed) ASSERT_LE(s0 + page.n_rows, h.n_tokens() - R) << "a recent token was packed";
        ASSERT_GT(page.n_rows, 0);
        s0 += page.n_rows;
      }
      // Open pages waste less than one page between them.
      int32_t n_open_free = 0;
      for (size_t p = 0; p + 1 < h.pages.size(); ++p)
        if (!kv_format_is_packed(h.pages[p].format)) n_open_free += T - h.pages[p].n_rows;
      ASSERT_LT(n_open_free, T);
      // A packed token reads the same at every later step: its group's scales never change.
      const HeadRows rows = read_head(seq, 0, 0);
      for (int32_t s = 0, pi = 0, r = 0; s < h.n_tokens(); ++s, ++r) {
        if (r == h.pages[size_t(pi)].n_rows) {
          ++pi;
          r = 0;
        }
        if (!kv_format_is_packed(h.pages[size_t(pi)].format)) continue;
        std::vector<float> kv_row(rows.k.begin() + s * d, rows.k.begin() + (s + 1) * d);
        kv_row.insert(kv_row.end(), rows.v.begin() + s * d, rows.v.begin() + (s + 1) * d);
        auto [it, fresh] = first_packed.emplace(h.positions[size_t(s)], kv_row);
        if (!fresh) ASSERT_EQ(it->second, kv_row) << "position " << h.positions[size_t(s)] << " re-encoded";
      }
    }
    EXPECT_GT(first_packed.size(), 0u);
    EXPECT_EQ(pool.n_pages_in_use(), seq.head(0, 0).pages.size());
  }
}

// Sealing replaces open pages by packed ones: the pool never holds both for long, and ends holding the packed.
TEST(KvStore, SealingGivesTheOpenPagesBack) {
  const int32_t T = 64, d = 64, n = 64 * 40;
  kv::KvGeometry geo{1, 2, d, T, KvFormat::F16, KvFormat::Kivi2, 128};
  kv::KvPagePool pool(T, d, size_t{1} << 30);
  kv::KvSequence seq(geo, pool);
  std::vector<float> k(size_t(2) * d, 0.25f);
  for (int32_t i = 0; i < n; ++i) seq.append(0, k.data(), k.data(), &i, 1);
  const size_t f16_held = pool.bytes_reserved();
  EXPECT_EQ(f16_held, size_t(2) * (n / T) * pool.page_bytes(KvFormat::F16));
  seq.seal_full_pages();
  // 128 newest tokens stay f16 in 2 pages a head; 38 pages a head are packed.
  for (int32_t g = 0; g < 2; ++g) {
    int32_t n_packed = 0;
    for (const auto& p : seq.head(0, g).pages) n_packed += kv_format_is_packed(p.format);
    EXPECT_EQ(n_packed, 38);
  }
  const size_t packed_chunk = std::lcm(pool.page_bytes(KvFormat::Kivi2), size_t(sysconf(_SC_PAGESIZE)));
  const size_t packed_bytes = 2 * 38 * pool.page_bytes(KvFormat::Kivi2);
  EXPECT_LE(pool.bytes_reserved(), 4 * pool.page_bytes(KvFormat::F16) + packed_bytes + packed_chunk);
  EXPECT_LE(pool.bytes_reserved_peak(), f16_held + packed_chunk);
}

}  // namespace
}  // namespace longctx
