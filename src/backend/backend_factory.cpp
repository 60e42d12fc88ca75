// The backends this build has (backend.h: make_backend, device_available): a library of its own above the cpu and
// cuda backends, so that neither backend library depends on the other.
#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/quant.h"
#include "core/error.h"

#ifdef LONGCTX_HAVE_CUDA
#include "backend/cuda/cuda_engine.h"
#endif

namespace longctx {

namespace {
constexpr const char* kNoCuda =
    "this build has no CUDA backend (configure with -DLONGCTX_CUDA=ON, e.g. cmake --preset cuda, where nvcc is)";
}  // namespace

void dequantize_row_host(GgmlType t, const void* row, float* out, int64_t n) { cpu::dequantize_row(t, row, out, n); }

bool device_available(Device d, std::string* why_not) {
  switch (d) {
    case Device::Cpu: return true;
    case Device::Cuda:
#ifdef LONGCTX_HAVE_CUDA
      return cuda_device_usable(why_not);
#else
      if (why_not != nullptr) *why_not = kNoCuda;
      return false;
#endif
  }
  if (why_not != nullptr) *why_not = "unknown device";
  return false;
}

Device choose_device(const std::string& name) {
  if (name == "auto") return device_available(Device::Cuda) ? Device::Cuda : Device::Cpu;
  const Device d = parse_device(name);
  std::string why;
  if (!device_available(d, &why)) fail("--device {}: {}", name, why);
  return d;
}

std::unique_ptr<Backend> make_backend(Device d, ThreadPool& pool) {
  switch (d) {
    case Device::Cpu: return std::make_unique<cpu::CpuBackend>(pool);
    case Device::Cuda:
#ifdef LONGCTX_HAVE_CUDA
      return make_cuda_backend(pool);
#else
      fail("{}", kNoCuda);
#endif
  }
  fail("internal: unknown device {}", static_cast<int>(d));
}

}  // namespace longctx
