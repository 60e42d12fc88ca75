// Internal to the CUDA backend (never included above it): turning CUDA error codes into Status.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/cuda_backend.h"

namespace longctx::cuda {

inline Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::success();
  return Status::error(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

}  // namespace longctx::cuda

#define LONGCTX_CUDA_TRY(call)                                    \
  do {                                                            \
    const ::longctx::cuda::Status s_ = ::longctx::cuda::cuda_status((call), #call); \
    if (!s_.ok()) return s_;                                      \
  } while (0)
