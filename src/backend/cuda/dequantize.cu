// GGUF weights to bf16 for the prefill GEMMs (quant.h, dequantize_bf16).
//
// A thread makes 32 consecutive values of one row (a block; for the K-quants one 32-value slice of a super-block)
// with the f32 operations of cpu::dequantize_row in the same order, so every value is the CPU's bit for bit before
// the one rounding to bf16. Every product that feeds an addition is exact in f32 (quant.cpp says why), so the FMA
// contraction nvcc applies cannot change a value. One kernel for every format: the switch is uniform over the
// grid, and prefill is bound by its GEMMs, not by this pass (it writes 2 bytes a value once per tile).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/quant.h"

namespace longctx::cuda {
namespace {

__device__ __forceinline__ uint32_t u16_at(const uint8_t* p) { return p[0] | static_cast<uint32_t>(p[1]) << 8; }
__device__ __forceinline__ float f16_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(u16_at(p))));
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (cpu::k_scale_min).
__device__ __forceinline__ void k_scale_min(const uint8_t* s, int j, int* sc, int* m) {  // s (12)
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Values [32u, 32u + 32) of the row at `row`, in f32.
__device__ void unit_values(GgmlType t, const uint8_t* row, int u, float (&v)[32]) {
  switch (t) {
    case GgmlType::F32: {
      const float* f = reinterpret_cast<const float*>(row) + 32 * u;
      for (int i = 0; i < 32; ++i) v[i] = f[i];
      return;
    }
    case GgmlType::F16:
      for (int i = 0; i < 32; ++i) v[i] = f16_at(row + 64 * u + 2 * i);
      return;
    case GgmlType::BF16:
      for (int i = 0; i < 32; ++i) v[i] = __uint_as_float(u16_at(row + 64 * u + 2 * i) << 16);
      return;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1: {
      const bool min = t == GgmlType::Q4_1;
      const uint8_t* b = row + (min ? 20 : 18) * u;
      const float d = f16_at(b), m = min ? f16_at(b + 2) : 0.0f;
      const uint8_t* qs = b + (min ? 4 : 2);
      for (int j = 0; j < 32; ++j) {
        const int q = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
        v[j] = min ? d * static_cast<float>(q) + m : d * static_cast<float>(q - 8);
      }
      return;
    }
    case GgmlType::Q8_0: {
      const uint8_t* b = row + 34 * u;
      const float d = f16_at(b);
      for (int j = 0; j < 32; ++j) v[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
      return;
    }
    case GgmlType::Q4_K:
    case GgmlType::Q5_K: {
      const bool fifth = t == GgmlType::Q5_K;
      const uint8_t* b = row + (fifth ? 176 : 144) * (u / 8);
      const int s = u % 8;  // the sub-block
      int sc, m;
      k_scale_min(b + 4, s, &sc, &m);
      const float ds = f16_at(b) * static_cast<float>(sc);
      const float dm = f16_at(b + 2) * static_cast<float>(m);
      const uint8_t* qh = b + 16;
      const uint8_t* q4 = b + (fifth ? 48 : 16) + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int i = 0; i < 32; ++i) {
        int q = (q4[i] >> shift) & 0x0f;
        if (fifth) q |= ((qh[i] >> s) & 1) << 4;
        v[i] = ds * static_cast<float>(q) - dm;
      }
      return;
    }
    case GgmlType::Q6_K: {
      const uint8_t* b = row + 210 * (u / 8);
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
      const float d = f16_at(b + 208);
      for (int i = 0; i < 32; ++i) {
        const int val = 32 * (u % 8) + i, h = val / 128, r = val % 128;
        const int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        const int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
        const float ds = d * static_cast<float>(scales[val / 16]);
        v[i] = ds * static_cast<float>((lo | hi << 4) - 32);
      }
      return;
    }
    default:
      for (int i = 0; i < 32; ++i) v[i] = __uint_as_float(0x7fc00000u);  // excluded by the launcher
  }
}

__global__ void dequantize_bf16_kernel(GgmlType t, const uint8_t* w, int64_t row_bytes, int32_t n_in,
                                       int64_t row_begin, int64_t n_rows, __nv_bfloat16* out, int64_t out_stride) {
  const int32_t units = n_in / 32;
  const int64_t n_units = n_rows * units;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n_units;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / units;
    const int u = static_cast<int>(k % units);
    float v[32];
    unit_values(t, w + (row_begin + r) * row_bytes, u, v);
    uint4* dst = reinterpret_cast<uint4*>(out + r * out_stride + 32 * u);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      uint32_t h[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const __nv_bfloat162 p = __floats2bfloat162_rn(v[8 * c + 2 * i], v[8 * c + 2 * i + 1]);
        h[i] = *reinterpret_cast<const uint32_t*>(&p);
      }
      dst[c] = make_uint4(h[0], h[1], h[2], h[3]);
    }
  }
}

}  // namespace

Status dequantize_bf16(GgmlType type, const void* w, int32_t n_in, int64_t row_begin, int64_t n_rows, void* out,
                       int64_t out_stride, void* stream) {
  if (!quant_supported(type))
    return Status::error("dequantize_bf16: weight format " + std::to_string(static_cast<uint32_t>(type)) +
                         " is not supported on the GPU");
  const bool k_quant = type == GgmlType::Q4_K || type == GgmlType::Q5_K || type == GgmlType::Q6_K;
  const int32_t block = k_quant ? 256 : 32;
  if (n_in < 1 || n_in % block != 0)
    return Status::error("dequantize_bf16: n_in (" + std::to_string(n_in) + ") must be a positive multiple of " +
                         std::to_string(block) + " for this format");
  if (row_begin < 0 || n_rows < 0) return Status::error("dequantize_bf16: negative row range");
  if (out_stride == 0) out_stride = n_in;
  if (out_stride < n_in || out_stride % 8 != 0)
    return Status::error("dequantize_bf16: out_stride must be at least n_in and a multiple of 8");
  if (!w || !out) return Status::error("dequantize_bf16: null pointer");
  if (reinterpret_cast<uintptr_t>(out) % 16 != 0) return Status::error("dequantize_bf16: out must be 16-byte aligned");
  if (type == GgmlType::F32 && reinterpret_cast<uintptr_t>(w) % 4 != 0)
    return Status::error("dequantize_bf16: F32 weights must be 4-byte aligned");
  if (n_rows == 0) return Status::success();
  int64_t row_bytes = 0;
  switch (type) {
    case GgmlType::F32: row_bytes = int64_t{4} * n_in; break;
    case GgmlType::F16: case GgmlType::BF16: row_bytes = int64_t{2} * n_in; break;
    case GgmlType::Q4_0: row_bytes = int64_t{18} * (n_in / 32); break;
    case GgmlType::Q4_1: row_bytes = int64_t{20} * (n_in / 32); break;
    case GgmlType::Q8_0: row_bytes = int64_t{34} * (n_in / 32); break;
    case GgmlType::Q4_K: row_bytes = int64_t{144} * (n_in / 256); break;
    case GgmlType::Q5_K: row_bytes = int64_t{176} * (n_in / 256); break;
    case GgmlType::Q6_K: row_bytes = int64_t{210} * (n_in / 256); break;
    default: break;
  }
  int dev = 0, n_sm = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  LONGCTX_CUDA_TRY(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
  const int64_t n_units = n_rows * (n_in / 32);
  const int64_t blocks = std::min<int64_t>((n_units + 255) / 256, int64_t{n_sm} * 8);
  dequantize_bf16_kernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      type, static_cast<const uint8_t*>(w), row_bytes, n_in, row_begin, n_rows, static_cast<__nv_bfloat16*>(out),
      out_stride);
  return cuda_status(cudaGetLastError(), "dequantize_bf16 launch");
}

}  // namespace longctx::cuda
