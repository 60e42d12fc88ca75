#include "metrics.h"

#include <cmath>

#include <fmt/format.h>

#include "core/error.h"

namespace longctx::server {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (size_t i = 0; i < bounds_.size(); ++i)
    if (!std::isfinite(bounds_[i]) || (i > 0 && bounds_[i] <= bounds_[i - 1]))
      fail("histogram bounds must be finite and strictly increasing");
}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  std::lock_guard lock(mu_);
  ++counts_[i];
  sum_ += value;
}

uint64_t Histogram::count() const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  for (uint64_t c : counts_) n += c;
  return n;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard lock(mu_);
  std::string out = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum_, name, cum);
  return out;
}

ServerMetrics::ServerMetrics()
    : time_to_first_token({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}),
      time_per_output_token({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      decode_batch_size({1, 2, 4, 8, 16, 32, 64, 128}) {}

void ServerMetrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mu_);
  ++requests_[{endpoint, status}];
}

void ServerMetrics::count_finish(const std::string& reason) {
  std::lock_guard lock(mu_);
  ++finished_[reason];
}

void ServerMetrics::add_tokens(int64_t n_prompt, int64_t n_generated) {
  prompt_tokens_ += n_prompt;
  generated_tokens_ += n_generated;
}

std::string ServerMetrics::render(const EngineGauges& g) const {
  std::string out;
  {
    std::lock_guard lock(mu_);
    out += "# HELP longctx_requests_total HTTP requests answered, by endpoint and status code.\n"
           "# TYPE longctx_requests_total counter\n";
    for (const auto& [k, n] : requests_)
      out += fmt::format("longctx_requests_total{{endpoint=\"{}\",code=\"{}\"}} {}\n", k.first, k.second, n);
    out += "# HELP longctx_generations_finished_total Generations ended, by reason.\n"
           "# TYPE longctx_generations_finished_total counter\n";
    for (const auto& [k, n] : finished_) out += fmt::format("longctx_generations_finished_total{{reason=\"{}\"}} {}\n", k, n);
  }
  out += fmt::format("# HELP longctx_prompt_tokens_total Prompt tokens prefilled.\n"
                     "# TYPE longctx_prompt_tokens_total counter\nlongctx_prompt_tokens_total {}\n",
                     prompt_tokens_.load());
  out += fmt::format("# HELP longctx_generated_tokens_total Tokens generated.\n"
                     "# TYPE longctx_generated_tokens_total counter\nlongctx_generated_tokens_total {}\n",
                     generated_tokens_.load());
  out += fmt::format("# HELP longctx_preemptions_total Times a running request gave its KV pages back to be "
                     "recomputed later.\n# TYPE longctx_preemptions_total counter\nlongctx_preemptions_total {}\n",
                     preemptions_.load());
  const auto gauge = [&](const char* name, const char* help, int64_t v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, v);
  };
  gauge("longctx_queue_length", "Requests waiting for the engine.", g.queue_length);
  gauge("longctx_requests_running", "Requests being generated.", g.running);
  gauge("longctx_kv_pages_in_use", "KV cache pages held by running requests.", g.kv_pages_in_use);
  gauge("longctx_kv_pages_cached", "KV cache pages only the prefixes kept for reuse hold.", g.kv_pages_cached);
  gauge("longctx_kv_pages_free", "KV cache pages of the server's capacity not held.", g.kv_pages_free);
  out += time_to_first_token.render("longctx_time_to_first_token_seconds",
                                    "Seconds from a request's arrival to its first generated token.");
  out += time_per_output_token.render("longctx_time_per_output_token_seconds",
                                      "Seconds between consecutive generated tokens of a request.");
  out += decode_batch_size.render("longctx_decode_batch_size", "Requests in each decode step (one forward).");
  return out;
}

}  // namespace longctx::server
