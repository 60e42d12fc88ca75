// Errors that reach the user: one clear line, raised where the fault is found and caught at the app layer.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace longctx {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace longctx
