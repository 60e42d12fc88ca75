#include "bench_cuda.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "backend/cuda/llama_decode.h"
#include "core/error.h"
#include "core/synthetic_weights.h"

namespace longctx {
namespace {

void check(const cuda::Status& s, const char* what) {
  if (!s.ok()) fail("bench --device cuda: {}: {}", what, s.message());
}

struct CudaCase {
  bool prompt = true;
  int32_t n_tokens = 0, depth = 0;
  std::vector<double> tokens_per_s;
};

}  // namespace

int bench_command_cuda(const BenchOptions& o) {
  if (!o.model.empty() || o.synthetic.empty())
    fail("bench --device cuda runs synthetic weights only for now (--synthetic SHAPE[:SEED], shapes: {}); GGUF "
         "models are not loaded onto the device yet",
         synthetic_shape_names());
  if (o.kv != "full")
    fail("bench --device cuda measures the full cache only (--kv full); compressed caches on the device are measured "
         "by scripts/cuda_device_e2e.sh N:R:kiviB");
  ModelShape shape;
  uint64_t weight_seed = 0;
  std::string shape_error;
  if (!synthetic_shape(o.synthetic, &shape, &weight_seed, &shape_error)) fail("--synthetic: {}", shape_error);
  const std::vector<int32_t> depths = parse_depth_list(o.depths);
  if (o.n_prompt == 0 && o.n_gen == 0) fail("nothing to measure: -p and -n are both 0");
  const int32_t n_test_max = std::max(o.n_prompt, o.n_gen);
  const int32_t depth_max = *std::max_element(depths.begin(), depths.end());
  if (static_cast<int64_t>(depth_max) + n_test_max > shape.n_ctx_train)
    fail("--depth {} plus {} test tokens needs a context of {}, beyond the model's {} tokens", depth_max, n_test_max,
         static_cast<int64_t>(depth_max) + n_test_max, shape.n_ctx_train);

  cuda::DeviceInfo info;
  check(cuda::device_query(&info), "device");
  cuda::LlamaDecodeOptions opt;
  opt.max_context = depth_max + n_test_max + 1;  // + 1: a tg step's own token
  opt.tune_gemms = false;  // the fused path is the default; cuBLASLt's tuning is for the prefill's GEMMs alone
  fmt::print(stderr, "bench: building synthetic {} (seed {}) on {} ({} SMs, {:.1f} GiB), KV store for {} tokens\n",
             shape.name, weight_seed, info.name, info.n_sm, static_cast<double>(info.global_bytes) / (1 << 30),
             opt.max_context);
  const auto t_build = std::chrono::steady_clock::now();
  std::unique_ptr<cuda::LlamaDecoder> dec;
  check(cuda::LlamaDecoder::create(shape, weight_seed, opt, &dec), "building the model");
  fmt::print(stderr, "bench: built in {:.1f}s\n", seconds_since(t_build));
  const cuda::LlamaDecodeBytes bytes = dec->bytes();

  // pp: the prompt through prefill() on an empty cache; tg: n steps (one CUDA graph replay each) after the cache
  // was filled to the depth with synthetic K/V values. prefill() needs an empty cache, so pp runs at depth 0 only.
  auto time_prompt = [&](int32_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = bench_token_id(o.seed, i, shape.n_vocab);
    check(dec->reset(), "reset");
    check(dec->synchronize(), "synchronize");
    const auto t0 = std::chrono::steady_clock::now();
    check(dec->prefill(ids), "prefill");
    return seconds_since(t0);
  };
  auto time_generation = [&](int32_t depth, int32_t n) {
    check(dec->reset(), "reset");
    if (depth > 0) check(dec->fill_kv_synthetic(depth), "filling the cache");
    check(dec->set_token(bench_token_id(o.seed, depth, shape.n_vocab)), "set_token");
    check(dec->synchronize(), "synchronize");
    const auto t0 = std::chrono::steady_clock::now();
    check(dec->step(n), "step");
    check(dec->synchronize(), "synchronize");
    return seconds_since(t0);
  };
  // Warm-up, untimed: captures the step graph and the prefill's GEMM shapes.
  if (o.n_prompt > 0) time_prompt(o.n_prompt);
  time_generation(0, 2);

  std::vector<CudaCase> results;
  for (int32_t d : depths) {
    CudaCase pp{true, o.n_prompt, d, {}}, tg{false, o.n_gen, d, {}};
    const bool run_pp = o.n_prompt > 0 && d == 0;
    if (o.n_prompt > 0 && d > 0)
      fmt::print(stderr, "bench: pp at depth {} skipped: the CUDA backend's prefill needs an empty cache\n", d);
    for (int32_t rep = 0; rep < o.n_reps; ++rep) {  // interleaved, as on the CPU
      if (run_pp) pp.tokens_per_s.push_back(o.n_prompt / time_prompt(o.n_prompt));
      if (o.n_gen > 0) tg.tokens_per_s.push_back(o.n_gen / time_generation(d, o.n_gen));
    }
    for (const CudaCase* r : {&pp, &tg})
      if (!r->tokens_per_s.empty()) results.push_back(*r);
  }
  double copy_bps = 0;
  check(cuda::device_copy_bandwidth(size_t{1} << 30, 10, &copy_bps), "copy bandwidth");

  const std::string model_name = "synthetic " + o.synthetic;
  // A tg step at position p reads every weight once and the K/V of p + 1 slots; the mean over the run's positions.
  auto decode_bytes = [&](const CudaCase& r) {
    return static_cast<double>(bytes.weights_per_token) +
           static_cast<double>(bytes.kv_per_token_per_ctx) * (r.depth + (r.n_tokens + 1) / 2.0);
  };
  auto name = [](const CudaCase& r) { return fmt::format("{}{}", r.prompt ? "pp" : "tg", r.n_tokens); };
  if (o.json) {
    for (const CudaCase& r : results) {
      const RepStats s = summarize_reps(r.tokens_per_s);
      std::string rec = fmt::format(
          "{{\"test\":\"{}\",\"n_prompt\":{},\"n_gen\":{},\"depth\":{},\"tokens_per_s\":{:.4f},\"stddev\":{:.4f},"
          "\"min\":{:.4f},\"max\":{:.4f},\"reps\":{},\"device\":{},\"model\":{},\"kv\":\"full\"",
          name(r), r.prompt ? r.n_tokens : 0, r.prompt ? 0 : r.n_tokens, r.depth, s.median, s.stddev, s.min, s.max,
          s.n, json_quote(info.name), json_quote(model_name));
      if (!r.prompt) {
        const double gbs = decode_bytes(r) * s.median / 1e9;
        rec += fmt::format(",\"gb_per_s\":{:.3f},\"copy_gb_per_s\":{:.3f},\"pct_of_copy\":{:.1f}", gbs,
                           copy_bps / 1e9, 100 * gbs / (copy_bps / 1e9));
      }
      fmt::print("{}}}\n", rec);
    }
    std::fflush(stdout);
    return 0;
  }
  fmt::print("| model | device | kv | test | depth | tok/s | stddev | min .. max | decode GB/s | % of copy |\n");
  fmt::print("|---|---|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (const CudaCase& r : results) {
    const RepStats s = summarize_reps(r.tokens_per_s);
    std::string gb, pct;
    if (!r.prompt) {
      const double gbs = decode_bytes(r) * s.median / 1e9;
      gb = fmt::format("{:.1f}", gbs);
      pct = fmt::format("{:.1f}%", 100 * gbs / (copy_bps / 1e9));
    }
    fmt::print("| {} | {} | full | {} | {} | {:.2f} | {:.2f} | {:.2f} .. {:.2f} | {} | {} |\n", model_name, info.name,
               name(r), r.depth, s.median, s.stddev, s.min, s.max, gb, pct);
  }
  fmt::print("\nmedian of {} reps. pp: prefill() of {} tokens on an empty cache (one forward over all of them, "
             "last row's logits); tg: {} steps, one CUDA graph replay each (greedy argmax on the device), after the "
             "cache was filled to the depth with synthetic K/V values.\n",
             o.n_reps, o.n_prompt, o.n_gen);
  fmt::print("decode GB/s = ({:.2f} GB of weights + K/V read at that depth) per token x tok/s, against a device copy "
             "bandwidth of {:.1f} GB/s (cudaMemcpy of 1 GiB, read + write, best of 10).\n",
             static_cast<double>(bytes.weights_per_token) / 1e9, copy_bps / 1e9);
  return 0;
}

}  // namespace longctx
