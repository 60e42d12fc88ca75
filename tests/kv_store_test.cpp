// The paged store: round trip in every format, page accounting, pages back to the pool, the pool's limit.
#include "kv/kv_store.h"

#include <gtest/gtest.h>

#include <algorithm>
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

size_t pool_bytes_for_one_slab(const kv::KvGeometry& geo) { return 64 * 2 * size_t(geo.page_tokens) * geo.head_dim * 4; }

TEST(KvStore, PoolRefusesToGrowPastItsLimit) {
  kv::KvGeometry geo{1, 1, 8, 4, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, geo.head_dim, pool_bytes_for_one_slab(geo));
  kv::KvSequence seq(geo, pool);
  std::vector<float> k(8, 1.0f);
  int32_t p = 0;
  for (int32_t i = 0; i < 64 * 4; ++i, ++p) seq.append(0, k.data(), k.data(), &p, 1);
  try {
    seq.append(0, k.data(), k.data(), &p, 1);
    FAIL() << "the pool grew past its limit";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache needs more"), std::string::npos) << e.what();
  }
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
      // The message names the bad part.
      EXPECT_FALSE(std::string(e.what()).empty());
      std::printf("  %-28s -> %s\n", bad, e.what());
    }
  }
}

}  // namespace
}  // namespace longctx

namespace longctx {
namespace {

// Removal against a plain model of the cache: a list of (position, key, value) rows per head.
TEST(KvStore, RemoveSlotsKeepsExactlyTheOthersAndFreesPages) {
  for (KvFormat sealed : {KvFormat::F16, KvFormat::Kivi8}) {
    kv::KvGeometry geo{1, 1, 32, 8, KvFormat::F32, sealed};
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
    const size_t before = seq.bytes().payload;
    std::vector<int32_t> keep;
    for (int32_t s = 0; s < n; ++s)
      if (s % 3 == 0 || s > 40) keep.push_back(s);
    seq.keep_slots(0, 0, keep);
    const auto& h = seq.head(0, 0);
    ASSERT_EQ(h.n_tokens(), static_cast<int32_t>(keep.size()));
    EXPECT_EQ(h.pages.size(), (keep.size() + 7) / 8);
    EXPECT_LT(seq.bytes().payload, before);
    EXPECT_EQ(pool.n_pages_in_use(), h.pages.size());
    // Every kept position is present once, with its own key and value (up to the sealed format's error).
    std::vector<int32_t> got(h.positions);
    std::sort(got.begin(), got.end());
    for (size_t i = 0; i < keep.size(); ++i) EXPECT_EQ(got[i], 1000 + keep[i]);
    // f16: rounding of values below 1 (2^-12). 8 bits: encoded at sealing and once more after the removal, each
    // within half a step of a range of at most 2, plus f16 rounding of the scales.
    const float tol = sealed == KvFormat::F16 ? 2.5e-4f : 2.0f / 255.0f + 2e-3f;
    for (int32_t s = 0; s < h.n_tokens(); ++s) {
      const int32_t src = h.positions[size_t(s)] - 1000;
      float kr[32], vr[32];
      seq.read_keys(0, 0, s, 1, kr);
      seq.read_values(0, 0, s, 1, vr);
      for (int i = 0; i < 32; ++i) {
        EXPECT_NEAR(kr[i], k[size_t(src) * 32 + i], tol) << "slot " << s;
        EXPECT_NEAR(vr[i], v[size_t(src) * 32 + i], tol) << "slot " << s;
      }
    }
    // The last page is open again, so appending works.
    EXPECT_FALSE(kv_format_is_packed(h.pages.back().format) && h.n_tokens() % 8 != 0);
    int32_t p = 5000;
    seq.append(0, k.data(), v.data(), &p, 1);
    EXPECT_EQ(seq.head(0, 0).positions.back(), 5000);
  }
}

}  // namespace
}  // namespace longctx
