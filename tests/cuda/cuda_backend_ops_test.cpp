// CudaBackend (src/backend/cuda/cuda_engine.h): every op of the backend interface on the GPU against the CPU backend's
// kernels on the same inputs, the way ggml's test-backend-ops checks a backend against the CPU. Outputs are poisoned
// with NaN first, so an unwritten element fails. Exit code 77 (CTest's skip) when no GPU is present.
//
// Tolerances (|gpu - cpu| <= atol + rtol |cpu| unless said):
//   exact: embedding (the same f32 dequantization and one product), add_in_place, every KV page byte written by
//     write_rows / write_page_rows_host / compact (F16 rounds to nearest even on both), the host page reads.
//   rmsnorm: rtol 1e-6 (the same f32 products; the double sum of squares in another order).
//   rope: atol 1e-6, rtol 1e-6 (the same f32 rotation; cos and sin in double on both, rounded to f32).
//   gated activations: atol 1e-5, rtol 1e-5 (CUDA's expf / tanhf against Highway's, a few ulp each).
//   matmul, against cpu::matmul_reference (double), bounded by S = sum_k |w_k x_k| of the output: the f32 GEMV of
//     Q5_0/Q5_1 at <= 8 rows 1e-5 S (f32 sums); the quantized GEMV at <= 8 rows 4e-3 S (x rounded to bf16: 2^-9
//     relative per element, plus f32 sums); the bf16 GEMM above 8 rows 8e-3 S (x and W each rounded to bf16).
//   attention, against cpu::attention_reference (double): atol 2e-5, rtol 1e-4 (f32 scores, softmax and sums; KIVI
//     pages decode to the same f32 values on both).
//   attention of a prompt chunk over one run of positions (the tensor-core path): atol 2e-3, rtol 2e-3 (q, P and the
//     output rounded to f16).
//   attention_scores, against cpu::attention_scores_reference (double): atol 1e-5 (each probability's f32 error is
//     ~1e-7; at most 8 rows x 4 heads are summed).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/kv_page_codec.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "backend/cpu/quant.h"
#include "backend/cuda/cuda_engine.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "cuda_test_util.h"

namespace {

using namespace longctx;

ThreadPool& pool() {
  static ThreadPool p(1);
  return p;
}
std::unique_ptr<Backend> g_backend;  // made on first use, released before main returns (while CUDA is up)
Backend& gpu() {
  if (!g_backend) g_backend = make_cuda_backend(pool());
  return *g_backend;
}

Backend::Floats upload(const std::vector<float>& v) {
  Backend::Floats f = gpu().alloc_floats(v.size());
  gpu().to_backend(f.get(), v.data(), v.size() * sizeof(float));
  return f;
}
Backend::Floats poisoned(size_t n) { return upload(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN())); }
std::vector<float> download(const float* p, size_t n) {
  std::vector<float> v(n);
  gpu().to_host(v.data(), p, n * sizeof(float));
  return v;
}
std::vector<float> random_vec(size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Every element within atol + rtol |want| (NaN fails); prints the first miss and the count.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= atol + rtol * std::fabs(static_cast<double>(want[i])))) {
      if (bad++ == 0) first = i;
    } else {
      worst = std::max(worst, e);
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " outside tolerance; first at " << first
                     << ": got " << got[first] << " want " << want[first];
}

// ---------------------------------------------------------------------------------------------------------------
// Weights: random rows of valid blocks in every format the GPU reads.

const std::vector<GgmlType> kFormats = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                                        GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                                        GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

std::string fmt_name(GgmlType t) { return std::string(ggml_traits(t).name); }

// Random codes and scale bytes; f16 scales over several octaves, both signs where the format allows, so every value
// is finite; float formats with values in [-2, 2].
std::vector<uint8_t> random_weight(GgmlType t, int64_t n_out, int64_t n_in, std::mt19937_64& rng) {
  const auto tr = ggml_traits(t);
  std::vector<uint8_t> w(static_cast<size_t>(n_out) * ggml_row_bytes(t, n_in));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : w) b = static_cast<uint8_t>(byte(rng));
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f), octave(-10.0f, -4.0f);
  auto put_f16 = [&](uint8_t* p, bool sign) {
    float v = std::exp2(octave(rng));
    if (sign && unit(rng) < 0) v = -v;
    const uint16_t h = f32_to_fp16(v);
    std::memcpy(p, &h, 2);
  };
  const size_t bb = tr.block_bytes;
  for (size_t i = 0; i < w.size() / bb; ++i) {
    uint8_t* b = w.data() + i * bb;
    switch (t) {
      case GgmlType::F32: {
        const float v = 2.0f * unit(rng);
        std::memcpy(b, &v, 4);
        break;
      }
      case GgmlType::F16: {
        const uint16_t h = f32_to_fp16(2.0f * unit(rng));
        std::memcpy(b, &h, 2);
        break;
      }
      case GgmlType::BF16: {
        const uint16_t h = cuda_test::to_bits(2.0f * unit(rng), cuda::KvDtype::BF16);
        std::memcpy(b, &h, 2);
        break;
      }
      case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: put_f16(b, true); break;
      case GgmlType::Q4_1: case GgmlType::Q5_1: put_f16(b, true), put_f16(b + 2, true); break;
      case GgmlType::Q4_K: case GgmlType::Q5_K: put_f16(b, false), put_f16(b + 2, false); break;
      case GgmlType::Q6_K: put_f16(b + 208, true); break;
      default: break;
    }
  }
  return w;
}

// The backend finds a prepared copy by the host address of its bytes, so every weight a test prepares lives until the
// end of the run (a freed buffer's address could come back for the next weight).
struct HostWeight;
std::vector<std::unique_ptr<HostWeight>>& kept_weights() {
  static std::vector<std::unique_ptr<HostWeight>> w;
  return w;
}

struct HostWeight {
  std::vector<uint8_t> bytes;
  Weight w;
  HostWeight(GgmlType t, int64_t n_out, int64_t n_in, std::mt19937_64& rng)
      : bytes(random_weight(t, n_out, n_in, rng)) {
    w.type = t;
    w.data = bytes.data();
    w.n_out = n_out;
    w.n_in = n_in;
  }
};

// ---------------------------------------------------------------------------------------------------------------

TEST(CudaBackendOps, Factory) {
  std::string why = "unset";
  EXPECT_TRUE(cuda_device_usable(&why));  // main() skipped the run without a GPU
  EXPECT_EQ(why, "unset");
  EXPECT_STREQ(gpu().name(), "cuda");
}

TEST(CudaBackendOps, RmsNorm) {
  std::mt19937_64 rng(1);
  static std::vector<std::vector<float>> norms;  // alive for the run, as the weights
  norms.reserve(4);
  for (int32_t dim : {64, 576, 640, 2048}) {
    const int64_t rows = 5;
    const std::vector<float> x = random_vec(rows * dim, -3.0f, 3.0f, rng);
    norms.push_back(random_vec(dim, -2.0f, 2.0f, rng));
    const std::vector<float>& w = norms.back();
    gpu().prepare({}, {&w});
    std::vector<float> ref(x.size());
    cpu::rmsnorm(x.data(), w.data(), ref.data(), rows, dim, 1e-6f);
    Backend::Floats dx = upload(x), dy = poisoned(x.size());
    gpu().rmsnorm(dx.get(), w, dy.get(), rows, dim, 1e-6f);
    expect_close(download(dy.get(), x.size()), ref, 0, 1e-6, "rmsnorm dim " + std::to_string(dim));
    gpu().rmsnorm(dx.get(), w, dx.get(), rows, dim, 1e-6f);  // in place
    expect_close(download(dx.get(), x.size()), ref, 0, 1e-6, "rmsnorm in place dim " + std::to_string(dim));
  }
}

TEST(CudaBackendOps, Rope) {
  std::mt19937_64 rng(2);
  const std::vector<int32_t> pos = {0, 1, 7, 4095, 100000, 131071};
  const int32_t n = static_cast<int32_t>(pos.size()), heads = 3;
  for (int32_t hd : {64, 128, 256})
    for (int32_t n_rot : {hd, hd / 2})
      for (RopeOrder order : {RopeOrder::Adjacent, RopeOrder::Halves})
        for (float base : {10000.0f, 1000000.0f}) {
          const std::vector<float> x = random_vec(static_cast<size_t>(n) * heads * hd, -2.0f, 2.0f, rng);
          std::vector<float> ref = x;
          cpu::rope(ref.data(), pos.data(), n, heads, hd, n_rot, base,
                    order == RopeOrder::Adjacent ? cpu::RopeOrder::Adjacent : cpu::RopeOrder::Halves);
          Backend::Floats dx = upload(x);
          gpu().rope(dx.get(), pos.data(), n, heads, hd, n_rot, base, order);
          expect_close(download(dx.get(), x.size()), ref, 1e-6, 1e-6,
                       "rope hd " + std::to_string(hd) + " n_rot " + std::to_string(n_rot) +
                           (order == RopeOrder::Adjacent ? " adjacent" : " halves") + " base " + std::to_string(base));
        }
}

TEST(CudaBackendOps, GatedActivation) {
  std::mt19937_64 rng(3);
  const size_t n = 10000;
  for (GatedActivation act : {GatedActivation::SiLU, GatedActivation::GeluTanh}) {
    std::vector<float> g = random_vec(n, -20.0f, 20.0f, rng);
    g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f, g[3] = -95.0f;
    const std::vector<float> up = random_vec(n, -2.0f, 2.0f, rng);
    std::vector<float> ref = g;
    cpu::gated_activation(ref.data(), up.data(), static_cast<int64_t>(n),
                          act == GatedActivation::SiLU ? cpu::GatedActivation::SiLU : cpu::GatedActivation::GeluTanh);
    Backend::Floats dg = upload(g), du = upload(up);
    gpu().gated_activation(dg.get(), du.get(), static_cast<int64_t>(n), act);
    expect_close(download(dg.get(), n), ref, 1e-5, 1e-5, act == GatedActivation::SiLU ? "silu" : "gelu_tanh");
  }
}

TEST(CudaBackendOps, AddInPlace) {
  std::mt19937_64 rng(4);
  const size_t n = 3001;
  const std::vector<float> x = random_vec(n, -5.0f, 5.0f, rng), y = random_vec(n, -5.0f, 5.0f, rng);
  std::vector<float> ref = x;
  cpu::add_in_place(ref.data(), y.data(), static_cast<int64_t>(n));
  Backend::Floats dx = upload(x), dy = upload(y);
  gpu().add_in_place(dx.get(), dy.get(), static_cast<int64_t>(n));
  expect_close(download(dx.get(), n), ref, 0, 0, "add_in_place");
}

TEST(CudaBackendOps, EmbedEveryFormat) {
  std::mt19937_64 rng(5);
  const int64_t vocab = 100, dim = 512;
  const std::vector<int32_t> tokens = {5, 0, 99, 42, 5};
  for (GgmlType t : kFormats) {
    kept_weights().push_back(std::make_unique<HostWeight>(t, vocab, dim, rng));
    const HostWeight& hw = *kept_weights().back();
    gpu().prepare({&hw.w}, {});
    for (float scale : {1.0f, std::sqrt(640.0f)}) {
      std::vector<float> ref(tokens.size() * dim);
      for (size_t i = 0; i < tokens.size(); ++i) {
        cpu::dequantize_row(t, hw.bytes.data() + static_cast<size_t>(tokens[i]) * ggml_row_bytes(t, dim),
                            ref.data() + i * dim, dim);
        for (int64_t c = 0; c < dim; ++c) ref[i * dim + static_cast<size_t>(c)] *= scale;
      }
      Backend::Floats dx = poisoned(ref.size());
      gpu().embed(hw.w, tokens.data(), static_cast<int32_t>(tokens.size()), scale, dx.get());
      expect_close(download(dx.get(), ref.size()), ref, 0, 0, "embed " + fmt_name(t));
    }
  }
}

// y vs the double reference, each output bounded by c * sum_k |w_k x_k|.
void check_matmul(const HostWeight& hw, const std::vector<float>& x, int32_t n, const std::vector<float>& got,
                  double c, const std::string& what) {
  const int64_t n_out = hw.w.n_out, n_in = hw.w.n_in;
  std::vector<float> ref(static_cast<size_t>(n) * n_out);
  cpu::matmul_reference(hw.w.type, hw.bytes.data(), n_out, n_in, x.data(), n, ref.data());
  std::vector<float> wrow(static_cast<size_t>(n_in));
  size_t bad = 0;
  std::string first;
  for (int64_t o = 0; o < n_out; ++o) {
    cpu::dequantize_row(hw.w.type, hw.bytes.data() + static_cast<size_t>(o) * ggml_row_bytes(hw.w.type, n_in),
                        wrow.data(), n_in);
    for (int32_t r = 0; r < n; ++r) {
      double s = 0;
      for (int64_t k = 0; k < n_in; ++k)
        s += std::fabs(static_cast<double>(wrow[static_cast<size_t>(k)]) * x[static_cast<size_t>(r * n_in + k)]);
      const size_t i = static_cast<size_t>(r * n_out + o);
      const double e = std::fabs(static_cast<double>(got[i]) - ref[i]);
      if (!(e <= c * s)) {
        if (bad++ == 0)
          first = "row " + std::to_string(r) + " out " + std::to_string(o) + ": got " + std::to_string(got[i]) +
                  " want " + std::to_string(ref[i]) + " bound " + std::to_string(c * s);
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " outputs outside tolerance; first " << first;
}

TEST(CudaBackendOps, MatmulEveryFormat) {
  std::mt19937_64 rng(6);
  const int64_t n_in = 512;
  for (GgmlType t : kFormats) {
    // Two outputs of one call; 72 rows: not a multiple of the GEMV's 16-row tiles.
    kept_weights().push_back(std::make_unique<HostWeight>(t, 72, n_in, rng));
    kept_weights().push_back(std::make_unique<HostWeight>(GgmlType::Q8_0, 40, n_in, rng));
    const HostWeight& a = *kept_weights()[kept_weights().size() - 2];
    const HostWeight& b = *kept_weights().back();
    gpu().prepare({&a.w, &b.w}, {});
    for (int32_t n : {1, 3, 8, 9, 40}) {
      const std::vector<float> x = random_vec(static_cast<size_t>(n) * n_in, -1.0f, 1.0f, rng);
      Backend::Floats dx = upload(x), ya = poisoned(static_cast<size_t>(n) * 72), yb = poisoned(static_cast<size_t>(n) * 40);
      const MatmulOutput outs[2] = {{&a.w, ya.get()}, {&b.w, yb.get()}};
      gpu().matmul(outs, 2, dx.get(), n);
      const bool gemv_f32 = n <= 8 && (t == GgmlType::Q5_0 || t == GgmlType::Q5_1);
      const double c = n > 8 ? 8e-3 : gemv_f32 ? 1e-5 : 4e-3;
      const std::string what = "matmul " + fmt_name(t) + " n=" + std::to_string(n);
      check_matmul(a, x, n, download(ya.get(), static_cast<size_t>(n) * 72), c, what);
      check_matmul(b, x, n, download(yb.get(), static_cast<size_t>(n) * 40), n > 8 ? 8e-3 : 4e-3, what + " (Q8_0 beside)");
    }
  }
}

TEST(CudaBackendOps, PrepareRefusesWhatItCannotHold) {
  std::mt19937_64 rng(7);
  HostWeight q2k(GgmlType::Q2_K, 4, 256, rng);
  try {
    gpu().prepare({&q2k.w}, {});
    ADD_FAILURE() << "Q2_K was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Q2_K"), std::string::npos) << e.what();
  }
  // Far more bytes than any device has: refused before a byte is read (data points at a tiny buffer).
  Weight huge;
  huge.type = GgmlType::F32;
  huge.data = q2k.bytes.data();
  huge.n_out = 2000000000;
  huge.n_in = 4096;
  try {
    gpu().prepare({&huge}, {});
    ADD_FAILURE() << "a 32 TB weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("free"), std::string::npos) << e.what();
  }
  HostWeight unprepared(GgmlType::Q8_0, 8, 64, rng);
  Backend::Floats x = upload(std::vector<float>(64, 1.0f)), y = poisoned(8);
  const MatmulOutput out{&unprepared.w, y.get()};
  EXPECT_THROW(gpu().matmul(&out, 1, x.get(), 1), Error);
}

// ---------------------------------------------------------------------------------------------------------------
// KV page memory.

TEST(CudaBackendOps, KvMemoryWriteRowsReadsCompact) {
  std::mt19937_64 rng(8);
  KvPageMemory& mem = gpu().kv_memory();
  const int32_t T = 32;
  for (int32_t D : {64, 128, 256})
    for (KvFormat f : {KvFormat::F16, KvFormat::F32}) {
      const std::string what = std::string(kv_format_name(f)) + " d" + std::to_string(D);
      const size_t pb = cpu::kv_page_bytes(f, T, D);
      const int32_t n_pages = 3;
      uint8_t* slab = mem.map(pb * n_pages);
      ASSERT_NE(slab, nullptr);
      std::vector<uint8_t> host(pb * n_pages, 0);
      gpu().to_backend(slab, host.data(), host.size());
      // 40 rows from a (n, 3, D) buffer (as q, k, v of one product), to scattered (page, row) places.
      const int32_t n = 40;
      const std::vector<float> kv = random_vec(static_cast<size_t>(n) * 3 * D, -4.0f, 4.0f, rng);
      std::vector<int32_t> places(static_cast<size_t>(n_pages * T));
      for (size_t i = 0; i < places.size(); ++i) places[i] = static_cast<int32_t>(i);
      std::shuffle(places.begin(), places.end(), rng);
      std::vector<KvRowDest> dests(static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) {
        const int32_t pl = places[static_cast<size_t>(i)];
        dests[static_cast<size_t>(i)] = {slab + static_cast<size_t>(pl / T) * pb, pl % T};
        cpu::kv_page_write(f, T, D, kv.data() + (static_cast<size_t>(i) * 3 + 1) * D,
                           kv.data() + (static_cast<size_t>(i) * 3 + 2) * D, pl % T, 1,
                           host.data() + static_cast<size_t>(pl / T) * pb);
      }
      Backend::Floats dkv = upload(kv);
      mem.write_rows(f, T, D, dkv.get() + D, dkv.get() + 2 * D, 3 * D, dests.data(), n);
      std::vector<uint8_t> got(host.size());
      gpu().to_host(got.data(), slab, got.size());
      EXPECT_TRUE(got == host) << "write_rows bytes " << what;

      // Host reads of the device page, against the codec on the host copy.
      std::vector<float> a(static_cast<size_t>(10) * D), b(a.size());
      mem.read_keys_host(f, T, D, slab + pb, 5, 10, a.data());
      cpu::kv_page_read_keys(f, T, D, host.data() + pb, 5, 10, b.data());
      EXPECT_TRUE(a == b) << "read_keys_host " << what;
      mem.read_values_host(f, T, D, slab + 2 * pb, 20, 10, a.data());
      cpu::kv_page_read_values(f, T, D, host.data() + 2 * pb, 20, 10, b.data());
      EXPECT_TRUE(a == b) << "read_values_host " << what;

      // Host-side partial writes and compaction.
      const std::vector<float> hk = random_vec(static_cast<size_t>(4) * D, -1.0f, 1.0f, rng),
                               hv = random_vec(static_cast<size_t>(4) * D, -1.0f, 1.0f, rng);
      mem.write_page_rows_host(f, T, D, hk.data(), hv.data(), 9, 4, slab);
      cpu::kv_page_write(f, T, D, hk.data(), hv.data(), 9, 4, host.data());
      const std::vector<int32_t> keep = {0, 3, 4, 9, 10, 31};
      mem.compact(f, T, D, slab + pb, keep.data(), static_cast<int32_t>(keep.size()));
      cpu::kv_page_compact(f, T, D, host.data() + pb, keep.data(), static_cast<int32_t>(keep.size()));
      gpu().to_host(got.data(), slab, got.size());
      EXPECT_TRUE(got == host) << "write_page_rows_host and compact bytes " << what;

      // A page copied whole (copy on write of a shared page).
      mem.copy_page(slab + 2 * pb, slab, pb);
      std::memcpy(host.data() + 2 * pb, host.data(), pb);
      gpu().to_host(got.data(), slab, got.size());
      EXPECT_TRUE(got == host) << "copy_page bytes " << what;

      // Rows moved between pages (the store packing its open pages).
      mem.copy_rows(f, T, D, slab, 5, 11, slab + pb, 17);
      cpu::kv_page_copy_rows(f, T, D, host.data(), 5, 11, host.data() + pb, 17);
      gpu().to_host(got.data(), slab, got.size());
      EXPECT_TRUE(got == host) << "copy_rows bytes " << what;
      mem.unmap(slab, pb * n_pages);
    }
}

TEST(CudaBackendOps, KvMemoryPackedPagesThroughTheHostCodec) {
  std::mt19937_64 rng(9);
  KvPageMemory& mem = gpu().kv_memory();
  const int32_t T = 32, D = 128;
  for (KvFormat f : {KvFormat::Kivi8, KvFormat::Kivi4, KvFormat::Kivi2}) {
    const size_t pb = cpu::kv_page_bytes(f, T, D);
    uint8_t* page = mem.map(pb);
    ASSERT_NE(page, nullptr);
    const std::vector<float> k = random_vec(static_cast<size_t>(T) * D, -3.0f, 3.0f, rng),
                             v = random_vec(static_cast<size_t>(T) * D, -3.0f, 3.0f, rng);
    std::vector<uint8_t> host(pb);
    cpu::kv_page_write(f, T, D, k.data(), v.data(), 0, T, host.data());
    mem.write_page_rows_host(f, T, D, k.data(), v.data(), 0, T, page);
    const std::vector<int32_t> keep = {1, 2, 7, 30};
    mem.compact(f, T, D, page, keep.data(), 4);
    cpu::kv_page_compact(f, T, D, host.data(), keep.data(), 4);
    std::vector<uint8_t> got(pb);
    gpu().to_host(got.data(), page, pb);
    EXPECT_TRUE(got == host) << kv_format_name(f);
    std::vector<float> a(static_cast<size_t>(4) * D), b(a.size());
    mem.read_values_host(f, T, D, page, 0, 4, a.data());
    cpu::kv_page_read_values(f, T, D, host.data(), 0, 4, b.data());
    EXPECT_TRUE(a == b) << kv_format_name(f);
    Backend::Floats dk = upload(k);
    const KvRowDest dest{page, 0};
    EXPECT_THROW(mem.write_rows(f, T, D, dk.get(), dk.get(), D, &dest, 1), Error) << kv_format_name(f);
    mem.unmap(page, pb);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Attention over pages: one layer built on the host with the CPU codec, copied into device pages, read by the CPU
// reference from the host copy and by the GPU from the device copy.

struct LayerCase {
  const char* name;
  int32_t n_head, n_head_kv, head_dim, page_tokens;
  std::vector<int32_t> tokens;  // per kv-head
  int32_t window;
  int32_t n_q;
  std::vector<KvFormat> formats;  // page i takes formats[i % size]
  bool full_pages;                // else pages hold a random number of rows (after eviction)
};

struct TestLayer {
  std::vector<std::vector<uint8_t>> host_pages;
  std::vector<uint8_t*> dev_pages;
  std::vector<size_t> dev_bytes;
  std::vector<std::vector<int32_t>> positions;
  cpu::KvLayerView cpu_view;
  KvLayerView dev_view;
  int32_t max_pos = 0, min_pos = 1 << 30, max_tokens = 0;
  ~TestLayer() {
    for (size_t i = 0; i < dev_pages.size(); ++i) gpu().kv_memory().unmap(dev_pages[i], dev_bytes[i]);
  }
};

void build_layer(const LayerCase& c, std::mt19937_64& rng, TestLayer& L) {
  const int32_t T = c.page_tokens, D = c.head_dim;
  L.cpu_view.page_tokens = L.dev_view.page_tokens = T;
  L.cpu_view.head_dim = L.dev_view.head_dim = D;
  L.positions.resize(c.tokens.size());
  std::uniform_int_distribution<int32_t> gap(1, 3), rows_of(1, T);
  size_t page_i = 0;
  for (size_t h = 0; h < c.tokens.size(); ++h) {
    const int32_t n = c.tokens[h];
    std::vector<int32_t>& pos = L.positions[h];
    int32_t p = 0;
    for (int32_t j = 0; j < n; ++j) pos.push_back(p += gap(rng));
    cpu::KvHeadView ch;
    KvHeadView dh;
    ch.slot0.push_back(0);
    dh.slot0.push_back(0);
    for (int32_t s = 0; s < n;) {
      const int32_t rows = std::min(n - s, c.full_pages ? T : rows_of(rng));
      const KvFormat f = c.formats[page_i++ % c.formats.size()];
      const size_t pb = cpu::kv_page_bytes(f, T, D);
      L.host_pages.emplace_back(pb, 0);
      std::vector<uint8_t>& hp = L.host_pages.back();
      const std::vector<float> k = random_vec(static_cast<size_t>(T) * D, -1.0f, 1.0f, rng),
                               v = random_vec(static_cast<size_t>(T) * D, -1.0f, 1.0f, rng);
      cpu::kv_page_write(f, T, D, k.data(), v.data(), 0, kv_format_is_packed(f) ? T : rows, hp.data());
      uint8_t* dp = gpu().kv_memory().map(pb);
      gpu().to_backend(dp, hp.data(), pb);
      L.dev_pages.push_back(dp);
      L.dev_bytes.push_back(pb);
      ch.pages.push_back(hp.data());
      dh.pages.push_back(dp);
      ch.formats.push_back(f);
      dh.formats.push_back(f);
      s += rows;
      ch.slot0.push_back(s);
      dh.slot0.push_back(s);
    }
    ch.positions = dh.positions = pos.data();
    ch.n_tokens = dh.n_tokens = n;
    L.cpu_view.heads.push_back(ch);
    L.dev_view.heads.push_back(dh);
    if (n) L.max_pos = std::max(L.max_pos, pos.back()), L.min_pos = std::min(L.min_pos, pos.front());
    L.max_tokens = std::max(L.max_tokens, n);
  }
}

const std::vector<LayerCase>& layer_cases() {
  static const std::vector<LayerCase> cases = {
      {"smollm 9/3 d64 f16 decode", 9, 3, 64, 32, {300, 300, 300}, 0, 1, {KvFormat::F16}, true},
      {"smollm 9/3 d64 f16 chunk, evicted pages", 9, 3, 64, 32, {290, 301, 257}, 0, 20, {KvFormat::F16}, false},
      {"llama 8/2 d128 f32", 8, 2, 128, 16, {200, 180}, 0, 12, {KvFormat::F32}, false},
      {"gemma 4/1 d256 f16 window 17", 4, 1, 256, 64, {400}, 17, 10, {KvFormat::F16}, true},
      {"gemma 4/1 d256 f32 window 512", 4, 1, 256, 64, {700}, 512, 3, {KvFormat::F32}, false},
      {"mha 4/4 d64 page 256 mixed, empty head", 4, 4, 64, 256, {600, 0, 333, 129}, 0, 9,
       {KvFormat::F16, KvFormat::F32}, false},
      // KIVI pages beside plain ones (sealed pages then the open one); packed pages written whole, then read in part
      // as after compaction.
      {"smollm 9/3 d64 kivi4 + f16", 9, 3, 64, 32, {300, 270, 300}, 0, 5,
       {KvFormat::Kivi4, KvFormat::Kivi4, KvFormat::F16}, true},
      {"gemma 4/1 d256 kivi2 kivi8 f32 window 40, evicted", 4, 1, 256, 64, {500}, 40, 6,
       {KvFormat::Kivi2, KvFormat::Kivi8, KvFormat::F32}, false},
      {"llama 8/2 d128 kivi8 decode", 8, 2, 128, 16, {150, 150}, 0, 1, {KvFormat::Kivi8}, true},
      // Rows x heads past the kernel's block target: one range of pages per block, no combine pass (the cases above
      // split every head's pages into ranges and combine them, empty ranges included).
      {"llama 32/8 d128 f16 prefill chunk, unsplit", 32, 8, 128, 16, {90, 97, 64, 80, 100, 75, 93, 88}, 0, 40,
       {KvFormat::F16}, false},
      // Decode (<= 8 rows): one block a kv-head for its query heads (GQA), 16-byte loads of F16 pages, other formats
      // decoded element by element; partly filled pages, a window, 8 query heads a kv-head, an empty head.
      {"llama 32/8 d128 f16 decode, evicted, window 300", 32, 8, 128, 64, std::vector<int32_t>(8, 500), 300, 1,
       {KvFormat::F16}, false},
      {"16/2 d128 kivi2 + f16, 3 rows", 16, 2, 128, 32, {400, 350}, 0, 3, {KvFormat::Kivi2, KvFormat::F16}, false},
      {"mha 4/4 d64 f32 page 16, 2 rows, empty head", 4, 4, 64, 16, {100, 0, 50, 77}, 0, 2, {KvFormat::F32}, false},
      {"gemma 4/1 d256 f16 decode", 4, 1, 256, 64, {1000}, 0, 1, {KvFormat::F16}, true},
  };
  return cases;
}

// Query rows: the last n_q positions of the layer (a chunk ending at its newest token), the first row moved before
// every key (it sees nothing: zeros, and no scores).
std::vector<int32_t> query_positions(const LayerCase& c, const TestLayer& L) {
  std::vector<int32_t> q(static_cast<size_t>(c.n_q));
  for (int32_t i = 0; i < c.n_q; ++i) q[static_cast<size_t>(i)] = L.max_pos - (c.n_q - 1 - i) * 2;
  if (c.n_q > 1) q[0] = L.min_pos - 1;
  return q;
}

TEST(CudaBackendOps, AttentionOverPages) {
  std::mt19937_64 rng(10);
  for (const LayerCase& c : layer_cases()) {
    TestLayer L;
    build_layer(c, rng, L);
    const std::vector<int32_t> qp = query_positions(c, L);
    const size_t nq = static_cast<size_t>(c.n_q) * c.n_head * c.head_dim;
    const std::vector<float> q = random_vec(nq, -3.0f, 3.0f, rng);
    cpu::AttentionParams cp;
    cp.n_head = c.n_head, cp.n_head_kv = c.n_head_kv, cp.head_dim = c.head_dim;
    cp.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)), cp.window = c.window;
    AttentionParams p;
    p.n_head = cp.n_head, p.n_head_kv = cp.n_head_kv, p.head_dim = cp.head_dim, p.scale = cp.scale, p.window = cp.window;
    std::vector<float> ref(nq);
    cpu::attention_reference(cp, q.data(), qp.data(), c.n_q, L.cpu_view, ref.data());
    Backend::Floats dq = upload(q), dout = poisoned(nq);
    gpu().attention(p, dq.get(), qp.data(), c.n_q, L.dev_view, dout.get());
    expect_close(download(dout.get(), nq), ref, 2e-5, 1e-4, std::string("attention ") + c.name);
  }
}

// A prompt chunk over a cache that is one run of consecutive positions (every head alike) takes the tensor-core path:
// the pages gathered to dense f16, q rounded to f16, P rounded to f16 for its product with V, the output rounded to
// f16. Tolerance atol 2e-3, rtol 2e-3: each rounding is 2^-11 relative, on outputs that are averages of values in
// [-1, 1]. The positions start past 0 (a sliding-window layer whose front pages expired) in the second case, whose
// KIVI pages the gather decodes as the codec does.
TEST(CudaBackendOps, AttentionOverADenseRunOnTensorCores) {
  std::mt19937_64 rng(13);
  const std::vector<LayerCase> cases = {
      {"llama 32/8 d128 f16 chunk of 300", 32, 8, 128, 64, std::vector<int32_t>(8, 700), 0, 300, {KvFormat::F16}, true},
      {"smollm 9/3 d64 kivi4 + f16 window 100, chunk of 128", 9, 3, 64, 32, {500, 500, 500}, 100, 128,
       {KvFormat::Kivi4, KvFormat::F16}, true},
  };
  for (const LayerCase& c : cases) {
    TestLayer L;
    build_layer(c, rng, L);
    const int32_t first = c.window > 0 ? 37 : 0;
    for (std::vector<int32_t>& pos : L.positions)
      for (size_t j = 0; j < pos.size(); ++j) pos[j] = first + static_cast<int32_t>(j);
    const int32_t last = first + c.tokens[0] - 1;
    std::vector<int32_t> qp(static_cast<size_t>(c.n_q));
    for (int32_t i = 0; i < c.n_q; ++i) qp[static_cast<size_t>(i)] = last - (c.n_q - 1 - i);
    const size_t nq = static_cast<size_t>(c.n_q) * c.n_head * c.head_dim;
    const std::vector<float> q = random_vec(nq, -3.0f, 3.0f, rng);
    cpu::AttentionParams cp;
    cp.n_head = c.n_head, cp.n_head_kv = c.n_head_kv, cp.head_dim = c.head_dim;
    cp.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)), cp.window = c.window;
    AttentionParams p;
    p.n_head = cp.n_head, p.n_head_kv = cp.n_head_kv, p.head_dim = cp.head_dim, p.scale = cp.scale, p.window = cp.window;
    std::vector<float> ref(nq);
    cpu::attention_reference(cp, q.data(), qp.data(), c.n_q, L.cpu_view, ref.data());
    Backend::Floats dq = upload(q), dout = poisoned(nq);
    gpu().attention(p, dq.get(), qp.data(), c.n_q, L.dev_view, dout.get());
    expect_close(download(dout.get(), nq), ref, 2e-3, 2e-3, std::string("dense attention ") + c.name);
  }
}

TEST(CudaBackendOps, AttentionScores) {
  std::mt19937_64 rng(11);
  for (const LayerCase& c : layer_cases())
    for (ScoreReduce reduce : {ScoreReduce::Sum, ScoreReduce::Max}) {
      TestLayer L;
      build_layer(c, rng, L);
      const std::vector<int32_t> qp = query_positions(c, L);
      const std::vector<float> q =
          random_vec(static_cast<size_t>(c.n_q) * c.n_head * c.head_dim, -3.0f, 3.0f, rng);
      cpu::AttentionParams cp;
      cp.n_head = c.n_head, cp.n_head_kv = c.n_head_kv, cp.head_dim = c.head_dim;
      cp.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)), cp.window = c.window;
      AttentionParams p;
      p.n_head = cp.n_head, p.n_head_kv = cp.n_head_kv, p.head_dim = cp.head_dim, p.scale = cp.scale,
      p.window = cp.window;
      const int32_t stride = L.max_tokens + 5;
      const int32_t first_row = std::max(0, c.n_q - 8);
      const std::vector<float> init = random_vec(static_cast<size_t>(c.n_head_kv) * stride, 0.0f, 0.5f, rng);
      std::vector<float> ref = init, got = init, twice = init;
      cpu::attention_scores_reference(cp, q.data(), qp.data(), c.n_q, first_row, L.cpu_view, ref.data(), stride,
                                      reduce == ScoreReduce::Max ? cpu::ScoreReduce::Max : cpu::ScoreReduce::Sum);
      std::vector<float> ref_twice = ref;
      cpu::attention_scores_reference(cp, q.data(), qp.data(), c.n_q, first_row, L.cpu_view, ref_twice.data(), stride,
                                      reduce == ScoreReduce::Max ? cpu::ScoreReduce::Max : cpu::ScoreReduce::Sum);
      Backend::Floats dq = upload(q);
      // Three calls before one finish_scores (as a forward's layers issue them): each lands in its own array.
      gpu().attention_scores(p, dq.get(), qp.data(), c.n_q, first_row, L.dev_view, got.data(), stride, reduce);
      gpu().attention_scores(p, dq.get(), qp.data(), c.n_q, first_row, L.dev_view, twice.data(), stride, reduce);
      gpu().attention_scores(p, dq.get(), qp.data(), c.n_q, first_row, L.dev_view, twice.data(), stride, reduce);
      gpu().finish_scores();
      const std::string what = std::string("scores ") + (reduce == ScoreReduce::Max ? "max " : "sum ") + c.name;
      expect_close(got, ref, 1e-5, 0, what);
      expect_close(twice, ref_twice, 1e-5, 0, what + " (added twice)");
      EXPECT_NE(got, init) << "the scores moved";
    }
}

TEST(CudaBackendOps, AttentionRefusesAViewThatDoesNotMatch) {
  std::mt19937_64 rng(12);
  const LayerCase c{"two kv-heads", 4, 2, 64, 32, {64, 64}, 0, 1, {KvFormat::F16}, true};
  TestLayer L;
  build_layer(c, rng, L);
  AttentionParams p;
  p.n_head = 4, p.n_head_kv = 4, p.head_dim = 64, p.scale = 0.125f;  // four kv-heads asked of a view of two
  Backend::Floats dq = upload(std::vector<float>(256, 0.5f)), dout = poisoned(256);
  const int32_t qp = L.max_pos;
  EXPECT_THROW(gpu().attention(p, dq.get(), &qp, 1, L.dev_view, dout.get()), Error);
  p.n_head_kv = 2, p.head_dim = 128;  // the view's pages hold 64 channels
  EXPECT_THROW(gpu().attention(p, dq.get(), &qp, 1, L.dev_view, dout.get()), Error);
}

}  // namespace

int main(int argc, char** argv) {
  if (!longctx::cuda_test::gpu_present()) return 77;
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  g_backend.reset();
  return rc;
}
