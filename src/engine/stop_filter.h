// Streams generated text while holding back any tail that might still grow into a stop string; shared by the
// plain decode loop (generator.cpp) and the speculative one (speculative.cpp).
#pragma once
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "engine/generator.h"

namespace longctx {

// Streams text while holding back any tail that might still grow into a stop string.
class StopFilter {
 public:
  explicit StopFilter(const std::vector<std::string>& stop) : stop_(stop) {}
  // Adds text; emits what is final. Returns true when a stop string was found (text before it is emitted).
  bool push(std::string_view text, const TextFn& emit, bool& keep_going) {
    pending_ += text;
    for (const auto& s : stop_) {
      const auto at = s.empty() ? std::string::npos : pending_.find(s);
      if (at != std::string::npos) {
        if (at > 0) keep_going = emit(std::string_view(pending_).substr(0, at));
        pending_.clear();
        return true;
      }
    }
    size_t hold = 0;
    for (const auto& s : stop_)
      for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
        if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    if (pending_.size() > hold) {
      keep_going = emit(std::string_view(pending_).substr(0, pending_.size() - hold));
      pending_.erase(0, pending_.size() - hold);
    }
    return false;
  }
  void flush(const TextFn& emit) {
    if (!pending_.empty()) emit(pending_);
    pending_.clear();
  }

 private:
  const std::vector<std::string>& stop_;
  std::string pending_;
};

}  // namespace longctx
