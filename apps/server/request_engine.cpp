#include "request_engine.h"

namespace longctx::server {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

void RequestChannel::push(std::string text, std::vector<TokenLogprob> lps) {
  GenerationEvent e;
  e.text = std::move(text);
  e.logprobs = std::move(lps);
  {
    std::lock_guard lock(mu_);
    if (finished_) return;
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void RequestChannel::finish(FinishReason r, const Usage& u, std::string error) {
  GenerationEvent e;
  e.done = true;
  e.finish = r;
  e.usage = u;
  e.error = std::move(error);
  {
    std::lock_guard lock(mu_);
    if (finished_) return;  // exactly one done event
    finished_ = true;
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

bool RequestChannel::wait_pop(std::vector<GenerationEvent>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
  if (events_.empty()) return false;
  for (auto& e : events_) out.push_back(std::move(e));
  events_.clear();
  return true;
}

}  // namespace longctx::server
