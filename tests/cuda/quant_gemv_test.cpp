// The GGUF weight formats on the device (backend/cuda/quant.h) against the host reference (quant_reference.h, itself
// checked bit for bit against cpu::dequantize_row by tests/quant_reference_test.cpp):
//   quant_gemv: every format x n_in (576, 640, 2048, 4096, 14336; 256 for the K-quants, which need multiples of
//     256) x n_out (1, 19, 130, 1003), random blocks, x drawn four ways (unit, large |x| beyond the f16 range,
//     tiny |x|, unit with a few large outliers); grids of 1 and 3 blocks walking many tiles; W at
//     a 32-byte and at a 16-byte offset (the copies' first and last bytes); y poisoned before, its tail checked.
//     Reference: the dequantized row times x in double. Tolerance: |y - ref| <= 5e-5 * sum |w x| per row (the kernel
//     is W x up to f32 accumulation: exact codes, exact x, exact products; weights rounded to bf16 would miss by
//     ~4e-3). Plus x = 0 giving y = 0 exactly, and the refusals.
//   quant_gemv over many rows of x (2-11, each drawn a different way): bit for bit the one-row calls.
//   dequantize_bf16: every format, row ranges at offsets, a padded output stride, checked exactly against the
//     reference rounded to bf16, the padding untouched.
// Exit code 77 (CTest's skip) when no GPU is present.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/quant.h"
#include "cuda_test_util.h"
#include "quant_reference.h"

namespace lc = longctx::cuda;
namespace qr = longctx::quant_ref;
using longctx::GgmlType;
using namespace longctx::cuda_test;

namespace {

constexpr GgmlType kFormats[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K,
                                 GgmlType::Q6_K, GgmlType::F16,  GgmlType::BF16, GgmlType::F32};

bool k_quant(GgmlType t) { return t == GgmlType::Q4_K || t == GgmlType::Q5_K || t == GgmlType::Q6_K; }

enum class XKind { Unit, Large, Tiny, Outliers };
const char* x_name(XKind k) {
  switch (k) {
    case XKind::Unit: return "unit";
    case XKind::Large: return "large";
    case XKind::Tiny: return "tiny";
    default: return "outliers";
  }
}

std::vector<uint16_t> random_x(int n, XKind kind, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> x(n);
  for (int i = 0; i < n; ++i) {
    float v = u(rng);
    if (kind == XKind::Large) v *= 3e6f;    // far past f16's 65504
    if (kind == XKind::Tiny) v *= 1e-30f;   // far below f16's smallest
    if (kind == XKind::Outliers && i % 97 == 5) v *= 3e4f;
    x[i] = qr::bf16_bits(v);
  }
  return x;
}

struct Worst {
  double err = 0;  // max over rows of |y - ref| / sum |w x|
};

// One product on the device against the reference; returns false (and says why) on a failure.
bool check_gemv(GgmlType t, int n_out, int n_in, XKind xk, int max_blocks, int w_offset, std::mt19937_64& rng,
                Worst* worst) {
  const size_t rb = qr::row_bytes(t, n_in);
  const std::vector<uint8_t> w = qr::random_rows(t, n_out, n_in, rng);
  const std::vector<uint16_t> x = random_x(n_in, xk, rng);
  DevBuf d_w(w.size() + 64), d_x(n_in * 2), d_y((n_out + 64) * 4);
  uint8_t* w_dev = d_w.as<uint8_t>() + w_offset;
  CHECK_OK(lc::copy_to_device(w_dev, w.data(), w.size()));
  d_x.upload(x);
  d_y.poison();
  lc::QuantGemvArgs a;
  a.type = t, a.w = w_dev, a.n_out = n_out, a.n_in = n_in, a.x_bf16 = d_x.p, a.y = d_y.as<float>(), a.max_blocks = max_blocks;
  CHECK_OK(lc::quant_gemv(a));
  const std::vector<float> y = d_y.download<float>(n_out + 64);

  std::vector<float> row(n_in);
  double row_worst = 0;
  int n_bad = 0;
  for (int r = 0; r < n_out; ++r) {
    qr::dequantize_row(t, w.data() + r * rb, row.data(), n_in);
    double ref = 0, mag = 0;
    for (int i = 0; i < n_in; ++i) {
      const double p = static_cast<double>(row[i]) * static_cast<double>(qr::bf16_value(x[i]));
      ref += p;
      mag += std::fabs(p);
    }
    const double err = std::fabs(static_cast<double>(y[r]) - ref) / (mag > 0 ? mag : 1e-300);
    if (!std::isfinite(y[r]) || !(err <= 5e-5)) {
      if (++n_bad <= 3)
        std::printf("  row %d: got %.9g want %.9g (sum |w x| %.3g)\n", r, y[r], ref, mag);
    }
    if (std::isfinite(err)) row_worst = std::max(row_worst, err);
  }
  uint32_t tail_bits = 0xffffffffu;
  for (int r = n_out; r < n_out + 64; ++r) {
    uint32_t b;
    std::memcpy(&b, &y[r], 4);
    tail_bits &= b;
  }
  worst->err = std::max(worst->err, row_worst);
  const bool ok = n_bad == 0 && tail_bits == 0xffffffffu;
  if (!ok)
    std::printf("FAIL %s %d x %d x=%s max_blocks=%d offset=%d: %d bad rows, tail %s, worst %.3g\n", qr::name(t), n_out,
                n_in, x_name(xk), max_blocks, w_offset, n_bad, tail_bits == 0xffffffffu ? "untouched" : "WRITTEN", row_worst);
  return ok;
}

void test_gemv(std::mt19937_64& rng) {
  for (GgmlType t : kFormats) {
    Worst worst;
    int n_cases = 0, n_ok = 0;
    const std::vector<int> n_ins = k_quant(t) ? std::vector<int>{256, 2048, 4096, 14336}
                                              : std::vector<int>{576, 640, 2048, 4096, 14336};
    int k = 0;
    for (int n_in : n_ins)
      for (int n_out : {1, 19, 130, 1003}) {
        const XKind xk = static_cast<XKind>(k % 4);
        const int offset = k % 3 == 1 ? 16 : 0;  // W at a 16-byte (not 32) boundary
        ++k;
        ++n_cases;
        n_ok += check_gemv(t, n_out, n_in, xk, 0, offset, rng, &worst);
      }
    // Few blocks, so that each walks many tiles (the ring running on from one tile into the next): tiles of
    // several stages, and of one stage each (the smallest n_in).
    for (int max_blocks : {1, 3})
      for (XKind xk : {XKind::Unit, XKind::Outliers}) {
        n_cases += 2;
        n_ok += check_gemv(t, 130, 4096, xk, max_blocks, 0, rng, &worst);
        n_ok += check_gemv(t, 1003, n_ins[0], xk, max_blocks, 16, rng, &worst);
      }
    report(n_ok == n_cases, std::string("quant_gemv ") + qr::name(t) + ": " + std::to_string(n_ok) + "/" +
                                std::to_string(n_cases) + " cases, worst |y - ref| / sum|w x| = " +
                                std::to_string(worst.err) + " (tolerance 5e-5)");
  }

  // Many rows of x in one call (the server's stacked decode steps): each row's y is the same bits as the one-row
  // call on that row alone, rows of very different magnitude side by side (each its own f16 scaling), n_in up to
  // 14336 (fewer rows a launch fit in shared memory there) and more rows than one launch takes (11 > 8).
  for (GgmlType t : kFormats) {
    int n_cases = 0, n_ok = 0;
    for (const auto& [n_rows, n_in, n_out] :
         {std::tuple{2, k_quant(t) ? 256 : 576, 130}, std::tuple{3, 4096, 1003}, std::tuple{8, 2048, 19},
          std::tuple{11, 14336, 130}}) {
      ++n_cases;
      const std::vector<uint8_t> w = qr::random_rows(t, n_out, n_in, rng);
      std::vector<uint16_t> x;
      for (int r = 0; r < n_rows; ++r) {
        const std::vector<uint16_t> xr = random_x(n_in, static_cast<XKind>(r % 4), rng);
        x.insert(x.end(), xr.begin(), xr.end());
      }
      DevBuf d_w(w.size()), d_x(x.size() * 2), d_y((static_cast<size_t>(n_rows) * n_out + 64) * 4),
          d_one(static_cast<size_t>(n_rows) * n_out * 4);
      d_w.upload(w);
      d_x.upload(x);
      d_y.poison();
      lc::QuantGemvArgs a;
      a.type = t, a.w = d_w.p, a.n_out = n_out, a.n_in = n_in, a.x_bf16 = d_x.p, a.y = d_y.as<float>();
      a.n_rows = n_rows;
      CHECK_OK(lc::quant_gemv(a));
      for (int r = 0; r < n_rows; ++r) {
        lc::QuantGemvArgs one = a;
        one.n_rows = 1;
        one.x_bf16 = d_x.as<uint16_t>() + static_cast<size_t>(r) * n_in;
        one.y = d_one.as<float>() + static_cast<size_t>(r) * n_out;
        CHECK_OK(lc::quant_gemv(one));
      }
      const std::vector<float> y = d_y.download<float>(static_cast<size_t>(n_rows) * n_out + 64);
      const std::vector<float> y1 = d_one.download<float>(static_cast<size_t>(n_rows) * n_out);
      int n_diff = 0;
      for (size_t i = 0; i < y1.size(); ++i) n_diff += std::memcmp(&y[i], &y1[i], 4) != 0;
      uint32_t tail_bits = 0xffffffffu;
      for (size_t i = y1.size(); i < y.size(); ++i) {
        uint32_t b;
        std::memcpy(&b, &y[i], 4);
        tail_bits &= b;
      }
      if (n_diff == 0 && tail_bits == 0xffffffffu) ++n_ok;
      else
        std::printf("FAIL %s rows %d x %d x %d: %d values differ from one row at a time, tail %s\n", qr::name(t),
                    n_rows, n_out, n_in, n_diff, tail_bits == 0xffffffffu ? "untouched" : "WRITTEN");
    }
    report(n_ok == n_cases, std::string("quant_gemv ") + qr::name(t) + " over many rows of x: " +
                                std::to_string(n_ok) + "/" + std::to_string(n_cases) +
                                " cases bit for bit the one-row products");
  }

  // x = 0: y exactly 0 (no scaling of a zero maximum).
  {
    const int n_out = 40, n_in = 512;
    const std::vector<uint8_t> w = qr::random_rows(GgmlType::Q4_K, n_out, n_in, rng);
    DevBuf d_w(w.size()), d_x(n_in * 2), d_y(n_out * 4);
    d_w.upload(w);
    CHECK_OK(lc::device_fill_bytes(d_x.p, 0, n_in * 2));
    d_y.poison();
    lc::QuantGemvArgs a;
    a.type = GgmlType::Q4_K, a.w = d_w.p, a.n_out = n_out, a.n_in = n_in, a.x_bf16 = d_x.p, a.y = d_y.as<float>();
    CHECK_OK(lc::quant_gemv(a));
    const std::vector<float> y = d_y.download<float>(n_out);
    bool zero = true;
    for (float v : y) zero = zero && v == 0.0f;
    report(zero, "quant_gemv Q4_K with x = 0 gives y = 0 exactly");
  }

  // Refusals, before anything is launched.
  {
    DevBuf d_w(1 << 16), d_x(1 << 14), d_y(1 << 12);
    lc::QuantGemvArgs a;
    a.type = GgmlType::Q4_K, a.w = d_w.p, a.n_out = 8, a.n_in = 576, a.x_bf16 = d_x.p, a.y = d_y.as<float>();
    report(!lc::quant_gemv(a).ok(), "quant_gemv refuses a K-quant n_in that is not a multiple of 256");
    a.n_in = 512, a.type = GgmlType::Q5_0;
    report(!lc::quant_gemv(a).ok() && !lc::quant_supported(GgmlType::Q5_0), "quant_gemv refuses Q5_0 (not supported)");
    a.type = GgmlType::Q8_0, a.w = d_w.as<uint8_t>() + 8;
    report(!lc::quant_gemv(a).ok(), "quant_gemv refuses W that is not 16-byte aligned");
    a.w = d_w.p, a.max_blocks = -1;
    report(!lc::quant_gemv(a).ok(), "quant_gemv refuses a negative max_blocks");
    a.max_blocks = 0, a.n_in = lc::quant_gemv_max_in() + 32;
    report(!lc::quant_gemv(a).ok(), "quant_gemv refuses n_in past its maximum");
    a.n_in = 512, a.n_rows = 0;
    report(!lc::quant_gemv(a).ok(), "quant_gemv refuses zero rows of x");
  }
}

void test_dequantize(std::mt19937_64& rng) {
  for (GgmlType t : kFormats) {
    int n_cases = 0, n_ok = 0;
    for (int n_in : k_quant(t) ? std::vector<int>{256, 4096} : std::vector<int>{576, 4096}) {
      const int n_out = 37;
      const size_t rb = qr::row_bytes(t, n_in);
      const std::vector<uint8_t> w = qr::random_rows(t, n_out, n_in, rng);
      DevBuf d_w(w.size());
      d_w.upload(w);
      for (const auto& [r0, nr] : std::vector<std::pair<int, int>>{{0, n_out}, {5, 11}, {36, 1}}) {
        const int stride = n_in + 8;  // padding between rows must stay untouched
        DevBuf d_o(static_cast<size_t>(nr) * stride * 2);
        d_o.poison();
        CHECK_OK(lc::dequantize_bf16(t, d_w.p, n_in, r0, nr, d_o.p, stride));
        const std::vector<uint16_t> o = d_o.download<uint16_t>(static_cast<size_t>(nr) * stride);
        std::vector<float> row(n_in);
        int n_bad = 0;
        for (int r = 0; r < nr; ++r) {
          qr::dequantize_row(t, w.data() + (r0 + r) * rb, row.data(), n_in);
          for (int i = 0; i < stride; ++i) {
            const uint16_t want = i < n_in ? qr::bf16_bits(row[i]) : 0xffff;
            if (o[static_cast<size_t>(r) * stride + i] != want && ++n_bad <= 3)
              std::printf("  %s row %d value %d: got %04x want %04x\n", qr::name(t), r0 + r, i,
                          o[static_cast<size_t>(r) * stride + i], want);
          }
        }
        ++n_cases;
        n_ok += n_bad == 0;
      }
    }
    report(n_ok == n_cases, std::string("dequantize_bf16 ") + qr::name(t) + ": " + std::to_string(n_ok) + "/" +
                                std::to_string(n_cases) + " row ranges equal to the reference rounded to bf16");
  }
  DevBuf d_w(1 << 12), d_o(1 << 14);
  report(!lc::dequantize_bf16(GgmlType::Q6_K, d_w.p, 576, 0, 1, d_o.p).ok(),
         "dequantize_bf16 refuses a K-quant n_in that is not a multiple of 256");
  report(!lc::dequantize_bf16(GgmlType::Q8_0, d_w.p, 64, 0, 1, d_o.p, 60).ok(),
         "dequantize_bf16 refuses an out_stride below n_in");
}

}  // namespace

int main() {
  lc::DeviceInfo info;
  if (lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.cc_major, info.cc_minor, info.n_sm);
  std::mt19937_64 rng(20261205);
  test_gemv(rng);
  test_dequantize(rng);
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
