// The key=value arguments of one --kv component, with typed reads that name the component and the valid keys
// in their errors, and a check that every given key was understood.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace longctx::kv {

// One argument a --kv component takes, as its registry entry lists it for --help.
struct SpecArg {
  std::string name;
  std::string fallback;  // the default as --help shows it; empty when the argument is required
  std::string help;
};

class SpecArgs {
 public:
  // component: "snapkv:budget=1024,window=32"; valid_keys: what this component takes.
  SpecArgs(const std::string& component, std::vector<std::string> valid_keys);
  const std::string& name() const { return name_; }
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  int32_t get_int(const std::string& key, int32_t fallback, int32_t min, int32_t max) const;
  double get_float(const std::string& key, double fallback, double min, double max) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;

 private:
  [[noreturn]] void bad(const std::string& key, const std::string& why) const;
  std::string component_, name_;
  std::vector<std::string> valid_;
  std::map<std::string, std::string> values_;
};

// The parts of a spec between separators ('+' between components, ',' between arguments), empty parts kept.
std::vector<std::string> split_spec(const std::string& s, char sep);

}  // namespace longctx::kv
