#include "core/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace longctx {

TEST(ThreadPool, RunsEveryTaskExactlyOnce) {
  for (int n_threads : {1, 2, 4}) {
    ThreadPool pool(n_threads);
    for (int64_t n : {0, 1, 3, 100, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (int rep = 0; rep < 20; ++rep) pool.run(n, [&](int64_t i) { hits[static_cast<size_t>(i)]++; });
      for (auto& h : hits) EXPECT_EQ(h.load(), 20);
    }
  }
}

TEST(ThreadPool, SplitCoversTheRangeWithoutOverlap) {
  ThreadPool pool(3);
  for (int64_t n : {1, 2, 5, 97}) {
    std::vector<int> seen(static_cast<size_t>(n), 0);
    pool.split(n, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) seen[static_cast<size_t>(i)]++;
    });
    for (int s : seen) EXPECT_EQ(s, 1);
  }
}

}  // namespace longctx
