// The server's request-processing core, behind one small interface: a tokenized, validated generation job goes in,
// a channel of events (text, logprobs, the end with usage) comes out, and either side may cancel. The HTTP layer
// only parses, submits and writes; the engine behind the interface (batching_engine.h) decides when and how jobs
// run, so both are testable without sockets.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "metrics.h"
#include "openai_response.h"

namespace longctx::server {

struct GenerationJob {
  std::vector<int32_t> prompt;  // token ids, within the context
  int32_t max_tokens = 16;
  SamplerParams sampling;
  std::vector<std::string> stop;
  int32_t n_logprobs = -1;      // -1: none; k >= 0: each token's and its step's top k
  std::string kv;               // the KV policy spec, already checked
  bool ignore_eog = false;      // generate max_tokens past end-of-generation tokens (benchmarks)
  bool prefill_compress = false;  // the policy cuts after every prefill chunk (ScheduledRequest::prefill_compress)
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
};

enum class FinishReason { Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

struct GenerationEvent {
  std::string text;                    // final text (stop strings held back and cut by the engine)
  std::vector<TokenLogprob> logprobs;  // of the tokens whose text this is
  bool done = false;                   // the last event; then finish, usage and error hold
  FinishReason finish = FinishReason::Stop;
  Usage usage;
  std::string error;                   // FinishReason::Error: what went wrong
};

// One request's events from the engine to whoever answers the client. Thread-safe; exactly one done event ends it.
class RequestChannel {
 public:
  // Engine side.
  void push(std::string text, std::vector<TokenLogprob> lps);
  void finish(FinishReason r, const Usage& u, std::string error = {});
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

  // Client side: the client went away or gave up; the engine drops the job at its next step and frees its pages.
  void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  // Waits up to timeout for events and moves them all into out (appended); returns whether any came.
  bool wait_pop(std::vector<GenerationEvent>& out, std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> events_;
  bool finished_ = false;
  std::atomic<bool> cancelled_{false};
};

// submit() when the queue holds its maximum: the client should retry later (HTTP 429).
struct QueueFull : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// submit() after shutdown() began (HTTP 503).
struct EngineStopped : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class RequestEngine {
 public:
  virtual ~RequestEngine() = default;
  // Queues a job, FIFO; throws QueueFull or EngineStopped. The channel ends with exactly one done event.
  virtual std::shared_ptr<RequestChannel> submit(GenerationJob job) = 0;
  virtual EngineGauges gauges() const = 0;
  // Stops taking jobs, ends the queued ones as cancelled and the running one at its next step; returns when idle.
  virtual void shutdown() = 0;
};

}  // namespace longctx::server
