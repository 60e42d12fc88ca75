// cuBLASLt products of the forward (gemm.h).
#include "backend/cuda/gemm.h"

#include <cublasLt.h>

#include <algorithm>
#include <string>
#include <vector>

#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {
namespace {

Status lt_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::success();
  return Status::error(std::string(what) + ": cuBLASLt status " + std::to_string(static_cast<int>(s)));
}

#define LONGCTX_LT_TRY(call)                                   \
  do {                                                         \
    const Status s_ = lt_status((call), #call);                \
    if (!s_.ok()) return s_;                                   \
  } while (0)

struct Shape {
  int32_t n_out = 0, n_in = 0, n_cols = 0;
  GemmAccumulate acc = GemmAccumulate::Overwrite;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // W, x, y (C and D share one layout)
  std::vector<cublasLtMatmulHeuristicResult_t> candidates;
  size_t chosen = 0;
};

}  // namespace

struct GemmRunner::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  std::vector<Shape> shapes;

  ~Impl() {
    for (Shape& s : shapes) {
      if (s.desc) cublasLtMatmulDescDestroy(s.desc);
      if (s.a) cublasLtMatrixLayoutDestroy(s.a);
      if (s.b) cublasLtMatrixLayoutDestroy(s.b);
      if (s.c) cublasLtMatrixLayoutDestroy(s.c);
    }
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  Status launch(const Shape& s, const cublasLtMatmulAlgo_t& algo, const void* w, const void* x, float* y,
                cudaStream_t st) const {
    const float alpha = 1.0f, beta = s.acc == GemmAccumulate::Add ? 1.0f : 0.0f;
    return lt_status(cublasLtMatmul(handle, s.desc, &alpha, w, s.a, x, s.b, &beta, y, s.c, y, s.c, &algo, workspace,
                                    workspace_bytes, st),
                     "cublasLtMatmul");
  }
};

GemmRunner::GemmRunner() : impl_(std::make_unique<Impl>()) {}
GemmRunner::~GemmRunner() = default;

Status GemmRunner::create(size_t workspace_bytes, std::unique_ptr<GemmRunner>* out) {
  out->reset();
  std::unique_ptr<GemmRunner> g(new GemmRunner());
  LONGCTX_LT_TRY(cublasLtCreate(&g->impl_->handle));
  if (workspace_bytes > 0) {
    Status s = device_alloc(&g->impl_->workspace, workspace_bytes);
    if (!s.ok()) return s;
  }
  g->impl_->workspace_bytes = workspace_bytes;
  *out = std::move(g);
  return Status::success();
}

Status GemmRunner::add_shape(int32_t n_out, int32_t n_in, int32_t n_cols, GemmAccumulate acc, int32_t* shape_id) {
  if (n_out <= 0 || n_in <= 0 || n_cols <= 0) return Status::error("gemm: empty shape");
  Impl& m = *impl_;
  m.shapes.emplace_back();
  Shape& s = m.shapes.back();
  s.n_out = n_out;
  s.n_in = n_in;
  s.n_cols = n_cols;
  s.acc = acc;
  // Column-major view of cuBLAS: y^T (n_out x n_cols) = op(A) B with A = W^T stored (n_in x n_out, ld n_in) and
  // op = T, B = x^T (n_in x n_cols, ld n_in). This is the "TN" case, the one every cuBLAS kernel family covers.
  LONGCTX_LT_TRY(cublasLtMatmulDescCreate(&s.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  LONGCTX_LT_TRY(cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  LONGCTX_LT_TRY(cublasLtMatmulDescSetAttribute(s.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  LONGCTX_LT_TRY(cublasLtMatrixLayoutCreate(&s.a, CUDA_R_16BF, n_in, n_out, n_in));
  LONGCTX_LT_TRY(cublasLtMatrixLayoutCreate(&s.b, CUDA_R_16BF, n_in, n_cols, n_in));
  LONGCTX_LT_TRY(cublasLtMatrixLayoutCreate(&s.c, CUDA_R_32F, n_out, n_cols, n_out));

  cublasLtMatmulPreference_t pref = nullptr;
  LONGCTX_LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &m.workspace_bytes,
                                       sizeof(m.workspace_bytes));
  s.candidates.resize(16);
  int n_found = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(m.handle, s.desc, s.a, s.b, s.c, s.c, pref,
                                                           static_cast<int>(s.candidates.size()), s.candidates.data(),
                                                           &n_found);
  cublasLtMatmulPreferenceDestroy(pref);
  LONGCTX_LT_TRY(hs);
  s.candidates.resize(static_cast<size_t>(n_found));
  s.candidates.erase(std::remove_if(s.candidates.begin(), s.candidates.end(),
                                    [](const cublasLtMatmulHeuristicResult_t& r) { return r.state != CUBLAS_STATUS_SUCCESS; }),
                     s.candidates.end());
  if (s.candidates.empty())
    return Status::error("gemm: cuBLASLt has no bf16 kernel for " + std::to_string(n_out) + " x " + std::to_string(n_in));
  *shape_id = static_cast<int32_t>(m.shapes.size() - 1);
  return Status::success();
}

Status GemmRunner::tune(int32_t shape_id, const void* const* weights, int32_t n_weights, const void* x, float* y,
                        void* stream, int32_t max_candidates, GemmTuneResult* result) {
  Impl& m = *impl_;
  if (shape_id < 0 || shape_id >= static_cast<int32_t>(m.shapes.size())) return Status::error("gemm: unknown shape");
  if (n_weights <= 0) return Status::error("gemm tune: no weights");
  Shape& s = m.shapes[static_cast<size_t>(shape_id)];
  auto st = static_cast<cudaStream_t>(stream);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  LONGCTX_CUDA_TRY(cudaEventCreate(&e0));
  Status status = cuda_status(cudaEventCreate(&e1), "cudaEventCreate");
  const int32_t n_try = std::min<int32_t>(max_candidates, static_cast<int32_t>(s.candidates.size()));
  std::vector<float> us(static_cast<size_t>(n_try), 1e30f);
  int32_t n_ran = 0;
  for (int32_t ci = 0; ci < n_try && status.ok(); ++ci) {
    const cublasLtMatmulAlgo_t& algo = s.candidates[static_cast<size_t>(ci)].algo;
    // A candidate that fails to launch is skipped, not fatal: the heuristic only ranks.
    if (!m.launch(s, algo, weights[0], x, y, st).ok()) continue;
    for (int32_t wi = 0; wi < n_weights; ++wi) m.launch(s, algo, weights[wi], x, y, st);  // warm-up
    float best = 1e30f;
    for (int rep = 0; rep < 3 && status.ok(); ++rep) {
      const int32_t n_runs = std::max<int32_t>(n_weights, 32);
      status = cuda_status(cudaEventRecord(e0, st), "cudaEventRecord");
      for (int32_t r = 0; r < n_runs && status.ok(); ++r) status = m.launch(s, algo, weights[r % n_weights], x, y, st);
      if (status.ok()) status = cuda_status(cudaEventRecord(e1, st), "cudaEventRecord");
      if (status.ok()) status = cuda_status(cudaEventSynchronize(e1), "cudaEventSynchronize");
      float ms = 0;
      if (status.ok()) status = cuda_status(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
      best = std::min(best, ms * 1e3f / static_cast<float>(n_runs));
    }
    us[static_cast<size_t>(ci)] = best;
    ++n_ran;
  }
  cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (!status.ok()) return status;
  if (n_ran == 0) return Status::error("gemm tune: no candidate ran");
  const size_t best_i = static_cast<size_t>(std::min_element(us.begin(), us.end()) - us.begin());
  s.chosen = best_i;
  if (result) {
    result->n_candidates = n_ran;
    result->first_us = us[0];
    result->best_us = us[best_i];
  }
  return Status::success();
}

Status GemmRunner::run(int32_t shape_id, const void* w, const void* x, float* y, void* stream) const {
  const Impl& m = *impl_;
  if (shape_id < 0 || shape_id >= static_cast<int32_t>(m.shapes.size())) return Status::error("gemm: unknown shape");
  if (!w || !x || !y) return Status::error("gemm: null pointer");
  const Shape& s = m.shapes[static_cast<size_t>(shape_id)];
  return m.launch(s, s.candidates[s.chosen].algo, w, x, y, static_cast<cudaStream_t>(stream));
}

}  // namespace longctx::cuda
