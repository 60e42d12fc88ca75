// `longctx calibrate-heads`: finds the retrieval heads of a model without training (RazorAttention's echo and
// induction scores, src/kv/head_calibration.h) and writes the roles file that `--kv heads:file=...` reads.
#pragma once
#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace longctx {

class Model;
class ThreadPool;
namespace kv {
class HeadCalibration;
}

struct CalibrateHeadsOptions {
  std::string model;
  std::string out;
  int32_t length = 256;          // tokens in one copy of the random sequence
  uint64_t seed = 1;
  double fraction = 0.15;        // of all (layer, kv-head), kept by induction score
  int32_t count = -1;            // >= 0: this many by induction score instead of --fraction
  double echo_fraction = 0.01;   // of all heads, kept by echo score besides (at least one when > 0)
  int32_t n_threads = 0;
};

CLI::App* add_calibrate_heads_subcommand(CLI::App& app, CalibrateHeadsOptions& o);
int calibrate_heads_command(const CalibrateHeadsOptions& o);

// The scoring pass alone, for tests: runs the repeated sequence through the model and returns the scores.
kv::HeadCalibration calibrate_heads(const Model& model, ThreadPool& pool, int32_t length, uint64_t seed);

}  // namespace longctx
