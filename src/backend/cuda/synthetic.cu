// Synthetic shapes and the device side of the counter-based generator (synthetic.h has the generator itself).
#include "backend/cuda/synthetic.h"

#include <cmath>
#include <cstdlib>

#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

// Each thread makes 8 consecutive elements and stores them with one 16-byte write where the run is aligned:
// generating is pure arithmetic, so the fill runs at store bandwidth (15 GB of llama3-8b in a few milliseconds).
__global__ void synthetic_fill_kernel(uint16_t* __restrict__ dst, size_t n, uint64_t seed, uint32_t tensor,
                                      TensorInit init, uint64_t first_index) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x * 8;
  for (size_t i0 = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8; i0 < n; i0 += stride) {
    if (i0 + 8 <= n && (reinterpret_cast<uintptr_t>(dst + i0) & 15) == 0) {
      uint32_t w[4];
      for (int j = 0; j < 4; ++j) {
        const uint32_t lo = synthetic_bf16(seed, tensor, first_index + i0 + 2 * j, init);
        const uint32_t hi = synthetic_bf16(seed, tensor, first_index + i0 + 2 * j + 1, init);
        w[j] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst + i0) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      for (size_t i = i0; i < n && i < i0 + 8; ++i) dst[i] = synthetic_bf16(seed, tensor, first_index + i, init);
    }
  }
}

}  // namespace

Status synthetic_shape(const std::string& spec, ModelShape* shape, uint64_t* seed) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  *seed = 1;
  if (colon != std::string::npos) {
    const std::string s = spec.substr(colon + 1);
    char* end = nullptr;
    const unsigned long long v = s.empty() ? 0 : std::strtoull(s.c_str(), &end, 10);
    if (s.empty() || end == nullptr || *end != '\0' || s[0] == '-')
      return Status::error("synthetic model '" + spec + "': the seed must be a non-negative integer");
    *seed = v;
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
    m.rope_base = 10000.0f;
    m.rms_eps = 1e-5f;
  } else {
    return Status::error("unknown synthetic model '" + name + "' (llama3-8b, tiny)");
  }
  *shape = m;
  return Status::success();
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

Status synthetic_fill_bf16(void* device_dst, size_t n, uint64_t seed, uint32_t tensor, TensorInit init,
                           uint64_t first_index, void* stream) {
  if (n == 0) return Status::success();
  if (device_dst == nullptr) return Status::error("synthetic fill: null destination");
  int dev = 0, n_sm = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  const size_t blocks = std::min<size_t>(static_cast<size_t>(n_sm) * 8, (n / 8 + 255) / 256 + 1);
  synthetic_fill_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<uint16_t*>(device_dst), n, seed, tensor, init, first_index);
  return cuda_status(cudaGetLastError(), "synthetic fill launch");
}

}  // namespace longctx::cuda
