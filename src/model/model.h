// A model: hyper-parameters read from the GGUF and weights that point into its memory map, or synthetic weights of a
// real model's shape built from a seed (core/synthetic_weights.h) and held in memory of its own. One forward
// description covers every architecture (forward.h); the differences live in ModelConfig.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/ggml_type.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"

namespace longctx {

enum class Arch { Llama, Gemma3 };

const char* arch_name(Arch a);

struct ModelConfig {
  Arch arch = Arch::Llama;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t n_ff = 0;
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;
  int32_t n_rot = 0;
  float rms_eps = 1e-5f;
  float rope_base = 10000.0f;        // global-attention layers
  float rope_base_local = 10000.0f;  // sliding-window layers (gemma3)
  RopeOrder rope_order = RopeOrder::Adjacent;
  int32_t sliding_window = 0;        // 0: no sliding-window layers
  std::vector<bool> layer_is_local;  // (n_layer) true where the layer attends within sliding_window
  float embd_scale = 1.0f;           // gemma multiplies embeddings by sqrt(n_embd)
  float attn_scale = 1.0f;           // applied to q·k
  GatedActivation ffn_act = GatedActivation::SiLU;
  bool has_qk_norm = false;          // gemma3: RMSNorm over each head of q and k before RoPE
  bool has_post_norms = false;       // gemma3: RMSNorm after attention and after the FFN, before the residual
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;              // (n_embd)
  std::vector<float> q_norm, k_norm;                   // (head_dim), gemma3
  std::vector<float> post_attn_norm, post_ffn_norm;    // (n_embd), gemma3
  Weight wq, wk, wv, wo;
  Weight w_gate, w_up, w_down;
};

class Model {
 public:
  // Throws Error for a file that is not a usable model: unknown architecture, missing or mis-shaped tensors,
  // unsupported weight types.
  static std::unique_ptr<Model> load(const std::string& path);

  // A llama of synthetic weights, no file: spec is "llama3-8b[:SEED]" or "tiny[:SEED]" (synthetic_shape). Every
  // matrix is BF16 holding exactly synthetic_bf16's bits, the norms are f32 of the same bf16 values, the output head
  // is untied, RoPE rotates adjacent pairs, so the weights equal the CUDA decode step's under the same seed.
  // Memory: 2 bytes per parameter, allocated here (llama3-8b: 8.03 G parameters, 15 GiB; tiny: 1.4 M, 2.8 MiB).
  // The fill runs on pool's threads when one is given. Throws Error for a bad spec (naming the accepted shapes) or
  // when the memory cannot be had.
  static std::unique_ptr<Model> synthetic(const std::string& spec, ThreadPool* pool = nullptr);

  const ModelConfig& config() const { return config_; }
  // The GGUF file the model was loaded from; throws Error for a synthetic model (has_file() is false).
  const gguf::File& file() const;
  bool has_file() const { return file_ != nullptr; }
  const Weight& token_embd() const { return token_embd_; }
  const Weight& output() const { return output_; }  // token_embd when the embeddings are tied
  const std::vector<float>& output_norm() const { return output_norm_; }
  const LayerWeights& layer(int32_t i) const { return layers_[static_cast<size_t>(i)]; }
  size_t weight_bytes() const;  // of the file's tensors, or of the synthetic weights as held

 private:
  struct FreeDeleter {
    void operator()(void* p) const;
  };
  Model() = default;
  std::unique_ptr<gguf::File> file_;
  std::unique_ptr<uint16_t, FreeDeleter> synthetic_bf16_;  // every synthetic matrix, one after the other
  size_t synthetic_bytes_ = 0;                             // of synthetic_bf16_ and the f32 norms
  ModelConfig config_;
  Weight token_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<LayerWeights> layers_;
};

}  // namespace longctx
