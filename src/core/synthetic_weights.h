// Synthetic weights of a real model's shapes, built from a seed, so that benchmarks need no model
// files and any backend (the CPU model, the CUDA decode step, a plain test reference) rebuilds exactly the same
// weights.
//
// The generator is counter-based: element i of tensor t under seed s is a pure function of (s, t, i), a splitmix64
// mix ("Fast splittable pseudorandom number generators", Steele, Lea and Flood, 2014) of the three, so any element
// can be made on its own, in any order, by any thread. The value is built with integer arithmetic, one exact
// int -> f32 conversion (the integer is below 2^24, or rounded to nearest even on both sides alike), one f32
// multiply (a single IEEE-rounded operation: nothing a compiler could fuse into an FMA) and an integer
// round-to-nearest-even to bf16, so the host and the device give the same bits.
//
// Plain host code with no CUDA header and no library beyond the standard one (the GPU machine builds it with nvcc
// alone): the inline functions are marked __host__ __device__ only when nvcc compiles this header, so device
// kernels (backend/cuda/synthetic.cu) call the very same code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__CUDACC__)
#define LONGCTX_HD __host__ __device__ __forceinline__
#else
#define LONGCTX_HD inline
#endif

namespace longctx {

// A llama-architecture shape (RMSNorm, RoPE in adjacent pairs, SwiGLU, GQA; untied output head).
struct ModelShape {
  std::string name;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;  // 64 or 128: what the CUDA decode_attention supports
  int32_t n_ff = 0;
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;  // the context the model is said to be trained to (bench's limit on depth + test)
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  int32_t q_dim() const { return n_head * head_dim; }
  int32_t kv_dim() const { return n_head_kv * head_dim; }
};

// The accepted shape names, for messages: "llama3-8b, tiny".
const char* synthetic_shape_names();

// "llama3-8b[:SEED]" (32 layers, d 4096, 32 q / 8 kv heads of 128, FFN 14336, vocab 128256, theta 500000, context
// 131072 as Llama-3.1-8B's) or "tiny[:SEED]" (2 layers, d 256, 4 q / 2 kv heads of 64, FFN 512, vocab 512, context 4096) for tests.
// SEED defaults to 1. Returns false with a one-line reason in *error for an unknown name or a bad seed; the
// callers raise it their own way (the CPU layers throw Error, the CUDA backend returns a Status).
bool synthetic_shape(const std::string& spec, ModelShape* shape, uint64_t* seed, std::string* error);

// Elements of every weight tensor of the shape (matrices and norms; TensorKind::KvCache is no weight).
int64_t synthetic_n_params(const ModelShape& shape);

// The tensors of a llama layer and the model's own; the id of a layer tensor is kind + 16 * (layer + 1).
enum class TensorKind : uint32_t {
  TokenEmbd = 0,  // (n_vocab, n_embd)
  OutputNorm,     // (n_embd)
  Output,         // (n_vocab, n_embd)
  AttnNorm,       // (n_embd)
  Wq,             // (q_dim, n_embd)
  Wk,             // (kv_dim, n_embd)
  Wv,             // (kv_dim, n_embd)
  Wo,             // (n_embd, q_dim)
  FfnNorm,        // (n_embd)
  WGate,          // (n_ff, n_embd)
  WUp,            // (n_ff, n_embd)
  WDown,          // (n_embd, n_ff)
  KvCache,        // synthetic K/V values for benchmarks that skip prefill (one id per layer, like a weight)
};
inline uint32_t tensor_id(TensorKind kind, int32_t layer = -1) {
  return static_cast<uint32_t>(kind) + 16u * static_cast<uint32_t>(layer + 1);
}

// value = (offset_units + r) * unit, r uniform on [-2^23, 2^23): uniform on offset +- amplitude, where
// unit = amplitude / 2^23 and offset_units = round(offset / unit).
struct TensorInit {
  int32_t offset_units = 0;
  float unit = 0.0f;
};
TensorInit tensor_init(float offset, float amplitude);

// The per-tensor scales: matrices uniform with standard deviation 1/sqrt(fan_in), so each product keeps its
// input's scale; the two matrices that write into the residual stream (Wo, WDown) further by 1/sqrt(2 n_layer)
// (the GPT-2 initialization), so that over 32 layers the stream grows to about twice its start and no more;
// norms 1 +- 0.1; the embedding and the synthetic K/V uniform with standard deviation 1.
TensorInit synthetic_tensor_init(const ModelShape& shape, TensorKind kind);

LONGCTX_HD uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

LONGCTX_HD uint16_t f32_to_bf16_bits_rne(float x) {
  uint32_t b;
  memcpy(&b, &x, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // NaN stays NaN
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}

// Element `index` of tensor `tensor` under `seed`, as bf16 bits.
LONGCTX_HD uint16_t synthetic_bf16(uint64_t seed, uint32_t tensor, uint64_t index, TensorInit init) {
  const uint64_t key = splitmix64_mix(seed * 0x9e3779b97f4a7c15ull + tensor);
  const uint64_t h = splitmix64_mix(key + (index + 1) * 0x9e3779b97f4a7c15ull);
  const int32_t r = static_cast<int32_t>(h >> 40) - (1 << 23);  // 24 uniform bits, centred
  const float v = static_cast<float>(init.offset_units + r) * init.unit;
  return f32_to_bf16_bits_rne(v);
}

}  // namespace longctx
