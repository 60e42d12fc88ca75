// The device side of the synthetic weights: filling device memory from the counter-based generator
// of core/synthetic_weights.h, whose inline functions nvcc compiles for the device too, so the device's bits are the
// host's. This header includes no CUDA header.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "core/synthetic_weights.h"

namespace longctx::cuda {

// longctx::synthetic_shape with its error as a Status.
Status synthetic_shape(const std::string& spec, ModelShape* shape, uint64_t* seed);

// Fills n elements (bf16) of tensor `tensor` starting at element first_index: dst[i] = synthetic_bf16(..., first_index + i).
Status synthetic_fill_bf16(void* device_dst, size_t n, uint64_t seed, uint32_t tensor, TensorInit init,
                           uint64_t first_index = 0, void* stream = nullptr);

}  // namespace longctx::cuda
