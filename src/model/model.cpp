#include "model/model.h"

#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "core/fp16.h"
#include "core/synthetic_weights.h"

namespace longctx {

const char* arch_name(Arch a) { return a == Arch::Llama ? "llama" : "gemma3"; }

namespace {

class Loader {
 public:
  explicit Loader(const gguf::File& f) : f_(f) {}

  const gguf::TensorInfo& tensor(const std::string& name) const {
    const auto* t = f_.find_tensor(name);
    if (!t) fail("'{}': tensor '{}' is missing", f_.path(), name);
    if (!ggml_traits(t->type).supported)
      fail("'{}': tensor '{}' has type {}, which longctx cannot compute with yet", f_.path(), name,
           ggml_traits(t->type).name);
    return *t;
  }

  Weight matrix(const std::string& name, int64_t n_in, int64_t n_out) const {
    const auto& t = tensor(name);
    if (t.shape.size() != 2 || t.shape[0] != n_in || t.shape[1] != n_out)
      fail("'{}': tensor '{}' has shape {}, expected [{}, {}]", f_.path(), name, shape_string(t), n_in, n_out);
    return Weight{t.type, t.data, n_out, n_in};
  }

  // Small 1-D tensors (norm weights) are converted to f32 once at load.
  std::vector<float> vector(const std::string& name, int64_t n) const {
    const auto& t = tensor(name);
    if (t.shape.size() != 1 || t.shape[0] != n)
      fail("'{}': tensor '{}' has shape {}, expected [{}]", f_.path(), name, shape_string(t), n);
    std::vector<float> v(static_cast<size_t>(n));
    dequantize_row_host(t.type, t.data, v.data(), n);
    return v;
  }

 private:
  static std::string shape_string(const gguf::TensorInfo& t) {
    std::string s = "[";
    for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
    return s + "]";
  }
  const gguf::File& f_;
};

int32_t positive_int(const gguf::File& f, const std::string& key) {
  const int64_t v = f.get_int(key);
  if (v <= 0 || v > (int64_t{1} << 30)) fail("'{}': metadata '{}' = {} is out of range", f.path(), key, v);
  return static_cast<int32_t>(v);
}

ModelConfig read_config(const gguf::File& f) {
  const std::string arch = f.get_string("general.architecture");
  ModelConfig c;
  if (arch == "llama") {
    c.arch = Arch::Llama;
  } else if (arch == "gemma3") {
    c.arch = Arch::Gemma3;
  } else {
    fail("'{}': architecture '{}' is not supported (supported: llama, gemma3)", f.path(), arch);
  }
  const std::string p = arch + ".";
  c.n_layer = positive_int(f, p + "block_count");
  // Every layer has its own tensors (Model::load reads 9 for llama, 13 for gemma3), so the file's tensor count
  // bounds the layer count. Checked before anything is sized by n_layer: a corrupt count is this error, not an
  // allocation of up to 2^30 layers.
  const int64_t n_layer_tensors = c.arch == Arch::Gemma3 ? 13 : 9;
  if (c.n_layer > static_cast<int64_t>(f.tensors().size()) / n_layer_tensors)
    fail("'{}': metadata '{}block_count' = {} is more layers than the file has tensors for ({} tensors, {} a layer)",
         f.path(), p, c.n_layer, f.tensors().size(), n_layer_tensors);
  c.n_embd = positive_int(f, p + "embedding_length");
  c.n_head = positive_int(f, p + "attention.head_count");
  c.n_head_kv = f.has(p + "attention.head_count_kv") ? positive_int(f, p + "attention.head_count_kv") : c.n_head;
  c.n_ff = positive_int(f, p + "feed_forward_length");
  c.n_ctx_train = positive_int(f, p + "context_length");
  c.head_dim = f.has(p + "attention.key_length") ? positive_int(f, p + "attention.key_length") : c.n_embd / c.n_head;
  if (f.has(p + "attention.value_length") && positive_int(f, p + "attention.value_length") != c.head_dim)
    fail("'{}': key and value head sizes differ, which is not supported", f.path());
  if (c.n_head % c.n_head_kv != 0)
    fail("'{}': {} query heads are not a multiple of {} kv heads", f.path(), c.n_head, c.n_head_kv);
  c.n_rot = f.has(p + "rope.dimension_count") ? positive_int(f, p + "rope.dimension_count") : c.head_dim;
  if (c.n_rot > c.head_dim || c.n_rot % 2 != 0) fail("'{}': bad rope.dimension_count {}", f.path(), c.n_rot);
  c.rms_eps = static_cast<float>(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  c.rope_base = static_cast<float>(f.get_float_opt(p + "rope.freq_base").value_or(10000.0));
  c.layer_is_local.assign(static_cast<size_t>(c.n_layer), false);
  c.attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  if (c.arch == Arch::Gemma3) {
    // Gemma 3 ("Gemma 3 Technical Report"): five sliding-window layers to one global, local RoPE base 10k,
    // embeddings scaled by sqrt(n_embd), QK-norm, GeGLU, norms after attention and FFN. The GGUF converter
    // has already added 1 to every norm weight, so the norms are plain RMSNorm here.
    c.sliding_window = positive_int(f, p + "attention.sliding_window");
    for (int32_t i = 0; i < c.n_layer; ++i) c.layer_is_local[static_cast<size_t>(i)] = (i + 1) % 6 != 0;
    c.rope_base_local = 10000.0f;
    c.rope_order = RopeOrder::Halves;
    c.embd_scale = std::sqrt(static_cast<float>(c.n_embd));
    c.ffn_act = GatedActivation::GeluTanh;
    c.has_qk_norm = true;
    c.has_post_norms = true;
    // query_pre_attn_scalar equals head_dim for the released sizes; the GGUF does not store it.
    if (f.has(p + "rope.scaling.type") || f.has(p + "rope.scaling.factor"))
      fail("'{}': RoPE scaling is not supported yet", f.path());
  }
  return c;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = gguf::File::open(path);
  const gguf::File& f = *m->file_;
  m->config_ = read_config(f);
  ModelConfig& c = m->config_;
  Loader L(f);

  const auto& embd = L.tensor("token_embd.weight");
  if (embd.shape.size() != 2 || embd.shape[0] != c.n_embd)
    fail("'{}': token_embd.weight does not have rows of n_embd = {}", path, c.n_embd);
  c.n_vocab = static_cast<int32_t>(embd.shape[1]);
  m->token_embd_ = L.matrix("token_embd.weight", c.n_embd, c.n_vocab);
  m->output_ = f.find_tensor("output.weight") ? L.matrix("output.weight", c.n_embd, c.n_vocab) : m->token_embd_;
  m->output_norm_ = L.vector("output_norm.weight", c.n_embd);

  const int64_t q_dim = static_cast<int64_t>(c.n_head) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
  m->layers_.resize(static_cast<size_t>(c.n_layer));
  for (int32_t i = 0; i < c.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    LayerWeights& w = m->layers_[static_cast<size_t>(i)];
    w.attn_norm = L.vector(b + "attn_norm.weight", c.n_embd);
    w.ffn_norm = L.vector(b + "ffn_norm.weight", c.n_embd);
    w.wq = L.matrix(b + "attn_q.weight", c.n_embd, q_dim);
    w.wk = L.matrix(b + "attn_k.weight", c.n_embd, kv_dim);
    w.wv = L.matrix(b + "attn_v.weight", c.n_embd, kv_dim);
    w.wo = L.matrix(b + "attn_output.weight", q_dim, c.n_embd);
    w.w_gate = L.matrix(b + "ffn_gate.weight", c.n_embd, c.n_ff);
    w.w_up = L.matrix(b + "ffn_up.weight", c.n_embd, c.n_ff);
    w.w_down = L.matrix(b + "ffn_down.weight", c.n_ff, c.n_embd);
    if (c.has_qk_norm) {
      w.q_norm = L.vector(b + "attn_q_norm.weight", c.head_dim);
      w.k_norm = L.vector(b + "attn_k_norm.weight", c.head_dim);
    }
    if (c.has_post_norms) {
      w.post_attn_norm = L.vector(b + "post_attention_norm.weight", c.n_embd);
      w.post_ffn_norm = L.vector(b + "post_ffw_norm.weight", c.n_embd);
    }
  }
  return m;
}

void Model::FreeDeleter::operator()(void* p) const { std::free(p); }

const gguf::File& Model::file() const {
  if (!file_) fail("internal: a synthetic model has no GGUF file (no tokenizer, no metadata)");
  return *file_;
}

std::unique_ptr<Model> Model::synthetic(const std::string& spec, ThreadPool* pool) {
  ModelShape shape;
  uint64_t seed = 0;
  std::string error;
  if (!synthetic_shape(spec, &shape, &seed, &error)) fail("{}", error);

  std::unique_ptr<Model> m(new Model());
  ModelConfig& c = m->config_;
  c.arch = Arch::Llama;
  c.n_layer = shape.n_layer;
  c.n_embd = shape.n_embd;
  c.n_head = shape.n_head;
  c.n_head_kv = shape.n_head_kv;
  c.head_dim = shape.head_dim;
  c.n_ff = shape.n_ff;
  c.n_vocab = shape.n_vocab;
  c.n_ctx_train = shape.n_ctx_train;
  c.n_rot = shape.head_dim;
  c.rms_eps = shape.rms_eps;
  c.rope_base = c.rope_base_local = shape.rope_base;
  c.rope_order = RopeOrder::Adjacent;
  c.layer_is_local.assign(static_cast<size_t>(c.n_layer), false);
  c.attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  // One allocation for every matrix, each starting on a 64-byte line (every row length here is a multiple of 32).
  const int64_t E = c.n_embd, Q = shape.q_dim(), KV = shape.kv_dim(), F = c.n_ff, V = c.n_vocab;
  const int64_t per_layer = Q * E + 2 * KV * E + E * Q + 3 * F * E;
  const int64_t n_elems = 2 * V * E + c.n_layer * per_layer;
  const size_t bytes = static_cast<size_t>(n_elems) * 2;
  m->synthetic_bf16_.reset(static_cast<uint16_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
  if (!m->synthetic_bf16_)
    fail("synthetic model '{}': cannot allocate {:.1f} GiB for its bf16 weights", spec,
         static_cast<double>(bytes) / (1u << 30));
  uint16_t* next = m->synthetic_bf16_.get();

  const auto fill = [&](uint16_t* dst, int64_t n, TensorKind kind, int32_t layer) {
    const uint32_t id = tensor_id(kind, layer);
    const TensorInit init = synthetic_tensor_init(shape, kind);
    const auto range = [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) dst[i] = synthetic_bf16(seed, id, static_cast<uint64_t>(i), init);
    };
    if (pool != nullptr && n >= (int64_t{1} << 16)) {
      pool->split(n, range);
    } else {
      range(0, n, 0);
    }
  };
  const auto matrix = [&](TensorKind kind, int32_t layer, int64_t n_out, int64_t n_in) {
    uint16_t* dst = next;
    next += n_out * n_in;
    fill(dst, n_out * n_in, kind, layer);
    return Weight{GgmlType::BF16, reinterpret_cast<const uint8_t*>(dst), n_out, n_in};
  };
  std::vector<uint16_t> norm_bits(static_cast<size_t>(E));
  const auto norm = [&](TensorKind kind, int32_t layer) {
    fill(norm_bits.data(), E, kind, layer);
    std::vector<float> v(static_cast<size_t>(E));
    for (int64_t i = 0; i < E; ++i) v[static_cast<size_t>(i)] = bf16_to_f32(norm_bits[static_cast<size_t>(i)]);
    return v;
  };

  m->token_embd_ = matrix(TensorKind::TokenEmbd, -1, V, E);
  m->output_ = matrix(TensorKind::Output, -1, V, E);
  m->output_norm_ = norm(TensorKind::OutputNorm, -1);
  m->layers_.resize(static_cast<size_t>(c.n_layer));
  for (int32_t il = 0; il < c.n_layer; ++il) {
    LayerWeights& w = m->layers_[static_cast<size_t>(il)];
    w.attn_norm = norm(TensorKind::AttnNorm, il);
    w.wq = matrix(TensorKind::Wq, il, Q, E);
    w.wk = matrix(TensorKind::Wk, il, KV, E);
    w.wv = matrix(TensorKind::Wv, il, KV, E);
    w.wo = matrix(TensorKind::Wo, il, E, Q);
    w.ffn_norm = norm(TensorKind::FfnNorm, il);
    w.w_gate = matrix(TensorKind::WGate, il, F, E);
    w.w_up = matrix(TensorKind::WUp, il, F, E);
    w.w_down = matrix(TensorKind::WDown, il, E, F);
  }
  m->synthetic_bytes_ = bytes + static_cast<size_t>(1 + 2 * c.n_layer) * static_cast<size_t>(E) * sizeof(float);
  return m;
}

size_t Model::weight_bytes() const {
  if (!file_) return synthetic_bytes_;
  size_t n = 0;
  for (const auto& t : file_->tensors()) n += t.n_bytes;
  return n;
}

}  // namespace longctx
