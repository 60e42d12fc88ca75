// The server's counters and latency histograms, written out in Prometheus' text exposition format (version 0.0.4):
// requests by outcome, tokens, queue length, KV pages, time to first token and time per output token.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace longctx::server {

// A cumulative histogram of values (seconds, batch sizes) over fixed upper bounds, as Prometheus defines one: each bucket counts the
// observations <= its bound, +Inf counts all of them. Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // strictly increasing, finite
  void observe(double value);
  // The metric's lines: name_bucket{le="..."} (cumulative), name_bucket{le="+Inf"}, name_sum, name_count.
  std::string render(const std::string& name, const std::string& help) const;
  uint64_t count() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // (bounds + 1) observations in (bounds[i-1], bounds[i]]; the last: above all
  double sum_ = 0;
};

// The state the request engine reports at the time of a scrape.
struct EngineGauges {
  int64_t queue_length = 0;     // requests waiting
  int64_t running = 0;          // requests being generated
  int64_t kv_pages_in_use = 0;  // pages the running requests hold
  int64_t kv_pages_free = 0;    // pages of the server's KV capacity not held
  int64_t kv_pages_cached = 0;  // pages only the prefixes kept for reuse hold
};

class ServerMetrics {
 public:
  ServerMetrics();
  // A request answered with HTTP status code (200 for streams that started), on endpoint ("chat", "completions",
  // ...).
  void count_request(const std::string& endpoint, int status);
  // A generation's end, by reason: "stop", "length", "cancelled", "error".
  void count_finish(const std::string& reason);
  void add_tokens(int64_t n_prompt, int64_t n_generated);
  // A request whose pages were taken back while it ran, to be recomputed (the pool ran out).
  void add_preemptions(int64_t n) { preemptions_ += n; }

  Histogram time_to_first_token;
  Histogram time_per_output_token;
  Histogram decode_batch_size;  // sequences per decode step

  std::string render(const EngineGauges& g) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> finished_;
  std::atomic<int64_t> prompt_tokens_{0}, generated_tokens_{0}, preemptions_{0};
};

}  // namespace longctx::server
