#include "core/thread_pool.h"

#include <algorithm>

namespace longctx {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Pauses a worker spins before it sleeps (~0.5 ms): decode's next region usually follows within microseconds,
// a new request after milliseconds.
constexpr int kSpinsBeforeSleep = 20000;
// Pauses the caller spins on unfinished tasks before it yields its core to them.
constexpr int kSpinsBeforeYield = 2000;

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  for (auto& t : workers_) t.join();
}

void ThreadPool::work(uint32_t generation) {
  for (;;) {
    uint64_t c = claim_.load();
    if (static_cast<uint32_t>(c >> 32) != generation) return;
    // fn_ and n_ are this generation's while claim_ still carries it: run writes claim_ first and starts a
    // new generation only when every task of this one is done, so the exchange below fails on a stale read.
    const auto* fn = fn_.load();
    const int64_t n = n_.load();
    const int64_t i = static_cast<int64_t>(c & 0xffffffffu);
    if (i >= n) return;
    if (!claim_.compare_exchange_weak(c, c + 1)) continue;
    (*fn)(i);
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::worker_loop(int /*index*/) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t g;
    int spins = 0;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinsBeforeSleep) {
        cpu_relax();
        continue;
      }
      // Registered as sleeping before the last look at generation_ (both seq_cst, as run's store and load):
      // either this look sees the new generation or run sees the sleeper and notifies under the mutex.
      std::unique_lock<std::mutex> lock(mu_);
      n_sleeping_.fetch_add(1);
      cv_.wait(lock, [&] { return generation_.load() != seen; });
      n_sleeping_.fetch_sub(1);
      spins = 0;
    }
    seen = g;
    if (stop_.load()) return;
    work(g);
  }
}

void ThreadPool::run(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  constexpr int64_t kMaxTasks = int64_t{1} << 31;  // task indices live in 32 bits of claim_
  if (n > kMaxTasks) {
    for (int64_t base = 0; base < n; base += kMaxTasks)
      run(std::min(kMaxTasks, n - base), [&](int64_t i) { fn(base + i); });
    return;
  }
  const uint32_t g = generation_.load() + 1;  // only run (one caller at a time) advances it
  claim_.store(static_cast<uint64_t>(g) << 32);
  fn_.store(&fn);
  n_.store(n);
  done_.store(0);
  generation_.store(g);
  if (n_sleeping_.load() > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  work(g);
  // Every task is claimed; wait for those still running elsewhere. After this no worker calls fn: a late one
  // fails to claim, its generation being over once claim_ runs out.
  for (int spins = 0; done_.load(std::memory_order_acquire) < n; ++spins) {
    if (spins < kSpinsBeforeYield) {
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
}

void ThreadPool::split(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  const int64_t parts = n < n_threads_ ? n : n_threads_;
  run(parts, [&](int64_t p) {
    const int64_t begin = n * p / parts, end = n * (p + 1) / parts;
    fn(begin, end, static_cast<int>(p));
  });
}

}  // namespace longctx
