// An independent plain host forward of the synthetic llama (core/synthetic_weights.h: RMSNorm, RoPE in adjacent
// pairs, SwiGLU, GQA, untied output head), built from the same seed: straightforward loops, double accumulation,
// one token at a time. The CUDA decode step (tests/cuda/llama_decode_test.cpp) and the CPU model
// (tests/synthetic_model_test.cpp) are both checked against this very code.
//
// Rounding: the CUDA step rounds to bf16 where its kernels read bf16 (the normed GEMM inputs, q and k after RoPE,
// the stored V, the attention output, the SwiGLU output); RefRounding::DeviceBf16 rounds at the same points. The CPU
// forward keeps every activation in f32 (bf16 weights are multiplied as f32: cpu::matmul), so it is compared
// against RefRounding::None, where those points only narrow to f32.
//
// Header-only, no GoogleTest and no CUDA: the CUDA tests build with nvcc alone on the device machine.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/fp16.h"
#include "core/synthetic_weights.h"

namespace longctx::test {

enum class RefRounding {
  None,        // activations as f32 where the device reads bf16 (the CPU forward's numerics)
  DeviceBf16,  // rounded to bf16 at the CUDA decode step's points
};

// The reference model: weights as f32 (exactly the bf16 values), a KV cache as f32.
struct SyntheticLlamaReference {
  ModelShape m;
  RefRounding rounding;
  std::vector<float> tok_embd, output_norm, output;
  struct Layer {
    std::vector<float> attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    std::vector<float> k_cache, v_cache;  // (n_tokens, kv_dim)
  };
  std::vector<Layer> layers;
  int32_t n_tokens = 0;

  static std::vector<float> make(const ModelShape& m, uint64_t seed, TensorKind kind, int32_t layer, size_t n) {
    const TensorInit init = synthetic_tensor_init(m, kind);
    const uint32_t id = tensor_id(kind, layer);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(synthetic_bf16(seed, id, i, init));
    return v;
  }

  SyntheticLlamaReference(const ModelShape& shape, uint64_t seed, RefRounding r) : m(shape), rounding(r) {
    const size_t E = m.n_embd, Q = m.q_dim(), KV = m.kv_dim(), F = m.n_ff, V = m.n_vocab;
    tok_embd = make(m, seed, TensorKind::TokenEmbd, -1, V * E);
    output_norm = make(m, seed, TensorKind::OutputNorm, -1, E);
    output = make(m, seed, TensorKind::Output, -1, V * E);
    for (int32_t il = 0; il < m.n_layer; ++il) {
      Layer L;
      L.attn_norm = make(m, seed, TensorKind::AttnNorm, il, E);
      L.wq = make(m, seed, TensorKind::Wq, il, Q * E);
      L.wk = make(m, seed, TensorKind::Wk, il, KV * E);
      L.wv = make(m, seed, TensorKind::Wv, il, KV * E);
      L.wo = make(m, seed, TensorKind::Wo, il, E * Q);
      L.ffn_norm = make(m, seed, TensorKind::FfnNorm, il, E);
      L.w_gate = make(m, seed, TensorKind::WGate, il, F * E);
      L.w_up = make(m, seed, TensorKind::WUp, il, F * E);
      L.w_down = make(m, seed, TensorKind::WDown, il, E * F);
      layers.push_back(std::move(L));
    }
  }

  // A value at one of the device's bf16 points.
  float round(double x) const {
    const float f = static_cast<float>(x);
    return rounding == RefRounding::DeviceBf16 ? bf16_to_f32(f32_to_bf16_bits_rne(f)) : f;
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

  std::vector<float> rmsnorm(const std::vector<float>& x, const std::vector<float>& w) const {
    double ss = 0;
    for (float v : x) ss += static_cast<double>(v) * v;
    const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + m.rms_eps);
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = round(x[i] * scale * w[i]);
    return y;
  }

  // RoPE in adjacent pairs by angle pos * base^(-2i/D) (cpu::rope, RopeOrder::Adjacent), then rounded.
  void rope(std::vector<double>& v, size_t first, int32_t n_heads, int32_t pos) const {
    const int32_t D = m.head_dim;
    for (int32_t h = 0; h < n_heads; ++h)
      for (int32_t i = 0; i < D / 2; ++i) {
        const double a = pos * std::pow(static_cast<double>(m.rope_base), -2.0 * i / D);
        const double c = static_cast<float>(std::cos(a)), s = static_cast<float>(std::sin(a));
        double& x0 = v[first + static_cast<size_t>(h) * D + 2 * i];
        double& x1 = v[first + static_cast<size_t>(h) * D + 2 * i + 1];
        const double r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        x0 = round(r0);
        x1 = round(r1);
      }
  }

  // The logits (n_vocab) of `token` at position n_tokens, which it then advances.
  std::vector<float> forward(int32_t token) {
    const size_t E = m.n_embd, Q = m.q_dim(), KV = m.kv_dim(), F = m.n_ff, D = m.head_dim;
    const int32_t pos = n_tokens;
    std::vector<float> x(tok_embd.begin() + static_cast<std::ptrdiff_t>(token * E),
                         tok_embd.begin() + static_cast<std::ptrdiff_t>((token + 1) * E));
    for (Layer& L : layers) {
      const std::vector<float> xn = rmsnorm(x, L.attn_norm);
      std::vector<double> q = matvec(L.wq, xn, Q), k = matvec(L.wk, xn, KV), v = matvec(L.wv, xn, KV);
      rope(q, 0, m.n_head, pos);
      rope(k, 0, m.n_head_kv, pos);
      for (size_t i = 0; i < KV; ++i) {
        L.k_cache.push_back(static_cast<float>(k[i]));
        L.v_cache.push_back(round(v[i]));
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
          attn[h * D + i] = round(acc / sum);
        }
      }
      const std::vector<double> o = matvec(L.wo, attn, E);
      for (size_t i = 0; i < E; ++i) x[i] = static_cast<float>(x[i] + o[i]);
      const std::vector<float> xn2 = rmsnorm(x, L.ffn_norm);
      const std::vector<double> g = matvec(L.w_gate, xn2, F), u = matvec(L.w_up, xn2, F);
      std::vector<float> hh(F);
      for (size_t i = 0; i < F; ++i) hh[i] = round(g[i] / (1.0 + std::exp(-g[i])) * u[i]);
      const std::vector<double> dn = matvec(L.w_down, hh, E);
      for (size_t i = 0; i < E; ++i) x[i] = static_cast<float>(x[i] + dn[i]);
    }
    ++n_tokens;
    const std::vector<float> xn = rmsnorm(x, output_norm);
    const std::vector<double> l = matvec(output, xn, static_cast<size_t>(m.n_vocab));
    return std::vector<float>(l.begin(), l.end());
  }
};

}  // namespace longctx::test
