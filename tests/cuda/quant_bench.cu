// Decode GEMV over GGUF weight formats on the device (backend/cuda/quant.h) against the memory roofline, measured in
// one run (DESIGN.md, Benchmarking):
//   copy:  cudaMemcpy device to device, bytes read plus written over time (device_copy_bandwidth);
//   read:  a kernel that only reads (bench_util.cuh's read_only), bytes over time;
//   gemv:  quant_gemv on the Llama-3-8B shapes (4096 x 4096, 1024 x 4096, 14336 x 4096, 4096 x 14336, 128256 x
//          4096) in Q8_0, Q4_K, Q6_K and BF16, the other formats on 14336 x 4096, and the bf16 fused GEMV of the
//          decode step (gemv.cu) on the same bytes; weight bytes over the median time of CUDA-graph replays,
//          rotating over enough copies of the matrix (>= 256 MB) that none is served from L2;
//   dequant: dequantize_bf16 of a whole 14336 x 4096 matrix, bytes read plus written over time.
//   rows:  (with the argument `rows`, alone) quant_gemv over 2, 4 and 8 rows of x in one call against one call a
//          row, on three of the shapes in Q8_0, Q4_K and BF16 (MB: the weight bytes read, once or once a row).
// Usage: quant_bench [out.jsonl] [rows]   (a table on stdout, printed last)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/quant.h"
#include "bench_util.cuh"
#include "quant_reference.h"

namespace lc = longctx::cuda;
namespace qr = longctx::quant_ref;
using longctx::GgmlType;
using namespace longctx::cuda_bench;

namespace {

FILE* g_json = nullptr;

struct Row {
  std::string what, shape, fmt;
  double mb = 0, us = 0, gbs = 0, of_copy = 0, of_read = 0;
};
std::vector<Row> g_rows;
double g_copy = 0, g_read = 0;  // bytes per second

// The matrix in `n_copies` device copies, every row random valid blocks (a pattern of up to 1024 distinct rows,
// repeated: what is read does not change the time, only that it is not zeros and not in L2).
struct Weights {
  std::vector<void*> copies;
  size_t bytes = 0;
  Weights(GgmlType t, int n_out, int n_in, std::mt19937_64& rng) {
    const size_t rb = qr::row_bytes(t, n_in);
    bytes = rb * n_out;
    const int n_copies = static_cast<int>(std::clamp<size_t>((size_t{256} << 20) / bytes + 1, 1, 128));
    const int pattern_rows = std::min(n_out, 1024);
    const std::vector<uint8_t> pattern = qr::random_rows(t, pattern_rows, n_in, rng);
    for (int c = 0; c < n_copies; ++c) {
      void* p = nullptr;
      CS(lc::device_alloc(&p, bytes));
      if (c == 0) {
        for (int r = 0; r < n_out; r += pattern_rows) {
          const int n = std::min(pattern_rows, n_out - r);
          CK(cudaMemcpy(static_cast<uint8_t*>(p) + rb * r, pattern.data(), rb * n, cudaMemcpyHostToDevice));
        }
      } else {
        CK(cudaMemcpy(p, copies[0], bytes, cudaMemcpyDeviceToDevice));
      }
      copies.push_back(p);
    }
  }
  ~Weights() {
    for (void* p : copies) lc::device_free(p);
  }
};

int steps_for(size_t bytes, int n_copies) {  // launches per graph: ~2 ms of work, every copy at least once
  const double est_us = static_cast<double>(bytes) / 3e12 * 1e6 + 4.0;
  return std::max(n_copies, std::clamp(static_cast<int>(2000.0 / est_us), 8, 512));
}

void add_row(const std::string& what, const std::string& shape, const std::string& fmt, size_t bytes, double us) {
  Row r{what, shape, fmt, bytes / 1e6, us, bytes / (us * 1e-6) / 1e9, 0, 0};
  r.of_copy = r.gbs * 1e9 / g_copy;
  r.of_read = r.gbs * 1e9 / g_read;
  g_rows.push_back(r);
  std::printf("%-8s %-14s %-10s %9.2f MB %9.2f us %8.1f GB/s %6.1f%% of copy %6.1f%% of read\n", what.c_str(),
              shape.c_str(), fmt.c_str(), r.mb, us, r.gbs, 100 * r.of_copy, 100 * r.of_read);
  if (g_json)
    std::fprintf(g_json,
                 "{\"bench\":\"quant_%s\",\"shape\":\"%s\",\"format\":\"%s\",\"bytes\":%zu,\"us\":%.3f,\"gb_s\":%.2f,"
                 "\"of_copy\":%.4f,\"of_read\":%.4f}\n",
                 what.c_str(), shape.c_str(), fmt.c_str(), bytes, us, r.gbs, r.of_copy, r.of_read);
}

std::string shape_name(int n_out, int n_in) { return std::to_string(n_out) + "x" + std::to_string(n_in); }

void bench_gemv(cudaStream_t st, GgmlType t, int n_out, int n_in, std::mt19937_64& rng, const void* x, float* y,
                bool also_fused_bf16) {
  Weights w(t, n_out, n_in, rng);
  const int n_copies = static_cast<int>(w.copies.size());
  const int steps = steps_for(w.bytes, n_copies);
  lc::QuantGemvArgs a;
  a.type = t, a.n_out = n_out, a.n_in = n_in, a.x_bf16 = x, a.y = y, a.w = w.copies[0];
  CS(lc::quant_gemv(a, st));  // outside the graph: the first call sets the instance's shared-memory limit
  CK(cudaStreamSynchronize(st));
  const double us = time_graph(st, steps, 20, [&](int i) {
    a.w = w.copies[i % n_copies];
    CS(lc::quant_gemv(a, st));
  });
  add_row("gemv", shape_name(n_out, n_in), qr::name(t), w.bytes, us);
  if (also_fused_bf16) {  // the decode step's bf16 GEMV (gemv.cu) on the same matrices
    lc::GemvArgs g;
    g.n_out = n_out, g.n_in = n_in, g.x_bf16 = x, g.y = y, g.epilogue = lc::GemvEpilogue::Store;
    const double us2 = time_graph(st, steps, 20, [&](int i) {
      g.w = w.copies[i % n_copies];
      CS(lc::gemv(g, st));
    });
    add_row("gemv", shape_name(n_out, n_in), "bf16-fused", w.bytes, us2);
  }
}

// Several rows of x (the server's stacked decode steps): one call for all rows (the weights read once) against one
// call per row, the time per call and the weight bytes over it.
void bench_rows(cudaStream_t st, GgmlType t, int n_out, int n_in, int n_rows, std::mt19937_64& rng, const void* x,
                float* y) {
  Weights w(t, n_out, n_in, rng);
  const int n_copies = static_cast<int>(w.copies.size());
  const int steps = steps_for(w.bytes, n_copies);
  lc::QuantGemvArgs a;
  a.type = t, a.n_out = n_out, a.n_in = n_in, a.x_bf16 = x, a.y = y, a.w = w.copies[0], a.n_rows = n_rows;
  CS(lc::quant_gemv(a, st));
  CK(cudaStreamSynchronize(st));
  const double us = time_graph(st, steps, 20, [&](int i) {
    a.w = w.copies[i % n_copies];
    CS(lc::quant_gemv(a, st));
  });
  const std::string shape = shape_name(n_out, n_in) + " x" + std::to_string(n_rows);
  add_row("rows", shape, qr::name(t), w.bytes, us);
  const double us_each = time_graph(st, steps, 20, [&](int i) {
    lc::QuantGemvArgs one = a;
    one.w = w.copies[i % n_copies];
    one.n_rows = 1;
    for (int r = 0; r < n_rows; ++r) {
      one.x_bf16 = static_cast<const uint16_t*>(x) + static_cast<size_t>(r) * n_in;
      one.y = y + static_cast<size_t>(r) * n_out;
      CS(lc::quant_gemv(one, st));
    }
  });
  add_row("row-each", shape, qr::name(t), w.bytes * n_rows, us_each);
}

void bench_dequant(cudaStream_t st, GgmlType t, int n_out, int n_in, std::mt19937_64& rng) {
  Weights w(t, n_out, n_in, rng);
  void* out = nullptr;
  CS(lc::device_alloc(&out, static_cast<size_t>(n_out) * n_in * 2));
  const int n_copies = static_cast<int>(w.copies.size());
  const double us = time_graph(st, std::max(n_copies, 8), 10, [&](int i) {
    CS(lc::dequantize_bf16(t, w.copies[i % n_copies], n_in, 0, n_out, out, 0, st));
  });
  add_row("dequant", shape_name(n_out, n_in), qr::name(t), w.bytes + static_cast<size_t>(n_out) * n_in * 2, us);
  lc::device_free(out);
}

}  // namespace

int main(int argc, char** argv) {
  const DeviceInfo info = device_or_skip();
  std::printf("device: %s, %d SMs, L2 %.0f MB\n", info.name.c_str(), info.n_sm, info.l2_bytes / 1e6);
  if (argc > 1) g_json = std::fopen(argv[1], "w");
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  CS(lc::device_copy_bandwidth(size_t{2} << 30, 5, &g_copy));
  {  // the read-only ceiling over 2 GiB
    const size_t bytes = size_t{2} << 30;
    void* buf = nullptr;
    uint32_t* sink = nullptr;
    CS(lc::device_alloc(&buf, bytes));
    CS(lc::device_alloc(reinterpret_cast<void**>(&sink), 4));
    fill_random<<<1024, 256, 0, st>>>(static_cast<uint16_t*>(buf), bytes / 2, 7, 1);
    const double us = time_graph(st, 4, 10, [&](int) {
      read_only<<<info.n_sm * 8, 512, 0, st>>>(static_cast<const uint4*>(buf), bytes / 16, sink);
    });
    g_read = bytes / (us * 1e-6);
    lc::device_free(buf);
    lc::device_free(sink);
  }
  std::printf("copy %.3f TB/s (read + write counted), read-only %.3f TB/s\n", g_copy / 1e12, g_read / 1e12);
  if (g_json) std::fprintf(g_json, "{\"bench\":\"ceilings\",\"copy_tb_s\":%.4f,\"read_tb_s\":%.4f}\n", g_copy / 1e12, g_read / 1e12);

  std::mt19937_64 rng(7);
  const bool rows_only = argc > 2 && std::string(argv[2]) == "rows";
  const int kMaxIn = 14336, kRows = 8;
  void* x = nullptr;
  float* y = nullptr;
  CS(lc::device_alloc(&x, kRows * kMaxIn * 2));
  CS(lc::device_alloc(reinterpret_cast<void**>(&y), kRows * 128256 * 4));
  {
    std::vector<uint16_t> hx(kRows * kMaxIn);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& v : hx) v = qr::bf16_bits(u(rng));
    CS(lc::copy_to_device(x, hx.data(), hx.size() * 2));
  }

  const std::pair<int, int> shapes[] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
  if (rows_only) {
    for (const auto& [n_out, n_in] : {shapes[0], shapes[2], shapes[3]})
      for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::BF16})
        for (int n_rows : {2, 4, 8}) bench_rows(st, t, n_out, n_in, n_rows, rng, x, y);
  }
  for (const auto& [n_out, n_in] : rows_only ? std::vector<std::pair<int, int>>{} : std::vector(std::begin(shapes), std::end(shapes)))
    for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::BF16})
      bench_gemv(st, t, n_out, n_in, rng, x, y, t == GgmlType::BF16);
  if (!rows_only) {
    for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_K, GgmlType::F16, GgmlType::F32})
      bench_gemv(st, t, 14336, 4096, rng, x, y, false);
    for (GgmlType t : {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K}) bench_dequant(st, t, 14336, 4096, rng);
  }

  std::printf("\nquant GEMV, batch 1, x bf16, y f32 (copy %.3f TB/s, read-only %.3f TB/s in this run)\n",
              g_copy / 1e12, g_read / 1e12);
  std::printf("| what | shape (n_out x n_in) | format | MB | us | GB/s | of copy | of read-only |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : g_rows)
    std::printf("| %s | %s | %s | %.1f | %.2f | %.0f | %.0f%% | %.0f%% |\n", r.what.c_str(), r.shape.c_str(),
                r.fmt.c_str(), r.mb, r.us, r.gbs, 100 * r.of_copy, 100 * r.of_read);
  lc::device_free(x);
  lc::device_free(y);
  if (g_json) std::fclose(g_json);
  return 0;
}
