// The CUDA decode-step ops (src/backend/cuda/ops.h, gemm.h, synthetic.h) against plain host references on fresh
// random inputs. Outputs are poisoned with NaN (bytes 0xff) before every run, so an unwritten element fails; where an
// op writes into a larger buffer (the KV append), every byte it must not touch is checked to be still poison.
// Exit code 77 (CTest's skip) when no GPU is present.
//
// Tolerances, per output dtype (elementwise |out - ref| <= atol + rtol |ref|):
//   exact (bit-identical): the synthetic generator (host vs device), embedding (a bf16 -> f32 shift), the residual add
//     (one f32 add on both sides), argmax (an index), the V rows of the KV append (one f32 -> bf16 rounding).
//   bf16 outputs of f32 math (rmsnorm, RoPE'd q and k, swiglu, geglu): the device computes in f32, the reference in double,
//     and both round to bf16, so they may land one bf16 step apart: rtol = 2^-7 (one step at the bottom of a binade),
//     atol = 1e-5 (cancellation near zero in the rotation, f32 flush of silu's far tail).
//   f32 GEMM outputs (cuBLASLt, bf16 operands exact in both, f32 accumulation vs double): |out - ref| <= 1e-5 times
//     sum_k |w_k x_k| (f32 rounding of partial sums, whatever the kernel's summation order), and relative L2 <= 1e-4;
//     the same for the fused GEMV's f32 outputs; its SwiGLU output (bf16) within one bf16 step plus 1e-3 of its rms
//     (the gate's f32 error is relative to the sum's magnitude, not to a small gate), relative L2 <= 5e-3.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/synthetic.h"
#include "core/fp16.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;
using namespace longctx::cuda_test;

uint16_t bf16_bits(float x) { return longctx::f32_to_bf16_bits_rne(x); }
float bf16_round(double x) { return bf16_to_f32(bf16_bits(static_cast<float>(x))); }

// Compares n values; returns the number outside atol + rtol |ref| (NaN counts) and prints the first.
size_t compare(const char* what, const float* out, const float* ref, size_t n, double atol, double rtol,
               double* max_err = nullptr) {
  size_t bad = 0;
  double mx = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = std::fabs(static_cast<double>(out[i]) - ref[i]);
    if (!(e <= atol + rtol * std::fabs(ref[i]))) {
      if (bad++ == 0) std::printf("     %s: first bad element %zu: got %.8g want %.8g\n", what, i, out[i], ref[i]);
    }
    if (std::isfinite(e)) mx = std::max(mx, e);
  }
  if (max_err) *max_err = mx;
  return bad;
}

std::vector<float> bf16_vec_to_f32(const std::vector<uint16_t>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = bf16_to_f32(v[i]);
  return f;
}

// ---------------------------------------------------------------------------------------------------------------
void test_synthetic() {
  longctx::ModelShape m;
  uint64_t seed = 0;
  CHECK_OK(lc::synthetic_shape("llama3-8b:42", &m, &seed));
  report(seed == 42 && m.n_layer == 32 && m.n_embd == 4096 && m.n_vocab == 128256 && m.rope_base == 500000.0f,
         "synthetic_shape llama3-8b:42");
  longctx::ModelShape bad;
  report(!lc::synthetic_shape("llama9", &bad, &seed).ok(), "synthetic_shape refuses an unknown name");
  report(!lc::synthetic_shape("tiny:x1", &bad, &seed).ok(), "synthetic_shape refuses a bad seed");

  struct Case {
    longctx::TensorKind kind;
    int32_t layer;
    size_t n;
    uint64_t first;
    size_t dst_offset;  // elements: 1 makes the destination unaligned, exercising the scalar path
  };
  const Case cases[] = {{longctx::TensorKind::Wq, 0, 100003, 0, 0},
                        {longctx::TensorKind::WDown, 31, 65536, 58720256 - 65536, 1},  // the end of a 4096 x 14336 matrix
                        {longctx::TensorKind::AttnNorm, 5, 4096, 0, 0},
                        {longctx::TensorKind::Output, -1, 4097, (uint64_t{1} << 33) + 5, 3},  // 64-bit indices
                        {longctx::TensorKind::KvCache, -1, 777, 12345, 0}};
  for (const Case& c : cases) {
    const longctx::TensorInit init = longctx::synthetic_tensor_init(m, c.kind);
    const uint32_t id = longctx::tensor_id(c.kind, c.layer);
    DevBuf d((c.n + c.dst_offset) * 2);
    d.poison();
    CHECK_OK(lc::synthetic_fill_bf16(d.as<uint16_t>() + c.dst_offset, c.n, seed, id, init, c.first));
    const std::vector<uint16_t> got = d.download<uint16_t>(c.n + c.dst_offset);
    size_t n_diff = 0;
    double sum = 0, sum2 = 0;
    for (size_t i = 0; i < c.n; ++i) {
      const uint16_t want = longctx::synthetic_bf16(seed, id, c.first + i, init);
      n_diff += got[c.dst_offset + i] != want;
      const double v = bf16_to_f32(want);
      sum += v;
      sum2 += v * v;
    }
    for (size_t i = 0; i < c.dst_offset; ++i) n_diff += got[i] != 0xffffu;  // nothing written before the start
    const double mean = sum / c.n, sd = std::sqrt(sum2 / c.n - mean * mean);
    // The uniform's standard deviation is amplitude / sqrt(3) = unit * 2^23 / sqrt(3).
    const double want_sd = init.unit * 8388608.0 / std::sqrt(3.0), want_mean = init.offset_units * double(init.unit);
    const bool stats = std::fabs(sd - want_sd) < 0.05 * want_sd + 1e-9 && std::fabs(mean - want_mean) < 0.05 * want_sd + 1e-3;
    char buf[200];
    std::snprintf(buf, sizeof buf, "synthetic tensor %u: %zu elements host == device bits (%zu differ), mean %.4f sd %.5f (want %.4f, %.5f)",
                  id, c.n, n_diff, mean, sd, want_mean, want_sd);
    report(n_diff == 0 && stats, buf);
  }
  // Different seeds and tensors give different streams.
  const longctx::TensorInit init = longctx::synthetic_tensor_init(m, longctx::TensorKind::Wq);
  int same_seed = 0, same_tensor = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same_seed += longctx::synthetic_bf16(1, 4, i, init) == longctx::synthetic_bf16(2, 4, i, init);
    same_tensor += longctx::synthetic_bf16(1, 4, i, init) == longctx::synthetic_bf16(1, 5, i, init);
  }
  report(same_seed < 50 && same_tensor < 50, "synthetic streams differ across seeds and tensors");
}

// ---------------------------------------------------------------------------------------------------------------
void test_embedding(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int32_t n_embd : {256, 4096}) {
    const int32_t n_vocab = 1000;
    std::vector<uint16_t> table(static_cast<size_t>(n_vocab) * n_embd);
    for (auto& t : table) t = bf16_bits(nd(rng));
    DevBuf d_table(table.size() * 2), d_tok(4), d_x(static_cast<size_t>(n_embd) * 4);
    d_table.upload(table);
    for (int32_t tok : {0, static_cast<int32_t>(rng() % n_vocab), n_vocab - 1, n_vocab, -1}) {
      d_tok.upload(std::vector<int32_t>{tok});
      d_x.poison();
      CHECK_OK(lc::embedding_lookup(d_table.p, d_tok.as<int32_t>(), 1, n_vocab, n_embd, d_x.as<float>()));
      const std::vector<float> x = d_x.download<float>(static_cast<size_t>(n_embd));
      bool ok = true;
      for (int32_t i = 0; i < n_embd; ++i) {
        if (tok < 0 || tok >= n_vocab)
          ok &= std::isnan(x[static_cast<size_t>(i)]);
        else
          ok &= x[static_cast<size_t>(i)] == bf16_to_f32(table[static_cast<size_t>(tok) * n_embd + i]);
      }
      report(ok, "embedding n_embd " + std::to_string(n_embd) + " token " + std::to_string(tok) +
                     (tok < 0 || tok >= n_vocab ? " (out of range -> NaN row)" : " (exact)"));
    }
    // Several tokens at once (a prefill): row t is token t's row.
    const std::vector<int32_t> toks = {7, static_cast<int32_t>(rng() % n_vocab), n_vocab - 1, 7};
    DevBuf d_toks(toks.size() * 4), d_xs(toks.size() * n_embd * 4);
    d_toks.upload(toks);
    d_xs.poison();
    CHECK_OK(lc::embedding_lookup(d_table.p, d_toks.as<int32_t>(), static_cast<int32_t>(toks.size()), n_vocab, n_embd,
                                  d_xs.as<float>()));
    const std::vector<float> xs = d_xs.download<float>(toks.size() * n_embd);
    bool ok = true;
    for (size_t t = 0; t < toks.size(); ++t)
      for (int32_t i = 0; i < n_embd; ++i)
        ok &= xs[t * n_embd + i] == bf16_to_f32(table[static_cast<size_t>(toks[t]) * n_embd + i]);
    report(ok, "embedding n_embd " + std::to_string(n_embd) + ", 4 tokens at once (exact)");
  }
}

// ---------------------------------------------------------------------------------------------------------------
void test_rmsnorm(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int32_t n : {256, 4096}) {
    const int32_t n_rows = 3;
    const float eps = 1e-5f;
    std::vector<float> x(static_cast<size_t>(n_rows) * n);
    for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * (1.0f + 3.0f * static_cast<float>(i / n));  // rows of scale 1, 4, 7
    std::vector<uint16_t> w(static_cast<size_t>(n));
    for (auto& v : w) v = bf16_bits(1.0f + 0.1f * nd(rng));
    DevBuf d_x(x.size() * 4), d_w(w.size() * 2), d_y(x.size() * 2);
    d_x.upload(x);
    d_w.upload(w);
    d_y.poison();
    CHECK_OK(lc::rmsnorm(d_x.as<float>(), d_w.p, d_y.p, n_rows, n, eps));
    const std::vector<float> y = bf16_vec_to_f32(d_y.download<uint16_t>(x.size()));
    std::vector<float> ref(x.size());
    for (int32_t r = 0; r < n_rows; ++r) {
      double ss = 0;
      for (int32_t i = 0; i < n; ++i) ss += double(x[static_cast<size_t>(r) * n + i]) * x[static_cast<size_t>(r) * n + i];
      const double scale = 1.0 / std::sqrt(ss / n + eps);
      for (int32_t i = 0; i < n; ++i)
        ref[static_cast<size_t>(r) * n + i] = bf16_round(x[static_cast<size_t>(r) * n + i] * scale * bf16_to_f32(w[static_cast<size_t>(i)]));
    }
    double mx = 0;
    const size_t bad = compare("rmsnorm", y.data(), ref.data(), y.size(), 1e-5, 1.0 / 128, &mx);
    report(bad == 0, "rmsnorm " + std::to_string(n_rows) + " x " + std::to_string(n) + " bf16 out, max abs err " + std::to_string(mx));
  }
  report(!lc::rmsnorm(nullptr, nullptr, nullptr, 1, 10, 1e-5f).ok(), "rmsnorm refuses n % 4 != 0");
}

// ---------------------------------------------------------------------------------------------------------------
void test_gated(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (const bool gelu : {false, true})
    for (int32_t n_ff : {512, 14336}) {
      const int32_t n_rows = 3;  // rows of (gate, up): a prefill's; a decode step has one
      std::vector<float> gu(static_cast<size_t>(n_rows) * 2 * n_ff);
      for (auto& v : gu) v = nd(rng);
      gu[0] = -100.0f;  // the activations' far tails
      gu[1] = 100.0f;
      gu[2] = -1e4f;
      gu[3] = 1e4f;
      DevBuf d_gu(gu.size() * 4), d_h(static_cast<size_t>(n_rows) * n_ff * 2);
      d_gu.upload(gu);
      d_h.poison();
      CHECK_OK(gelu ? lc::geglu(d_gu.as<float>(), d_h.p, n_rows, n_ff)
                    : lc::swiglu(d_gu.as<float>(), d_h.p, n_rows, n_ff));
      const std::vector<float> h = bf16_vec_to_f32(d_h.download<uint16_t>(static_cast<size_t>(n_rows) * n_ff));
      std::vector<float> ref(h.size());
      for (int32_t r = 0; r < n_rows; ++r)
        for (int32_t i = 0; i < n_ff; ++i) {
          const size_t row = static_cast<size_t>(r) * 2 * n_ff;
          const double g = gu[row + static_cast<size_t>(i)], u = gu[row + static_cast<size_t>(n_ff + i)];
          const double act = gelu ? 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)))
                                  : g / (1.0 + std::exp(-g));
          ref[static_cast<size_t>(r) * n_ff + static_cast<size_t>(i)] = bf16_round(act * u);
        }
      double mx = 0;
      const char* name = gelu ? "geglu" : "swiglu";
      const size_t bad = compare(name, h.data(), ref.data(), h.size(), 1e-5, 1.0 / 128, &mx);
      report(bad == 0, std::string(name) + " " + std::to_string(n_rows) + " x " + std::to_string(n_ff) +
                           " bf16 out, max abs err " + std::to_string(mx));
    }
  report(!lc::geglu(nullptr, nullptr, 1, 10).ok(), "geglu refuses n_ff % 4 != 0");
  report(!lc::swiglu(nullptr, nullptr, 0, 16).ok(), "swiglu refuses 0 rows");
}

// ---------------------------------------------------------------------------------------------------------------
void test_add(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n = 100003;
  std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  for (auto& v : y) v = nd(rng);
  DevBuf d_x(x.size() * 4), d_y(y.size() * 4);
  d_x.upload(x);
  d_y.upload(y);
  CHECK_OK(lc::add_in_place(d_x.as<float>(), d_y.as<float>(), n));
  const std::vector<float> out = d_x.download<float>(x.size());
  size_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) bad += out[i] != x[i] + y[i];
  report(bad == 0, "add_in_place " + std::to_string(n) + " f32 (exact)");
}

// ---------------------------------------------------------------------------------------------------------------
void test_argmax(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  DevBuf ws(lc::argmax_workspace_bytes()), d_idx(4);
  CHECK_OK(lc::device_fill_bytes(ws.p, 0, ws.bytes));
  for (int32_t n : {1, 7, 4097, 128256}) {
    for (int variant = 0; variant < 4; ++variant) {
      std::vector<float> l(static_cast<size_t>(n));
      for (auto& v : l) v = nd(rng) - 5.0f;  // mostly negative: the key's sign handling matters
      std::string what;
      if (variant == 1 && n > 3) {  // a tie: the smaller index wins
        const size_t a = rng() % (n / 2), b = n / 2 + rng() % (n / 2);
        l[a] = l[b] = 10.0f;
        what = " tie";
      } else if (variant == 2) {
        std::fill(l.begin(), l.end(), -3.0f);
        what = " all equal";
      } else if (variant == 3 && n > 3) {
        l[static_cast<size_t>(n / 3)] = std::nanf("");
        l[static_cast<size_t>(n / 2)] = 1e30f;
        what = " NaN wins";
      }
      size_t want = static_cast<size_t>(std::max_element(l.begin(), l.end()) - l.begin());
      if (variant == 3 && n > 3) want = static_cast<size_t>(n / 3);
      DevBuf d_l(l.size() * 4);
      d_l.upload(l);
      d_idx.poison();
      CHECK_OK(lc::argmax(d_l.as<float>(), n, d_idx.as<int32_t>(), ws.p));
      const int32_t got = d_idx.download<int32_t>(1)[0];
      const std::vector<uint32_t> w = ws.download<uint32_t>(lc::argmax_workspace_bytes() / 4);
      const bool ws_clean = std::all_of(w.begin(), w.end(), [](uint32_t v) { return v == 0; });
      report(got == static_cast<int32_t>(want) && ws_clean,
             "argmax n " + std::to_string(n) + what + ": got " + std::to_string(got) + " want " + std::to_string(want) +
                 (ws_clean ? "" : " (workspace not reset)"));
    }
  }
  report(!lc::argmax(nullptr, 0, nullptr, nullptr).ok(), "argmax refuses n = 0");
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE in adjacent pairs, as cpu::rope with RopeOrder::Adjacent: angles in double, rounded to f32 cos/sin.
void rope_ref(const float* x, int32_t pos, int32_t D, double base, float* y) {
  for (int32_t i = 0; i < D / 2; ++i) {
    const double a = pos * std::pow(base, -2.0 * i / D);
    const double c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
    y[2 * i] = bf16_round(x[2 * i] * c - x[2 * i + 1] * s);
    y[2 * i + 1] = bf16_round(x[2 * i] * s + x[2 * i + 1] * c);
  }
}

void test_rope_kv_append(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    int32_t n_head, n_head_kv, d, pt, max_tokens;
    float base;
  };
  for (const Case& c : {Case{32, 8, 128, 64, 300, 500000.0f}, Case{4, 2, 64, 16, 40, 10000.0f}}) {
    const int32_t hkv = c.n_head_kv, D = c.d, pt = c.pt, max_pages = (c.max_tokens + pt - 1) / pt;
    const int32_t n_pages = hkv * max_pages;
    std::vector<int32_t> table(static_cast<size_t>(n_pages));
    for (int32_t i = 0; i < n_pages; ++i) table[static_cast<size_t>(i)] = i;
    std::shuffle(table.begin(), table.end(), rng);
    std::vector<int32_t> n_tok(static_cast<size_t>(hkv));
    for (int32_t h = 0; h < hkv; ++h) n_tok[static_cast<size_t>(h)] = static_cast<int32_t>(rng() % (c.max_tokens - 2));
    n_tok[0] = pt - 1;  // the second append crosses into the next page
    n_tok[static_cast<size_t>(hkv - 1)] = 0;
    const size_t page_elems = 2 * static_cast<size_t>(pt) * D;
    DevBuf d_pool(static_cast<size_t>(n_pages) * page_elems * 2), d_table(table.size() * 4),
        d_positions(static_cast<size_t>(hkv) * c.max_tokens * 4), d_ntok(static_cast<size_t>(hkv) * 4), d_pos(4),
        d_qkv(static_cast<size_t>(c.n_head + 2 * hkv) * D * 4), d_q(static_cast<size_t>(c.n_head) * D * 2);
    d_pool.poison();
    d_positions.poison();  // -1
    d_table.upload(table);
    d_ntok.upload(n_tok);
    lc::PagedKvView kv;
    kv.pool = d_pool.p;
    kv.page_table = d_table.as<int32_t>();
    kv.positions = d_positions.as<int32_t>();
    kv.n_tokens = d_ntok.as<int32_t>();
    kv.n_seq = 1;
    kv.n_head_kv = hkv;
    kv.head_dim = D;
    kv.page_tokens = pt;
    kv.max_pages = max_pages;
    kv.max_tokens = c.max_tokens;
    kv.dtype = lc::KvDtype::BF16;

    // Expected store contents, updated after each append: the pool as bf16 bits (poison elsewhere).
    std::vector<uint16_t> want_pool(static_cast<size_t>(n_pages) * page_elems, 0xffffu);
    std::vector<int32_t> want_positions(static_cast<size_t>(hkv) * c.max_tokens, -1);
    std::vector<float> k_ref_f(want_pool.size(), 0.0f);  // rounded reference values where K rows are written
    std::vector<char> is_k(want_pool.size(), 0);
    size_t q_bad = 0, k_bad = 0, v_bad = 0, other_bad = 0, meta_bad = 0;
    double q_max = 0;
    for (int step = 0; step < 2; ++step) {
      const int32_t pos = step == 0 ? static_cast<int32_t>(rng() % 200000) : 131071;
      std::vector<float> qkv(static_cast<size_t>(c.n_head + 2 * hkv) * D);
      for (auto& v : qkv) v = nd(rng) * 2.0f;
      d_qkv.upload(qkv);
      d_pos.upload(std::vector<int32_t>{pos});
      d_q.poison();
      CHECK_OK(lc::rope_kv_append(d_qkv.as<float>(), d_pos.as<int32_t>(), c.n_head, c.base, d_q.p, kv));
      const std::vector<float> q = bf16_vec_to_f32(d_q.download<uint16_t>(static_cast<size_t>(c.n_head) * D));
      std::vector<float> q_ref(q.size());
      for (int32_t h = 0; h < c.n_head; ++h) rope_ref(qkv.data() + static_cast<size_t>(h) * D, pos, D, c.base, q_ref.data() + static_cast<size_t>(h) * D);
      double mx = 0;
      q_bad += compare("q", q.data(), q_ref.data(), q.size(), 1e-5, 1.0 / 128, &mx);
      q_max = std::max(q_max, mx);
      for (int32_t h = 0; h < hkv; ++h) {
        const int32_t slot = n_tok[static_cast<size_t>(h)]++;
        const size_t page = static_cast<size_t>(table[static_cast<size_t>(h) * max_pages + slot / pt]);
        const size_t k_off = page * page_elems + static_cast<size_t>(slot % pt) * D;
        const size_t v_off = k_off + static_cast<size_t>(pt) * D;
        std::vector<float> k_rot(static_cast<size_t>(D));
        rope_ref(qkv.data() + static_cast<size_t>(c.n_head + h) * D, pos, D, c.base, k_rot.data());
        for (int32_t i = 0; i < D; ++i) {
          is_k[k_off + i] = 1;
          k_ref_f[k_off + i] = k_rot[static_cast<size_t>(i)];
          want_pool[k_off + i] = 0;  // checked by tolerance, not bits
          want_pool[v_off + i] = bf16_bits(qkv[static_cast<size_t>(c.n_head + hkv + h) * D + i]);
        }
        want_positions[static_cast<size_t>(h) * c.max_tokens + slot] = pos;
      }
    }
    const std::vector<uint16_t> pool = d_pool.download<uint16_t>(want_pool.size());
    for (size_t i = 0; i < pool.size(); ++i) {
      if (is_k[i]) {
        const double e = std::fabs(double(bf16_to_f32(pool[i])) - k_ref_f[i]);
        k_bad += !(e <= 1e-5 + std::fabs(k_ref_f[i]) / 128);
      } else if (want_pool[i] != 0xffffu) {
        v_bad += pool[i] != want_pool[i];
      } else {
        other_bad += pool[i] != 0xffffu;
      }
    }
    const std::vector<int32_t> positions = d_positions.download<int32_t>(want_positions.size());
    const std::vector<int32_t> ntok = d_ntok.download<int32_t>(static_cast<size_t>(hkv));
    for (size_t i = 0; i < positions.size(); ++i) meta_bad += positions[i] != want_positions[i];
    for (int32_t h = 0; h < hkv; ++h) meta_bad += ntok[static_cast<size_t>(h)] != n_tok[static_cast<size_t>(h)];
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "rope_kv_append %d/%d d%d pages of %d, 2 appends: q bad %zu (max abs %.2e), k bad %zu, v bad %zu, "
                  "untouched bytes changed %zu, positions/counts bad %zu",
                  c.n_head, hkv, D, pt, q_bad, q_max, k_bad, v_bad, other_bad, meta_bad);
    report(q_bad + k_bad + v_bad + other_bad + meta_bad == 0, buf);
  }
  lc::PagedKvView kv;
  kv.head_dim = 256;
  kv.n_seq = 1;
  kv.n_head_kv = 1;
  report(!lc::rope_kv_append(nullptr, nullptr, 1, 1e4f, nullptr, kv).ok(), "rope_kv_append refuses head_dim 256");
}

// The prompt form (rope_kv_append_rows, a prefill's) against the decode form run once per token on a twin store:
// the same kernel arithmetic, so the pools, positions, counts and queries must agree bit for bit, and the dense K/V
// copies must be the pool's rows.
void test_rope_kv_append_rows(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_head = 8, hkv = 2, D = 128, pt = 16, max_tokens = 80, n = 37, pos0 = 1000;
  const int32_t max_pages = max_tokens / pt, n_pages = hkv * max_pages, W = n_head + 2 * hkv;
  std::vector<int32_t> table(static_cast<size_t>(n_pages));
  for (int32_t i = 0; i < n_pages; ++i) table[static_cast<size_t>(i)] = i;
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<float> qkv(static_cast<size_t>(n) * W * D);
  for (auto& v : qkv) v = nd(rng) * 2.0f;
  const size_t pool_bytes = static_cast<size_t>(n_pages) * 2 * pt * D * 2;
  struct Store {
    DevBuf pool, table, positions, ntok;
    lc::PagedKvView kv;
    Store(size_t pool_bytes, const std::vector<int32_t>& t, int32_t hkv, int32_t D, int32_t pt, int32_t max_pages,
          int32_t max_tokens)
        : pool(pool_bytes),
          table(t.size() * 4),
          positions(static_cast<size_t>(hkv) * max_tokens * 4),
          ntok(static_cast<size_t>(hkv) * 4) {
      pool.poison();
      positions.poison();
      table.upload(t);
      ntok.upload(std::vector<int32_t>(static_cast<size_t>(hkv), 0));
      kv.pool = pool.p, kv.page_table = table.as<int32_t>(), kv.positions = positions.as<int32_t>();
      kv.n_tokens = ntok.as<int32_t>(), kv.n_seq = 1, kv.n_head_kv = hkv, kv.head_dim = D, kv.page_tokens = pt;
      kv.max_pages = max_pages, kv.max_tokens = max_tokens, kv.dtype = lc::KvDtype::BF16;
    }
  };
  Store rows(pool_bytes, table, hkv, D, pt, max_pages, max_tokens),
      steps(pool_bytes, table, hkv, D, pt, max_pages, max_tokens);
  DevBuf d_qkv(qkv.size() * 4), d_q(static_cast<size_t>(n) * n_head * D * 2), d_k(static_cast<size_t>(n) * hkv * D * 2),
      d_v(d_k.bytes), d_q1(static_cast<size_t>(n_head) * D * 2), d_pos(4);
  d_qkv.upload(qkv);
  d_q.poison(), d_k.poison(), d_v.poison();
  CHECK_OK(lc::rope_kv_append_rows(d_qkv.as<float>(), n, pos0, 0, n_head, 500000.0f, d_q.p, d_k.p, d_v.p, rows.kv));
  const std::vector<uint16_t> q_rows = d_q.download<uint16_t>(static_cast<size_t>(n) * n_head * D);
  bool q_same = true;
  for (int32_t r = 0; r < n; ++r) {
    DevBuf d_row(static_cast<size_t>(W) * D * 4);
    d_row.upload(std::vector<float>(qkv.begin() + static_cast<std::ptrdiff_t>(r) * W * D,
                                    qkv.begin() + static_cast<std::ptrdiff_t>(r + 1) * W * D));
    d_pos.upload(std::vector<int32_t>{pos0 + r});
    CHECK_OK(lc::rope_kv_append(d_row.as<float>(), d_pos.as<int32_t>(), n_head, 500000.0f, d_q1.p, steps.kv));
    const std::vector<uint16_t> q1 = d_q1.download<uint16_t>(static_cast<size_t>(n_head) * D);
    q_same &= std::equal(q1.begin(), q1.end(), q_rows.begin() + static_cast<std::ptrdiff_t>(r) * n_head * D);
  }
  const std::vector<uint16_t> pool_r = rows.pool.download<uint16_t>(pool_bytes / 2),
                              pool_s = steps.pool.download<uint16_t>(pool_bytes / 2);
  const size_t n_pos = static_cast<size_t>(hkv) * max_tokens;
  const bool meta_same = rows.positions.download<int32_t>(n_pos) == steps.positions.download<int32_t>(n_pos) &&
                         rows.ntok.download<int32_t>(hkv) == std::vector<int32_t>(static_cast<size_t>(hkv), n) &&
                         steps.ntok.download<int32_t>(hkv) == std::vector<int32_t>(static_cast<size_t>(hkv), n);
  // Dense copies: row (r, h) of k_out / v_out is slot r of head h in the pool.
  const std::vector<uint16_t> k = d_k.download<uint16_t>(static_cast<size_t>(n) * hkv * D),
                              v = d_v.download<uint16_t>(k.size());
  bool dense_same = true;
  for (int32_t r = 0; r < n; ++r)
    for (int32_t h = 0; h < hkv; ++h) {
      const size_t page = static_cast<size_t>(table[static_cast<size_t>(h) * max_pages + r / pt]);
      const size_t k_off = page * 2 * pt * D + static_cast<size_t>(r % pt) * D,
                   v_off = k_off + static_cast<size_t>(pt) * D;
      const size_t d_off = (static_cast<size_t>(r) * hkv + h) * D;
      dense_same &= std::equal(k.begin() + d_off, k.begin() + d_off + D, pool_r.begin() + k_off) &&
                    std::equal(v.begin() + d_off, v.begin() + d_off + D, pool_r.begin() + v_off);
    }
  report(pool_r == pool_s && q_same && meta_same && dense_same,
         "rope_kv_append_rows over 37 tokens (3 pages a head) = 37 single appends, bit for bit (pool, positions, "
         "counts, q), and its dense K/V are the pool's rows");
  report(!lc::rope_kv_append_rows(d_qkv.as<float>(), n, 0, max_tokens - n + 1, n_head, 500000.0f, d_q.p, d_k.p, d_v.p,
                                  rows.kv)
              .ok(),
         "rope_kv_append_rows refuses rows past max_tokens");
}

// ---------------------------------------------------------------------------------------------------------------
void test_gemm(std::mt19937& rng) {
  std::unique_ptr<lc::GemmRunner> g;
  CHECK_OK(lc::GemmRunner::create(size_t{32} << 20, &g));
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  struct Case {
    int32_t n_out, n_in, n_cols;
    lc::GemmAccumulate acc;
  };
  for (const Case& c : {Case{6144, 4096, 1, lc::GemmAccumulate::Overwrite}, Case{4096, 14336, 1, lc::GemmAccumulate::Add},
                        Case{512, 256, 1, lc::GemmAccumulate::Overwrite}, Case{1000, 256, 3, lc::GemmAccumulate::Add}}) {
    int32_t id = -1;
    CHECK_OK(g->add_shape(c.n_out, c.n_in, c.n_cols, c.acc, &id));
    const size_t nw = static_cast<size_t>(c.n_out) * c.n_in, nx = static_cast<size_t>(c.n_cols) * c.n_in,
                 ny = static_cast<size_t>(c.n_cols) * c.n_out;
    std::vector<uint16_t> w(nw), x(nx);
    for (auto& v : w) v = bf16_bits(ud(rng) * 0.05f);
    for (auto& v : x) v = bf16_bits(ud(rng));
    std::vector<float> y0(ny);
    for (auto& v : y0) v = ud(rng);
    DevBuf d_w(nw * 2), d_w2(nw * 2), d_x(nx * 2), d_y(ny * 4);
    d_w.upload(w);
    CHECK_OK(lc::device_fill_bytes(d_w2.p, 0x3c, d_w2.bytes));  // a second finite matrix to rotate over
    d_x.upload(x);
    d_y.upload(y0);
    const void* ws[2] = {d_w.p, d_w2.p};
    lc::GemmTuneResult tr;
    CHECK_OK(g->tune(id, ws, 2, d_x.p, d_y.as<float>(), nullptr, 4, &tr));
    if (c.acc == lc::GemmAccumulate::Add)
      d_y.upload(y0);
    else
      d_y.poison();
    CHECK_OK(g->run(id, d_w.p, d_x.p, d_y.as<float>(), nullptr));
    const std::vector<float> y = d_y.download<float>(ny);
    size_t bad = 0;
    double e2 = 0, r2 = 0;
    for (int32_t col = 0; col < c.n_cols; ++col)
      for (int32_t o = 0; o < c.n_out; ++o) {
        double acc = 0, mag = 0;
        for (int32_t k = 0; k < c.n_in; ++k) {
          const double t = double(bf16_to_f32(w[static_cast<size_t>(o) * c.n_in + k])) * bf16_to_f32(x[static_cast<size_t>(col) * c.n_in + k]);
          acc += t;
          mag += std::fabs(t);
        }
        const size_t i = static_cast<size_t>(col) * c.n_out + o;
        const double ref = (c.acc == lc::GemmAccumulate::Add ? y0[i] : 0.0) + acc;
        const double e = std::fabs(y[i] - ref);
        bad += !(e <= 1e-5 * (mag + 1.0));
        e2 += std::isfinite(e) ? e * e : 1e30;
        r2 += ref * ref;
      }
    const double rel = std::sqrt(e2 / r2);
    char buf[256];
    std::snprintf(buf, sizeof buf, "gemm %d x %d, %d col%s, %s: rel L2 %.2e, %zu bad; tuned %d candidates (%.1f -> %.1f us)",
                  c.n_out, c.n_in, c.n_cols, c.n_cols > 1 ? "s" : "", c.acc == lc::GemmAccumulate::Add ? "y += x W^T" : "y = x W^T",
                  rel, bad, tr.n_candidates, tr.first_us, tr.best_us);
    report(bad == 0 && rel <= 1e-4, buf);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The fused GEMV (ops.h, gemv): every prologue and epilogue, shapes of llama3-8b and of the tiny model, and an output
// larger than one wave of warps (the warps loop). W comes from the synthetic generator under a fresh seed (host and
// device bits are identical, checked above), x from the test's generator.
void test_gemv(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  struct Case {
    int32_t n_out, n_in;
    bool norm;
    lc::GemvEpilogue epi;
  };
  const Case cases[] = {{6144, 4096, true, lc::GemvEpilogue::Store},   {4096, 4096, false, lc::GemvEpilogue::Add},
                        {28672, 4096, true, lc::GemvEpilogue::SwiGLU}, {4096, 14336, false, lc::GemvEpilogue::Add},
                        {40000, 4096, true, lc::GemvEpilogue::Store},  {512, 256, true, lc::GemvEpilogue::Store},
                        {1024, 256, true, lc::GemvEpilogue::SwiGLU},   {256, 512, false, lc::GemvEpilogue::Add}};
  for (const Case& c : cases) {
    const uint64_t seed = rng();
    const longctx::TensorInit init = longctx::tensor_init(0.0f, static_cast<float>(std::sqrt(3.0 / c.n_in)));
    const size_t nw = static_cast<size_t>(c.n_out) * c.n_in;
    DevBuf d_w(nw * 2);
    CHECK_OK(lc::synthetic_fill_bf16(d_w.p, nw, seed, 77, init));
    std::vector<float> w(nw);
    for (size_t i = 0; i < nw; ++i) w[i] = bf16_to_f32(longctx::synthetic_bf16(seed, 77, i, init));
    // The input as the kernel sees it: bf16 x, or f32 x normed with bf16 weights and rounded to bf16.
    std::vector<float> x32(static_cast<size_t>(c.n_in)), xn(static_cast<size_t>(c.n_in));
    std::vector<uint16_t> xb(static_cast<size_t>(c.n_in)), nwb(static_cast<size_t>(c.n_in));
    for (auto& v : x32) v = nd(rng) * 3.0f;
    for (auto& v : nwb) v = bf16_bits(1.0f + 0.1f * nd(rng));
    if (c.norm) {
      double ss = 0;
      for (float v : x32) ss += double(v) * v;
      const double scale = 1.0 / std::sqrt(ss / c.n_in + 1e-5);
      for (int32_t i = 0; i < c.n_in; ++i)
        xn[static_cast<size_t>(i)] = bf16_round(x32[static_cast<size_t>(i)] * scale * bf16_to_f32(nwb[static_cast<size_t>(i)]));
    } else {
      for (int32_t i = 0; i < c.n_in; ++i) {
        xb[static_cast<size_t>(i)] = bf16_bits(x32[static_cast<size_t>(i)]);
        xn[static_cast<size_t>(i)] = bf16_to_f32(xb[static_cast<size_t>(i)]);
      }
    }
    std::vector<double> ref(static_cast<size_t>(c.n_out)), mag(static_cast<size_t>(c.n_out));
    for (int32_t o = 0; o < c.n_out; ++o) {
      double acc = 0, m = 0;
      const float* wr = w.data() + static_cast<size_t>(o) * c.n_in;
      for (int32_t k = 0; k < c.n_in; ++k) {
        const double t = double(wr[k]) * xn[static_cast<size_t>(k)];
        acc += t;
        m += std::fabs(t);
      }
      ref[static_cast<size_t>(o)] = acc;
      mag[static_cast<size_t>(o)] = m;
    }
    std::vector<float> y0(static_cast<size_t>(c.n_out));
    for (auto& v : y0) v = nd(rng);
    DevBuf d_x32(x32.size() * 4), d_xb(xb.size() * 2), d_nw(nwb.size() * 2), d_y(y0.size() * 4),
        d_h(static_cast<size_t>(c.n_out / 2) * 2);
    d_x32.upload(x32);
    d_xb.upload(xb);
    d_nw.upload(nwb);
    if (c.epi == lc::GemvEpilogue::Add) d_y.upload(y0); else d_y.poison();
    d_h.poison();
    lc::GemvArgs a;
    a.w = d_w.p;
    a.n_out = c.n_out;
    a.n_in = c.n_in;
    if (c.norm) {
      a.x_f32 = d_x32.as<float>();
      a.norm_w = d_nw.p;
    } else {
      a.x_bf16 = d_xb.p;
    }
    a.epilogue = c.epi;
    a.y = d_y.as<float>();
    a.h = d_h.p;
    CHECK_OK(lc::gemv(a));
    size_t bad = 0;
    double e2 = 0, r2 = 0;
    if (c.epi == lc::GemvEpilogue::SwiGLU) {
      const int32_t n = c.n_out / 2;
      const std::vector<float> h = bf16_vec_to_f32(d_h.download<uint16_t>(static_cast<size_t>(n)));
      std::vector<double> hr(static_cast<size_t>(n));
      double rms = 0;
      for (int32_t i = 0; i < n; ++i) {
        const double g = ref[static_cast<size_t>(i)], u = ref[static_cast<size_t>(n + i)];
        hr[static_cast<size_t>(i)] = bf16_round(g / (1.0 + std::exp(-g)) * u);
        rms += hr[static_cast<size_t>(i)] * hr[static_cast<size_t>(i)];
      }
      rms = std::sqrt(rms / n);
      for (int32_t i = 0; i < n; ++i) {
        const double e = std::fabs(h[static_cast<size_t>(i)] - hr[static_cast<size_t>(i)]);
        bad += !(e <= std::fabs(hr[static_cast<size_t>(i)]) / 128 + 1e-3 * rms);
        e2 += std::isfinite(e) ? e * e : 1e30;
        r2 += hr[static_cast<size_t>(i)] * hr[static_cast<size_t>(i)];
      }
    } else {
      const std::vector<float> y = d_y.download<float>(static_cast<size_t>(c.n_out));
      for (int32_t o = 0; o < c.n_out; ++o) {
        const double r = (c.epi == lc::GemvEpilogue::Add ? y0[static_cast<size_t>(o)] : 0.0) + ref[static_cast<size_t>(o)];
        const double e = std::fabs(y[static_cast<size_t>(o)] - r);
        // f32 accumulation, plus an input element that the f32 norm may round one bf16 step from the double one.
        bad += !(e <= 1e-5 * mag[static_cast<size_t>(o)] + 1e-6);
        e2 += std::isfinite(e) ? e * e : 1e30;
        r2 += r * r;
      }
    }
    const double rel = std::sqrt(e2 / r2);
    const char* epi = c.epi == lc::GemvEpilogue::Store ? "store" : c.epi == lc::GemvEpilogue::Add ? "add" : "swiglu";
    char buf[200];
    std::snprintf(buf, sizeof buf, "gemv %d x %d, %s in, %s out: rel L2 %.2e, %zu bad", c.n_out, c.n_in,
                  c.norm ? "rmsnorm(f32)" : "bf16", epi, rel, bad);
    report(bad == 0 && rel <= (c.epi == lc::GemvEpilogue::SwiGLU ? 5e-3 : 1e-4), buf);
  }
  lc::GemvArgs a;
  a.n_out = 3;
  a.n_in = 8;
  report(!lc::gemv(a).ok(), "gemv refuses an odd n_out");
}

// The QKV product with RoPE and the KV append fused into its epilogue (GemvEpilogue::RopeAppend) against the two
// ops it replaces (the product's f32 output, then rope_kv_append) on a twin store: the same arithmetic, so queries,
// pools, positions and counts must agree bit for bit. Two appends, the second into a head that is full (dropped by
// both), and the block counter must be back at zero after each.
void test_gemv_rope_append(std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_head = 8, hkv = 2, D = 128, n_in = 512, pt = 16, max_tokens = 48, W = n_head + 2 * hkv;
  const int32_t max_pages = max_tokens / pt, n_pages = hkv * max_pages, n_out = W * D;
  const float base = 500000.0f;
  std::vector<int32_t> table(static_cast<size_t>(n_pages));
  for (int32_t i = 0; i < n_pages; ++i) table[static_cast<size_t>(i)] = i;
  std::shuffle(table.begin(), table.end(), rng);
  const std::vector<int32_t> n_tok0 = {5, max_tokens - 1};
  const size_t pool_bytes = static_cast<size_t>(n_pages) * 2 * pt * D * 2,
               n_pos = static_cast<size_t>(hkv) * max_tokens;
  struct Store {
    DevBuf pool, table, positions, ntok;
    lc::PagedKvView kv;
    Store(size_t pool_bytes, const std::vector<int32_t>& t, const std::vector<int32_t>& n_tok, size_t n_pos, int32_t D,
          int32_t pt, int32_t max_pages, int32_t max_tokens)
        : pool(pool_bytes), table(t.size() * 4), positions(n_pos * 4), ntok(n_tok.size() * 4) {
      pool.poison();
      positions.poison();
      table.upload(t);
      ntok.upload(n_tok);
      kv.pool = pool.p, kv.page_table = table.as<int32_t>(), kv.positions = positions.as<int32_t>();
      kv.n_tokens = ntok.as<int32_t>(), kv.n_seq = 1, kv.n_head_kv = static_cast<int32_t>(n_tok.size());
      kv.head_dim = D, kv.page_tokens = pt, kv.max_pages = max_pages, kv.max_tokens = max_tokens;
      kv.dtype = lc::KvDtype::BF16;
    }
  };
  Store ref(pool_bytes, table, n_tok0, n_pos, D, pt, max_pages, max_tokens),
      fused(pool_bytes, table, n_tok0, n_pos, D, pt, max_pages, max_tokens);
  const uint64_t seed = rng();
  const longctx::TensorInit init = longctx::tensor_init(0.0f, static_cast<float>(std::sqrt(3.0 / n_in)));
  DevBuf d_w(static_cast<size_t>(n_out) * n_in * 2), d_x(static_cast<size_t>(n_in) * 4),
      d_nw(static_cast<size_t>(n_in) * 2), d_y(static_cast<size_t>(n_out) * 4),
      d_q_ref(static_cast<size_t>(n_head) * D * 2), d_q(d_q_ref.bytes), d_pos(4), d_done(4);
  CHECK_OK(lc::synthetic_fill_bf16(d_w.p, static_cast<size_t>(n_out) * n_in, seed, 78, init));
  std::vector<uint16_t> nwb(static_cast<size_t>(n_in));
  for (auto& v : nwb) v = bf16_bits(1.0f + 0.1f * nd(rng));
  d_nw.upload(nwb);
  d_done.upload(std::vector<int32_t>{0});
  bool q_same = true, done_zero = true;
  for (int32_t step = 0; step < 2; ++step) {
    std::vector<float> x(static_cast<size_t>(n_in));
    for (auto& v : x) v = nd(rng) * 3.0f;
    d_x.upload(x);
    d_pos.upload(std::vector<int32_t>{1000 + step});
    d_q_ref.poison(), d_q.poison();
    lc::GemvArgs a;
    a.w = d_w.p, a.n_out = n_out, a.n_in = n_in, a.x_f32 = d_x.as<float>(), a.norm_w = d_nw.p;
    a.y = d_y.as<float>();
    CHECK_OK(lc::gemv(a));
    CHECK_OK(lc::rope_kv_append(d_y.as<float>(), d_pos.as<int32_t>(), n_head, base, d_q_ref.p, ref.kv));
    a.y = nullptr;
    a.epilogue = lc::GemvEpilogue::RopeAppend;
    a.rope.pos = d_pos.as<int32_t>(), a.rope.n_head = n_head, a.rope.rope_base = base, a.rope.q_out = d_q.p;
    a.rope.kv = fused.kv, a.rope.done = d_done.as<int32_t>();
    CHECK_OK(lc::gemv(a));
    const std::vector<uint16_t> q = d_q.download<uint16_t>(static_cast<size_t>(n_head) * D);
    q_same &= q == d_q_ref.download<uint16_t>(q.size()) &&  // and every query written, the full head's too
              std::none_of(q.begin(), q.end(), [](uint16_t b) { return b == 0xffff; });
    done_zero &= d_done.download<int32_t>(1)[0] == 0;
  }
  const bool pool_same = fused.pool.download<uint16_t>(pool_bytes / 2) == ref.pool.download<uint16_t>(pool_bytes / 2);
  const bool pos_same = fused.positions.download<int32_t>(n_pos) == ref.positions.download<int32_t>(n_pos);
  const std::vector<int32_t> counts = fused.ntok.download<int32_t>(hkv);
  const bool counts_same = counts == ref.ntok.download<int32_t>(hkv) && counts == std::vector<int32_t>{7, max_tokens};
  if (!(q_same && pool_same && pos_same && counts_same && done_zero))
    std::printf("     same: q %d, pool %d, positions %d, counts %d (%d %d); counter zero %d\n", q_same, pool_same,
                pos_same, counts_same, counts[0], counts[1], done_zero);
  report(q_same && pool_same && pos_same && counts_same && done_zero,
         "gemv with RoPE + append fused = gemv then rope_kv_append, bit for bit over 2 appends (q, pool, positions, "
         "counts; a full head drops the token in both), block counter back at zero");
  lc::GemvArgs bad;
  bad.w = d_w.p, bad.n_out = n_out - 2, bad.n_in = n_in, bad.x_f32 = d_x.as<float>(), bad.norm_w = d_nw.p;
  bad.epilogue = lc::GemvEpilogue::RopeAppend;
  bad.rope.pos = d_pos.as<int32_t>(), bad.rope.n_head = n_head, bad.rope.rope_base = base, bad.rope.q_out = d_q.p;
  bad.rope.kv = fused.kv, bad.rope.done = d_done.as<int32_t>();
  report(!lc::gemv(bad).ok(), "gemv refuses RoPE + append when n_out is not (n_head + 2 n_head_kv) * head_dim");
}

}  // namespace

int main() {
  lc::DeviceInfo info;
  if (lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.cc_major, info.cc_minor, info.n_sm);
  std::mt19937 rng(20261202);
  test_synthetic();
  test_embedding(rng);
  test_rmsnorm(rng);
  test_gated(rng);
  test_add(rng);
  test_argmax(rng);
  test_rope_kv_append(rng);
  test_rope_kv_append_rows(rng);
  test_gemm(rng);
  test_gemv(rng);
  test_gemv_rope_append(rng);
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
