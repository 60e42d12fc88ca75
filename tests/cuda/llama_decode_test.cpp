// End to end: the CUDA decode step of the tiny synthetic llama (2 layers, d 256, 4 q / 2 kv heads of 64, FFN 512,
// vocab 512) against an independent plain host forward built from the same seed (straightforward loops, double
// accumulation), for a prompt fed token by token and then greedy continuation. Exit code 77 when no GPU is present.
//
// What the reference mirrors, and why: the device rounds to bf16 where its kernels read bf16 (the normed GEMM inputs,
// q, the stored K and V, the attention output, the SwiGLU output), so the reference rounds at the same points; what
// is left is f32 against double arithmetic and the occasional value that lands one bf16 step the other way. That
// gives a tolerance of: logits relative L2 <= 1e-2 per step and |logit - ref| <= 5e-2 (logits are of unit scale).
// The greedy token must be the reference's argmax, or within 5e-2 of its top logit (a near tie that rounding may
// flip); the reference then follows the device's token so the two stay in lockstep.
// Also: replays after reset() are bit-identical (no race, no state left behind), and the clear errors (an unknown
// shape, a full context, a device that cannot hold the store) leave the device usable.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "backend/cuda/llama_decode.h"
#include "backend/cuda/synthetic.h"
#include "core/fp16.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;
using namespace longctx::cuda_test;

float bf16r(double x) { return bf16_to_f32(lc::f32_to_bf16_bits_rne(static_cast<float>(x))); }

// The reference model: weights as f32 (exactly the bf16 values), a KV cache as f32 (exactly the stored bf16 values).
struct RefModel {
  lc::ModelShape m;
  std::vector<float> tok_embd, output_norm, output;
  struct Layer {
    std::vector<float> attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    std::vector<float> k_cache, v_cache;  // (n_tokens, kv_dim)
  };
  std::vector<Layer> layers;
  int32_t n_tokens = 0;

  static std::vector<float> make(const lc::ModelShape& m, uint64_t seed, lc::TensorKind kind, int32_t layer, size_t n) {
    const lc::TensorInit init = lc::synthetic_tensor_init(m, kind);
    const uint32_t id = lc::tensor_id(kind, layer);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(lc::synthetic_bf16(seed, id, i, init));
    return v;
  }

  RefModel(const lc::ModelShape& shape, uint64_t seed) : m(shape) {
    const size_t E = m.n_embd, Q = m.q_dim(), KV = m.kv_dim(), F = m.n_ff, V = m.n_vocab;
    tok_embd = make(m, seed, lc::TensorKind::TokenEmbd, -1, V * E);
    output_norm = make(m, seed, lc::TensorKind::OutputNorm, -1, E);
    output = make(m, seed, lc::TensorKind::Output, -1, V * E);
    for (int32_t il = 0; il < m.n_layer; ++il) {
      Layer L;
      L.attn_norm = make(m, seed, lc::TensorKind::AttnNorm, il, E);
      L.wq = make(m, seed, lc::TensorKind::Wq, il, Q * E);
      L.wk = make(m, seed, lc::TensorKind::Wk, il, KV * E);
      L.wv = make(m, seed, lc::TensorKind::Wv, il, KV * E);
      L.wo = make(m, seed, lc::TensorKind::Wo, il, E * Q);
      L.ffn_norm = make(m, seed, lc::TensorKind::FfnNorm, il, E);
      L.w_gate = make(m, seed, lc::TensorKind::WGate, il, F * E);
      L.w_up = make(m, seed, lc::TensorKind::WUp, il, F * E);
      L.w_down = make(m, seed, lc::TensorKind::WDown, il, E * F);
      layers.push_back(std::move(L));
    }
  }

  // y (n_out) = W (n_out, n_in) x, in double.
  static std::vector<double> matvec(const std::vector<float>& w, const std::vector<float>& x, size_t n_out) {
    const size_t n_in = x.size();
    std::vector<double> y(n_out);
    for (size_t o = 0; o < n_out; ++o) {
      double acc = 0;
      for (size_t k = 0; k < n_in; ++k) acc += static_cast<double>(w[o * n_in + k]) * x[k];
      y[o] = acc;
    }
    return y;
  }

  std::vector<float> rmsnorm_bf16(const std::vector<float>& x, const std::vector<float>& w) const {
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + m.rms_eps);
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = bf16r(x[i] * scale * w[i]);
    return y;
  }

  // RoPE in adjacent pairs by angle pos * base^(-2i/D) (cpu::rope, RopeOrder::Adjacent), then bf16.
  void rope_bf16(std::vector<double>& v, size_t first, int32_t n_heads, int32_t pos) const {
    const int32_t D = m.head_dim;
    for (int32_t h = 0; h < n_heads; ++h)
      for (int32_t i = 0; i < D / 2; ++i) {
        const double a = pos * std::pow(static_cast<double>(m.rope_base), -2.0 * i / D);
        const double c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
        double& x0 = v[first + static_cast<size_t>(h) * D + 2 * i];
        double& x1 = v[first + static_cast<size_t>(h) * D + 2 * i + 1];
        const double r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        x0 = bf16r(r0);
        x1 = bf16r(r1);
      }
  }

  std::vector<float> forward(int32_t token) {
    const size_t E = m.n_embd, Q = m.q_dim(), KV = m.kv_dim(), F = m.n_ff, D = m.head_dim;
    const int32_t pos = n_tokens;
    std::vector<float> x(tok_embd.begin() + static_cast<std::ptrdiff_t>(token * E),
                         tok_embd.begin() + static_cast<std::ptrdiff_t>((token + 1) * E));
    for (Layer& L : layers) {
      const std::vector<float> xn = rmsnorm_bf16(x, L.attn_norm);
      std::vector<double> q = matvec(L.wq, xn, Q), k = matvec(L.wk, xn, KV), v = matvec(L.wv, xn, KV);
      rope_bf16(q, 0, m.n_head, pos);
      rope_bf16(k, 0, m.n_head_kv, pos);
      for (size_t i = 0; i < KV; ++i) {
        L.k_cache.push_back(static_cast<float>(k[i]));
        L.v_cache.push_back(bf16r(v[i]));
      }
      const int32_t n = pos + 1, group = m.n_head / m.n_head_kv;
      std::vector<float> attn(Q);
      for (int32_t h = 0; h < m.n_head; ++h) {
        const size_t kvh = static_cast<size_t>(h / group);
        std::vector<double> sc(static_cast<size_t>(n));
        double mx = -INFINITY;
        for (int32_t t = 0; t < n; ++t) {
          double dot = 0;
          for (size_t i = 0; i < D; ++i) dot += q[h * D + i] * L.k_cache[static_cast<size_t>(t) * KV + kvh * D + i];
          sc[static_cast<size_t>(t)] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, sc[static_cast<size_t>(t)]);
        }
        double sum = 0;
        for (double& s : sc) sum += (s = std::exp(s - mx));
        for (size_t i = 0; i < D; ++i) {
          double acc = 0;
          for (int32_t t = 0; t < n; ++t) acc += sc[static_cast<size_t>(t)] * L.v_cache[static_cast<size_t>(t) * KV + kvh * D + i];
          attn[h * D + i] = bf16r(acc / sum);
        }
      }
      const std::vector<double> o = matvec(L.wo, attn, E);
      for (size_t i = 0; i < E; ++i) x[i] = static_cast<float>(x[i] + o[i]);
      const std::vector<float> xn2 = rmsnorm_bf16(x, L.ffn_norm);
      const std::vector<double> g = matvec(L.w_gate, xn2, F), u = matvec(L.w_up, xn2, F);
      std::vector<float> hh(F);
      for (size_t i = 0; i < F; ++i) hh[i] = bf16r(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
      const std::vector<double> dn = matvec(L.w_down, hh, E);
      for (size_t i = 0; i < E; ++i) x[i] = static_cast<float>(x[i] + dn[i]);
    }
    ++n_tokens;
    const std::vector<float> xn = rmsnorm_bf16(x, output_norm);
    const std::vector<double> l = matvec(output, xn, static_cast<size_t>(m.n_vocab));
    return std::vector<float>(l.begin(), l.end());
  }
};

void test_end_to_end(lc::MatvecPath path, lc::WeightPrefetch prefetch = lc::WeightPrefetch::None) {
  const std::string pname = std::string(path == lc::MatvecPath::Fused ? "fused GEMV" : "cuBLASLt") +
                            (prefetch == lc::WeightPrefetch::None ? "" : " + L2 prefetch of Wo");
  lc::ModelShape m;
  uint64_t seed = 0;
  CHECK_OK(lc::synthetic_shape("tiny:7", &m, &seed));
  lc::LlamaDecodeOptions opt;
  opt.max_context = 64;
  opt.page_tokens = 16;  // 25 tokens cross page boundaries
  opt.matvec = path;
  opt.prefetch = prefetch;
  std::unique_ptr<lc::LlamaDecoder> dec;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &dec));
  RefModel ref(m, seed);

  const std::vector<int32_t> prompt = {3, 141, 59, 265, 35, 89, 7};
  const int32_t n_gen = 18;
  std::vector<std::vector<float>> dev_logits;
  std::vector<int32_t> dev_tokens;
  double worst_rel = 0, worst_abs = 0;
  bool ok = true;
  int32_t n_ties = 0;
  int32_t next = prompt[0];
  for (int32_t t = 0; t < static_cast<int32_t>(prompt.size()) + n_gen; ++t) {
    const bool in_prompt = t < static_cast<int32_t>(prompt.size());
    if (in_prompt) CHECK_OK(dec->set_token(prompt[static_cast<size_t>(t)]));
    const int32_t input = in_prompt ? prompt[static_cast<size_t>(t)] : next;
    CHECK_OK(dec->step(1));
    CHECK_OK(dec->synchronize());
    std::vector<float> lg;
    CHECK_OK(dec->read_logits(&lg));
    int32_t tok = -1;
    CHECK_OK(dec->read_last_token(&tok));
    dev_logits.push_back(lg);
    dev_tokens.push_back(tok);
    const std::vector<float> rl = ref.forward(input);
    double e2 = 0, r2 = 0, mx = 0;
    for (size_t i = 0; i < rl.size(); ++i) {
      const double e = std::fabs(static_cast<double>(lg[i]) - rl[i]);
      e2 += std::isfinite(e) ? e * e : 1e30;
      r2 += static_cast<double>(rl[i]) * rl[i];
      mx = std::isfinite(e) ? std::max(mx, e) : 1e30;
    }
    const double rel = std::sqrt(e2 / r2);
    worst_rel = std::max(worst_rel, rel);
    worst_abs = std::max(worst_abs, mx);
    const size_t ref_best = static_cast<size_t>(std::max_element(rl.begin(), rl.end()) - rl.begin());
    const bool tok_ok = tok >= 0 && tok < m.n_vocab &&
                        (static_cast<size_t>(tok) == ref_best || rl[static_cast<size_t>(tok)] >= rl[ref_best] - 5e-2);
    n_ties += tok_ok && static_cast<size_t>(tok) != ref_best;
    if (!(rel <= 1e-2 && mx <= 5e-2 && tok_ok)) {
      ok = false;
      std::printf("     step %d (pos %d, input %d): rel L2 %.2e, max abs %.2e, token %d, reference argmax %zu\n", t, t,
                  input, rel, mx, tok, ref_best);
    }
    next = tok;
  }
  std::vector<int32_t> history;
  CHECK_OK(dec->read_generated(&history));
  char buf[300];
  std::snprintf(buf, sizeof buf,
                "tiny llama, %s: %zu prompt + %d greedy steps vs host reference: worst logits rel L2 %.2e, max abs %.2e, "
                "%d near-tie token(s)",
                pname.c_str(), prompt.size(), n_gen, worst_rel, worst_abs, n_ties);
  report(ok, buf);
  report(history == dev_tokens, "the device's token history matches the per-step argmax");
  std::printf("     greedy tokens:");
  for (size_t i = prompt.size() - 1; i < dev_tokens.size(); ++i) std::printf(" %d", dev_tokens[i]);
  std::printf("\n");

  // Replays after reset are bit-identical.
  CHECK_OK(dec->reset());
  bool same = true;
  for (int32_t t = 0; t < static_cast<int32_t>(prompt.size()) + n_gen; ++t) {
    if (t < static_cast<int32_t>(prompt.size())) CHECK_OK(dec->set_token(prompt[static_cast<size_t>(t)]));
    CHECK_OK(dec->step(1));
    CHECK_OK(dec->synchronize());
    std::vector<float> lg;
    CHECK_OK(dec->read_logits(&lg));
    same &= lg == dev_logits[static_cast<size_t>(t)];
  }
  report(same, "a second run after reset() gives bit-identical logits at every step");

  // Greedy steps queued back to back with no host round trip give the same tokens.
  CHECK_OK(dec->reset());
  for (int32_t t = 0; t < static_cast<int32_t>(prompt.size()); ++t) {
    CHECK_OK(dec->set_token(prompt[static_cast<size_t>(t)]));
    CHECK_OK(dec->step(1));
  }
  CHECK_OK(dec->step(n_gen));
  CHECK_OK(dec->synchronize());
  std::vector<int32_t> history2;
  CHECK_OK(dec->read_generated(&history2));
  report(history2 == dev_tokens, "n graph replays queued at once generate the same tokens");

  // Clear errors.
  const lc::Status full = dec->step(opt.max_context);
  report(!full.ok(), "a step past max_context is refused: \"" + full.message() + "\"");
  report(!dec->set_token(m.n_vocab).ok(), "a token outside the vocabulary is refused");
  report(!dec->fill_kv_synthetic(opt.max_context).ok(), "a synthetic fill that leaves no room is refused");
}

void test_errors() {
  lc::ModelShape m;
  uint64_t seed = 0;
  const lc::Status unknown = lc::synthetic_shape("llama3-70b", &m, &seed);
  report(!unknown.ok(), "unknown synthetic shape -> \"" + unknown.message() + "\"");
  CHECK_OK(lc::synthetic_shape("tiny", &m, &seed));
  lc::LlamaDecodeOptions opt;
  opt.max_context = 1 << 30;  // a KV store of 2^30 tokens x 4 heads x 256 B: 1 TiB, more than any device holds
  std::unique_ptr<lc::LlamaDecoder> dec;
  const lc::Status oom = lc::LlamaDecoder::create(m, seed, opt, &dec);
  report(!oom.ok() && !dec, "a KV store the device cannot hold -> \"" + oom.message() + "\"");
  opt.max_context = 64;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &dec));  // the device still works after the refusal
  report(dec != nullptr, "the device still works after the refusal");
  // The synthetic KV fill (benchmarks) gives finite logits.
  CHECK_OK(dec->fill_kv_synthetic(40));
  CHECK_OK(dec->set_token(5));
  CHECK_OK(dec->step(3));
  CHECK_OK(dec->synchronize());
  std::vector<float> lg;
  CHECK_OK(dec->read_logits(&lg));
  report(std::all_of(lg.begin(), lg.end(), [](float v) { return std::isfinite(v); }) && dec->position() == 43,
         "3 steps over a synthetic 40-token KV give finite logits");
}

}  // namespace

int main() {
  lc::DeviceInfo info;
  if (lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.cc_major, info.cc_minor, info.n_sm);
  test_end_to_end(lc::MatvecPath::CublasLt);
  test_end_to_end(lc::MatvecPath::Fused);
  test_end_to_end(lc::MatvecPath::Fused, lc::WeightPrefetch::WoEvictLast);
  test_errors();
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
