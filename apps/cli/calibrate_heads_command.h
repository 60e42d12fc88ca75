// `longctx calibrate-heads`: finds the retrieval heads of a model without training and writes the roles file that
// `--kv heads:file=...` reads. Two methods: RazorAttention's echo and induction scores (src/kv/head_calibration.h)
// and DuoAttention's question asked forward-only, each head's effect on a passkey answer when it alone is
// streaming (src/kv/duo_head_scores.h, src/eval/duo_calibration.h).
#pragma once
#include <cstdint>
#include <string>

#include "backend/backend.h"

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
  // duo (the default): on SmolLM2 at 4K its heads kept the full cache's needle/multikey answers in 14 of 14 cases,
  // razor's at the same count (23 of 90) in 6; razor takes seconds instead of minutes.
  std::string method = "duo";
  int32_t length = -1;           // razor: tokens in one copy of the random sequence (256); duo: of each prompt (2048)
  uint64_t seed = 1;
  double fraction = 0.15;        // of all (layer, kv-head), kept by induction (razor) or duo score
  int32_t count = -1;            // >= 0: this many by induction score instead of --fraction
  double echo_fraction = 0.01;   // razor: of all heads, kept by echo score besides (at least one when > 0)
  // duo only
  std::string task = "passkey";  // the prompts' task (passkey, needle, multikey, kvret)
  int32_t n_prompts = 4;
  int32_t sink = 4, window = 256;  // what a streaming head keeps while it is measured (the heads policy's defaults)
  std::string score = "kl";        // kl or answer (kv::DuoScore)
  std::string haystack = "data/kjv.txt";  // needle tasks only
  int32_t n_threads = 0;
  std::string device = "auto";  // --device (device_option.h)
};

CLI::App* add_calibrate_heads_subcommand(CLI::App& app, CalibrateHeadsOptions& o);
int calibrate_heads_command(const CalibrateHeadsOptions& o);

// The scoring pass alone, for tests: runs the repeated sequence through the model and returns the scores.
kv::HeadCalibration calibrate_heads(const Model& model, ThreadPool& pool, Device device, int32_t length,
                                    uint64_t seed);

}  // namespace longctx
