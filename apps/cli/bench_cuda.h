// `longctx bench --device cuda`: the same pp / tg measurements on the CUDA backend (src/backend/cuda/llama_decode.h),
// for synthetic weights built on the device. Compiled only into builds with the CUDA backend (LONGCTX_CUDA).
#pragma once
#include "bench_command.h"

namespace longctx {

// Runs the bench on the GPU; throws Error for what the device path cannot do yet (a GGUF file, a KV policy other
// than the full cache) and for a device that is missing or too small (the backend's message).
int bench_command_cuda(const BenchOptions& o);

}  // namespace longctx
