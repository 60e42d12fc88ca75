#include "core/thread_pool.h"

namespace longctx {

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int /*index*/) {
  uint64_t seen = 0;
  for (;;) {
    // Spin a little: the next parallel region usually follows within microseconds.
    for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    const std::function<void(int64_t)>* job;
    int64_t n;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load() != seen; });
      seen = generation_.load();
      if (stop_) return;
      job = job_;
      n = job_n_;
    }
    for (int64_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) (*job)(i);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (++n_done_ == static_cast<int>(workers_.size())) done_cv_.notify_one();
    }
  }
}

void ThreadPool::run(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    job_n_ = n;
    n_done_ = 0;
    next_.store(0);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_.notify_all();
  for (int64_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) fn(i);
  // Every worker checks in once per generation, so none can still hold fn, or take a task of the
  // next run with this run's fn, after we return.
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return n_done_ == static_cast<int>(workers_.size()); });
  job_ = nullptr;
}

void ThreadPool::split(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
  const int64_t parts = n < n_threads_ ? n : n_threads_;
  run(parts, [&](int64_t p) {
    const int64_t begin = n * p / parts, end = n * (p + 1) / parts;
    fn(begin, end, static_cast<int>(p));
  });
}

}  // namespace longctx
