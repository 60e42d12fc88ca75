// The CUDA backend behind the one backend interface (backend/backend.h): the model's forward and the KV store run on
// the GPU through it exactly as on the CPU. make_backend (backend.cpp) calls this factory in builds with CUDA.
//
// What it does, in the interface's terms:
// - Memory: activations are device memory (cudaMalloc); prepare() copies every weight and norm vector once, after
//   checking their bytes against the device's free memory, and finds the copy by the host object's address (so a
//   weight's bytes must not change after prepare(), and a weight freed and another made at its address must be
//   prepared again: prepare() replaces a copy whose shape or format differs, an op given one throws).
// - KV pages live in device memory (KvPageMemory: slabs from cudaMalloc; release() is a no-op, so a slab's memory
//   goes back only when it is unmapped), in the CPU codec's byte layout (cpu/kv_page_codec.h). write_rows is one
//   kernel a call for F16 and F32 pages; the host-side reads, writes and compaction copy the page to the host, run the
//   CPU codec and copy it back (packing a page into KIVI runs there too, for now). attention and attention_scores
//   read every format, KIVI pages decoded in place as the CPU codec decodes them.
// - matmul: a few rows (decode, n <= 8) read the quantized bytes (cuda::quant_gemv, bf16 activations; the f32
//   cuda::matmul_f32 for the formats it lacks, Q5_0 and Q5_1); more rows (prefill) dequantize the weight to bf16 and
//   run a cuBLASLt GEMM. Formats: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; any other is refused
//   by prepare() with an Error naming it.
// - Host arrays an op takes (token ids, positions, page tables) are uploaded on each call; every op runs on the
//   default stream in issue order, and to_host() waits for what came before.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace longctx {

// Throws Error saying why when no GPU or driver is usable.
std::unique_ptr<Backend> make_cuda_backend(ThreadPool& pool);

// Whether a GPU and driver are usable (what make_cuda_backend would need), without starting the backend; why_not says
// why not. For device_available and the default device choice.
bool cuda_device_usable(std::string* why_not = nullptr);

}  // namespace longctx
