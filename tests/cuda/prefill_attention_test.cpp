// Prefill attention (prefill_attention.cu) against a plain double-precision reference on the same rounded inputs,
// over shapes that reach every branch: d 64 and 128, GQA groups 1-8, causal with and without an offset (a chunk
// after a cached prefix), sliding windows (narrower than a tile, wider than a block), not causal, lengths that are not
// multiples of the tiles, a single row, no keys at all, and strided (head-major) layouts; each through both kernels
// (mma.sync everywhere, wgmma on Hopper). Outputs are poisoned with NaN before each call, so a row left unwritten
// fails.
//
// Tolerances: the kernel rounds P to the element type before its product with V (FlashAttention's choice), and
// writes the output in that type, so the error is a few units of its last place: bf16 relative L2 <= 5e-3 and
// |out - ref| <= 2e-2, f16 1e-3 and 4e-3 (the decode kernel's measured errors are 1.4-1.8e-3 and 1.7-2.2e-4).
// Exit code 77 (CTest's skip) when no GPU is present.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;
using namespace longctx::cuda_test;

struct Case {
  const char* name;
  int n_q, n_kv, n_head, n_head_kv, d, q_offset;
  bool causal;
  int window;
  bool head_major;  // (head, row, dim) instead of (row, head, dim)
};

// Element (row, head, dim) of a (rows, heads, D) tensor in either layout.
size_t at(bool head_major, int rows, int heads, int D, int r, int h, int d) {
  return head_major ? (static_cast<size_t>(h) * rows + r) * D + d : (static_cast<size_t>(r) * heads + h) * D + d;
}

void run_case(const Case& cs, lc::KvDtype dt, lc::PrefillKernel kernel, uint32_t seed) {
  const int D = cs.d, Hq = cs.n_head, Hk = cs.n_head_kv, group = Hq / Hk;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.7f, 1.7f);  // logits of a few units after the 1/sqrt(d) scale
  auto make = [&](size_t n) {
    std::vector<uint16_t> v(n);
    for (auto& x : v) x = to_bits(u(rng), dt);
    return v;
  };
  const std::vector<uint16_t> q = make(static_cast<size_t>(cs.n_q) * Hq * D);
  const std::vector<uint16_t> k = make(static_cast<size_t>(cs.n_kv) * Hk * D);
  const std::vector<uint16_t> v = make(static_cast<size_t>(cs.n_kv) * Hk * D);
  DevBuf dq(q.size() * 2), dk(std::max<size_t>(16, k.size() * 2)), dv(std::max<size_t>(16, v.size() * 2));
  DevBuf dout(std::max<size_t>(16, q.size() * 2));
  dq.upload(q);
  if (!k.empty()) dk.upload(k), dv.upload(v);
  dout.poison();

  lc::PrefillAttentionParams p;
  p.n_q = cs.n_q, p.n_kv = cs.n_kv, p.n_head = Hq, p.n_head_kv = Hk, p.head_dim = D, p.q_offset = cs.q_offset;
  p.causal = cs.causal, p.window = cs.window, p.scale = 1.0f / std::sqrt(static_cast<float>(D)), p.dtype = dt;
  p.kernel = kernel;
  if (cs.head_major) {
    p.q_row_stride = D, p.q_head_stride = static_cast<int64_t>(cs.n_q) * D;
    p.k_row_stride = p.v_row_stride = D, p.k_head_stride = p.v_head_stride = static_cast<int64_t>(cs.n_kv) * D;
    p.o_row_stride = D, p.o_head_stride = static_cast<int64_t>(cs.n_q) * D;
  }
  CHECK_OK(lc::prefill_attention(p, dq.p, dk.p, dv.p, dout.p));
  const std::vector<uint16_t> out = dout.download<uint16_t>(q.size());

  double err2 = 0, ref2 = 0, max_abs = 0;
  size_t n_bad = 0;
  std::vector<double> logit(static_cast<size_t>(std::max(cs.n_kv, 1)));
  for (int h = 0; h < Hq; ++h) {
    const int hk = h / group;
    for (int r = 0; r < cs.n_q; ++r) {
      const int qp = cs.q_offset + r;
      double mx = -INFINITY;
      for (int j = 0; j < cs.n_kv; ++j) {
        const bool vis = (!cs.causal || j <= qp) && (cs.window <= 0 || j > qp - cs.window);
        double dot = 0;
        for (int d = 0; d < D; ++d)
          dot += static_cast<double>(from_bits(q[at(cs.head_major, cs.n_q, Hq, D, r, h, d)], dt)) *
                 from_bits(k[at(cs.head_major, cs.n_kv, Hk, D, j, hk, d)], dt);
        logit[j] = vis ? dot * p.scale : -INFINITY;
        mx = std::max(mx, logit[j]);
      }
      double sum = 0;
      for (int j = 0; j < cs.n_kv; ++j) sum += logit[j] == -INFINITY ? 0.0 : std::exp(logit[j] - mx);
      for (int d = 0; d < D; ++d) {
        double ref = 0;
        if (sum > 0)
          for (int j = 0; j < cs.n_kv; ++j)
            if (logit[j] != -INFINITY)
              ref += std::exp(logit[j] - mx) / sum * from_bits(v[at(cs.head_major, cs.n_kv, Hk, D, j, hk, d)], dt);
        const double got = from_bits(out[at(cs.head_major, cs.n_q, Hq, D, r, h, d)], dt);
        if (!std::isfinite(got)) ++n_bad;
        err2 += (got - ref) * (got - ref), ref2 += ref * ref;
        max_abs = std::max(max_abs, std::fabs(got - ref));
      }
    }
  }
  const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  const bool bf = dt == lc::KvDtype::BF16;
  const double tol_rel = bf ? 5e-3 : 1e-3, tol_abs = bf ? 2e-2 : 4e-3;
  const bool ok = n_bad == 0 && rel <= tol_rel && max_abs <= tol_abs;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-8s %-28s %s: rel L2 %.2e, max abs %.2e, non-finite %zu",
                kernel == lc::PrefillKernel::Wgmma ? "wgmma" : "mma.sync", cs.name, bf ? "bf16" : "f16 ", rel, max_abs,
                n_bad);
  report(ok, buf);
}

void check_refusals() {
  DevBuf b(1 << 12);
  lc::PrefillAttentionParams p;
  p.n_q = 16, p.n_kv = 16, p.n_head = 2, p.n_head_kv = 1, p.head_dim = 96;
  report(!lc::prefill_attention(p, b.p, b.p, b.p, b.p).ok(), "refuses head_dim 96");
  p.head_dim = 64, p.n_head_kv = 3;
  report(!lc::prefill_attention(p, b.p, b.p, b.p, b.p).ok(), "refuses n_head not a multiple of n_head_kv");
  p.n_head_kv = 1, p.causal = false, p.window = 8;
  report(!lc::prefill_attention(p, b.p, b.p, b.p, b.p).ok(), "refuses a window without the causal mask");
  p.causal = true, p.window = 0, p.q_row_stride = 12;
  report(!lc::prefill_attention(p, b.p, b.p, b.p, b.p).ok(), "refuses a stride that is not a multiple of 8");
  p.q_row_stride = 0;
  report(!lc::prefill_attention(p, static_cast<char*>(b.p) + 2, b.p, b.p, b.p).ok(), "refuses a misaligned pointer");
  report(!lc::prefill_attention(p, nullptr, b.p, b.p, b.p).ok(), "refuses a null pointer");
}

}  // namespace

int main() {
  lc::DeviceInfo info;
  if (const lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s\n", info.name.c_str());
  const Case cases[] = {
      {"causal square d64 g1", 200, 200, 4, 4, 64, 0, true, 0, false},
      {"causal square d128 g4", 300, 300, 8, 2, 128, 0, true, 0, false},
      {"causal chunk after prefix", 77, 300, 8, 2, 128, 223, true, 0, false},
      {"causal offset, extra keys", 90, 400, 4, 4, 64, 150, true, 0, false},
      {"window 50 d128 g4", 333, 333, 4, 1, 128, 0, true, 50, false},
      {"window 7 (inside a tile)", 150, 150, 2, 2, 64, 0, true, 7, false},
      {"window 200 after prefix", 260, 700, 8, 1, 128, 440, true, 200, false},
      {"not causal", 65, 190, 2, 2, 64, 0, false, 0, false},
      {"not causal d128 g8", 129, 257, 8, 1, 128, 0, false, 0, false},
      {"one row", 1, 129, 4, 2, 128, 128, true, 0, false},
      {"no keys", 40, 0, 2, 1, 64, 0, false, 0, false},
      {"head-major strides", 150, 150, 4, 2, 128, 0, true, 0, true},
      {"long causal d128 g4", 1100, 1100, 4, 1, 128, 0, true, 0, false},
  };
  // Both kernels on every case; the Hopper one only where the device is one (elsewhere it must refuse).
  std::vector<lc::PrefillKernel> kernels = {lc::PrefillKernel::MmaSync};
  if (info.cc_major == 9) kernels.push_back(lc::PrefillKernel::Wgmma);
  uint32_t seed = 1;
  for (lc::PrefillKernel kernel : kernels)
    for (const Case& cs : cases)
      for (lc::KvDtype dt : {lc::KvDtype::BF16, lc::KvDtype::F16}) run_case(cs, dt, kernel, seed++);
  check_refusals();
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
