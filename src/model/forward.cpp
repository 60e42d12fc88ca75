#include "model/forward.h"

#include <algorithm>

#include "core/error.h"

namespace longctx {

void kv_expire_window(const ModelConfig& c, kv::KvSequence& kv, kv::KvPolicy& policy, int32_t next_pos,
                      bool decode_step) {
  if (c.sliding_window <= 0) return;
  const int32_t last_expired = next_pos - c.sliding_window;
  const bool whole_pages = decode_step && policy.passive_during_decode();
  std::vector<int32_t> slots;
  for (int32_t il = 0; il < c.n_layer; ++il) {
    if (!c.layer_is_local[static_cast<size_t>(il)]) continue;
    for (int32_t g = 0; g < c.n_head_kv; ++g) {
      const kv::KvHeadCache& h = kv.head(il, g);
      slots.clear();
      if (whole_pages) {
        // The leading pages whose every slot is expired.
        int32_t s0 = 0;
        for (const kv::KvPage& page : h.pages) {
          const int32_t s1 = s0 + page.n_rows;
          const bool expired = std::all_of(h.positions.begin() + s0, h.positions.begin() + s1,
                                           [&](int32_t p) { return p <= last_expired; });
          if (!expired) break;
          for (int32_t s = s0; s < s1; ++s) slots.push_back(s);
          s0 = s1;
        }
      } else {
        for (int32_t s = 0; s < h.n_tokens(); ++s)
          if (h.positions[static_cast<size_t>(s)] <= last_expired) slots.push_back(s);
      }
      if (slots.empty()) continue;
      const int32_t n_before = h.n_tokens();
      kv.remove_slots(il, g, slots);
      policy.on_slots_removed(il, g, n_before, slots);
    }
  }
}

std::vector<KvKeyShift> kv_in_cache_shifts(const std::vector<int32_t>& positions, int32_t q_pos) {
  const int32_t n = static_cast<int32_t>(positions.size());
  // The contiguous run of positions that ends at q_pos: its keys already sit at their in-cache places.
  const int64_t first = static_cast<int64_t>(q_pos) - n + 1;  // where the oldest cached key goes
  std::vector<uint8_t> present(static_cast<size_t>(n), 0);
  for (int32_t p : positions) {
    if (p > q_pos) fail("internal: a cached key at position {} is after the query at {}", p, q_pos);
    if (p >= first) {
      uint8_t& seen = present[static_cast<size_t>(p - first)];
      if (seen) fail("internal: position {} is cached twice", p);
      seen = 1;
    }
  }
  int64_t run_start = q_pos + 1;
  while (run_start > first && present[static_cast<size_t>(run_start - 1 - first)]) --run_start;
  // Every key before the run moves; they are the oldest, so their ranks among themselves are their ranks in the
  // cache, and the key of rank r goes to first + r.
  std::vector<KvKeyShift> shifts;
  for (int32_t s = 0; s < n; ++s)
    if (positions[static_cast<size_t>(s)] < run_start) shifts.push_back({s, positions[static_cast<size_t>(s)]});
  std::sort(shifts.begin(), shifts.end(), [](const KvKeyShift& a, const KvKeyShift& b) { return a.target < b.target; });
  for (size_t r = 0; r < shifts.size(); ++r) shifts[r].target = static_cast<int32_t>(first + static_cast<int64_t>(r));
  std::sort(shifts.begin(), shifts.end(), [](const KvKeyShift& a, const KvKeyShift& b) { return a.slot < b.slot; });
  return shifts;
}

int32_t KvInCacheRotation::apply(const kv::KvSequence& kv, int32_t layer, int32_t q_pos, float rope_base,
                                 int32_t n_rot, RopeOrder order, KvLayerView& view) {
  const int32_t T = view.page_tokens, D = view.head_dim;
  const size_t page_floats = kv_page_bytes(KvFormat::F32, T, D) / sizeof(float);
  k_.resize(static_cast<size_t>(T) * D);
  v_.resize(static_cast<size_t>(T) * D);
  size_t n_scratch = 0;
  int32_t n_moved = 0;
  for (int32_t g = 0; g < static_cast<int32_t>(view.heads.size()); ++g) {
    const kv::KvHeadCache& h = kv.head(layer, g);
    const std::vector<KvKeyShift> shifts = kv_in_cache_shifts(h.positions, q_pos);
    KvHeadView& hv = view.heads[static_cast<size_t>(g)];
    for (size_t i = 0; i < shifts.size();) {
      // One page at a time: decode it whole, turn its moving keys, and let the view read the copy.
      const int32_t page = hv.page_of(shifts[i].slot), row0 = hv.slot0[static_cast<size_t>(page)];
      const int32_t n_rows = hv.page_rows(page);
      kv.read_keys(layer, g, row0, n_rows, k_.data());
      kv.read_values(layer, g, row0, n_rows, v_.data());
      for (; i < shifts.size() && shifts[i].slot < row0 + n_rows; ++i) {
        const int32_t slot = shifts[i].slot;
        // A rotation by the difference equals unrotating from the original position and rotating to the target;
        // the angle is formed in double (rope_angles), so large positions lose nothing.
        const int32_t delta = shifts[i].target - h.positions[static_cast<size_t>(slot)];
        if (cos_.empty() || delta != angles_delta_ || rope_base != angles_base_ || n_rot != angles_n_rot_) {
          cos_.resize(static_cast<size_t>(n_rot / 2));
          sin_.resize(static_cast<size_t>(n_rot / 2));
          rope_angles(delta, n_rot, rope_base, cos_.data(), sin_.data());
          angles_delta_ = delta;
          angles_base_ = rope_base;
          angles_n_rot_ = n_rot;
        }
        rope_rotate(k_.data() + static_cast<size_t>(slot - row0) * D, 1, D, n_rot, cos_.data(), sin_.data(), order);
        ++n_moved;
      }
      if (n_scratch == pages_.size()) pages_.emplace_back(page_floats);
      std::vector<float>& dst = pages_[n_scratch++];
      auto* bytes = reinterpret_cast<uint8_t*>(dst.data());
      host_kv_memory().write_page_rows_host(KvFormat::F32, T, D, k_.data(), v_.data(), 0, n_rows, bytes);
      hv.pages[static_cast<size_t>(page)] = bytes;
      hv.formats[static_cast<size_t>(page)] = KvFormat::F32;
    }
  }
  return n_moved;
}

Forward::Forward(const Model& model, Backend& backend, int32_t n_batch, ThreadPool* host_pool)
    : model_(model),
      backend_(backend),
      owned_host_pool_(host_pool == nullptr ? std::make_unique<ThreadPool>(1) : nullptr),
      host_pool_(host_pool == nullptr ? *owned_host_pool_ : *host_pool),
      n_batch_(n_batch) {
  const ModelConfig& c = model.config();
  const size_t nb = static_cast<size_t>(n_batch);
  x_ = backend_.alloc_floats(nb * c.n_embd);
  xn_ = backend_.alloc_floats(nb * c.n_embd);
  q_ = backend_.alloc_floats(nb * c.n_head * c.head_dim);
  k_ = backend_.alloc_floats(nb * c.n_head_kv * c.head_dim);
  v_ = backend_.alloc_floats(nb * c.n_head_kv * c.head_dim);
  attn_ = backend_.alloc_floats(nb * c.n_head * c.head_dim);
  out_ = backend_.alloc_floats(nb * c.n_embd);
  gate_ = backend_.alloc_floats(nb * c.n_ff);
  up_ = backend_.alloc_floats(nb * c.n_ff);
  // Every matrix and norm vector the ops will be given, once.
  std::vector<const Weight*> matrices = {&model.token_embd()};
  if (&model.output() != &model.token_embd()) matrices.push_back(&model.output());
  std::vector<const std::vector<float>*> vectors = {&model.output_norm()};
  for (int32_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& w = model.layer(il);
    for (const Weight* m : {&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down}) matrices.push_back(m);
    for (const std::vector<float>* v :
         {&w.attn_norm, &w.ffn_norm, &w.q_norm, &w.k_norm, &w.post_attn_norm, &w.post_ffn_norm})
      if (!v->empty()) vectors.push_back(v);
  }
  backend_.prepare(matrices, vectors);
}

Forward::Forward(const Model& model, std::unique_ptr<Backend> owned, ThreadPool* host_pool, int32_t n_batch)
    : Forward(model, *owned, n_batch, host_pool) {
  owned_ = std::move(owned);
}

Forward::Forward(const Model& model, ThreadPool& pool, int32_t n_batch)
    : Forward(model, make_backend(Device::Cpu, pool), &pool, n_batch) {}

void Forward::matmul(const Weight& w, const float* x, int32_t n, float* y) {
  const MatmulOutput o{&w, y};
  backend_.matmul(&o, 1, x, n);
}

const float* Forward::q_on_host(int32_t n) {
  if (backend_.host_memory()) return q_.get();
  const ModelConfig& c = model_.config();
  q_host_.resize(static_cast<size_t>(n) * c.n_head * c.head_dim);
  backend_.to_host(q_host_.data(), q_.get(), q_host_.size() * sizeof(float));
  return q_host_.data();
}

void Forward::run(kv::KvSequence& kv, const int32_t* tokens, const int32_t* positions, int32_t n,
                  const std::vector<int32_t>& logit_rows, float* logits, kv::KvScores* scores,
                  kv::KvPositions key_positions, KvReadFilter* read) {
  const ForwardSegment seg{&kv, tokens, positions, n, scores, key_positions, read};
  run({&seg, 1}, logit_rows, logits);
}

void Forward::run(std::span<const ForwardSegment> segments, const std::vector<int32_t>& logit_rows, float* logits) {
  const ModelConfig& c = model_.config();
  int32_t n = 0;
  bool any_query_stats = false, any_read = false;
  for (size_t i = 0; i < segments.size(); ++i) {
    const ForwardSegment& sg = segments[i];
    if (sg.kv == nullptr || sg.n <= 0) fail("internal: an empty forward segment");
    // Each query of a chunk would see its own in-cache frame; prompts fit the context and keep original positions.
    if (sg.key_positions == kv::KvPositions::InCache && sg.n != 1)
      fail("internal: in-cache key positions take one token at a time, not {}", sg.n);
    if (sg.key_positions == kv::KvPositions::InCache && !backend_.host_memory())
      fail("in-cache key positions are not yet supported on {}", backend_.name());
    for (size_t j = 0; j < i; ++j)
      if (segments[j].kv == sg.kv) fail("internal: one sequence in two segments of a forward");
    for (int32_t t = 0; t < sg.n; ++t)
      if (sg.tokens[t] < 0 || sg.tokens[t] >= c.n_vocab)
        fail("token id {} is outside the vocabulary of {}", sg.tokens[t], c.n_vocab);
    any_query_stats = any_query_stats || (sg.scores != nullptr && sg.scores->queries.wanted());
    any_read = any_read || sg.read != nullptr;
    n += sg.n;
  }
  if (n <= 0 || n > n_batch_) fail("internal: chunk of {} tokens for a batch of {}", n, n_batch_);
  tokens_.clear();
  positions_.clear();
  for (const ForwardSegment& sg : segments) {
    tokens_.insert(tokens_.end(), sg.tokens, sg.tokens + sg.n);
    positions_.insert(positions_.end(), sg.positions, sg.positions + sg.n);
  }
  const int32_t* positions = positions_.data();
  const int64_t E = c.n_embd, D = c.head_dim;
  const int64_t q_row = static_cast<int64_t>(c.n_head) * D, kv_row = static_cast<int64_t>(c.n_head_kv) * D;

  Backend& be = backend_;
  float *x = x_.get(), *xn = xn_.get(), *q = q_.get(), *k = k_.get(), *v = v_.get(), *attn = attn_.get(),
        *out = out_.get(), *gate = gate_.get(), *up = up_.get();

  // Embeddings: one dequantized row per token.
  be.embed(model_.token_embd(), tokens_.data(), n, c.embd_scale, x);

  AttentionParams ap;
  ap.n_head = c.n_head;
  ap.n_head_kv = c.n_head_kv;
  ap.head_dim = c.head_dim;
  ap.scale = c.attn_scale;

  for (int32_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& w = model_.layer(il);
    const bool local = c.layer_is_local[static_cast<size_t>(il)];

    // Attention block.
    be.rmsnorm(x, w.attn_norm, xn, n, E, c.rms_eps);
    // q, k and v in one call (the CPU: one parallel region, the activations quantized once; the same values).
    const MatmulOutput qkv[] = {{&w.wq, q}, {&w.wk, k}, {&w.wv, v}};
    be.matmul(qkv, 3, xn, n);
    if (c.has_qk_norm) {
      be.rmsnorm(q, w.q_norm, q, n * c.n_head, D, c.rms_eps);
      be.rmsnorm(k, w.k_norm, k, n * c.n_head_kv, D, c.rms_eps);
    }
    const float base = local ? c.rope_base_local : c.rope_base;
    if (any_query_stats) {
      // The queries before RoPE, for a policy that models the queries to come (Expected Attention).
      const float* q_host = q_on_host(n);
      int32_t row0 = 0;
      for (const ForwardSegment& sg : segments) {
        if (sg.scores != nullptr && sg.scores->queries.wanted()) {
          kv::KvQueryStats& qs = sg.scores->queries;
          if (static_cast<int32_t>(qs.layers.size()) != c.n_layer || qs.n_head != c.n_head || qs.head_dim != D)
            fail("internal: query statistics sized for {} layers of {} heads of {}", qs.layers.size(), qs.n_head,
                 qs.head_dim);
          kv::KvQueryStats::Layer& ql = qs.layers[static_cast<size_t>(il)];
          ql.rope_base = base;
          ql.n_rot = c.n_rot;
          ql.rope_order = c.rope_order;
          ql.scale = c.attn_scale;
          qs.add(host_pool_, il, q_host + row0 * q_row, sg.positions, sg.n);
        }
        row0 += sg.n;
      }
    }
    be.rope(q, positions, n, c.n_head, D, c.n_rot, base, c.rope_order);
    be.rope(k, positions, n, c.n_head_kv, D, c.n_rot, base, c.rope_order);
    ap.window = local ? c.sliding_window : 0;
    const float* q_host = any_read ? q_on_host(n) : nullptr;
    int32_t row0 = 0;
    for (const ForwardSegment& sg : segments) {
      kv::KvSequence& kv = *sg.kv;
      const float* q_seg = q + row0 * q_row;
      float* attn_seg = attn + row0 * q_row;
      kv.append(il, k + row0 * kv_row, v + row0 * kv_row, sg.positions, sg.n);
      KvLayerView view = kv.layer_view(il);
      if (sg.key_positions == kv::KvPositions::InCache)
        in_cache_.apply(kv, il, sg.positions[0], base, c.n_rot, c.rope_order, view);
      // Chunk rows are in position order: the voters for the policy's scores are a suffix of the segment.
      kv::KvScores* scores = sg.scores;
      int32_t first_row = sg.n;
      if (scores != nullptr && scores->wanted()) {
        first_row = 0;
        while (first_row < sg.n && sg.positions[first_row] < scores->first_pos) ++first_row;
        if (first_row < sg.n && kv.n_tokens_max() > scores->stride)
          fail("internal: KV scores hold {} slots, the cache {}", scores->stride, kv.n_tokens_max());
      }
      float* layer_scores = first_row < sg.n ? scores->layers[static_cast<size_t>(il)].data() : nullptr;
      if (sg.read != nullptr) {
        KvLayerView narrowed = view;
        narrowed.n_head = c.n_head;
        sg.read->narrow(il, q_host + row0 * q_row, sg.positions, sg.n, narrowed);
        be.attention(ap, q_seg, sg.positions, sg.n, narrowed, attn_seg);
      } else if (layer_scores != nullptr && first_row == 0 && scores->reduce == ScoreReduce::Sum) {
        be.attention_with_scores(ap, q_seg, sg.positions, sg.n, view, attn_seg, layer_scores, scores->stride);
        layer_scores = nullptr;  // gathered
      } else {
        be.attention(ap, q_seg, sg.positions, sg.n, view, attn_seg);
      }
      if (layer_scores != nullptr)
        be.attention_scores(ap, q_seg, sg.positions, sg.n, first_row, view, layer_scores, scores->stride,
                            scores->reduce);
      row0 += sg.n;
    }
    matmul(w.wo, attn, n, out);
    if (c.has_post_norms) be.rmsnorm(out, w.post_attn_norm, out, n, E, c.rms_eps);
    be.add_in_place(x, out, n * E);

    // Feed-forward block.
    be.rmsnorm(x, w.ffn_norm, xn, n, E, c.rms_eps);
    const MatmulOutput gate_up[] = {{&w.w_gate, gate}, {&w.w_up, up}};
    be.matmul(gate_up, 2, xn, n);
    be.gated_activation(gate, up, static_cast<int64_t>(n) * c.n_ff, c.ffn_act);
    matmul(w.w_down, gate, n, out);
    if (c.has_post_norms) be.rmsnorm(out, w.post_ffn_norm, out, n, E, c.rms_eps);
    be.add_in_place(x, out, n * E);
  }

  output_logits(logit_rows, n, logits);
  be.finish_scores();  // the policies read the scores once this returns
}

void Forward::output_logits(const std::vector<int32_t>& logit_rows, int32_t n, float* logits) {
  // Output head, only for the rows asked for (usually the last of each sequence).
  Backend& be = backend_;
  const ModelConfig& c = model_.config();
  const int64_t E = c.n_embd;
  float* x = x_.get();
  float* xn = xn_.get();
  const int32_t n_out = static_cast<int32_t>(logit_rows.size());
  if (n_out == 0) return;
  for (int32_t i = 0; i < n_out; ++i) {
    const int32_t r = logit_rows[static_cast<size_t>(i)];
    if (r < 0 || r >= n) fail("internal: logit row {} outside a chunk of {}", r, n);
    be.rmsnorm(x + r * E, model_.output_norm(), xn + i * E, 1, E, c.rms_eps);
  }
  if (be.host_memory()) {
    matmul(model_.output(), xn, n_out, logits);
    return;
  }
  const size_t n_logits = static_cast<size_t>(n_out) * c.n_vocab;
  if (logits_floats_ < n_logits) {
    logits_ = be.alloc_floats(n_logits);
    logits_floats_ = n_logits;
  }
  matmul(model_.output(), xn, n_out, logits_.get());
  be.to_host(logits, logits_.get(), n_logits * sizeof(float));
}

}  // namespace longctx
