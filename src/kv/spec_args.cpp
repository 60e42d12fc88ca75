#include "kv/spec_args.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "core/error.h"

namespace longctx::kv {

namespace {
std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "(none)" : s;
}
}  // namespace

SpecArgs::SpecArgs(const std::string& component, std::vector<std::string> valid_keys)
    : component_(component), valid_(std::move(valid_keys)) {
  const auto colon = component.find(':');
  name_ = component.substr(0, colon);
  if (colon == std::string::npos) return;
  const std::string args = component.substr(colon + 1);
  size_t start = 0;
  while (start <= args.size()) {
    const size_t end = std::min(args.find(',', start), args.size());
    const std::string kv = args.substr(start, end - start);
    const auto eq = kv.find('=');
    if (kv.empty() || eq == std::string::npos || eq == 0 || eq + 1 == kv.size())
      fail("bad argument '{}' in --kv component '{}': write key=value; valid keys for {}: {}", kv, component_, name_,
           join(valid_));
    const std::string key = kv.substr(0, eq);
    if (std::find(valid_.begin(), valid_.end(), key) == valid_.end())
      fail("unknown key '{}' in --kv component '{}'; valid keys for {}: {}", key, component_, name_, join(valid_));
    if (values_.count(key)) fail("key '{}' given twice in --kv component '{}'", key, component_);
    values_[key] = kv.substr(eq + 1);
    start = end + 1;
  }
}

void SpecArgs::bad(const std::string& key, const std::string& why) const {
  fail("bad value '{}' for {} in --kv component '{}': {}", values_.at(key), key, component_, why);
}

int32_t SpecArgs::get_int(const std::string& key, int32_t fallback, int32_t min, int32_t max) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (errno != 0 || end == it->second.c_str() || *end != '\0') bad(key, "not an integer");
  if (v < min || v > max) bad(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return static_cast<int32_t>(v);
}

double SpecArgs::get_float(const std::string& key, double fallback, double min, double max) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(it->second.c_str(), &end);
  if (errno != 0 || end == it->second.c_str() || *end != '\0') bad(key, "not a number");
  if (!(v >= min && v <= max)) bad(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return v;
}

std::string SpecArgs::get_string(const std::string& key, const std::string& fallback) const {
  auto it = values_.find(key);
  return it == values_.end() ? fallback : it->second;
}

std::vector<std::string> split_spec(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(sep, start);
    out.push_back(s.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return out;
    start = at + 1;
  }
}

}  // namespace longctx::kv
