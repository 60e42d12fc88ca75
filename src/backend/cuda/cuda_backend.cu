// Device discovery and memory: thin wrappers that report every failure as a Status.
#include "backend/cuda/cuda_backend.h"

#include <atomic>

#include "backend/cuda/backend_ops.h"
#include "backend/cuda/cuda_check.cuh"

namespace longctx::cuda {

Status device_query(DeviceInfo* info) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) return cuda_status(e, "no usable CUDA device (cudaGetDeviceCount)");
  if (n == 0) return Status::error("no CUDA device present");
  int dev = 0;
  LONGCTX_CUDA_TRY(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  LONGCTX_CUDA_TRY(cudaGetDeviceProperties(&prop, dev));
  info->name = prop.name;
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->n_sm = prop.multiProcessorCount;
  info->global_bytes = prop.totalGlobalMem;
  info->l2_bytes = static_cast<size_t>(prop.l2CacheSize);
  return Status::success();
}

Status device_alloc(void** device_ptr, size_t bytes) {
  *device_ptr = nullptr;
  const cudaError_t e = cudaMalloc(device_ptr, bytes);
  if (e != cudaSuccess) {
    *device_ptr = nullptr;
    cudaGetLastError();  // out of memory is not sticky: clear it so later calls are unaffected
    return Status::error("device allocation of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(e));
  }
  return Status::success();
}

Status device_memory_info(size_t* free_bytes, size_t* total_bytes) {
  return cuda_status(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

Status device_free(void* device_ptr) { return cuda_status(cudaFree(device_ptr), "cudaFree"); }

Status copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  return cuda_status(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice), "copy to device");
}

Status copy_to_device_async(void* device_dst, const void* host_src, size_t bytes) {
  return cuda_status(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, nullptr),
                     "copy to device (async)");
}

Status copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  return cuda_status(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

Status host_alloc_pinned(void** host_ptr, size_t bytes) {
  const cudaError_t e = cudaMallocHost(host_ptr, bytes);
  if (e != cudaSuccess) {
    *host_ptr = nullptr;
    cudaGetLastError();
    return Status::error("pinned host allocation of " + std::to_string(bytes) + " bytes failed: " + cudaGetErrorString(e));
  }
  return Status::success();
}

Status host_free_pinned(void* host_ptr) { return cuda_status(cudaFreeHost(host_ptr), "cudaFreeHost"); }

Status copy_to_host_async(void* pinned_host_dst, const void* device_src, size_t bytes) {
  return cuda_status(cudaMemcpyAsync(pinned_host_dst, device_src, bytes, cudaMemcpyDeviceToHost, nullptr),
                     "copy to host (async)");
}

Status copy_on_device(void* device_dst, const void* device_src, size_t bytes) {
  return cuda_status(cudaMemcpyAsync(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice, nullptr),
                     "copy on device");
}

Status device_fill_bytes(void* device_ptr, uint8_t value, size_t bytes) {
  return cuda_status(cudaMemset(device_ptr, value, bytes), "cudaMemset");
}

namespace {
std::atomic<bool> g_programmatic_launch{true};
}  // namespace
void set_programmatic_launch(bool on) { g_programmatic_launch.store(on, std::memory_order_relaxed); }
bool programmatic_launch() { return g_programmatic_launch.load(std::memory_order_relaxed); }

Status device_synchronize() { return cuda_status(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

Status device_copy_bandwidth(size_t bytes, int32_t n_reps, double* bytes_per_s) {
  *bytes_per_s = 0;
  void *src = nullptr, *dst = nullptr;
  if (Status s = device_alloc(&src, bytes); !s.ok()) return s;
  Status s = device_alloc(&dst, bytes);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  if (s.ok()) s = cuda_status(cudaEventCreate(&e0), "cudaEventCreate");
  if (s.ok()) s = cuda_status(cudaEventCreate(&e1), "cudaEventCreate");
  if (s.ok()) s = cuda_status(cudaMemset(src, 0x3c, bytes), "cudaMemset");
  float best_ms = 0;
  for (int32_t rep = 0; rep <= n_reps && s.ok(); ++rep) {  // rep 0 warms up
    s = cuda_status(cudaEventRecord(e0), "cudaEventRecord");
    if (s.ok()) s = cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync");
    if (s.ok()) s = cuda_status(cudaEventRecord(e1), "cudaEventRecord");
    if (s.ok()) s = cuda_status(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    if (s.ok()) s = cuda_status(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    if (s.ok() && rep > 0 && (best_ms == 0 || ms < best_ms)) best_ms = ms;
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (dst) cudaFree(dst);
  cudaFree(src);
  if (s.ok() && best_ms > 0) *bytes_per_s = 2.0 * static_cast<double>(bytes) / (best_ms * 1e-3);
  return s;
}

}  // namespace longctx::cuda
