// What the CUDA tests share: a fatal check of a Status, a failure count with a one-line report, a device buffer
// that frees itself, and f16/bf16 rounding of inputs. Header-only, host code: the tests build with nvcc alone on
// the device machine (scripts/cuda_device_*.sh) and with CMake here.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/fp16.h"

namespace longctx::cuda_test {

inline int g_failures = 0;

// A call that must succeed for the test to go on (allocation, copies): prints where and why, then exits 1.
#define CHECK_OK(expr)                                                                                     \
  do {                                                                                                     \
    const ::longctx::cuda::Status s_ = (expr);                                                             \
    if (!s_.ok()) {                                                                                        \
      std::fprintf(stderr, "FAIL %s:%d: %s -> %s\n", __FILE__, __LINE__, #expr, s_.message().c_str());     \
      std::exit(1);                                                                                        \
    }                                                                                                      \
  } while (0)

// The one skip-without-GPU check: true (and the device named on stdout) when a GPU is usable; else false, having
// printed why. A test's main returns 77 (CTest's SKIP_RETURN_CODE) on false.
inline bool gpu_present() {
  cuda::DeviceInfo info;
  if (const cuda::Status s = cuda::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return false;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.cc_major, info.cc_minor, info.n_sm);
  return true;
}

inline void report(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++g_failures;
}

struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DevBuf(size_t n) : bytes(n) {
    if (n) CHECK_OK(cuda::device_alloc(&p, n));
  }
  ~DevBuf() {
    if (p) cuda::device_free(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
  void poison() { CHECK_OK(cuda::device_fill_bytes(p, 0xff, bytes)); }  // NaN in f16, bf16 and f32
  template <typename T>
  void upload(const std::vector<T>& v) {
    CHECK_OK(cuda::copy_to_device(p, v.data(), v.size() * sizeof(T)));
  }
  template <typename T>
  std::vector<T> download(size_t n) const {
    std::vector<T> v(n);
    CHECK_OK(cuda::device_synchronize());
    CHECK_OK(cuda::copy_to_host(v.data(), p, n * sizeof(T)));
    return v;
  }
};

// f32 to the bits of a KV dtype, rounding to nearest even (inputs are finite), and back.
inline uint16_t to_bits(float x, cuda::KvDtype dt) {
  if (dt == cuda::KvDtype::F16) return f32_to_fp16(x);
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}
inline float from_bits(uint16_t h, cuda::KvDtype dt) {
  return dt == cuda::KvDtype::F16 ? fp16_to_f32(h) : bf16_to_f32(h);
}

}  // namespace longctx::cuda_test
