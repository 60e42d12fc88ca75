// GEMMs of the forward through cuBLASLt in bf16, behind a plain C++ interface.
//
// One layout for every product of a llama forward: y = x W^T with W (n_out, n_in) bf16 row-major (the GGUF and
// PyTorch layout), x (n_cols, n_in) bf16, y (n_cols, n_out) f32, products accumulated in f32. At decode n_cols = 1
// and the product is a GEMV bound by reading W once. GemmAccumulate::Add gives y += x W^T (beta = 1), which folds the
// residual add into the product's epilogue for free.
//
// cuBLASLt's heuristic ranks kernels for a shape without running them, and for n_cols = 1 its first choice is not
// always the fastest; tune() times the candidates on the real weights (rotating over several matrices so that they
// miss L2, as in a forward) and keeps the fastest. Nothing is allocated per call, so run() can be captured in a
// CUDA graph.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "backend/cuda/cuda_backend.h"

namespace longctx::cuda {

enum class GemmAccumulate { Overwrite, Add };

struct GemmTuneResult {
  int32_t n_candidates = 0;  // heuristic results that ran
  float first_us = 0;        // the heuristic's first choice, per product
  float best_us = 0;         // the fastest candidate, per product (what run() uses from now on)
};

class GemmRunner {
 public:
  // workspace_bytes of device scratch for split-K kernels, shared by every shape (products run in stream order).
  static Status create(size_t workspace_bytes, std::unique_ptr<GemmRunner>* out);
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Registers a shape and picks the heuristic's first kernel for it.
  Status add_shape(int32_t n_out, int32_t n_in, int32_t n_cols, GemmAccumulate acc, int32_t* shape_id);
  // Times up to max_candidates kernels, each over all n_weights matrices in turn, and keeps the fastest.
  // x, y: valid operands of the shape (y is overwritten or accumulated into: give it finite values).
  Status tune(int32_t shape_id, const void* const* weights, int32_t n_weights, const void* x, float* y, void* stream,
              int32_t max_candidates, GemmTuneResult* result);
  Status run(int32_t shape_id, const void* w, const void* x, float* y, void* stream) const;

 private:
  GemmRunner();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace longctx::cuda
