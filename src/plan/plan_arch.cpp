#include "plan/plan_arch.h"

#include <cctype>
#include <map>

#include "core/error.h"
#include "model/model.h"

namespace longctx::plan {

int64_t PlanArch::weight_bytes_per_token() const {
  int64_t n = head.bytes + small_bytes_per_token;
  for (const WeightUse& w : layers) n += w.bytes;
  return n;
}

double PlanArch::layer_flops_per_token() const {
  double f = 0;
  for (const WeightUse& w : layers) f += w.flops_per_row;
  return f;
}

namespace {

void add_matrix(std::vector<WeightUse>& uses, GgmlType type, int64_t n_out, int64_t n_in) {
  const int64_t bytes = static_cast<int64_t>(ggml_row_bytes(type, n_in)) * n_out;
  const double flops = 2.0 * static_cast<double>(n_out) * static_cast<double>(n_in);
  for (WeightUse& u : uses)
    if (u.type == type) {
      u.bytes += bytes;
      u.flops_per_row += flops;
      return;
    }
  uses.push_back(WeightUse{type, bytes, flops});
}

struct Shape {
  int32_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_train;
  bool tied;            // the output head is the embedding table
  int32_t sliding_window;  // gemma3: five local layers to one global
  const char* note;
};

// Shapes as their model cards and config.json files give them.
const std::map<std::string, Shape>& shapes() {
  static const std::map<std::string, Shape> s = {
      {"llama3-8b", {32, 4096, 32, 8, 128, 14336, 128256, 8192, false, 0, "Llama 3 8B"}},
      {"llama3.1-8b", {32, 4096, 32, 8, 128, 14336, 128256, 131072, false, 0, "Llama 3.1 8B"}},
      {"llama3.1-70b", {80, 8192, 64, 8, 128, 28672, 128256, 131072, false, 0, "Llama 3.1 70B"}},
      {"mistral-7b", {32, 4096, 32, 8, 128, 14336, 32000, 32768, false, 0, "Mistral 7B v0.2"}},
      {"qwen2.5-7b", {28, 3584, 28, 4, 128, 18944, 152064, 131072, false, 0, "Qwen2.5 7B"}},
      // The running example of "Challenges in Deploying Long-Context Transformers: A Theoretical Peak Performance
      // Analysis": a 34B model of Yi-34B-200K's shape (GQA, 8 kv-heads).
      {"yi-34b", {60, 7168, 56, 8, 128, 20480, 64000, 200000, false, 0, "Yi-34B-200K"}},
      {"smollm2-135m", {30, 576, 9, 3, 64, 1536, 49152, 8192, true, 0, "SmolLM2 135M"}},
      {"gemma3-270m", {18, 640, 4, 1, 256, 2048, 262144, 32768, true, 512, "Gemma 3 270M"}},
  };
  return s;
}

}  // namespace

std::string plan_shape_names() {
  std::string names;
  for (const auto& [name, s] : shapes()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

GgmlType parse_weight_type(const std::string& name_in) {
  // GGUF's names are upper case (Q4_K); people write either.
  std::string name = name_in;
  for (char& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  std::string valid;
  for (uint32_t id = 0; id < 64; ++id) {
    const auto tr = ggml_type_traits(id);
    if (!tr || !tr->supported) continue;
    if (tr->name == name) return static_cast<GgmlType>(id);
    valid += (valid.empty() ? "" : ", ") + std::string(tr->name);
  }
  fail("unknown weight format '{}'; valid: {}", name_in, valid);
}

PlanArch plan_arch_from_model(const Model& model, const std::string& name) {
  const ModelConfig& c = model.config();
  PlanArch a;
  a.name = name;
  a.n_layer = c.n_layer;
  a.n_embd = c.n_embd;
  a.n_head = c.n_head;
  a.n_head_kv = c.n_head_kv;
  a.head_dim = c.head_dim;
  a.n_ff = c.n_ff;
  a.n_vocab = c.n_vocab;
  a.n_ctx_train = c.n_ctx_train;
  a.sliding_window = c.sliding_window;
  a.layer_is_local = c.layer_is_local;
  a.weight_bytes = static_cast<int64_t>(model.weight_bytes());
  const auto vec = [](const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); };
  for (int32_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& w = model.layer(il);
    for (const Weight* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) {
      add_matrix(a.layers, m->type, m->n_out, m->n_in);
      a.n_params += m->n_out * m->n_in;
    }
    // Norms are converted to f32 at load, so f32 is what a step reads.
    a.small_bytes_per_token += vec(w.attn_norm) + vec(w.ffn_norm) + vec(w.q_norm) + vec(w.k_norm) +
                               vec(w.post_attn_norm) + vec(w.post_ffn_norm);
  }
  const Weight& out = model.output();
  std::vector<WeightUse> head;
  add_matrix(head, out.type, out.n_out, out.n_in);
  a.head = head.front();
  const Weight& emb = model.token_embd();
  a.small_bytes_per_token += vec(model.output_norm()) + static_cast<int64_t>(ggml_row_bytes(emb.type, emb.n_in));
  a.n_params += emb.n_out * emb.n_in + (out.data == emb.data ? 0 : out.n_out * out.n_in);
  return a;
}

PlanArch plan_arch_from_shape(const std::string& shape, GgmlType type) {
  const auto it = shapes().find(shape);
  if (it == shapes().end()) fail("unknown shape '{}'; known: {}", shape, plan_shape_names());
  const auto tr = ggml_type_traits(static_cast<uint32_t>(type));
  if (!tr || !tr->supported) fail("weight format {} is not one the engine computes with", static_cast<int>(type));
  const Shape& s = it->second;
  if (s.n_embd % tr->block_values || s.n_ff % tr->block_values)
    fail("shape '{}' (d {}, ffn {}) does not divide into {} blocks of {}", shape, s.n_embd, s.n_ff, tr->name,
         tr->block_values);
  PlanArch a;
  a.name = shape + " (" + s.note + ", " + std::string(tr->name) + ")";
  a.n_layer = s.n_layer;
  a.n_embd = s.n_embd;
  a.n_head = s.n_head;
  a.n_head_kv = s.n_head_kv;
  a.head_dim = s.head_dim;
  a.n_ff = s.n_ff;
  a.n_vocab = s.n_vocab;
  a.n_ctx_train = s.n_ctx_train;
  a.sliding_window = s.sliding_window;
  a.layer_is_local.assign(static_cast<size_t>(s.n_layer), false);
  if (s.sliding_window > 0)
    for (int32_t i = 0; i < s.n_layer; ++i) a.layer_is_local[static_cast<size_t>(i)] = (i + 1) % 6 != 0;
  const int64_t E = s.n_embd, Q = int64_t{s.n_head} * s.head_dim, KV = int64_t{s.n_head_kv} * s.head_dim;
  const bool gemma = s.sliding_window > 0;
  int64_t norm_floats = 0;
  for (int32_t il = 0; il < s.n_layer; ++il) {
    add_matrix(a.layers, type, Q, E);
    add_matrix(a.layers, type, KV, E);
    add_matrix(a.layers, type, KV, E);
    add_matrix(a.layers, type, E, Q);
    add_matrix(a.layers, type, s.n_ff, E);
    add_matrix(a.layers, type, s.n_ff, E);
    add_matrix(a.layers, type, E, s.n_ff);
    a.n_params += E * (2 * Q + 2 * KV) + 3 * E * s.n_ff;
    norm_floats += 2 * E + (gemma ? 2 * E + 2 * s.head_dim : 0);
  }
  std::vector<WeightUse> head;
  add_matrix(head, type, s.n_vocab, E);
  a.head = head.front();
  norm_floats += E;
  const int64_t table_bytes = static_cast<int64_t>(ggml_row_bytes(type, E)) * s.n_vocab;
  a.n_params += s.n_vocab * E * (s.tied ? 1 : 2) + norm_floats;
  a.small_bytes_per_token = norm_floats * 4 + static_cast<int64_t>(ggml_row_bytes(type, E));
  int64_t layer_bytes = 0;
  for (const WeightUse& u : a.layers) layer_bytes += u.bytes;
  a.weight_bytes = layer_bytes + table_bytes * (s.tied ? 1 : 2) + norm_floats * 4;
  return a;
}

}  // namespace longctx::plan
