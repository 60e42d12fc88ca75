// The paged store: round trip in every format, page accounting, pages back to the pool, the pool's limit.
#include "kv/kv_store.h"

#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "kv/policy.h"

namespace longctx {
namespace {

TEST(KvStore, AppendReadRoundTripAndAccounting) {
  for (KvFormat f : {KvFormat::F32, KvFormat::F16}) {
    kv::KvGeometry geo{2, 3, 8, 4, f};
    kv::KvPagePool pool(geo.page_bytes(), size_t{1} << 24);
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
    EXPECT_EQ(seq.bytes().payload, 9 * geo.page_bytes());
    EXPECT_GT(seq.bytes().metadata, 0u);
    EXPECT_EQ(seq.full_f16_bytes(n), size_t{n} * 2 * 3 * 8 * 2 * 2);
    seq.clear();
    EXPECT_EQ(pool.n_pages_in_use(), 0u);
    EXPECT_EQ(seq.bytes().payload, 0u);
  }
}

TEST(KvStore, PoolRefusesToGrowPastItsLimit) {
  kv::KvGeometry geo{1, 1, 8, 4, KvFormat::F32};
  kv::KvPagePool pool(geo.page_bytes(), geo.page_bytes() * 64);  // exactly one slab
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
  EXPECT_EQ(kv::make_kv_policy("full")->page_format(), KvFormat::F16);
  EXPECT_EQ(kv::make_kv_policy("full:type=f32")->page_format(), KvFormat::F32);
  for (const char* bad : {"snapkv", "full:type=q4", "full:budget=3", ""}) {
    try {
      kv::make_kv_policy(bad);
      FAIL() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("valid"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace longctx
