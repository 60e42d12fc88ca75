// Sliding-window expiry (kv_expire_window): the tokens no future query of a local layer can see are freed, the
// global layers keep everything, attention is unchanged bit for bit, and the policy hears of every removed slot.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "backend/cpu/attention.h"
#include "kv/policy_registry.h"
#include "model/forward.h"

namespace longctx {
namespace {

// A model shape for the store alone: which layers are local, kv-heads per layer, the window (0: none).
ModelConfig window_config(std::vector<bool> is_local, int32_t n_head_kv, int32_t window) {
  ModelConfig c;
  c.n_layer = static_cast<int32_t>(is_local.size());
  c.n_head_kv = n_head_kv;
  c.sliding_window = window;
  c.layer_is_local = std::move(is_local);
  return c;
}

struct RecordingPolicy final : kv::KvPolicy {
  std::string describe() const override { return "recording"; }
  KvFormat page_format() const override { return KvFormat::F32; }
  void on_slots_removed(int32_t layer, int32_t kv_head, int32_t n_before, const std::vector<int32_t>& slots) override {
    calls.push_back({layer, kv_head, n_before, slots});
  }
  struct Call {
    int32_t layer, kv_head, n_before;
    std::vector<int32_t> slots;
  };
  std::vector<Call> calls;
};

// A policy that leaves the cache alone while decoding: expiry after a decode step frees whole pages only.
struct PassivePolicy final : kv::KvPolicy {
  std::string describe() const override { return "passive"; }
  KvFormat page_format() const override { return KvFormat::F32; }
  bool passive_during_decode() const override { return true; }
  void on_slots_removed(int32_t, int32_t, int32_t n_before, const std::vector<int32_t>& slots) override {
    removed.push_back({n_before, slots});
  }
  std::vector<std::pair<int32_t, std::vector<int32_t>>> removed;
};

TEST(WindowExpiry, FreesOnlyWhatNoLaterQuerySeesAndChangesNoOutput) {
  constexpr int32_t kWindow = 20, kTokens = 100, kDim = 32, kHeadsKv = 2, kHeads = 4;
  const ModelConfig c = window_config({true, false}, kHeadsKv, kWindow);
  kv::KvGeometry geo{c.n_layer, kHeadsKv, kDim, 16, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, kDim, size_t{1} << 26);
  kv::KvSequence seq(geo, pool);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> k(static_cast<size_t>(kTokens) * kHeadsKv * kDim), v(k.size());
  for (auto& x : k) x = nd(rng);
  for (auto& x : v) x = nd(rng);
  std::vector<int32_t> pos(kTokens);
  for (int32_t i = 0; i < kTokens; ++i) pos[static_cast<size_t>(i)] = i;
  for (int32_t il = 0; il < c.n_layer; ++il) seq.append(il, k.data(), v.data(), pos.data(), kTokens);

  // The next query, at position kTokens, on the local layer, before and after expiry.
  std::vector<float> q(static_cast<size_t>(kHeads) * kDim), before(q.size()), after(q.size());
  for (auto& x : q) x = nd(rng);
  const int32_t q_pos = kTokens;
  const cpu::AttentionParams ap{kHeads, kHeadsKv, kDim, 0.2f, kWindow};
  ThreadPool tp(2);
  cpu::attention(tp, ap, q.data(), &q_pos, 1, seq.layer_view(0), before.data());

  // What a head holds in pages of page_tokens: before expiry the local layer holds every token, like the global.
  const size_t page_bytes = pool.page_bytes(KvFormat::F32);
  auto pages_for = [&](int32_t n_tokens) { return static_cast<size_t>((n_tokens + geo.page_tokens - 1) / geo.page_tokens); };
  const size_t bytes_after = kHeadsKv * (pages_for(kTokens) + pages_for(kWindow - 1)) * page_bytes;
  ASSERT_EQ(seq.bytes().payload, 2 * kHeadsKv * pages_for(kTokens) * page_bytes);
  ASSERT_GT(seq.bytes().payload, bytes_after);  // expiry has pages to free

  RecordingPolicy policy;
  kv_expire_window(c, seq, policy, kTokens);
  // The local layer's pages went back to the pool: it holds the pages of its window's tokens, no more.
  EXPECT_EQ(seq.bytes().payload, bytes_after);
  EXPECT_EQ(pool.n_pages_in_use(), bytes_after / page_bytes);
  for (int32_t g = 0; g < kHeadsKv; ++g) {
    const kv::KvHeadCache& local = seq.head(0, g);
    EXPECT_EQ(local.n_tokens(), kWindow - 1);  // positions (kTokens - kWindow, kTokens)
    for (int32_t p : local.positions) EXPECT_GT(p, kTokens - kWindow);
    EXPECT_EQ(seq.head(1, g).n_tokens(), kTokens);  // the global layer keeps all
  }
  ASSERT_EQ(policy.calls.size(), static_cast<size_t>(kHeadsKv));
  for (const auto& call : policy.calls) {
    EXPECT_EQ(call.layer, 0);
    EXPECT_EQ(call.n_before, kTokens);
    std::vector<int32_t> expected;
    for (int32_t s = 0; s <= kTokens - kWindow; ++s) expected.push_back(s);  // slots were positions
    EXPECT_EQ(call.slots, expected);
  }
  cpu::attention(tp, ap, q.data(), &q_pos, 1, seq.layer_view(0), after.data());
  // Same keys, same values, same order of pages visited is not guaranteed (slots moved), so equal to rounding.
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(before[i], after[i], 1e-6f) << i;

  // Nothing more to free at the same position.
  policy.calls.clear();
  kv_expire_window(c, seq, policy, kTokens);
  EXPECT_TRUE(policy.calls.empty());
  EXPECT_EQ(seq.bytes().payload, bytes_after);
}

// Decoding past the window: after every step the local layer holds the window's tokens and their pages, while
// the global layer (and a cache without expiry) keeps growing.
TEST(WindowExpiry, LocalLayersStayWithinTheWindowDuringDecode) {
  constexpr int32_t kWindow = 24, kDim = 32, kSteps = 200;
  const ModelConfig c = window_config({false, true}, 1, kWindow);
  kv::KvGeometry geo{c.n_layer, 1, kDim, 8, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, kDim, size_t{1} << 26);
  kv::KvSequence seq(geo, pool), unexpired(geo, pool);
  const size_t page_bytes = pool.page_bytes(KvFormat::F32);
  // Window - 1 tokens fill at most this many pages, however eviction left them: the store packs open pages together
  // once a page's worth of their rows is free, so they waste less than one page.
  const size_t local_pages = (kWindow - 1 + geo.page_tokens - 1) / geo.page_tokens + 1;
  RecordingPolicy policy;
  std::vector<float> row(kDim, 0.5f);
  for (int32_t pos = 0; pos < kSteps; ++pos) {
    for (int32_t il = 0; il < c.n_layer; ++il) {
      seq.append(il, row.data(), row.data(), &pos, 1);
      unexpired.append(il, row.data(), row.data(), &pos, 1);
    }
    kv_expire_window(c, seq, policy, pos + 1);
    const int32_t n_seen = pos + 1;
    ASSERT_EQ(seq.head(1, 0).n_tokens(), std::min(n_seen, kWindow - 1)) << pos;
    for (int32_t p : seq.head(1, 0).positions) ASSERT_GT(p, pos + 1 - kWindow) << pos;
    ASSERT_EQ(seq.head(0, 0).n_tokens(), n_seen);
    const size_t global_pages = (static_cast<size_t>(n_seen) + geo.page_tokens - 1) / geo.page_tokens;
    const size_t bound = (global_pages + local_pages) * page_bytes;
    ASSERT_LE(seq.bytes().payload, bound) << pos;
    if (n_seen > kWindow + geo.page_tokens) {
      ASSERT_GT(unexpired.bytes().payload, bound) << pos;  // expiry was needed
    }
  }
}

TEST(WindowExpiry, ModelsWithoutWindowsKeepEverything) {
  const ModelConfig c = window_config({false}, 1, 0);
  kv::KvGeometry geo{1, 1, 8, 16, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, 8, size_t{1} << 20);
  kv::KvSequence seq(geo, pool);
  std::vector<float> k(8 * 40, 0.5f);
  std::vector<int32_t> pos(40);
  for (int32_t i = 0; i < 40; ++i) pos[static_cast<size_t>(i)] = i;
  seq.append(0, k.data(), k.data(), pos.data(), 40);
  RecordingPolicy policy;
  kv_expire_window(c, seq, policy, 1000);
  EXPECT_EQ(seq.head(0, 0).n_tokens(), 40);
  EXPECT_TRUE(policy.calls.empty());
}

// After decode steps under a policy that leaves the cache alone while decoding, expiry waits until the oldest page
// is wholly expired and then lets it go without compacting anything: the local layer holds at most a page's worth
// of expired tokens more than the window, all of them in its oldest page, and attention for the next query equals
// that over the exactly expired cache.
TEST(WindowExpiry, WholePagesGoAfterDecodeStepsUnderAPassivePolicy) {
  constexpr int32_t kWindow = 20, kDim = 16, kSteps = 150, kHeads = 2, kT = 8;
  const ModelConfig c = window_config({true}, 1, kWindow);
  kv::KvGeometry geo{1, 1, kDim, kT, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, kDim, size_t{1} << 26);
  kv::KvSequence lazy(geo, pool), exact(geo, pool);
  PassivePolicy whole;
  RecordingPolicy every;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> k(kDim), v(kDim), q(static_cast<size_t>(kHeads) * kDim), a(q.size()), b(q.size());
  const cpu::AttentionParams ap{kHeads, 1, kDim, 0.25f, kWindow};
  ThreadPool tp(2);
  const size_t page_bytes = pool.page_bytes(KvFormat::F32);
  for (int32_t pos = 0; pos < kSteps; ++pos) {
    for (auto& x : k) x = nd(rng);
    for (auto& x : v) x = nd(rng);
    lazy.append(0, k.data(), v.data(), &pos, 1);
    exact.append(0, k.data(), v.data(), &pos, 1);
    kv_expire_window(c, lazy, whole, pos + 1, /*decode_step=*/true);
    kv_expire_window(c, exact, every, pos + 1, /*decode_step=*/true);
    const kv::KvHeadCache& h = lazy.head(0, 0);
    const int32_t last_expired = pos + 1 - kWindow;
    // Expired tokens left: only in the oldest page, which still holds a token in the window.
    const int32_t first_rows = h.pages.front().n_rows;
    for (int32_t s = first_rows; s < h.n_tokens(); ++s) ASSERT_GT(h.positions[static_cast<size_t>(s)], last_expired);
    ASSERT_GT(h.positions[static_cast<size_t>(first_rows - 1)], last_expired) << pos;
    ASSERT_LE(h.n_tokens(), std::min(pos + 1, kWindow - 1 + kT - 1)) << pos;
    ASSERT_LE(lazy.bytes().payload, static_cast<size_t>((kWindow - 1 + kT - 1 + kT - 1) / kT + 1) * page_bytes);
    // The next query sees the same keys and values in both caches.
    for (auto& x : q) x = nd(rng);
    const int32_t q_pos = pos + 1;
    cpu::attention(tp, ap, q.data(), &q_pos, 1, lazy.layer_view(0), a.data());
    cpu::attention(tp, ap, q.data(), &q_pos, 1, exact.layer_view(0), b.data());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f) << pos << " " << i;
  }
  // Whole pages of kT tokens went, about once every kT steps; the exact expiry removed a slot every step.
  ASSERT_FALSE(whole.removed.empty());
  for (const auto& [n_before, slots] : whole.removed) {
    EXPECT_EQ(slots.size(), static_cast<size_t>(kT));
    for (size_t i = 0; i < slots.size(); ++i) EXPECT_EQ(slots[i], static_cast<int32_t>(i));
  }
  EXPECT_LE(whole.removed.size(), static_cast<size_t>(kSteps / kT));
  EXPECT_GT(every.calls.size(), static_cast<size_t>(kSteps - kWindow - 1));
}

// Outside decode steps (prefill chunks) expiry is exact under any policy; in decode steps whole pages go only under
// policies that neither evict, nor choose what a step reads, nor move keys to in-cache positions.
TEST(WindowExpiry, WhichPoliciesArePassiveWhileDecoding) {
  for (const char* spec : {"full", "full:type=f32", "kivi:bits=2", "snapkv:budget=64", "chunkkv:budget=64",
                           "pyramid:budget=64+snapkv", "snapkv:budget=64+adakv", "snapkv:budget=64+kivi:bits=4"})
    EXPECT_TRUE(kv::make_kv_policy(spec, 4, 2)->passive_during_decode()) << spec;
  for (const char* spec : {"h2o:budget=64", "tova:budget=64", "streaming:budget=64", "quest:budget=128"})
    EXPECT_FALSE(kv::make_kv_policy(spec, 4, 2)->passive_during_decode()) << spec;

  const ModelConfig c = window_config({true}, 1, 10);
  kv::KvGeometry geo{1, 1, 8, 8, KvFormat::F32, KvFormat::F32};
  kv::KvPagePool pool(geo.page_tokens, 8, size_t{1} << 24);
  kv::KvSequence seq(geo, pool);
  std::vector<float> row(8, 1.0f);
  for (int32_t pos = 0; pos < 13; ++pos) seq.append(0, row.data(), row.data(), &pos, 1);
  PassivePolicy passive;
  kv_expire_window(c, seq, passive, 13);  // a prefill chunk's expiry: positions 0..3 go, though their page stays
  EXPECT_EQ(seq.head(0, 0).n_tokens(), 9);
  EXPECT_EQ(seq.head(0, 0).positions.front(), 4);
}

}  // namespace
}  // namespace longctx
