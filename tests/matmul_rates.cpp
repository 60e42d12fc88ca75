#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/cpu/matmul.h"
#include "core/thread_pool.h"
#include "random_weights.h"

using namespace longctx;
using test::random_weights;

// The matmul rates on the shapes of the real models: a benchmark, not a test (shared machines drift, so nothing is
// asserted; the figures go to BENCHMARKS.md with this command: build/release/tests/matmul_rates).
// GFLOP/s counts 2 * n_out * n_in * n_tok; weight GB/s the bytes of W read per call. "hot" repeats one matrix,
// which then sits in L2/L3 (the compute rate); "cold" cycles through copies filling 4x a 32 MiB L3, as decode
// streams a whole model from DRAM (the bandwidth a token actually gets). Decode (n_tok 1), a speculative verify step
// or a small batch (n_tok 5: the rows path, weights unpacked once per 4 tokens) and prefill (n_tok 256:
// the f32 panels, and the int8 panels where matmul_quantizes) are timed in every precision.
int main() {
#ifndef NDEBUG
  std::printf("timings of a debug build mean nothing: build the release preset\n");
  return 1;
#endif
  struct Case {
    GgmlType t;
    int64_t n_out, n_in;
    const char* what;
  };
  const Case cases[] = {{GgmlType::Q4_1, 1536, 576, "SmolLM2 ffn_up/gate"},
                        {GgmlType::Q4_1, 576, 1536, "SmolLM2 ffn_down"},
                        {GgmlType::Q8_0, 49152, 576, "SmolLM2 output"},
                        {GgmlType::Q4_K, 640, 2048, "gemma3 attn_output/ffn_down shape"},
                        {GgmlType::Q6_K, 640, 2048, "gemma3 ffn_down"},
                        {GgmlType::Q5_0, 2048, 640, "gemma3 ffn_up/gate"},
                        {GgmlType::Q8_0, 262144, 640, "gemma3 output"}};
  std::printf("SIMD target %s, int8 kernels %s\n", cpu::matmul_target_name(), cpu::matmul_q8_target_name());
  std::mt19937 rng(7);
  const int n_hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto seconds = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (const Case& c : cases) {
    const auto w = random_weights(c.t, c.n_out, c.n_in, rng);
    const size_t n_copies = (128u << 20) / w.size() + 1;
    std::vector<uint8_t> copies(n_copies > 1 ? w.size() * n_copies : 0);  // (n_copies, n_out, row bytes)
    for (size_t i = 0; i < n_copies && n_copies > 1; ++i) std::memcpy(copies.data() + i * w.size(), w.data(), w.size());
    const uint8_t* cold = n_copies > 1 ? copies.data() : w.data();  // a matrix past 128 MiB is cold by itself
    for (int n_threads : {1, n_hw}) {
      ThreadPool pool(n_threads);
      for (auto [n_tok, precision] : {std::pair{int64_t{1}, cpu::MatmulPrecision::Q8Activations},
                                      std::pair{int64_t{1}, cpu::MatmulPrecision::Q16Activations},
                                      std::pair{int64_t{1}, cpu::MatmulPrecision::F32},
                                      std::pair{int64_t{5}, cpu::MatmulPrecision::Q16Activations},
                                      std::pair{int64_t{5}, cpu::MatmulPrecision::F32},
                                      std::pair{int64_t{256}, cpu::MatmulPrecision::F32},
                                      std::pair{int64_t{256}, cpu::MatmulPrecision::Q16Activations},
                                      std::pair{int64_t{256}, cpu::MatmulPrecision::Q8Activations}}) {
        if (n_tok > 1 && c.n_out > 100000) continue;  // prefill never sees the whole vocabulary
        std::vector<float> x(static_cast<size_t>(n_tok * c.n_in)), y(static_cast<size_t>(n_tok * c.n_out));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (auto& v : x) v = normal(rng);
        auto call = [&](const uint8_t* wi) {
          cpu::matmul(pool, c.t, wi, c.n_out, c.n_in, x.data(), n_tok, y.data(), precision);
        };
        call(w.data());  // warm up
        double best = 1e30, total = 0.0;
        for (int rep = 0; rep < 1000 && total < 0.2; ++rep) {
          const double dt = seconds([&] { call(w.data()); });
          best = std::min(best, dt);
          total += dt;
        }
        const double flop = 2.0 * static_cast<double>(c.n_out * c.n_in * n_tok);
        std::printf("%-5s n_out %6lld n_in %5lld n_tok %3lld threads %d %-3s: hot %8.1f us %6.1f GFLOP/s %6.2f GB/s",
                    std::string(ggml_traits(c.t).name).c_str(), static_cast<long long>(c.n_out),
                    static_cast<long long>(c.n_in), static_cast<long long>(n_tok), n_threads,
                    precision == cpu::MatmulPrecision::F32   ? "F32"
                    : precision == cpu::MatmulPrecision::Q8Activations ? "Q8"
                                                                         : "Q16",
                    best * 1e6, flop / best * 1e-9,
                    static_cast<double>(w.size()) / best * 1e-9);
        if (n_tok < 8) {  // decode, a verify step, a small batch
          double dt = 1e30;  // best of 5 passes: a pass is one timing, exposed to other work on the machine
          for (int pass = 0; pass < 5; ++pass)
            dt = std::min(dt, seconds([&] {
                                for (size_t i = 0; i < n_copies; ++i) call(cold + (n_copies > 1 ? i * w.size() : 0));
                              }) / static_cast<double>(n_copies));
          std::printf(" | cold %7.1f us %6.2f GB/s", dt * 1e6, static_cast<double>(w.size()) / dt * 1e-9);
        }
        std::printf("  (%s)\n", c.what);
      }
    }
  }
  return 0;
}
