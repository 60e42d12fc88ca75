// What the CUDA benchmarks share (attention_bench.cu, prefill_bench.cu, e2e_bench.cu): fatal checks of CUDA calls and
// of Status, random fills of gigabytes on the device, the read-only ceiling kernel, and the median time of CUDA-graph
// replays.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/cuda/cuda_backend.h"

#define CK(call)                                                                                         \
  do {                                                                                                   \
    cudaError_t e_ = (call);                                                                             \
    if (e_ != cudaSuccess) {                                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));          \
      std::exit(1);                                                                                      \
    }                                                                                                    \
  } while (0)
#define CS(expr)                                                                                \
  do {                                                                                          \
    const ::longctx::cuda::Status s_ = (expr);                                                  \
    if (!s_.ok()) {                                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.message().c_str());            \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

namespace longctx::cuda_bench {

using cuda::DeviceInfo;
using cuda::Status;
using cuda::device_query;

// Random values of unit scale in f16/bf16 (as u16 bits), from a per-element hash: fills gigabytes in microseconds.
__global__ void fill_random(uint16_t* p, size_t n, uint32_t seed, int is_bf16) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32) * 0x85EBCA77u;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    x ^= x >> 12;
    x *= 0x297A2D39u;
    x ^= x >> 15;
    const float u = (static_cast<float>(x >> 8) * (1.0f / 16777216.0f) - 0.5f) * 3.4f;
    p[i] = is_bf16 ? __bfloat16_as_ushort(__float2bfloat16(u)) : __half_as_ushort(__float2half(u));
  }
}

// Reads n16 16-byte words, four loads in flight per thread per step (the read-only ceiling); writes only if an
// impossible value appears, so the reads cannot be optimized away.
__global__ void read_only(const uint4* __restrict__ p, size_t n16, uint32_t* sink) {
  uint32_t acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride), d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const uint4 a = __ldcs(p + i);
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x7fc00001u) *sink = acc;
}

// The contexts a benchmark times: the defaults, or those named after the JSON path on the command line.
inline std::vector<long> contexts_from_args(int argc, char** argv, std::vector<long> defaults) {
  if (argc <= 2) return defaults;
  std::vector<long> contexts;
  for (int i = 2; i < argc; ++i) contexts.push_back(std::atol(argv[i]));
  return contexts;
}

// The device, or exit 77 (CTest's skip) with the reason when there is none.
inline DeviceInfo device_or_skip() {
  DeviceInfo info;
  if (const Status s = device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    std::exit(77);
  }
  return info;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median over `reps` replays of a graph holding `steps` launches; returns microseconds per launch.
template <typename F>
double time_graph(cudaStream_t st, int steps, int reps, F&& body) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < steps; ++i) body(i);
  CK(cudaStreamEndCapture(st, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaGraphLaunch(exec, st));  // warm-up
  CK(cudaStreamSynchronize(st));
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms * 1e3 / steps);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  return median(t);
}

}  // namespace longctx::cuda_bench
