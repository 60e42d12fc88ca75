// A llama decode step on the device: the whole forward of one token at batch 1, captured once into
// a CUDA graph and replayed for every token.
//
// The graph is reusable because nothing that changes between steps is baked into it: the input token, the position
// and every head's KV length live in device memory. Each replay reads the token, runs the forward (appending the
// token's K/V to the paged store), writes the logits, takes the greedy argmax as the next input token and advances the
// position, so generating n tokens is n graph launches and no host round trip. A host write of the token (set_token)
// before a replay feeds a given prompt instead.
//
// The weights are synthetic (synthetic.h), built on the device from a seed: a llama3-8b needs no file. The KV store
// is the paged layout decode_attention reads (cuda_backend.h), bf16, pages scattered over one pool as a long-running
// allocator would leave them, sized for max_context tokens per head.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/synthetic.h"

namespace longctx::cuda {

enum class PageOrder { Scattered, InOrder };

// How the step's matrix-vector products run: cuBLASLt (tuned; RMSNorm and SwiGLU as their own kernels), or the
// step's own GEMV with RMSNorm, SwiGLU and the residual add fused in (ops.h, gemv). Same function, same roundings.
enum class MatvecPath { CublasLt, Fused };

// Whether the step warms L2 with each layer's Wo before its attention runs (ops.h, l2_prefetch), and with which
// priority. A hint: the logits are the same either way.
enum class WeightPrefetch { None, Wo, WoEvictLast };

struct LlamaDecodeOptions {
  int32_t max_context = 4096;  // tokens per head the KV store holds; the attention plan is made for this length
  int32_t page_tokens = 64;
  PageOrder page_order = PageOrder::Scattered;
  bool tune_gemms = true;  // time cuBLASLt's candidates (and the fused GEMV) on the weights at create
  MatvecPath matvec = MatvecPath::Fused;
  WeightPrefetch prefetch = WeightPrefetch::None;
  // Packed pages the store may hold beside its bf16 ones (KIVI, as decode_attention reads them), for caches that
  // a KV policy compressed; None: bf16 pages only.
  KvPacking kv_packing = KvPacking::None;
  // A/B settings of the step's kernels (docs/cuda-backend-notes.md has the measurements): the split attention's
  // merge in a second kernel instead of the last block of each head; the fused GEMV's loads in flight (0: chosen
  // per product, else 4 or 8); programmatic dependent launch (off: set_programmatic_launch(false), for the process).
  DecodeMerge decode_merge = DecodeMerge::InKernel;
  int32_t gemv_unroll = 0;
  bool pdl = true;
};

// Where the bytes of one token's forward go, for the roofline.
struct LlamaDecodeBytes {
  size_t weights_total = 0;     // every weight held on the device
  size_t weights_per_token = 0;  // what a step reads: every layer matrix and norm, the output head, one embedding row
  size_t kv_per_token_per_ctx = 0;  // K and V bytes a step reads per cached token (all layers and heads)
  size_t kv_store = 0;              // the paged store as allocated
  size_t kv_packed_page = 0;        // bytes of one packed page (0 without kv_packing)
};

// One product of the forward, as tuned (GEMV alone, rotating over its layers' weights).
struct LlamaGemmReport {
  const char* name = "";
  int32_t n_out = 0, n_in = 0, n_per_token = 0;  // n_per_token: how many such products one step runs
  GemmTuneResult tune;  // cuBLASLt alone (the product only)
  float fused_us = 0;   // the fused GEMV of the same product (with its fused neighbours), per product
};

class LlamaDecoder {
 public:
  // Allocates and fills the weights from the seed, the KV store, the activations and the GEMM plans. Fails with a
  // clear message (and holds nothing) when there is no device or the device cannot hold the model.
  static Status create(const ModelShape& shape, uint64_t seed, const LlamaDecodeOptions& options,
                       std::unique_ptr<LlamaDecoder>* out);
  ~LlamaDecoder();
  LlamaDecoder(const LlamaDecoder&) = delete;
  LlamaDecoder& operator=(const LlamaDecoder&) = delete;

  // Switches the matrix-vector path; the step graph is captured again at the next step.
  Status set_matvec(MatvecPath path);
  Status set_prefetch(WeightPrefetch prefetch);  // likewise
  // Empties the cache: position 0, every head 0 tokens.
  Status reset();
  // Pretends n_ctx tokens were prefilled: every head holds n_ctx slots at positions 0..n_ctx-1 with synthetic K/V
  // values (benchmarks that skip prefill); the next step is at position n_ctx.
  Status fill_kv_synthetic(int32_t n_ctx);
  // Pretends a prompt of n_ctx tokens was prefilled and compressed to `kept` slots per head, the shape a token
  // policy (SnapKV, H2O, ...) plus KIVI leaves: slot positions spread over [0, n_ctx) with the newest 64 tokens
  // contiguous, every full page but the last packed in options.kv_packing, the last page bf16 (KIVI's
  // full-precision tail, where the steps append). Synthetic values; the next step is at position n_ctx. Needs
  // kv_packing != None and kept < max_context. Which slots a real policy keeps does not change what a step reads.
  Status fill_kv_compressed_synthetic(int32_t n_ctx, int32_t kept);
  // Runs a prompt through the model on the device, every layer over all its tokens at once (cuBLASLt GEMMs, the
  // prefill attention kernel, RoPE and the append of every token's K/V into the paged store), then the output head
  // on its last token: afterwards the logits are the last prompt token's, its greedy argmax is the next input and
  // the first entry of read_generated(), and step() continues at position tokens.size(). Needs an empty cache
  // (after create or reset); synchronous. Activations of the whole prompt are allocated for the call.
  Status prefill(const std::vector<int32_t>& tokens);
  // The input token of the next step (otherwise the previous step's argmax).
  Status set_token(int32_t token);
  // n_steps replays of the step graph (captured on first use), queued on the decoder's stream; no synchronization.
  Status step(int32_t n_steps = 1);
  Status synchronize();
  // After synchronize(): the last step's logits (n_vocab) and greedy token, and every token generated since reset.
  Status read_logits(std::vector<float>* logits);
  Status read_last_token(int32_t* token);
  Status read_generated(std::vector<int32_t>* tokens);

  int32_t position() const;  // the next step's position (host mirror)
  const ModelShape& shape() const;
  LlamaDecodeBytes bytes() const;
  const std::vector<LlamaGemmReport>& gemm_report() const;
  void* stream() const;  // the decoder's cudaStream_t, for timing with events

  // Times decode_attention alone over every layer at the current cache length, us per step (all layers).
  Status time_attention(int32_t n_reps, float* us);

 private:
  LlamaDecoder();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace longctx::cuda
