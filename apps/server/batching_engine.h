// The request engine of `longctx serve`: a bounded FIFO queue in front of the continuous-batching scheduler
// (engine/scheduler.h) on one worker thread. Jobs run together: every decode step stacks the running requests in one
// forward, a new prompt's prefill chunks are interleaved with the running requests' steps, admission waits for KV
// pages, and a request that would overflow the pool is preempted and recomputed rather than aborted. A cancelled
// job (the client went away) stops at its next chunk or token and its pages go back at once. Prefix reuse: finished
// full caches stay for later prompts that share their prefix (a chat's next turn, another question over the same
// document); their pages count as cached, not in use, and go back when admission needs them.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "request_engine.h"
#include "tokenizer/tokenizer.h"

namespace longctx::server {

struct BatchingEngineOptions {
  int32_t n_ctx = 4096;      // the context every job runs in
  int32_t n_batch = 256;     // prefill chunk
  int32_t max_running = 8;   // jobs generating at once (the KV pool holds this many full caches of n_ctx)
  int32_t max_queue = 16;    // jobs waiting, the running ones not counted; one more is QueueFull
  int32_t n_threads = 1;
  Device device = Device::Cpu;  // where the model runs
  bool prefix_reuse = true;     // keep full prefixes for later jobs that start with them (engine/scheduler.h)
  bool batch_invariant = true;  // every job's tokens are those it gets alone (SessionOptions::batch_invariant)
  size_t kv_max_bytes = 0;      // the KV page pool's limit; 0: max_running full f16 caches of n_ctx
};

class BatchingEngine final : public RequestEngine {
 public:
  // model and tok outlive the engine; metrics may be null.
  BatchingEngine(const Model& model, const Tokenizer& tok, const BatchingEngineOptions& o, ServerMetrics* metrics);
  ~BatchingEngine() override;

  std::shared_ptr<RequestChannel> submit(GenerationJob job) override;
  EngineGauges gauges() const override;
  void shutdown() override;

 private:
  struct Item {
    GenerationJob job;
    std::shared_ptr<RequestChannel> channel;
  };
  void worker_loop();
  ScheduledRequest to_request(Item item);  // the job with callbacks into its channel and the metrics

  const Model& model_;
  const Tokenizer& tok_;
  BatchingEngineOptions opt_;
  ServerMetrics* metrics_;
  ThreadPool pool_;
  Scheduler scheduler_;        // worker thread only
  int64_t kv_capacity_pages_;  // f16 pages of the pool's limit

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> incoming_;  // submitted, not yet handed to the scheduler
  bool stopping_ = false;
  // The scheduler's state for gauges(), updated by the worker after each step.
  std::atomic<int64_t> waiting_{0}, running_{0}, kv_pages_in_use_{0}, kv_pages_cached_{0};
  std::atomic<bool> cancel_all_{false};  // shutdown: every job stops at its next chunk or token
  std::thread worker_;
};

}  // namespace longctx::server
