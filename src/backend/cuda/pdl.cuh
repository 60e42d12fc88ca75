// Internal to the CUDA backend: programmatic dependent launch (PDL), which lets a kernel's blocks start while the
// kernel before it in the stream drains, so that the decode step's ~7 kernels a layer do not each pay a full drain,
// launch and ramp-up (the step is a CUDA graph of ~230 small kernels).
//
// Device side, in every kernel launched this way: pdl_wait() before the first read of anything an earlier kernel
// writes (and before the first write an earlier kernel could read): it returns when the previous grid has finished
// and its writes are visible, and since every kernel in the chain waits so, the order is transitive. pdl_trigger()
// lets the next kernel launch; it only lets its blocks start, they still wait. Both are no-ops for a kernel launched
// without the attribute, so the same kernels serve ordinary launches.
//
// set_programmatic_launch(false) (cuda_backend.h; LlamaDecodeOptions::pdl) launches everything the ordinary way,
// for A/B timings: a setting of the process, since every op launches through here.
#pragma once
#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.h"  // programmatic_launch


namespace longctx::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}


// kernel<<<grid, block, smem, stream>>>(args...), allowed to start while the previous kernel in the stream drains.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = programmatic_launch() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...);
}

}  // namespace longctx::cuda
