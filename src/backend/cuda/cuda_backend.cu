// Device discovery and memory: thin wrappers that report every failure as a Status.
#include "backend/cuda/cuda_backend.h"

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

Status device_free(void* device_ptr) { return cuda_status(cudaFree(device_ptr), "cudaFree"); }

Status copy_to_device(void* device_dst, const void* host_src, size_t bytes) {
  return cuda_status(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice), "copy to device");
}

Status copy_to_host(void* host_dst, const void* device_src, size_t bytes) {
  return cuda_status(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost), "copy to host");
}

Status device_fill_bytes(void* device_ptr, uint8_t value, size_t bytes) {
  return cuda_status(cudaMemset(device_ptr, value, bytes), "cudaMemset");
}

Status device_synchronize() { return cuda_status(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace longctx::cuda
