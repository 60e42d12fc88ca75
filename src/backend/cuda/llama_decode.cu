// The llama decode step as one CUDA graph (llama_decode.h).
#include "backend/cuda/llama_decode.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <string>

#include "backend/cuda/cuda_check.cuh"
#include "backend/cuda/ops.h"
#include "core/fp16.h"

namespace longctx::cuda {
namespace {

constexpr size_t kAlign = 256;  // every buffer starts on a 256-byte boundary (cuBLASLt and 16-byte vector loads)
constexpr size_t kGemmWorkspace = size_t{32} << 20;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Lays buffers out in one allocation: first record the sizes, then allocate once and hand out the pointers.
// One allocation per arena keeps the pool simple and the accounting exact (what is allocated is what is reported).
class Arena {
 public:
  size_t reserve(size_t bytes) {
    const size_t off = used_;
    used_ += align_up(std::max<size_t>(bytes, 1));
    return off;
  }
  Status allocate() { return device_alloc(&base_, used_); }
  template <typename T = void>
  T* at(size_t off) const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(base_) + off);
  }
  size_t bytes() const { return used_; }
  ~Arena() {
    if (base_) cudaFree(base_);
  }

 private:
  void* base_ = nullptr;
  size_t used_ = 0;
};

// Ends a step: the argmax becomes the next input (already in `token`), is kept in the history, and the position moves.
__global__ void advance_kernel(const int32_t* token, int32_t* pos, int32_t* n_generated, int32_t* history,
                               int32_t capacity) {
  const int32_t n = *n_generated;
  if (n < capacity) history[n] = *token;
  *n_generated = n + 1;
  *pos += 1;
}

// Pretend prefill: every (layer, head) holds slots 0..n_ctx-1 at positions 0..n_ctx-1.
__global__ void fill_positions_kernel(int32_t* positions, int32_t* n_tokens, int32_t n_heads_total, int32_t max_tokens,
                                      int32_t n_ctx) {
  const size_t total = static_cast<size_t>(n_heads_total) * max_tokens;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int32_t slot = static_cast<int32_t>(i % max_tokens);
    positions[i] = slot < n_ctx ? slot : 0;
    if (slot == 0) n_tokens[i / max_tokens] = n_ctx;
  }
}

// Pretend compressed prefill: every (layer, head) holds `kept` slots, the oldest kept - recent spread evenly over
// [0, n_ctx - recent) and the newest `recent` contiguous at the end (sorted, distinct).
__global__ void fill_compressed_positions_kernel(int32_t* positions, int32_t* n_tokens, int32_t n_heads_total,
                                                 int32_t max_tokens, int32_t n_ctx, int32_t kept, int32_t recent) {
  const size_t total = static_cast<size_t>(n_heads_total) * max_tokens;
  const int32_t spread = kept - recent;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int32_t slot = static_cast<int32_t>(i % max_tokens);
    int32_t p = 0;
    if (slot < spread) p = static_cast<int32_t>(static_cast<int64_t>(slot) * (n_ctx - recent) / spread);
    else if (slot < kept) p = n_ctx - (kept - slot);
    positions[i] = p;
    if (slot == 0) n_tokens[i / max_tokens] = kept;
  }
}

// Copies the first n_src pages of a pool over pages n_src .. n_dst - 1, cyclically (16-byte words).
__global__ void replicate_pages_kernel(uint4* pool, size_t page_words, size_t n_src, size_t n_dst) {
  const size_t total = (n_dst - n_src) * page_words;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t page = n_src + i / page_words, w = i % page_words;
    pool[page * page_words + w] = pool[(page % n_src) * page_words + w];
  }
}

enum class Product { Qkv, Wo, GateUp, Down, Head };

struct LayerWeights {
  size_t attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;  // offsets in the weight arena
};

}  // namespace

struct LlamaDecoder::Impl {
  ModelShape shape;
  uint64_t seed = 0;
  LlamaDecodeOptions opt;
  cudaStream_t stream = nullptr;

  Arena weights;  // bf16
  std::vector<LayerWeights> layers;
  size_t tok_embd = 0, output_norm = 0, output = 0;

  Arena act;
  size_t x = 0, xn = 0, qkv = 0, q = 0, attn = 0, gate_up = 0, h = 0, logits = 0;
  size_t token = 0, pos = 0, n_generated = 0, argmax_ws = 0, history = 0, attn_ws = 0, rope_done = 0;

  Arena kv;
  size_t pool = 0, page_table = 0, positions = 0, n_tokens = 0;
  size_t packed_pool = 0, page_packed = 0, packed_page_bytes = 0;  // with options.kv_packing only
  std::vector<int32_t> page_ids;  // the page table as created (plain pages), restored by reset()
  int32_t max_pages = 0;
  std::vector<PagedKvView> views;  // per layer
  DecodeAttentionParams attn_params;
  DecodeAttentionPlan plan;

  std::unique_ptr<GemmRunner> gemm;
  int32_t g_qkv = -1, g_wo = -1, g_gate_up = -1, g_down = -1, g_head = -1;
  std::map<int32_t, std::array<int32_t, 4>> prefill_gemms;  // prompt length -> (qkv, wo, gate_up, down) shape ids
  std::vector<LlamaGemmReport> report;

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  int32_t host_pos = 0;    // the next step's position
  int32_t host_slots = 0;  // slots every head holds (the position too, but for a compressed cache)

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    gemm.reset();
    if (stream) cudaStreamDestroy(stream);
  }

  Status fill(size_t off, size_t n, TensorKind kind, int32_t layer) {
    return synthetic_fill_bf16(weights.at(off), n, seed, tensor_id(kind, layer), synthetic_tensor_init(shape, kind), 0,
                               stream);
  }

  // The arguments of one fused product of the step (MatvecPath::Fused), for layer il (-1: the output head).
  GemvArgs gemv_args(Product p, int32_t il) {
    const ModelShape& m = shape;
    const LayerWeights* w = il >= 0 ? &layers[static_cast<size_t>(il)] : nullptr;
    GemvArgs a;
    a.eps = m.rms_eps;
    a.unroll = opt.gemv_unroll;
    switch (p) {
      case Product::Qkv:
        a.w = weights.at(w->wqkv);
        a.n_out = m.q_dim() + 2 * m.kv_dim();
        a.n_in = m.n_embd;
        a.x_f32 = act.at<float>(x);
        a.norm_w = weights.at(w->attn_norm);
        a.epilogue = GemvEpilogue::RopeAppend;  // RoPE and the KV append fused in: q to q_out, k and v to the store
        a.rope.pos = act.at<int32_t>(pos);
        a.rope.n_head = m.n_head;
        a.rope.rope_base = m.rope_base;
        a.rope.q_out = act.at(q);
        a.rope.kv = views[static_cast<size_t>(il)];
        a.rope.done = act.at<int32_t>(rope_done);
        break;
      case Product::Wo:
        a.w = weights.at(w->wo);
        a.n_out = m.n_embd;
        a.n_in = m.q_dim();
        a.x_bf16 = act.at(attn);
        a.epilogue = GemvEpilogue::Add;
        a.y = act.at<float>(x);
        break;
      case Product::GateUp:
        a.w = weights.at(w->w_gate_up);
        a.n_out = 2 * m.n_ff;
        a.n_in = m.n_embd;
        a.x_f32 = act.at<float>(x);
        a.norm_w = weights.at(w->ffn_norm);
        a.epilogue = GemvEpilogue::SwiGLU;
        a.h = act.at(h);
        break;
      case Product::Down:
        a.w = weights.at(w->w_down);
        a.n_out = m.n_embd;
        a.n_in = m.n_ff;
        a.x_bf16 = act.at(h);
        a.epilogue = GemvEpilogue::Add;
        a.y = act.at<float>(x);
        break;
      case Product::Head:
        a.w = weights.at(output);
        a.n_out = m.n_vocab;
        a.n_in = m.n_embd;
        a.x_f32 = act.at<float>(x);
        a.norm_w = weights.at(output_norm);
        a.y = act.at<float>(logits);
        break;
    }
    return a;
  }

  // The forward of one token, enqueued on the stream (captured into the graph).
  Status enqueue_step() {
    const ModelShape& m = shape;
    float* px = act.at<float>(x);
    void* pxn = act.at(xn);
    int32_t* ptok = act.at<int32_t>(token);
    int32_t* ppos = act.at<int32_t>(pos);
    Status s = embedding_lookup(weights.at(tok_embd), ptok, 1, m.n_vocab, m.n_embd, px, stream);
    const bool fused = opt.matvec == MatvecPath::Fused;
    for (int32_t il = 0; il < m.n_layer && s.ok(); ++il) {
      const LayerWeights& w = layers[static_cast<size_t>(il)];
      if (fused) {
        s = gemv(gemv_args(Product::Qkv, il), stream);  // RMSNorm, RoPE and the KV append fused in
      } else {
        s = rmsnorm(px, weights.at(w.attn_norm), pxn, 1, m.n_embd, m.rms_eps, stream);
        if (s.ok()) s = gemm->run(g_qkv, weights.at(w.wqkv), pxn, act.at<float>(qkv), stream);
      }
      if (s.ok() && opt.prefetch != WeightPrefetch::None)  // Wo comes into L2 while RoPE and attention run
        s = l2_prefetch(weights.at(w.wo), static_cast<size_t>(m.n_embd) * m.q_dim() * 2,
                        opt.prefetch == WeightPrefetch::WoEvictLast ? L2Priority::EvictLast : L2Priority::Normal, stream);
      if (s.ok() && !fused)
        s = rope_kv_append(act.at<float>(qkv), ppos, m.n_head, m.rope_base, act.at(q), views[static_cast<size_t>(il)],
                           stream);
      if (s.ok())
        s = decode_attention(attn_params, plan, act.at(q), ppos, views[static_cast<size_t>(il)], act.at(attn),
                             plan.workspace_bytes ? act.at(attn_ws) : nullptr, stream);
      if (fused) {
        if (s.ok()) s = gemv(gemv_args(Product::Wo, il), stream);      // x += Wo attn
        if (s.ok()) s = gemv(gemv_args(Product::GateUp, il), stream);  // RMSNorm and SwiGLU fused in
        if (s.ok()) s = gemv(gemv_args(Product::Down, il), stream);    // x += Wdown h
      } else {
        if (s.ok()) s = gemm->run(g_wo, weights.at(w.wo), act.at(attn), px, stream);  // x += attn Wo^T
        if (s.ok()) s = rmsnorm(px, weights.at(w.ffn_norm), pxn, 1, m.n_embd, m.rms_eps, stream);
        if (s.ok()) s = gemm->run(g_gate_up, weights.at(w.w_gate_up), pxn, act.at<float>(gate_up), stream);
        if (s.ok()) s = swiglu(act.at<float>(gate_up), act.at(h), 1, m.n_ff, stream);
        if (s.ok()) s = gemm->run(g_down, weights.at(w.w_down), act.at(h), px, stream);  // x += h Wdown^T
      }
    }
    return s.ok() ? enqueue_head() : s;
  }

  // The end of a forward, from the residual stream x of its last token: final norm, output head, the greedy argmax
  // as the next input token (kept in the history), and the position moved on by one.
  Status enqueue_head() {
    const ModelShape& m = shape;
    int32_t* ptok = act.at<int32_t>(token);
    Status s = Status::success();
    if (opt.matvec == MatvecPath::Fused) {
      s = gemv(gemv_args(Product::Head, -1), stream);
    } else {
      s = rmsnorm(act.at<float>(x), weights.at(output_norm), act.at(xn), 1, m.n_embd, m.rms_eps, stream);
      if (s.ok()) s = gemm->run(g_head, weights.at(output), act.at(xn), act.at<float>(logits), stream);
    }
    if (s.ok()) s = argmax(act.at<float>(logits), m.n_vocab, ptok, act.at(argmax_ws), stream);
    if (s.ok()) {
      advance_kernel<<<1, 1, 0, stream>>>(ptok, act.at<int32_t>(pos), act.at<int32_t>(n_generated),
                                          act.at<int32_t>(history), opt.max_context);
      s = cuda_status(cudaGetLastError(), "advance launch");
    }
    return s;
  }

  // The fused GEMV of one product alone, rotating over the layers' weights as a forward does; us per product.
  Status time_fused(Product p, float* us) {
    const int32_t n_w = p == Product::Head ? 1 : shape.n_layer, n_runs = std::max<int32_t>(n_w, 32);
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    LONGCTX_CUDA_TRY(cudaEventCreate(&e0));
    Status s = cuda_status(cudaEventCreate(&e1), "cudaEventCreate");
    float best = 1e30f;
    for (int rep = 0; rep < 4 && s.ok(); ++rep) {  // the first is the warm-up
      s = cuda_status(cudaEventRecord(e0, stream), "cudaEventRecord");
      for (int32_t r = 0; r < n_runs && s.ok(); ++r) s = gemv(gemv_args(p, p == Product::Head ? -1 : r % n_w), stream);
      if (s.ok()) s = cuda_status(cudaEventRecord(e1, stream), "cudaEventRecord");
      if (s.ok()) s = cuda_status(cudaEventSynchronize(e1), "cudaEventSynchronize");
      float ms = 0;
      if (s.ok()) s = cuda_status(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
      if (rep > 0) best = std::min(best, ms * 1e3f / static_cast<float>(n_runs));
    }
    cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    *us = best;
    return s;
  }

  // The next step captures the graph again (after a change of path or prefetch).
  Status drop_graph() {
    LONGCTX_CUDA_TRY(cudaStreamSynchronize(stream));
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
    exec = nullptr;
    graph = nullptr;
    return Status::success();
  }

  Status capture() {
    LONGCTX_CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const Status s = enqueue_step();
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream, &g);  // always end the capture, also after a failed op
    if (!s.ok()) {
      if (g) cudaGraphDestroy(g);
      return s;
    }
    LONGCTX_CUDA_TRY(e);
    graph = g;
    return cuda_status(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  }
};

LlamaDecoder::LlamaDecoder() : impl_(std::make_unique<Impl>()) {}
LlamaDecoder::~LlamaDecoder() = default;

Status LlamaDecoder::create(const ModelShape& shape, uint64_t seed, const LlamaDecodeOptions& opt,
                            std::unique_ptr<LlamaDecoder>* out) {
  out->reset();
  DeviceInfo info;
  if (Status s = device_query(&info); !s.ok()) return s;
  const ModelShape& m = shape;
  if (m.n_layer <= 0 || m.n_embd <= 0 || m.n_head <= 0 || m.n_head_kv <= 0 || m.n_ff <= 0 || m.n_vocab <= 0)
    return Status::error("llama decode: empty shape");
  if (m.n_embd % 8 != 0 || m.n_ff % 8 != 0) return Status::error("llama decode: n_embd and n_ff must be multiples of 8");
  if (opt.max_context <= 0 || opt.page_tokens <= 0 || opt.page_tokens % 16 != 0)
    return Status::error("llama decode: max_context must be positive and page_tokens a multiple of 16");

  std::unique_ptr<LlamaDecoder> d(new LlamaDecoder());
  Impl& I = *d->impl_;
  I.shape = shape;
  I.seed = seed;
  I.opt = opt;
  LONGCTX_CUDA_TRY(cudaStreamCreateWithFlags(&I.stream, cudaStreamNonBlocking));

  // Weights: the fused QKV and gate/up matrices are the logical tensors stacked by rows, each element generated under
  // its own tensor's id and index, so a reference that builds Wq, Wk, Wv separately gets the same values.
  const size_t E = static_cast<size_t>(m.n_embd), Q = static_cast<size_t>(m.q_dim()), KV = static_cast<size_t>(m.kv_dim()),
               F = static_cast<size_t>(m.n_ff), V = static_cast<size_t>(m.n_vocab);
  I.tok_embd = I.weights.reserve(V * E * 2);
  I.output_norm = I.weights.reserve(E * 2);
  I.output = I.weights.reserve(V * E * 2);
  for (int32_t il = 0; il < m.n_layer; ++il) {
    LayerWeights w{};
    w.attn_norm = I.weights.reserve(E * 2);
    w.wqkv = I.weights.reserve((Q + 2 * KV) * E * 2);
    w.wo = I.weights.reserve(E * Q * 2);
    w.ffn_norm = I.weights.reserve(E * 2);
    w.w_gate_up = I.weights.reserve(2 * F * E * 2);
    w.w_down = I.weights.reserve(E * F * 2);
    I.layers.push_back(w);
  }
  if (Status s = I.weights.allocate(); !s.ok()) return Status::error("llama decode: weights: " + s.message());

  // KV store.
  const int32_t pt = opt.page_tokens;
  I.max_pages = (opt.max_context + pt - 1) / pt;
  const size_t n_heads_total = static_cast<size_t>(m.n_layer) * m.n_head_kv;
  const size_t page_bytes = 2 * static_cast<size_t>(pt) * m.head_dim * 2;
  const size_t n_pages = n_heads_total * static_cast<size_t>(I.max_pages);
  I.pool = I.kv.reserve(n_pages * page_bytes);
  I.page_table = I.kv.reserve(n_pages * 4);
  I.positions = I.kv.reserve(n_heads_total * static_cast<size_t>(opt.max_context) * 4);
  I.n_tokens = I.kv.reserve(n_heads_total * 4);
  if (opt.kv_packing != KvPacking::None) {
    PagedKvView probe;
    probe.head_dim = m.head_dim, probe.page_tokens = pt, probe.packing = opt.kv_packing;
    I.packed_page_bytes = probe.packed_page_bytes();
    I.packed_pool = I.kv.reserve(n_pages * I.packed_page_bytes);
    I.page_packed = I.kv.reserve(n_pages);
  }
  if (Status s = I.kv.allocate(); !s.ok()) return Status::error("llama decode: KV store: " + s.message());
  I.page_ids.resize(n_pages);
  std::iota(I.page_ids.begin(), I.page_ids.end(), 0);
  if (opt.page_order == PageOrder::Scattered) {
    std::mt19937 rng(12345);
    std::shuffle(I.page_ids.begin(), I.page_ids.end(), rng);
  }
  if (Status s = copy_to_device(I.kv.at(I.page_table), I.page_ids.data(), n_pages * 4); !s.ok()) return s;
  if (opt.kv_packing != KvPacking::None)
    if (Status s = device_fill_bytes(I.kv.at(I.page_packed), 0, n_pages); !s.ok()) return s;
  for (int32_t il = 0; il < m.n_layer; ++il) {
    PagedKvView v;
    v.pool = I.kv.at(I.pool);
    v.page_table = I.kv.at<int32_t>(I.page_table) + static_cast<size_t>(il) * m.n_head_kv * I.max_pages;
    v.positions = I.kv.at<int32_t>(I.positions) + static_cast<size_t>(il) * m.n_head_kv * opt.max_context;
    v.n_tokens = I.kv.at<int32_t>(I.n_tokens) + static_cast<size_t>(il) * m.n_head_kv;
    v.n_seq = 1;
    v.n_head_kv = m.n_head_kv;
    v.head_dim = m.head_dim;
    v.page_tokens = pt;
    v.max_pages = I.max_pages;
    v.max_tokens = opt.max_context;
    v.dtype = KvDtype::BF16;
    if (opt.kv_packing != KvPacking::None) {
      v.packing = opt.kv_packing;
      v.packed_pool = I.kv.at(I.packed_pool);
      v.page_packed = I.kv.at<uint8_t>(I.page_packed) + static_cast<size_t>(il) * m.n_head_kv * I.max_pages;
    }
    I.views.push_back(v);
  }
  I.attn_params.n_head = m.n_head;
  I.attn_params.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m.head_dim)));
  I.attn_params.window = 0;
  if (Status s = decode_attention_plan(I.attn_params, I.views[0], opt.max_context, &I.plan); !s.ok()) return s;
  I.plan.merge = opt.decode_merge;
  set_programmatic_launch(opt.pdl);

  // Activations.
  I.x = I.act.reserve(E * 4);
  I.xn = I.act.reserve(E * 2);
  I.qkv = I.act.reserve((Q + 2 * KV) * 4);
  I.q = I.act.reserve(Q * 2);
  I.attn = I.act.reserve(Q * 2);
  I.gate_up = I.act.reserve(2 * F * 4);
  I.h = I.act.reserve(F * 2);
  I.logits = I.act.reserve(V * 4);
  I.token = I.act.reserve(4);
  I.pos = I.act.reserve(4);
  I.n_generated = I.act.reserve(4);
  I.argmax_ws = I.act.reserve(argmax_workspace_bytes());
  I.history = I.act.reserve(static_cast<size_t>(opt.max_context) * 4);
  I.attn_ws = I.act.reserve(I.plan.workspace_bytes);
  I.rope_done = I.act.reserve(4);  // the fused QKV product's block counter (GemvEpilogue::RopeAppend)
  if (Status s = I.act.allocate(); !s.ok()) return Status::error("llama decode: activations: " + s.message());
  // On the decoder's stream, like everything after it: a legacy-stream memset would not be ordered with a
  // non-blocking stream. This also zeroes the attention's split counters (decode_attention_workspace_init) and the
  // QKV product's block counter, which every call leaves at zero.
  LONGCTX_CUDA_TRY(cudaMemsetAsync(I.act.at(0), 0, I.act.bytes(), I.stream));

  // Fill the weights from the seed.
  Status s = I.fill(I.tok_embd, V * E, TensorKind::TokenEmbd, -1);
  if (s.ok()) s = I.fill(I.output_norm, E, TensorKind::OutputNorm, -1);
  if (s.ok()) s = I.fill(I.output, V * E, TensorKind::Output, -1);
  for (int32_t il = 0; il < m.n_layer && s.ok(); ++il) {
    const LayerWeights& w = I.layers[static_cast<size_t>(il)];
    s = I.fill(w.attn_norm, E, TensorKind::AttnNorm, il);
    if (s.ok()) s = I.fill(w.wqkv, Q * E, TensorKind::Wq, il);
    if (s.ok()) s = I.fill(w.wqkv + Q * E * 2, KV * E, TensorKind::Wk, il);
    if (s.ok()) s = I.fill(w.wqkv + (Q + KV) * E * 2, KV * E, TensorKind::Wv, il);
    if (s.ok()) s = I.fill(w.wo, E * Q, TensorKind::Wo, il);
    if (s.ok()) s = I.fill(w.ffn_norm, E, TensorKind::FfnNorm, il);
    if (s.ok()) s = I.fill(w.w_gate_up, F * E, TensorKind::WGate, il);
    if (s.ok()) s = I.fill(w.w_gate_up + F * E * 2, F * E, TensorKind::WUp, il);
    if (s.ok()) s = I.fill(w.w_down, E * F, TensorKind::WDown, il);
  }
  if (!s.ok()) return s;

  // GEMM plans, tuned on the weights just made (inputs: synthetic values, never zeros).
  if (s = GemmRunner::create(kGemmWorkspace, &I.gemm); !s.ok()) return s;
  const int32_t nE = m.n_embd, nQKV = m.q_dim() + 2 * m.kv_dim();
  if (s.ok()) s = I.gemm->add_shape(nQKV, nE, 1, GemmAccumulate::Overwrite, &I.g_qkv);
  if (s.ok()) s = I.gemm->add_shape(nE, m.q_dim(), 1, GemmAccumulate::Add, &I.g_wo);
  if (s.ok()) s = I.gemm->add_shape(2 * m.n_ff, nE, 1, GemmAccumulate::Overwrite, &I.g_gate_up);
  if (s.ok()) s = I.gemm->add_shape(nE, m.n_ff, 1, GemmAccumulate::Add, &I.g_down);
  if (s.ok()) s = I.gemm->add_shape(m.n_vocab, nE, 1, GemmAccumulate::Overwrite, &I.g_head);
  if (!s.ok()) return s;
  const TensorInit unit = tensor_init(0.0f, 1.0f);
  s = embedding_lookup(I.weights.at(I.tok_embd), I.act.at<int32_t>(I.token), 1, m.n_vocab, m.n_embd,
                       I.act.at<float>(I.x), I.stream);  // a real residual stream (token 0's row) for the RMSNorm
  if (s.ok()) s = synthetic_fill_bf16(I.act.at(I.xn), E, seed, 0xffff0001u, unit, 0, I.stream);
  if (s.ok()) s = synthetic_fill_bf16(I.act.at(I.attn), Q, seed, 0xffff0002u, unit, 0, I.stream);
  if (s.ok()) s = synthetic_fill_bf16(I.act.at(I.h), F, seed, 0xffff0003u, unit, 0, I.stream);
  if (!s.ok()) return s;
  // Each product's weights over the layers, in the order a forward reads them.
  auto per_layer = [&](size_t (*field)(const LayerWeights&)) {
    std::vector<const void*> ws;
    for (const LayerWeights& w : I.layers) ws.push_back(I.weights.at(field(w)));
    return ws;
  };
  struct Plan {
    const char* name;
    Product product;
    int32_t id, n_out, n_in;
    std::vector<const void*> ws;
    size_t in, out;
  };
  const Plan plans[] = {
      {"qkv", Product::Qkv, I.g_qkv, nQKV, nE, per_layer([](const LayerWeights& w) { return w.wqkv; }), I.xn, I.qkv},
      {"wo", Product::Wo, I.g_wo, nE, m.q_dim(), per_layer([](const LayerWeights& w) { return w.wo; }), I.attn, I.x},
      {"gate_up", Product::GateUp, I.g_gate_up, 2 * m.n_ff, nE, per_layer([](const LayerWeights& w) { return w.w_gate_up; }), I.xn,
       I.gate_up},
      {"down", Product::Down, I.g_down, nE, m.n_ff, per_layer([](const LayerWeights& w) { return w.w_down; }), I.h, I.x},
      {"output", Product::Head, I.g_head, m.n_vocab, nE, {I.weights.at(I.output)}, I.xn, I.logits}};
  for (const Plan& p : plans) {
    const std::vector<const void*>& ws = p.ws;
    LlamaGemmReport r;
    r.name = p.name;
    r.n_out = p.n_out;
    r.n_in = p.n_in;
    r.n_per_token = p.id == I.g_head ? 1 : m.n_layer;
    if (opt.tune_gemms) {
      s = I.gemm->tune(p.id, ws.data(), static_cast<int32_t>(ws.size()), I.act.at(p.in), I.act.at<float>(p.out),
                       I.stream, 8, &r.tune);
      if (s.ok()) s = I.time_fused(p.product, &r.fused_us);
      if (!s.ok()) return s;
    }
    I.report.push_back(r);
  }
  if (s = d->reset(); !s.ok()) return s;
  if (s = d->synchronize(); !s.ok()) return s;
  *out = std::move(d);
  return Status::success();
}

Status LlamaDecoder::set_matvec(MatvecPath path) {
  Impl& I = *impl_;
  if (I.opt.matvec == path) return Status::success();
  if (Status s = I.drop_graph(); !s.ok()) return s;
  I.opt.matvec = path;
  return Status::success();
}

Status LlamaDecoder::set_prefetch(WeightPrefetch prefetch) {
  Impl& I = *impl_;
  if (I.opt.prefetch == prefetch) return Status::success();
  if (Status s = I.drop_graph(); !s.ok()) return s;
  I.opt.prefetch = prefetch;
  return Status::success();
}

Status LlamaDecoder::reset() {
  Impl& I = *impl_;
  const size_t n_heads_total = static_cast<size_t>(I.shape.n_layer) * I.shape.n_head_kv;
  LONGCTX_CUDA_TRY(cudaMemsetAsync(I.kv.at(I.n_tokens), 0, n_heads_total * 4, I.stream));
  LONGCTX_CUDA_TRY(cudaMemsetAsync(I.act.at(I.pos), 0, 4, I.stream));
  LONGCTX_CUDA_TRY(cudaMemsetAsync(I.act.at(I.n_generated), 0, 4, I.stream));
  LONGCTX_CUDA_TRY(cudaMemsetAsync(I.act.at(I.token), 0, 4, I.stream));
  LONGCTX_CUDA_TRY(cudaMemsetAsync(I.act.at(I.argmax_ws), 0, argmax_workspace_bytes(), I.stream));
  if (I.opt.kv_packing != KvPacking::None) {  // every page plain again, at its own id
    LONGCTX_CUDA_TRY(cudaMemsetAsync(I.kv.at(I.page_packed), 0, I.page_ids.size(), I.stream));
    LONGCTX_CUDA_TRY(cudaMemcpyAsync(I.kv.at(I.page_table), I.page_ids.data(), I.page_ids.size() * 4,
                                     cudaMemcpyHostToDevice, I.stream));
    LONGCTX_CUDA_TRY(cudaStreamSynchronize(I.stream));  // the host vector must outlive the copy
  }
  I.host_pos = 0;
  I.host_slots = 0;
  return Status::success();
}

Status LlamaDecoder::fill_kv_compressed_synthetic(int32_t n_ctx, int32_t kept) {
  Impl& I = *impl_;
  const ModelShape& m = I.shape;
  const int32_t pt = I.opt.page_tokens, recent = 64;
  if (I.opt.kv_packing == KvPacking::None)
    return Status::error("fill_kv_compressed_synthetic: the decoder was created without kv_packing");
  if (kept <= recent || kept >= I.opt.max_context || kept > n_ctx)
    return Status::error("fill_kv_compressed_synthetic: " + std::to_string(kept) + " kept slots of " +
                         std::to_string(n_ctx) + " do not fit (more than 64, at most n_ctx, below max_context " +
                         std::to_string(I.opt.max_context) + ")");
  if (Status s = fill_kv_synthetic(0); !s.ok()) return s;  // reset, and synthetic values in the bf16 pages
  const size_t n_heads_total = static_cast<size_t>(m.n_layer) * m.n_head_kv;
  const int32_t n_packed = (kept - 1) / pt;  // every full page but the one holding the last kept slot
  const size_t n_used = n_heads_total * static_cast<size_t>(n_packed);

  // Packed page ids 0 .. n_used - 1 in the table, flagged packed.
  std::vector<int32_t> table = I.page_ids;
  std::vector<uint8_t> packed(I.page_ids.size(), 0);
  for (size_t h = 0; h < n_heads_total; ++h)
    for (int32_t p = 0; p < n_packed; ++p) {
      const size_t e = h * static_cast<size_t>(I.max_pages) + static_cast<size_t>(p);
      table[e] = static_cast<int32_t>(h * static_cast<size_t>(n_packed) + static_cast<size_t>(p));
      packed[e] = 1;
    }
  if (Status s = copy_to_device(I.kv.at(I.page_table), table.data(), table.size() * 4); !s.ok()) return s;
  if (Status s = copy_to_device(I.kv.at(I.page_packed), packed.data(), packed.size()); !s.ok()) return s;

  // 16 distinct packed pages from random codes, scales and mins of the synthetic K/V's range (uniform, std 1),
  // repeated over the pool.
  const int32_t bits = kv_packing_bits(I.opt.kv_packing), D = m.head_dim;
  const size_t n_distinct = std::min<size_t>(16, n_used);
  std::vector<uint8_t> host(n_distinct * I.packed_page_bytes);
  std::mt19937 rng(static_cast<uint32_t>(I.seed));
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::uniform_real_distribution<float> jitter(0.9f, 1.1f);
  const float range = 2.0f * 1.7320508f;
  for (size_t i = 0; i < n_distinct; ++i) {
    std::vector<uint8_t> kc(static_cast<size_t>(pt) * D), vc(kc.size());
    std::vector<uint16_t> ks(D), km(D), vs(static_cast<size_t>(pt) * D / 32), vm(vs.size());
    for (auto& c : kc) c = static_cast<uint8_t>(code(rng));
    for (auto& c : vc) c = static_cast<uint8_t>(code(rng));
    for (auto& x : ks) x = f32_to_fp16(range / ((1 << bits) - 1) * jitter(rng));
    for (auto& x : km) x = f32_to_fp16(-0.5f * range * jitter(rng));
    for (auto& x : vs) x = f32_to_fp16(range / ((1 << bits) - 1) * jitter(rng));
    for (auto& x : vm) x = f32_to_fp16(-0.5f * range * jitter(rng));
    const KiviPageCodes codes{kc.data(), ks.data(), km.data(), vc.data(), vs.data(), vm.data()};
    if (Status s = kivi_page_pack(I.opt.kv_packing, pt, D, codes, host.data() + i * I.packed_page_bytes); !s.ok())
      return s;
  }
  if (n_used > 0) {
    if (Status s = copy_to_device(I.kv.at(I.packed_pool), host.data(), host.size()); !s.ok()) return s;
    if (n_used > n_distinct) {
      replicate_pages_kernel<<<1024, 256, 0, I.stream>>>(I.kv.at<uint4>(I.packed_pool), I.packed_page_bytes / 16,
                                                          n_distinct, n_used);
      LONGCTX_CUDA_TRY(cudaGetLastError());
    }
  }
  fill_compressed_positions_kernel<<<1024, 256, 0, I.stream>>>(
      I.kv.at<int32_t>(I.positions), I.kv.at<int32_t>(I.n_tokens), static_cast<int32_t>(n_heads_total),
      I.opt.max_context, n_ctx, kept, recent);
  LONGCTX_CUDA_TRY(cudaGetLastError());
  LONGCTX_CUDA_TRY(cudaMemcpyAsync(I.act.at(I.pos), &n_ctx, 4, cudaMemcpyHostToDevice, I.stream));
  LONGCTX_CUDA_TRY(cudaStreamSynchronize(I.stream));
  I.host_pos = n_ctx;
  I.host_slots = kept;
  return Status::success();
}

Status LlamaDecoder::fill_kv_synthetic(int32_t n_ctx) {
  Impl& I = *impl_;
  if (n_ctx < 0 || n_ctx >= I.opt.max_context)
    return Status::error("fill_kv_synthetic: " + std::to_string(n_ctx) + " tokens leave no room in a context of " +
                         std::to_string(I.opt.max_context));
  if (Status s = reset(); !s.ok()) return s;
  const size_t pool_bytes = I.page_table - I.pool;  // the pool is the first reservation of the KV arena
  if (Status s = synthetic_fill_bf16(I.kv.at(I.pool), pool_bytes / 2, I.seed, tensor_id(TensorKind::KvCache),
                                     synthetic_tensor_init(I.shape, TensorKind::KvCache), 0, I.stream);
      !s.ok())
    return s;
  const int32_t n_heads_total = I.shape.n_layer * I.shape.n_head_kv;
  fill_positions_kernel<<<1024, 256, 0, I.stream>>>(I.kv.at<int32_t>(I.positions), I.kv.at<int32_t>(I.n_tokens),
                                                     n_heads_total, I.opt.max_context, n_ctx);
  LONGCTX_CUDA_TRY(cudaGetLastError());
  LONGCTX_CUDA_TRY(cudaMemcpyAsync(I.act.at(I.pos), &n_ctx, 4, cudaMemcpyHostToDevice, I.stream));
  LONGCTX_CUDA_TRY(cudaStreamSynchronize(I.stream));  // n_ctx lives on this frame
  I.host_pos = n_ctx;
  I.host_slots = n_ctx;
  return Status::success();
}

Status LlamaDecoder::prefill(const std::vector<int32_t>& tokens) {
  Impl& I = *impl_;
  const ModelShape& m = I.shape;
  const int32_t n = static_cast<int32_t>(tokens.size());
  if (n < 1) return Status::error("prefill: an empty prompt");
  if (I.host_slots != 0)
    return Status::error("prefill: the cache is not empty (reset() first; steps append after a prefill)");
  if (n > I.opt.max_context || n > 65535)
    return Status::error("prefill: " + std::to_string(n) + " prompt tokens do not fit the context of " +
                         std::to_string(std::min(I.opt.max_context, 65535)));
  for (int32_t t : tokens)
    if (t < 0 || t >= m.n_vocab)
      return Status::error("prefill: token id " + std::to_string(t) + " is outside the vocabulary of " +
                           std::to_string(m.n_vocab));

  // The prompt's activations, every layer's over all n tokens at once (layer by layer), freed at the end.
  const size_t N = static_cast<size_t>(n), E = static_cast<size_t>(m.n_embd), Q = static_cast<size_t>(m.q_dim()),
               KV = static_cast<size_t>(m.kv_dim()), F = static_cast<size_t>(m.n_ff);
  Arena pf;
  const size_t p_tok = pf.reserve(N * 4), p_x = pf.reserve(N * E * 4), p_xn = pf.reserve(N * E * 2),
               p_qkv = pf.reserve(N * (Q + 2 * KV) * 4), p_q = pf.reserve(N * Q * 2), p_k = pf.reserve(N * KV * 2),
               p_v = pf.reserve(N * KV * 2), p_attn = pf.reserve(N * Q * 2), p_gu = pf.reserve(N * 2 * F * 4),
               p_h = pf.reserve(N * F * 2);
  if (Status s = pf.allocate(); !s.ok())
    return Status::error("prefill: activations of " + std::to_string(n) + " tokens: " + s.message());
  auto it = I.prefill_gemms.find(n);
  if (it == I.prefill_gemms.end()) {
    std::array<int32_t, 4> ids{};
    const int32_t nE = m.n_embd, nQKV = m.q_dim() + 2 * m.kv_dim();
    Status s = I.gemm->add_shape(nQKV, nE, n, GemmAccumulate::Overwrite, &ids[0]);
    if (s.ok()) s = I.gemm->add_shape(nE, m.q_dim(), n, GemmAccumulate::Add, &ids[1]);
    if (s.ok()) s = I.gemm->add_shape(2 * m.n_ff, nE, n, GemmAccumulate::Overwrite, &ids[2]);
    if (s.ok()) s = I.gemm->add_shape(nE, m.n_ff, n, GemmAccumulate::Add, &ids[3]);
    if (!s.ok()) return s;
    it = I.prefill_gemms.emplace(n, ids).first;
  }
  const std::array<int32_t, 4>& g = it->second;
  PrefillAttentionParams ap;
  ap.n_q = ap.n_kv = n;
  ap.n_head = m.n_head, ap.n_head_kv = m.n_head_kv, ap.head_dim = m.head_dim;
  ap.causal = true;
  ap.scale = I.attn_params.scale;
  ap.dtype = KvDtype::BF16;

  cudaStream_t st = I.stream;
  float* px = pf.at<float>(p_x);
  Status s = copy_to_device(pf.at(p_tok), tokens.data(), N * 4);
  if (s.ok()) s = embedding_lookup(I.weights.at(I.tok_embd), pf.at<int32_t>(p_tok), n, m.n_vocab, m.n_embd, px, st);
  for (int32_t il = 0; il < m.n_layer && s.ok(); ++il) {
    const LayerWeights& w = I.layers[static_cast<size_t>(il)];
    s = rmsnorm(px, I.weights.at(w.attn_norm), pf.at(p_xn), n, m.n_embd, m.rms_eps, st);
    if (s.ok()) s = I.gemm->run(g[0], I.weights.at(w.wqkv), pf.at(p_xn), pf.at<float>(p_qkv), st);
    if (s.ok())
      s = rope_kv_append_rows(pf.at<float>(p_qkv), n, 0, 0, m.n_head, m.rope_base, pf.at(p_q), pf.at(p_k), pf.at(p_v),
                              I.views[static_cast<size_t>(il)], st);
    if (s.ok()) s = prefill_attention(ap, pf.at(p_q), pf.at(p_k), pf.at(p_v), pf.at(p_attn), st);
    if (s.ok()) s = I.gemm->run(g[1], I.weights.at(w.wo), pf.at(p_attn), px, st);  // x += attn Wo^T
    if (s.ok()) s = rmsnorm(px, I.weights.at(w.ffn_norm), pf.at(p_xn), n, m.n_embd, m.rms_eps, st);
    if (s.ok()) s = I.gemm->run(g[2], I.weights.at(w.w_gate_up), pf.at(p_xn), pf.at<float>(p_gu), st);
    if (s.ok()) s = swiglu(pf.at<float>(p_gu), pf.at(p_h), n, m.n_ff, st);
    if (s.ok()) s = I.gemm->run(g[3], I.weights.at(w.w_down), pf.at(p_h), px, st);  // x += h Wdown^T
  }
  // The last token's residual stream goes where a decode step leaves it, and the step's own tail (head, argmax,
  // history, position n - 1 -> n) finishes the prefill: the next step() continues from there.
  const int32_t last = n - 1;
  if (s.ok())
    s = cuda_status(
        cudaMemcpyAsync(I.act.at(I.x), px + static_cast<size_t>(last) * E, E * 4, cudaMemcpyDeviceToDevice, st),
        "prefill: last row");
  if (s.ok())
    s = cuda_status(cudaMemcpyAsync(I.act.at(I.pos), &last, 4, cudaMemcpyHostToDevice, st), "prefill: position");
  if (s.ok()) s = I.enqueue_head();
  const Status done = cuda_status(cudaStreamSynchronize(st), "prefill");  // `last` and the arena live on this frame
  if (!s.ok()) return s;
  if (!done.ok()) return done;
  I.host_pos = n;
  I.host_slots = n;
  return Status::success();
}

Status LlamaDecoder::set_token(int32_t token) {
  Impl& I = *impl_;
  if (token < 0 || token >= I.shape.n_vocab)
    return Status::error("token id " + std::to_string(token) + " is outside the vocabulary of " +
                         std::to_string(I.shape.n_vocab));
  // Synchronous: the source is a host stack value and the graph replays that follow read it on the same stream.
  LONGCTX_CUDA_TRY(cudaMemcpyAsync(I.act.at(I.token), &token, 4, cudaMemcpyHostToDevice, I.stream));
  return cuda_status(cudaStreamSynchronize(I.stream), "set_token");
}

Status LlamaDecoder::step(int32_t n_steps) {
  Impl& I = *impl_;
  if (n_steps < 0) return Status::error("step: negative count");
  if (I.host_slots + n_steps > I.opt.max_context)
    return Status::error("step: the context of " + std::to_string(I.opt.max_context) + " tokens is full");
  if (!I.exec)
    if (Status s = I.capture(); !s.ok()) return s;
  for (int32_t i = 0; i < n_steps; ++i) LONGCTX_CUDA_TRY(cudaGraphLaunch(I.exec, I.stream));
  I.host_pos += n_steps;
  I.host_slots += n_steps;
  return Status::success();
}

Status LlamaDecoder::synchronize() { return cuda_status(cudaStreamSynchronize(impl_->stream), "decode step"); }

Status LlamaDecoder::read_logits(std::vector<float>* logits) {
  Impl& I = *impl_;
  logits->resize(static_cast<size_t>(I.shape.n_vocab));
  return copy_to_host(logits->data(), I.act.at(I.logits), logits->size() * 4);
}

Status LlamaDecoder::read_last_token(int32_t* token) { return copy_to_host(token, impl_->act.at(impl_->token), 4); }

Status LlamaDecoder::read_generated(std::vector<int32_t>* tokens) {
  Impl& I = *impl_;
  int32_t n = 0;
  if (Status s = copy_to_host(&n, I.act.at(I.n_generated), 4); !s.ok()) return s;
  tokens->resize(static_cast<size_t>(std::min(n, I.opt.max_context)));
  return tokens->empty() ? Status::success() : copy_to_host(tokens->data(), I.act.at(I.history), tokens->size() * 4);
}

int32_t LlamaDecoder::position() const { return impl_->host_pos; }
const ModelShape& LlamaDecoder::shape() const { return impl_->shape; }
const std::vector<LlamaGemmReport>& LlamaDecoder::gemm_report() const { return impl_->report; }
void* LlamaDecoder::stream() const { return impl_->stream; }

LlamaDecodeBytes LlamaDecoder::bytes() const {
  const Impl& I = *impl_;
  const ModelShape& m = I.shape;
  const size_t E = static_cast<size_t>(m.n_embd);
  const size_t per_layer = (2 * E + (static_cast<size_t>(m.q_dim()) + 2 * m.kv_dim()) * E +
                            E * static_cast<size_t>(m.q_dim()) + 3 * static_cast<size_t>(m.n_ff) * E) *
                           2;
  LlamaDecodeBytes b;
  b.weights_total = I.weights.bytes();
  b.weights_per_token = per_layer * m.n_layer + (E + static_cast<size_t>(m.n_vocab) * E + E) * 2;
  b.kv_per_token_per_ctx = static_cast<size_t>(m.n_layer) * m.kv_dim() * 2 * 2;
  b.kv_store = I.kv.bytes();
  b.kv_packed_page = I.packed_page_bytes;
  return b;
}

Status LlamaDecoder::time_attention(int32_t n_reps, float* us) {
  Impl& I = *impl_;
  cudaGraph_t g = nullptr;
  cudaGraphExec_t ex = nullptr;
  // A query of synthetic values (never zeros), as a forward would give.
  if (Status s = synthetic_fill_bf16(I.act.at(I.q), static_cast<size_t>(I.shape.q_dim()), I.seed, 0xffff0004u,
                                     tensor_init(0.0f, 1.0f), 0, I.stream);
      !s.ok())
    return s;
  LONGCTX_CUDA_TRY(cudaStreamBeginCapture(I.stream, cudaStreamCaptureModeThreadLocal));
  Status s = Status::success();
  for (int32_t il = 0; il < I.shape.n_layer && s.ok(); ++il)
    s = decode_attention(I.attn_params, I.plan, I.act.at(I.q), I.act.at<int32_t>(I.pos), I.views[static_cast<size_t>(il)],
                         I.act.at(I.attn), I.plan.workspace_bytes ? I.act.at(I.attn_ws) : nullptr, I.stream);
  const cudaError_t e = cudaStreamEndCapture(I.stream, &g);
  if (s.ok()) s = cuda_status(e, "cudaStreamEndCapture");
  if (s.ok()) s = cuda_status(cudaGraphInstantiate(&ex, g, 0), "cudaGraphInstantiate");
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  if (s.ok()) s = cuda_status(cudaEventCreate(&e0), "cudaEventCreate");
  if (s.ok()) s = cuda_status(cudaEventCreate(&e1), "cudaEventCreate");
  std::vector<float> t;
  if (s.ok()) s = cuda_status(cudaGraphLaunch(ex, I.stream), "cudaGraphLaunch");  // warm-up
  for (int32_t r = 0; r < n_reps && s.ok(); ++r) {
    s = cuda_status(cudaEventRecord(e0, I.stream), "cudaEventRecord");
    if (s.ok()) s = cuda_status(cudaGraphLaunch(ex, I.stream), "cudaGraphLaunch");
    if (s.ok()) s = cuda_status(cudaEventRecord(e1, I.stream), "cudaEventRecord");
    if (s.ok()) s = cuda_status(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    if (s.ok()) s = cuda_status(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    t.push_back(ms * 1e3f);
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (ex) cudaGraphExecDestroy(ex);
  if (g) cudaGraphDestroy(g);
  if (!s.ok()) return s;
  std::sort(t.begin(), t.end());
  *us = t.empty() ? 0.0f : t[t.size() / 2];
  return Status::success();
}

}  // namespace longctx::cuda
