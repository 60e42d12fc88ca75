#include "bench_cuda.h"

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace longctx {

CopyBandwidth cuda_copy_bandwidth() {
  CopyBandwidth bw;
  bw.buffer_bytes = size_t{1} << 30;
  bw.n_reps = 10;
  const cuda::Status s = cuda::device_copy_bandwidth(bw.buffer_bytes, bw.n_reps, &bw.bytes_per_s);
  if (!s.ok()) fail("bench --device cuda: copy bandwidth: {}", s.message());
  return bw;
}

}  // namespace longctx
