// `longctx bench`: prompt processing (pp N) and generation (tg N) speed at given context depths, like llama-bench,
// with decode's achieved memory bandwidth beside the machine's copy bandwidth (DESIGN.md, Benchmarking).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace CLI {
class App;
}

namespace longctx {

class Model;
struct ModelConfig;
namespace kv {
class KvPagePool;
class KvSequence;
}  // namespace kv

struct BenchOptions {
  std::string model;          // a GGUF file, or (exactly one of the two)
  std::string synthetic;      // a synthetic model: "llama3-8b[:SEED]" or "tiny[:SEED]" (Model::synthetic)
  int32_t n_prompt = 512;     // pp N: tokens prefilled in one timed run; 0 skips the pp test
  int32_t n_gen = 128;        // tg N: tokens generated one at a time in one timed run; 0 skips the tg test
  std::string depths = "0";   // comma-separated tokens already in the cache before each test
  int32_t n_threads = 0;      // 0: every core
  int32_t n_reps = 5;
  int32_t n_batch = 512;      // most tokens per forward, for pp and for filling the depth
  std::string kv = "full";
  uint64_t seed = 1;          // of the token ids
  bool json = false;
  std::string device = "auto";  // --device (device_option.h)
  std::string spec;            // --spec self[:...]: plain decode against speculative decode (bench_spec.cpp)
  std::string file;            // --spec: the depth's context is this text, cycled (else the fixed ids)
};

// Adds the `bench` subcommand to the app, its options bound to o (which must outlive parsing).
CLI::App* add_bench_subcommand(CLI::App& app, BenchOptions& o);
// Runs it; throws Error for bad input (missing model, both or neither of -m and --synthetic, a bad synthetic shape,
// bad --depth, a depth beyond the model's context, --device cuda in a build without the CUDA backend).
int bench_command(const BenchOptions& o);
// bench --spec (bench_spec.cpp): greedy decode plain against speculative at each depth, interleaved; the speed-up,
// acceptance, tokens per verify step, the draft's share of time, and whether the tokens are identical.
int bench_spec_command(const BenchOptions& o);

// ---- pieces of bench, exposed for tests ----

// "0,2048,8192" -> {0, 2048, 8192}. Throws Error naming the bad entry for an empty list, an empty entry, a sign,
// a non-digit or a number past 2^31.
std::vector<int32_t> parse_depth_list(const std::string& s);

// Summary of one case's repetitions (tokens/s of each).
struct RepStats {
  int32_t n = 0;
  double median = 0;
  double mean = 0;
  double stddev = 0;  // sample standard deviation (n - 1); 0 for a single repetition
  double min = 0;
  double max = 0;
};
RepStats summarize_reps(const std::vector<double>& samples);  // throws Error when empty

// The token fed at position pos: a fixed pseudo-random id in [0, n_vocab) (splitmix64 of seed + pos), so every run,
// and scripts/bench_peer.py on the llama.cpp side, feeds the same ids.
int32_t bench_token_id(uint64_t seed, int64_t pos, int32_t n_vocab);

// Bytes of weights one decode step reads: every layer matrix and norm, the output head and one embedding row.
int64_t weight_bytes_per_token(const Model& model);

// KV bytes a query at query_pos reads from seq: every held slot it may attend to (position <= query_pos, and within
// the sliding window on local layers), at the bytes per slot of its page's format. The query's own key and value
// count when they are already in seq.
int64_t kv_bytes_read(const kv::KvSequence& seq, const kv::KvPagePool& pool, const ModelConfig& c, int32_t query_pos);

// Seconds of wall time since t0.
double seconds_since(std::chrono::steady_clock::time_point t0);

// A JSON string literal: quotes, backslashes and control characters escaped.
std::string json_quote(std::string_view s);

// Peak resident set size of this process (VmHWM of /proc/self/status) in bytes; 0 where unavailable.
int64_t peak_rss_bytes();

}  // namespace longctx
