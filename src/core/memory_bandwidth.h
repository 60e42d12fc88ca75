// The machine's memory copy bandwidth, the roofline that decode is measured against (DESIGN.md, Benchmarking:
// decode is bandwidth-bound, so its achieved GB/s is reported beside the best a plain copy reaches).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace longctx {

struct CopyBandwidth {
  double bytes_per_s = 0;   // STREAM "Copy" convention: bytes read plus bytes written, over the best repetition
  size_t buffer_bytes = 0;  // size of each of the two buffers (source and destination)
  int n_threads = 0;
  int n_reps = 0;
};

// Size of the last-level cache in bytes (L3 where there is one), or 0 when the system does not say.
size_t last_level_cache_bytes();

// Copies a buffer of at least 4x the last-level cache (and at least min_bytes, which covers several core complexes'
// caches together) into another with every thread of
// the pool, each thread a contiguous share, and keeps the best of n_reps timed copies: the best, because other
// work on a shared machine only ever slows a copy down. Both buffers are touched before timing, so page faults
// are not counted. Allocates 2 x buffer_bytes for the duration of the call and frees it before returning.
CopyBandwidth measure_copy_bandwidth(ThreadPool& pool, size_t min_bytes = size_t{256} << 20, int n_reps = 10);

}  // namespace longctx
