// What the cost model needs to know about a model: its attention geometry and, per weight format, the bytes one
// decoded token reads and the FLOPs one prompt token does. Built from a loaded GGUF (its tensors as stored) or from
// a named shape and a weight format (for models that are not on this machine).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/ggml_type.h"

namespace longctx {
class Model;
}

namespace longctx::plan {

// The weights of one format.
struct WeightUse {
  GgmlType type = GgmlType::F32;
  int64_t bytes = 0;       // read once by every forward (decode reads each weight once per token)
  double flops_per_row = 0;  // 2 x elements: the multiply-adds of one token through these matrices
};

struct PlanArch {
  std::string name;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t n_ff = 0;
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;
  int32_t sliding_window = 0;        // 0: every layer attends to the whole context
  std::vector<bool> layer_is_local;  // (n_layer) layers that attend within sliding_window
  int64_t n_params = 0;
  int64_t weight_bytes = 0;            // held in memory: every tensor as stored
  std::vector<WeightUse> layers;       // the layer matrices, one entry per format
  WeightUse head;                      // the output head: read whole by every decode step, once per logits row
  int64_t small_bytes_per_token = 0;   // norms and one embedding row, read by every decode step

  bool local(int32_t layer) const {
    return sliding_window > 0 && layer_is_local[static_cast<size_t>(layer)];
  }
  // Bytes of weights one decode step reads: every layer matrix, the head, norms, one embedding row.
  int64_t weight_bytes_per_token() const;
  // FLOPs of one prompt token through the layer matrices (the head runs only for the rows whose logits are asked).
  double layer_flops_per_token() const;
  // Query heads that share one kv-head (GQA's group), at least 1.
  int32_t heads_per_kv_head() const { return n_head_kv > 0 ? std::max(1, n_head / n_head_kv) : 1; }
};

// From a loaded model: the tensors' own formats and sizes.
PlanArch plan_arch_from_model(const Model& model, const std::string& name);

// A named shape with every matrix, the embeddings and the head in one format (norms f32). Throws Error for an
// unknown shape (naming the known ones) or a format the engine does not know.
PlanArch plan_arch_from_shape(const std::string& shape, GgmlType weight_type);

// "llama3-8b, llama3.1-8b, ...": for messages and --help.
std::string plan_shape_names();

// A GGUF type by its name ("bf16", "q4_k", "q8_0"); throws Error naming the valid ones.
GgmlType parse_weight_type(const std::string& name);

}  // namespace longctx::plan
