// The backends this build has (backend.h: make_backend, device_available): a library of its own above the cpu and
// cuda backends, so that neither backend library depends on the other.
#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

#ifdef LONGCTX_HAVE_CUDA
#if __has_include("backend/cuda/cuda_engine.h")
#include "backend/cuda/cuda_engine.h"
#else
namespace longctx {
std::unique_ptr<Backend> make_cuda_backend(ThreadPool& pool);  // backend/cuda/cuda_engine.h
}  // namespace longctx
#endif
#endif

namespace longctx {

namespace {
constexpr const char* kNoCuda = "this build has no CUDA backend (configure with the cuda preset)";
}  // namespace

bool device_available(Device d, std::string* why_not) {
  switch (d) {
    case Device::Cpu: return true;
    case Device::Cuda:
#ifdef LONGCTX_HAVE_CUDA
      return true;  // whether a GPU is present, make_cuda_backend says (it throws Error saying why not)
#else
      if (why_not != nullptr) *why_not = kNoCuda;
      return false;
#endif
  }
  if (why_not != nullptr) *why_not = "unknown device";
  return false;
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
