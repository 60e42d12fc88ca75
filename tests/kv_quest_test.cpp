// Quest ("Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"): the page bound is a true upper
// bound of q.k; the page selection equals a plain loop over the paper's rule; the store's key summaries stay the
// min/max of each page's keys through appends, eviction, compaction and KIVI packing; a budget that covers the cache
// reads it all (bit-identical logits); the --kv component parses and composes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "expect_error.h"
#include "backend/cpu/attention.h"
#include "core/fp16.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/quest.h"
#include "model/forward.h"
#include "model/model.h"

namespace longctx {
namespace {

std::vector<float> random_vec(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// min/max of rows (n, d) as the summary layout (2, d).
std::vector<float> min_max(const float* rows, int32_t n, int32_t d) {
  std::vector<float> s(2 * static_cast<size_t>(d));
  for (int32_t i = 0; i < d; ++i) {
    s[static_cast<size_t>(i)] = std::numeric_limits<float>::infinity();
    s[static_cast<size_t>(d + i)] = -std::numeric_limits<float>::infinity();
  }
  for (int32_t r = 0; r < n; ++r)
    for (int32_t i = 0; i < d; ++i) {
      const float x = rows[static_cast<size_t>(r) * d + i];
      s[static_cast<size_t>(i)] = std::min(s[static_cast<size_t>(i)], x);
      s[static_cast<size_t>(d + i)] = std::max(s[static_cast<size_t>(d + i)], x);
    }
  return s;
}

// Every page's bound is at least the largest q.k of its rows, on keys with an outlier channel or not and
// queries of either sign. Tolerance: 1e-5 of the sum of |q_i k_i| (f32 sums in different orders).
TEST(Quest, BoundIsAnUpperBoundOfEveryRow) {
  std::mt19937 rng(11);
  const int32_t d = 64;
  int n_tight = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t n = 1 + static_cast<int32_t>(rng() % 64);
    std::vector<float> k = random_vec(rng, static_cast<size_t>(n) * d);
    if (trial % 2) for (int32_t r = 0; r < n; ++r) k[static_cast<size_t>(r) * d + 5] *= 30;  // an outlier channel
    const std::vector<float> q = random_vec(rng, d, trial % 3 == 0 ? 10.0f : 1.0f);
    const std::vector<float> s = min_max(k.data(), n, d);
    const float bound = kv::quest_page_bound(q.data(), s.data(), d);
    double best = -1e300, mag = 0;
    for (int32_t r = 0; r < n; ++r) {
      double dot = 0, m = 0;
      for (int32_t i = 0; i < d; ++i) {
        dot += static_cast<double>(q[static_cast<size_t>(i)]) * k[static_cast<size_t>(r) * d + i];
        m += std::fabs(static_cast<double>(q[static_cast<size_t>(i)]) * k[static_cast<size_t>(r) * d + i]);
      }
      best = std::max(best, dot);
      mag = std::max(mag, m);
    }
    EXPECT_GE(bound, best - 1e-5 * mag) << "trial " << trial;
    if (n == 1) {
      EXPECT_NEAR(bound, best, 1e-5 * mag) << "one row: the bound is its score";
      ++n_tight;
    }
  }
  EXPECT_GT(n_tight, 0);
}

// A store of F32 pages with summaries; q heads of one kv-head; quest_select_pages against the paper's rule written
// as a plain loop in double: bound per query head, max over heads, the n_recent newest pages plus the best
// n_read - n_recent others.
TEST(Quest, SelectionEqualsAPlainLoop) {
  std::mt19937 rng(5);
  const int32_t d = 32, T = 8, n_head_kv = 2, group = 3;
  kv::KvGeometry geo{1, n_head_kv, d, T, KvFormat::F32, KvFormat::F32};
  geo.key_summaries = true;
  kv::KvPagePool pool(T, d, size_t{1} << 26);
  kv::KvSequence seq(geo, pool);
  const int32_t n = 203;  // 26 pages, the last one partial
  const std::vector<float> k = random_vec(rng, static_cast<size_t>(n) * n_head_kv * d);
  const std::vector<float> v = random_vec(rng, k.size());
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = i;
  seq.append(0, k.data(), v.data(), pos.data(), n);
  const cpu::KvLayerView view = seq.layer_view(0);
  for (int trial = 0; trial < 50; ++trial) {
    const int32_t g = trial % n_head_kv;
    const cpu::KvHeadView& hv = view.heads[static_cast<size_t>(g)];
    const int32_t P = hv.n_pages();
    ASSERT_EQ(P, 26);
    const int32_t n_read = 1 + trial % 30;
    const int32_t n_recent = std::min(n_read, 1 + trial % 4);  // the newest pages read whatever their bounds
    const std::vector<float> q = random_vec(rng, static_cast<size_t>(group) * d);
    std::vector<int32_t> got;
    std::vector<float> scratch;
    kv::quest_select_pages(hv, q.data(), group, d, d, n_read, got, scratch, n_recent);

    std::vector<int32_t> want;
    if (P <= n_read) {
      for (int32_t p = 0; p < P; ++p) want.push_back(p);
    } else {
      std::vector<std::pair<double, int32_t>> ranked;  // (-score, page): ascending = best first, older on ties
      for (int32_t p = 0; p + n_recent < P; ++p) {
        std::vector<float> rows(static_cast<size_t>(hv.page_rows(p)) * d);
        seq.read_keys(0, g, hv.slot0[static_cast<size_t>(p)], hv.page_rows(p), rows.data());
        const std::vector<float> s = min_max(rows.data(), hv.page_rows(p), d);
        double score = -1e300;
        for (int32_t h = 0; h < group; ++h) {
          double b = 0;
          for (int32_t i = 0; i < d; ++i) {
            const double qi = q[static_cast<size_t>(h * d + i)];
            b += std::max(qi * s[static_cast<size_t>(d + i)], qi * s[static_cast<size_t>(i)]);
          }
          score = std::max(score, b);
        }
        ranked.emplace_back(-score, p);
      }
      std::sort(ranked.begin(), ranked.end());
      for (int32_t i = 0; i + n_recent < n_read; ++i) want.push_back(ranked[static_cast<size_t>(i)].second);
      for (int32_t p = P - n_recent; p < P; ++p) want.push_back(p);
      std::sort(want.begin(), want.end());
    }
    EXPECT_EQ(got, want) << "trial " << trial << ", " << n_read << " pages";
  }
}

// Checks every page's summary of every head: open pages (exact keys) and packed pages compacted by eviction equal
// the min/max of the keys read back from the page; a packed page still holding the rows it was sealed with equals
// the min/max of its exact (pre-packing, f16-rounded) keys. Tolerance: exact (no arithmetic beyond min/max).
void expect_summaries(const kv::KvSequence& seq, int32_t layer, const std::map<int32_t, std::vector<float>>& exact,
                      int* n_packed_checked) {
  const kv::KvGeometry& geo = seq.geometry();
  const int32_t d = geo.head_dim, T = geo.page_tokens;
  for (int32_t g = 0; g < geo.n_head_kv; ++g) {
    const kv::KvHeadCache& h = seq.head(layer, g);
    ASSERT_EQ(h.key_summary.size(), h.pages.size() * 2 * static_cast<size_t>(d));
    int32_t s0 = 0;
    for (size_t p = 0; p < h.pages.size(); ++p) {
      const int32_t n = h.pages[p].n_rows;
      std::vector<float> rows(static_cast<size_t>(n) * d);
      seq.read_keys(layer, g, s0, n, rows.data());
      std::vector<float> want = min_max(rows.data(), n, d);
      if (kv_format_is_packed(h.pages[p].format) && n == T) {
        // Untouched since sealing: the summary of the exact keys of exactly these positions.
        std::vector<float> ex;
        for (int32_t r = 0; r < n; ++r) {
          const std::vector<float>& key = exact.at(h.positions[static_cast<size_t>(s0 + r)] * 16 + g);
          ex.insert(ex.end(), key.begin(), key.end());
        }
        want = min_max(ex.data(), n, d);
        ++*n_packed_checked;
      }
      const float* got = h.key_summary.data() + p * 2 * static_cast<size_t>(d);
      for (int32_t i = 0; i < 2 * d; ++i)
        ASSERT_EQ(got[i], want[static_cast<size_t>(i)]) << "head " << g << " page " << p << " channel " << i;
      s0 += n;
    }
  }
}

TEST(Quest, SummariesFollowAppendsEvictionAndKiviPacking) {
  std::mt19937 rng(3);
  const int32_t d = 32, T = 16, n_head_kv = 2, R = 24;
  for (KvFormat sealed : {KvFormat::F16, KvFormat::Kivi4, KvFormat::Kivi2}) {
    SCOPED_TRACE(kv_format_name(sealed));
    kv::KvGeometry geo{1, n_head_kv, d, T, KvFormat::F16, sealed, sealed == KvFormat::F16 ? 0 : R};
    geo.key_summaries = true;
    kv::KvPagePool pool(T, d, size_t{1} << 26);
    kv::KvSequence seq(geo, pool);
    seq.set_auto_seal(true);
    std::map<int32_t, std::vector<float>> exact;  // position * 16 + head: the key as the open f16 page held it
    int32_t next = 0;
    int n_packed = 0;
    auto append = [&](int32_t n) {
      std::vector<float> k = random_vec(rng, static_cast<size_t>(n) * n_head_kv * d);
      for (int32_t t = 0; t < n; ++t)
        k[(static_cast<size_t>(t) * n_head_kv) * d + 3] += 20.0f * static_cast<float>(rng() % 2);  // wide channel
      const std::vector<float> v = random_vec(rng, k.size());
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int32_t t = 0; t < n; ++t) {
        pos[static_cast<size_t>(t)] = next + t;
        for (int32_t g = 0; g < n_head_kv; ++g) {
          std::vector<float> key(static_cast<size_t>(d));
          for (int32_t i = 0; i < d; ++i)
            key[static_cast<size_t>(i)] = fp16_to_f32(f32_to_fp16(k[(static_cast<size_t>(t) * n_head_kv + g) * d + i]));
          exact[(next + t) * 16 + g] = key;
        }
      }
      seq.append(0, k.data(), v.data(), pos.data(), n);
      next += n;
    };
    append(100);
    expect_summaries(seq, 0, exact, &n_packed);
    for (int round = 0; round < 12; ++round) {
      // Evict a random quarter of each head (different per head), then append a few more, one at a time.
      for (int32_t g = 0; g < n_head_kv; ++g) {
        std::vector<int32_t> drop;
        for (int32_t s = 0; s < seq.head(0, g).n_tokens(); ++s)
          if (rng() % 4 == 0) drop.push_back(s);
        seq.remove_slots(0, g, drop);
      }
      expect_summaries(seq, 0, exact, &n_packed);
      for (int i = 0; i < 7; ++i) append(1);
      append(20);
      expect_summaries(seq, 0, exact, &n_packed);
    }
    if (sealed != KvFormat::F16) {
      EXPECT_GT(n_packed, 0) << "no sealed page was checked against its exact keys";
    }
    // Accounting: the summaries are bytes the sequence holds, counted apart and in the total.
    const kv::KvBytes b = seq.bytes();
    size_t want = 0;
    for (int32_t g = 0; g < n_head_kv; ++g) want += seq.head(0, g).key_summary.capacity() * sizeof(float);
    EXPECT_EQ(b.summaries, want);
    EXPECT_GT(b.summaries, 0u);
    EXPECT_EQ(b.total(), b.payload + b.metadata + b.summaries);
  }
}

TEST(Quest, NoSummariesUnlessAsked) {
  kv::KvGeometry geo{1, 1, 8, 4, KvFormat::F16, KvFormat::F16};
  kv::KvPagePool pool(4, 8, size_t{1} << 24);
  kv::KvSequence seq(geo, pool);
  std::vector<float> k(10 * 8, 1.0f), v(k.size(), 2.0f);
  std::vector<int32_t> pos(10);
  for (int32_t i = 0; i < 10; ++i) pos[static_cast<size_t>(i)] = i;
  seq.append(0, k.data(), v.data(), pos.data(), 10);
  EXPECT_TRUE(seq.head(0, 0).key_summary.empty());
  EXPECT_EQ(seq.bytes().summaries, 0u);
  EXPECT_EQ(seq.layer_view(0).heads[0].key_summary, nullptr);
}

// Decoding the tiny synthetic llama: a budget covering the whole cache gives the very logits of no filter; a small
// one reads fewer rows and changes them (so the filter is really in the path).
TEST(Quest, BudgetCoveringTheCacheIsBitIdentical) {
  const auto model = Model::synthetic("tiny:3");
  const ModelConfig& c = model->config();
  ThreadPool tp(2);
  const int32_t n_prompt = 150, n_gen = 6, T = 16;
  auto decode = [&](KvReadFilter* filter) {
    Forward fwd(*model, tp, 64);
    kv::KvGeometry geo{c.n_layer, c.n_head_kv, c.head_dim, T, KvFormat::F16, KvFormat::F16};
    geo.key_summaries = true;
    kv::KvPagePool pool(T, c.head_dim, size_t{1} << 26);
    kv::KvSequence seq(geo, pool);
    std::vector<float> logits(64 * static_cast<size_t>(c.n_vocab));
    for (int32_t start = 0; start < n_prompt; start += 64) {
      const int32_t len = std::min(64, n_prompt - start);
      std::vector<int32_t> ids(static_cast<size_t>(len)), pos(ids.size());
      for (int32_t i = 0; i < len; ++i) {
        pos[static_cast<size_t>(i)] = start + i;
        ids[static_cast<size_t>(i)] = (start + i) * 37 % c.n_vocab;
      }
      fwd.run(seq, ids.data(), pos.data(), len, {len - 1}, logits.data());  // prefill: dense
    }
    std::vector<float> all;
    for (int32_t i = 0; i < n_gen; ++i) {
      const int32_t pos = n_prompt + i, id = (i * 11 + 5) % c.n_vocab;
      fwd.run(seq, &id, &pos, 1, {0}, logits.data(), nullptr, kv::KvPositions::Original, filter);
      all.insert(all.end(), logits.begin(), logits.begin() + c.n_vocab);
    }
    return all;
  };
  const std::vector<float> dense = decode(nullptr);
  kv::QuestReadFilter whole(T * 10, 0);  // 10 pages of 16 >= the 160 tokens cached
  EXPECT_EQ(decode(&whole), dense);
  EXPECT_EQ(whole.rows_read(), whole.rows_held());
  EXPECT_GT(whole.rows_held(), 0);
  kv::QuestReadFilter small(T * 3, 0);  // 3 of 10 pages
  const std::vector<float> narrowed = decode(&small);
  EXPECT_LT(small.rows_read(), small.rows_held() / 2);
  EXPECT_NE(narrowed, dense);
  kv::QuestReadFilter dense_layers(T * 3, c.n_layer);  // every layer dense: nothing narrowed
  EXPECT_EQ(decode(&dense_layers), dense);
}

TEST(Quest, SpecComposesAndRejectsBadInput) {
  auto p = kv::make_kv_policy("snapkv:budget=4096+quest:budget=1024+kivi:bits=4", 30, 3);
  ASSERT_NE(p->read_filter(), nullptr);
  EXPECT_TRUE(p->wants_key_summaries());
  EXPECT_NE(p->describe().find("quest(budget=1024, dense_layers=2)"), std::string::npos) << p->describe();
  EXPECT_EQ(p->sealed_format(), KvFormat::Kivi4);
  auto q = kv::make_kv_policy("quest:budget=512,dense_layers=0", 30, 3);
  auto* f = dynamic_cast<kv::QuestReadFilter*>(q->read_filter());
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->budget(), 512);
  EXPECT_EQ(f->dense_layers(), 0);
  EXPECT_EQ(q->page_tokens(), 64);
  auto fine = kv::make_kv_policy("h2o:budget=2048+quest:budget=512,page=16", 30, 3);
  EXPECT_EQ(fine->page_tokens(), 16);
  EXPECT_NE(fine->describe().find("page=16"), std::string::npos) << fine->describe();
  auto full = kv::make_kv_policy("full", 30, 3);
  EXPECT_EQ(full->page_tokens(), 0);
  EXPECT_EQ(full->read_filter(), nullptr);
  EXPECT_FALSE(full->wants_key_summaries());
  auto throws_with = [](const std::string& spec, const std::string& what) {
    expect_error_containing([&] { kv::make_kv_policy(spec, 30, 3); }, what, spec);
  };
  EXPECT_EQ(dynamic_cast<kv::QuestReadFilter*>(kv::make_kv_policy("quest", 30, 3)->read_filter())->budget(), 1024);
  throws_with("quest:budget=0", "budget");
  throws_with("quest:budget=64+quest:budget=128", "twice");
  throws_with("streaming:budget=256+quest:budget=128", "in-cache");
  throws_with("quest:budget=64,pages=3", "pages");
  throws_with("quest:budget=64,page=48", "page");
  throws_with("quest:budget=64,recent=128", "recent");
}

}  // namespace
}  // namespace longctx
