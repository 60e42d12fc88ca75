// Prefill attention timings (both kernels: prefill_attention.cu's mma.sync, prefill_attention_wgmma.cu's): B = 1, 32 query heads, d = 128, bf16, causal, at 4K / 16K / 32K
// tokens, with 32 kv heads (the shape of the torch figure issue 6 quotes) and 8 (Llama-3-8B's GQA); tests/cuda/
// torch_sdpa_bench.py times torch SDPA on the same shapes in the same call. FLOPs counted as FlashAttention counts
// them: 4 * n^2 * d * heads for the two products, halved for the causal mask. Median of CUDA-graph replays; inputs of
// random values.
// Usage: prefill_bench [out.jsonl [context ...]]   (one JSON object per measurement)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "bench_util.cuh"

namespace lc = longctx::cuda;
using namespace longctx::cuda_bench;

int main(int argc, char** argv) {
  FILE* json = argc > 1 ? std::fopen(argv[1], "w") : nullptr;
  const std::vector<long> contexts = contexts_from_args(argc, argv, {4096L, 16384L, 32768L});
  const lc::DeviceInfo info = device_or_skip();
  std::printf("device: %s, %d SMs\n", info.name.c_str(), info.n_sm);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  constexpr int H = 32, D = 128;
  for (const int hkv : {32, 8})
    for (const long n : contexts) {
      const size_t nq = static_cast<size_t>(n) * H * D, nkv = static_cast<size_t>(n) * hkv * D;
      uint16_t *q, *k, *v, *o;
      CK(cudaMalloc(&q, nq * 2));
      CK(cudaMalloc(&k, nkv * 2));
      CK(cudaMalloc(&v, nkv * 2));
      CK(cudaMalloc(&o, nq * 2));
      fill_random<<<4096, 256, 0, st>>>(q, nq, 11, 1);
      fill_random<<<4096, 256, 0, st>>>(k, nkv, 12, 1);
      fill_random<<<4096, 256, 0, st>>>(v, nkv, 13, 1);
      CK(cudaGetLastError());
      lc::PrefillAttentionParams p;
      p.n_q = p.n_kv = static_cast<int32_t>(n);
      p.n_head = H, p.n_head_kv = hkv, p.head_dim = D, p.causal = true, p.scale = 1.0f / std::sqrt(128.0f);
      for (const lc::PrefillKernel kernel : {lc::PrefillKernel::MmaSync, lc::PrefillKernel::Wgmma}) {
        if (kernel == lc::PrefillKernel::Wgmma && info.cc_major != 9) continue;
        const char* kname = kernel == lc::PrefillKernel::Wgmma ? "wgmma" : "mma.sync";
        p.kernel = kernel;
        CS(lc::prefill_attention(p, q, k, v, o, st));  // outside the graph: sets the kernel's shared-memory attribute
        const int steps = n >= 16384 ? 2 : 8;
        const double us = time_graph(st, steps, 5, [&](int) { CS(lc::prefill_attention(p, q, k, v, o, st)); });
        const double flops = 4.0 * n * n * D * H / 2;
        const double tflops = flops / (us * 1e-6) / 1e12;
        std::printf("prefill %-8s causal ctx %6ld heads %d/%d: %10.1f us  %6.1f TFLOP/s\n", kname, n, H, hkv, us, tflops);
        if (json)
          std::fprintf(json,
                       "{\"what\":\"prefill\",\"kernel\":\"%s\",\"ctx\":%ld,\"n_head\":%d,\"n_head_kv\":%d,\"us\":%.2f,"
                       "\"tflops\":%.2f}\n",
                       kname, n, H, hkv, us, tflops);
      }
      CK(cudaFree(q));
      CK(cudaFree(k));
      CK(cudaFree(v));
      CK(cudaFree(o));
    }
  if (json) std::fclose(json);
  return 0;
}
