// The synthetic shapes and per-tensor scales (synthetic_weights.h has the generator itself).
#include "core/synthetic_weights.h"

#include <cmath>

namespace longctx {

const char* synthetic_shape_names() { return "llama3-8b, tiny"; }

bool synthetic_shape(const std::string& spec, ModelShape* shape, uint64_t* seed, std::string* error) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  uint64_t s = 1;
  if (colon != std::string::npos) {
    const std::string digits = spec.substr(colon + 1);
    bool ok = !digits.empty() && digits.size() <= 20;
    unsigned __int128 v = 0;
    for (char ch : digits) {
      ok = ok && ch >= '0' && ch <= '9';
      v = v * 10 + static_cast<unsigned>(ch - '0');
    }
    if (!ok || v > UINT64_MAX) {
      *error = "synthetic model '" + spec + "': the seed must be a whole number below 2^64 (example: tiny:7)";
      return false;
    }
    s = static_cast<uint64_t>(v);
  }
  ModelShape m;
  m.name = name;
  if (name == "llama3-8b") {
    m.n_layer = 32;
    m.n_embd = 4096;
    m.n_head = 32;
    m.n_head_kv = 8;
    m.head_dim = 128;
    m.n_ff = 14336;
    m.n_vocab = 128256;
    m.n_ctx_train = 131072;  // Llama-3.1-8B's context (the same tensors as Llama-3-8B): long prompts on the GPU
    m.rope_base = 500000.0f;
    m.rms_eps = 1e-5f;
  } else if (name == "tiny") {
    m.n_layer = 2;
    m.n_embd = 256;
    m.n_head = 4;
    m.n_head_kv = 2;
    m.head_dim = 64;
    m.n_ff = 512;
    m.n_vocab = 512;
    m.n_ctx_train = 4096;
    m.rope_base = 10000.0f;
    m.rms_eps = 1e-5f;
  } else {
    *error = "unknown synthetic model '" + name + "' (accepted: " + synthetic_shape_names() +
             ", each with an optional :SEED)";
    return false;
  }
  *shape = m;
  *seed = s;
  return true;
}

int64_t synthetic_n_params(const ModelShape& m) {
  const int64_t E = m.n_embd, Q = m.q_dim(), KV = m.kv_dim(), F = m.n_ff, V = m.n_vocab;
  const int64_t layer = 2 * E + E * Q + 2 * E * KV + Q * E + 3 * E * F;
  return 2 * V * E + E + m.n_layer * layer;
}

TensorInit tensor_init(float offset, float amplitude) {
  TensorInit t;
  t.unit = static_cast<float>(static_cast<double>(amplitude) / (1 << 23));
  t.offset_units = static_cast<int32_t>(std::lround(static_cast<double>(offset) / t.unit));
  return t;
}

TensorInit synthetic_tensor_init(const ModelShape& m, TensorKind kind) {
  const double sqrt3 = std::sqrt(3.0);  // a uniform on +-a has standard deviation a / sqrt(3)
  const double residual = 1.0 / std::sqrt(2.0 * m.n_layer);
  auto uniform_std = [&](double std) { return tensor_init(0.0f, static_cast<float>(std * sqrt3)); };
  switch (kind) {
    case TensorKind::TokenEmbd:
    case TensorKind::KvCache:
      return uniform_std(1.0);
    case TensorKind::OutputNorm:
    case TensorKind::AttnNorm:
    case TensorKind::FfnNorm:
      return tensor_init(1.0f, 0.1f);
    case TensorKind::Output:
    case TensorKind::Wq:
    case TensorKind::Wk:
    case TensorKind::Wv:
    case TensorKind::WGate:
    case TensorKind::WUp:
      return uniform_std(1.0 / std::sqrt(static_cast<double>(m.n_embd)));
    case TensorKind::Wo:
      return uniform_std(residual / std::sqrt(static_cast<double>(m.q_dim())));
    case TensorKind::WDown:
      return uniform_std(residual / std::sqrt(static_cast<double>(m.n_ff)));
  }
  return TensorInit{};
}

}  // namespace longctx
