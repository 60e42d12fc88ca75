// `longctx plan`: the analytic cost model (src/plan) for a model, contexts, KV policies and a machine: memory,
// concurrency, prefill, time to first token and decode speed per policy, with the assumptions it rests on.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace longctx {

struct PlanCommandOptions {
  std::string model;                     // a GGUF file, or
  std::string shape;                     // a named shape (plan_shape_names)
  std::string weights = "bf16";          // the shape's weight format
  std::string device = "cpu";            // device_by_name
  bool measure = false;                  // probe this machine's CPU kernels instead of the committed figures
  std::string rates;                     // --rates FILE: the CPU's rates from a probe's JSON instead
  int32_t n_threads = 0;                 // for --measure; 0: every core
  std::string contexts = "4096,32768";   // comma-separated; a k suffix is x1024
  std::vector<std::string> kv_specs;     // --kv, repeatable; none: full
  int64_t concurrency = 0;
  double memory_gib = 0;
  bool peak = false;                     // 100% of the device's rates (the paper's theoretical peak)
  std::string spec;                      // --spec self[:gamma=N,draft=SPEC][,accept=A]
  bool json = false;
};

CLI::App* add_plan_subcommand(CLI::App& app, PlanCommandOptions& o);
// Throws Error for bad input: neither or both of -m and --shape, a missing model, an unknown shape, device or
// weight format, a bad context list, --measure or --rates for a device other than cpu (or both), a rates file that
// cannot be read, a bad --kv or --spec.
int plan_command(const PlanCommandOptions& o);

// "4096,32k,50000" -> {4096, 32768, 50000}; throws Error naming the bad entry.
std::vector<int64_t> parse_context_list(const std::string& s);

}  // namespace longctx
