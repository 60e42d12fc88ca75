// A persistent pool of worker threads. run(n_tasks, fn) calls fn(task, n_tasks) once for every task in
// [0, n_tasks) and returns when all are done; the calling thread works too. Workers spin briefly before
// sleeping, because decode issues hundreds of small parallel regions per token.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace longctx {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads counts the caller; 1 means no workers
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return n_threads_; }

  // Runs fn(i) for i in [0, n); tasks are handed out dynamically.
  void run(int64_t n, const std::function<void(int64_t)>& fn);

  // Splits [0, n) into one contiguous range per thread: fn(begin, end, thread_index).
  void split(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);

 private:
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<uint64_t> generation_{0};
  int n_done_ = 0;  // workers finished with the current generation
  bool stop_ = false;
};

}  // namespace longctx
