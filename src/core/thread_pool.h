// A persistent pool of worker threads. run(n_tasks, fn) calls fn(task, n_tasks) once for every task in
// [0, n_tasks) and returns when all are done; the calling thread works too. Workers spin briefly before
// sleeping, because decode issues hundreds of small parallel regions per token, and the caller waits for the
// tasks, not for the workers: on a loaded machine a descheduled worker costs a region nothing unless it has
// already taken a task.
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
  void work(uint32_t generation);  // claims and runs tasks of that generation until none is left

  int n_threads_;
  std::vector<std::thread> workers_;
  // Hand-out without locks: a task is claimed by a compare-exchange on claim_ = (generation << 32 | next index),
  // which fails once the run has moved on, so a worker that wakes late never runs a task with a stale fn.
  std::atomic<uint64_t> claim_{0};
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int64_t> done_{0};  // tasks of the current generation finished
  std::atomic<uint32_t> generation_{0};
  // Workers that spun out and sleep on cv_; run takes the mutex only when there are some.
  std::atomic<int> n_sleeping_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace longctx
