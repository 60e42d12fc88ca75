// The arithmetic behind `longctx bench`: repetition statistics, the --depth parser, the token ids, JSON quoting,
// the KV bytes a decode step reads, and the copy-bandwidth probe.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "bench_command.h"
#include "core/error.h"
#include "core/memory_bandwidth.h"
#include "kv/kv_store.h"
#include "model/model.h"

namespace longctx {

TEST(BenchStats, MedianOfOddAndEvenCounts) {
  EXPECT_DOUBLE_EQ(summarize_reps({3.0}).median, 3.0);
  EXPECT_DOUBLE_EQ(summarize_reps({5.0, 1.0, 3.0}).median, 3.0);
  EXPECT_DOUBLE_EQ(summarize_reps({4.0, 1.0, 3.0, 2.0}).median, 2.5);
}

TEST(BenchStats, SpreadIsSampleStddevMinAndMax) {
  const RepStats s = summarize_reps({2, 4, 4, 4, 5, 5, 7, 9});
  EXPECT_EQ(s.n, 8);
  EXPECT_DOUBLE_EQ(s.mean, 5.0);
  // Sum of squared deviations is 32; the sample (n - 1) variance is 32 / 7.
  EXPECT_NEAR(s.stddev, std::sqrt(32.0 / 7.0), 1e-12);
  EXPECT_DOUBLE_EQ(s.min, 2.0);
  EXPECT_DOUBLE_EQ(s.max, 9.0);
  EXPECT_DOUBLE_EQ(summarize_reps({7.5}).stddev, 0.0);  // one repetition has no spread
  EXPECT_THROW(summarize_reps({}), Error);
}

TEST(BenchDepths, ParsesCommaSeparatedCounts) {
  EXPECT_EQ(parse_depth_list("0"), std::vector<int32_t>({0}));
  EXPECT_EQ(parse_depth_list("0,2048,8192"), std::vector<int32_t>({0, 2048, 8192}));
  EXPECT_EQ(parse_depth_list("2147483647"), std::vector<int32_t>({2147483647}));
}

TEST(BenchDepths, RejectsBadListsWithTheEntryNamed) {
  for (const char* bad : {"", ",", "0,", ",0", "0,,1", "-1", "+5", "1.5", "abc", "0, 1", "2147483648", "99999999999"}) {
    try {
      parse_depth_list(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad --depth list"), std::string::npos) << e.what();
    }
  }
}

// This test binary compiles bench_command.cpp without the CUDA backend, as every build without LONGCTX_CUDA does:
// --device cuda must say so and how to get it, before anything is built or allocated.
TEST(BenchDevice, CudaWithoutTheBackendIsAClearError) {
  BenchOptions o;
  o.synthetic = "tiny:1";
  o.device = "cuda";
  try {
    bench_command(o);
    ADD_FAILURE() << "--device cuda ran in a build without the CUDA backend";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA backend"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("LONGCTX_CUDA"), std::string::npos) << e.what();
  }
  o.device = "tpu";
  EXPECT_THROW(bench_command(o), Error);
}

TEST(BenchTokens, IdsAreFixedInRangeAndVaried) {
  std::set<int32_t> seen;
  for (int64_t pos = 0; pos < 1000; ++pos) {
    const int32_t id = bench_token_id(1, pos, 49152);
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 49152);
    EXPECT_EQ(id, bench_token_id(1, pos, 49152));
    seen.insert(id);
  }
  EXPECT_GT(seen.size(), 950u);  // near-uniform: few collisions among 1000 draws from 49152
  EXPECT_NE(bench_token_id(1, 0, 49152), bench_token_id(2, 0, 49152));
  // scripts/bench_peer.py computes the same ids in Python (bench_token_id there); these values come from it.
  EXPECT_EQ(bench_token_id(1, 0, 49152), 17893);
  EXPECT_EQ(bench_token_id(1, 1, 49152), 7361);
  EXPECT_EQ(bench_token_id(1, 4096, 49152), 17452);
  EXPECT_EQ(bench_token_id(7, 123456, 262144), 180198);
}

TEST(BenchJson, QuotesSpecialCharacters) {
  EXPECT_EQ(json_quote("model.gguf"), "\"model.gguf\"");
  EXPECT_EQ(json_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(json_quote(std::string("x\ny\x01", 4)), "\"x\\u000ay\\u0001\"");
}

// Every slot a query may see, at the bytes per slot of its format; nothing past the query or outside the window.
TEST(BenchKvBytes, CountsVisibleSlotsPerLayerKind) {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head_kv = 2;
  c.head_dim = 8;
  c.sliding_window = 10;
  c.layer_is_local = {true, false};
  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  geo.page_tokens = 16;
  geo.format = KvFormat::F16;
  geo.sealed_format = KvFormat::F16;
  kv::KvPagePool pool(geo.page_tokens, geo.head_dim, size_t{1} << 30);
  kv::KvSequence seq(geo, pool);
  const int32_t n = 40;
  std::vector<float> k(static_cast<size_t>(n * c.n_head_kv * c.head_dim), 0.5f), v = k;
  std::vector<int32_t> pos(n);
  for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = i;
  for (int32_t il = 0; il < c.n_layer; ++il) seq.append(il, k.data(), v.data(), pos.data(), n);

  const int64_t slot = 2 * c.head_dim * 2;  // key and value rows in f16
  ASSERT_EQ(static_cast<int64_t>(pool.page_bytes(KvFormat::F16)), slot * geo.page_tokens);
  // Query at 39: the local layer sees positions 30..39 (10), the global one 0..39 (40); two kv-heads each.
  EXPECT_EQ(kv_bytes_read(seq, pool, c, 39), (10 + 40) * 2 * slot);
  // Query at 5: both see 0..5; nothing later counts.
  EXPECT_EQ(kv_bytes_read(seq, pool, c, 5), (6 + 6) * 2 * slot);
  c.sliding_window = 0;  // no sliding window at all: the local flag is ignored
  EXPECT_EQ(kv_bytes_read(seq, pool, c, 39), (40 + 40) * 2 * slot);
}

TEST(MemoryBandwidth, ReportsAPlausibleFigure) {
  ThreadPool pool(2);
  const CopyBandwidth bw = measure_copy_bandwidth(pool, size_t{8} << 20, 2);
  EXPECT_GE(bw.buffer_bytes, size_t{8} << 20);
  EXPECT_GE(bw.buffer_bytes, 4 * last_level_cache_bytes());
  EXPECT_EQ(bw.n_threads, 2);
  // Between 100 MB/s (a sanitizer build on a loaded machine) and 10 TB/s.
  EXPECT_GT(bw.bytes_per_s, 1e8);
  EXPECT_LT(bw.bytes_per_s, 1e13);
}

}  // namespace longctx
