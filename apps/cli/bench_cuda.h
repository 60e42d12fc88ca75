// What `longctx bench --device cuda` needs from the CUDA backend beyond the engine itself: the GPU's copy bandwidth,
// the ceiling decode is held against. Compiled only into builds with the CUDA backend (LONGCTX_CUDA).
#pragma once
#include "core/memory_bandwidth.h"

namespace longctx {

// Device to device, 2 x 1 GiB, read + write bytes, best of 10. Throws Error when the device fails.
CopyBandwidth cuda_copy_bandwidth();

}  // namespace longctx
