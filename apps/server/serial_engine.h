// The request engine that runs one sequence at a time: a bounded FIFO queue and one worker thread that runs each
// job through the generator (prefill, then decode under the job's KV policy), streaming its text into the job's
// channel. A cancelled or failed job stops at its next prefill chunk or token and its KV pages go back at once.
// Prefix reuse: a finished job's full cache (prompt and answer) stays for the next job under the same policy, which
// runs only the part of its prompt past what the two share (GenerateParams::reuse_prefix): a chat's next turn, or a
// second question over the same document, starts at the new tokens. Its pages count as cached, not in use, and go
// back when a job with another prompt or policy starts. The continuously batched scheduler will implement the same
// RequestEngine.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "engine/generator.h"
#include "kv/policy.h"
#include "model/model.h"
#include "request_engine.h"
#include "tokenizer/tokenizer.h"

namespace longctx::server {

struct SerialEngineOptions {
  int32_t n_ctx = 4096;     // the context every job runs in
  int32_t n_batch = 256;    // prefill chunk
  int32_t max_queue = 16;   // jobs waiting, the running one not counted; one more is QueueFull
  int32_t n_threads = 1;
  Device device = Device::Cpu;  // where the model runs
  bool prefix_reuse = true;     // keep a finished job's full cache for the next job's shared prefix
};

class SerialEngine final : public RequestEngine {
 public:
  // model and tok outlive the engine; metrics may be null.
  SerialEngine(const Model& model, const Tokenizer& tok, const SerialEngineOptions& o, ServerMetrics* metrics);
  ~SerialEngine() override;

  std::shared_ptr<RequestChannel> submit(GenerationJob job) override;
  EngineGauges gauges() const override;
  void shutdown() override;

 private:
  struct Item {
    GenerationJob job;
    std::shared_ptr<RequestChannel> channel;
  };
  void worker_loop();
  void run(Item& item);
  // The generator for a job under this spec: the kept one when its policy is the same, else a new one (the kept
  // cache's pages go back first).
  Generator& generator_for(const std::string& kv_spec, const GenerateParams& gp);
  void drop_kept();  // the kept cache's pages go back

  const Model& model_;
  const Tokenizer& tok_;
  SerialEngineOptions opt_;
  ServerMetrics* metrics_;
  ThreadPool pool_;
  int64_t kv_capacity_pages_;  // a full f16 cache of n_ctx tokens: what one sequence may hold at most

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::shared_ptr<RequestChannel> running_channel_;  // the job being generated, for shutdown to cancel
  bool stopping_ = false;
  std::atomic<int64_t> running_{0}, kv_pages_in_use_{0}, kv_pages_cached_{0};
  // The last finished job's generator and policy (worker thread only), kept while prefix_reuse may use its cache.
  std::unique_ptr<kv::KvPolicy> kept_policy_;
  std::unique_ptr<Generator> kept_;
  std::thread worker_;
};

}  // namespace longctx::server
