#include "core/memory_bandwidth.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "core/error.h"

namespace longctx {

namespace {

// "32768K" or "32M" as sysfs writes cache sizes.
size_t parse_cache_size(const std::string& s) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (end == s.c_str()) return 0;
  switch (*end) {
    case 'K': return static_cast<size_t>(v) << 10;
    case 'M': return static_cast<size_t>(v) << 20;
    case 'G': return static_cast<size_t>(v) << 30;
    default: return static_cast<size_t>(v);
  }
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

size_t last_level_cache_bytes() {
  // sysfs first: it is what lscpu shows and what one core can use. glibc's CPUID answer can be the whole package's
  // L3 summed over its core complexes (384 MiB on a 32 MiB-per-CCD EPYC), of which a core sees one part.
  size_t best = 0;
  for (int index = 0; index < 8; ++index) {
    std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string s;
    if (in >> s) best = std::max(best, parse_cache_size(s));
  }
#ifdef _SC_LEVEL3_CACHE_SIZE
  if (best == 0) {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) best = static_cast<size_t>(l3);
  }
#endif
  return best;
}

CopyBandwidth measure_copy_bandwidth(ThreadPool& pool, size_t min_bytes, int n_reps) {
  CopyBandwidth r;
  r.n_threads = pool.n_threads();
  r.n_reps = std::max(1, n_reps);
  // Four times the cache, so the copy streams from memory rather than from cache; a page multiple.
  size_t n = std::max(min_bytes, 4 * last_level_cache_bytes());
  n = (n + 4095) / 4096 * 4096;
  r.buffer_bytes = n;
  std::unique_ptr<uint8_t, FreeDeleter> src(static_cast<uint8_t*>(std::aligned_alloc(4096, n)));
  std::unique_ptr<uint8_t, FreeDeleter> dst(static_cast<uint8_t*>(std::aligned_alloc(4096, n)));
  if (!src || !dst) fail("out of memory allocating 2 x {} MiB to measure the copy bandwidth", n >> 20);

  // Each thread copies the same share every time, so the pages it touches stay on its side on NUMA machines.
  auto copy = [&] {
    pool.split(static_cast<int64_t>(n / 64), [&](int64_t b, int64_t e, int) {
      std::memcpy(dst.get() + b * 64, src.get() + b * 64, static_cast<size_t>(e - b) * 64);
    });
  };
  pool.split(static_cast<int64_t>(n / 64), [&](int64_t b, int64_t e, int) {
    std::memset(src.get() + b * 64, 1, static_cast<size_t>(e - b) * 64);
  });
  copy();  // faults the destination's pages in
  double best_s = 0;
  for (int rep = 0; rep < r.n_reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    copy();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep == 0 || s < best_s) best_s = s;
  }
  r.bytes_per_s = best_s > 0 ? 2.0 * static_cast<double>(n) / best_s : 0;
  return r;
}

}  // namespace longctx
