// ShadowKV as a --kv read policy (shadowkv.h). It keeps every token and decides what each decode step reads, as
// Quest does, but also holds the prompt's tokens itself in smaller form: the store keeps only the last ones.
//
// Design choices where the paper leaves room: a layer is shadowed only when its kv-heads hold the whole prompt
// (positions 0 .. n - 1), so a sliding-window layer keeps its window in the store as before; a chunk's attention
// for a kv-head is the largest softmax probability its query heads give the landmark (a page one head needs must
// not be outvoted, as in our Quest); the chunk of the prompt's first tokens is always exact (the attention sink);
// the exact chunks' values sit in fast memory, every shadowed value in the cold tier. Composition: no token policy
// or packed format underneath (the factorization needs every head of a layer to hold the same tokens, f16).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/fp16.h"
#include "kv/policy.h"
#include "kv/policy_registry.h"
#include "kv/shadowkv.h"

namespace longctx::kv {

namespace {

// Subspace iterations: each multiplies the error of a direction by (lambda_{r+1} / lambda_k); keys' spectra fall
// fast past the first few dozen directions, and a direction still mixing with its neighbours at the cut costs
// little of the approximation (they carry about the same energy). The basis is orthonormalized after every second
// multiplication: two in a row widen the spread of its columns by (lambda_1 / lambda_r)^2, well within a double.
constexpr int kSubspaceIterations = 40;
constexpr int kRowsPerGramBlock = 64;  // rows summed in f32 before they are folded into the f64 Gram matrix

double dot(const double* a, const double* b, int32_t n) {
  double s[4] = {};  // independent sums, so that the compiler may keep them in vector lanes
  int32_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int32_t j = 0; j < 4; ++j) s[j] += a[i + j] * b[i + j];
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Orthonormalizes the r vectors of length D in v (vector k at v + k D), modified Gram-Schmidt applied twice. A
// vector that vanishes (the matrix has rank < r) is replaced by a unit vector orthogonal to those before it.
void orthonormalize(std::vector<double>& v, int32_t D, int32_t r) {
  for (int32_t k = 0; k < r; ++k) {
    double* vk = v.data() + static_cast<size_t>(k) * D;
    for (int32_t tries = 0;; ++tries) {
      const double before = dot(vk, vk, D);
      for (int pass = 0; pass < 2; ++pass)
        for (int32_t j = 0; j < k; ++j) {
          const double* vj = v.data() + static_cast<size_t>(j) * D;
          const double c = dot(vj, vk, D);
          for (int32_t i = 0; i < D; ++i) vk[i] -= c * vj[i];
        }
      const double norm = dot(vk, vk, D);
      if (norm > 1e-20 * before && norm > 0) {
        const double inv = 1.0 / std::sqrt(norm);
        for (int32_t i = 0; i < D; ++i) vk[i] *= inv;
        break;
      }
      if (tries >= D) fail("internal: no direction left to complete a basis of {} in {} dimensions", r, D);
      std::fill(vk, vk + D, 0.0);
      vk[(k + tries) % D] = 1.0;
    }
  }
}

}  // namespace

void low_rank_factorize(const float* x, int64_t n, int32_t D, int32_t r, std::vector<float>& a,
                        std::vector<float>& b) {
  if (D < 1 || r < 1 || r > D) fail("internal: a rank-{} factorization of rows of {}", r, D);
  // The Gram matrix: upper triangle, then mirrored.
  const auto DD = static_cast<size_t>(D) * D;
  std::vector<double> g(DD, 0.0);
  std::vector<float> block(DD);
  for (int64_t t0 = 0; t0 < n; t0 += kRowsPerGramBlock) {
    std::fill(block.begin(), block.end(), 0.0f);
    for (int64_t t = t0; t < std::min<int64_t>(n, t0 + kRowsPerGramBlock); ++t) {
      const float* xt = x + t * D;
      for (int32_t i = 0; i < D; ++i) {
        const float xi = xt[i];
        float* bi = block.data() + static_cast<size_t>(i) * D;
        for (int32_t j = i; j < D; ++j) bi[j] += xi * xt[j];
      }
    }
    for (int32_t i = 0; i < D; ++i)
      for (int32_t j = i; j < D; ++j) g[static_cast<size_t>(i) * D + j] += block[static_cast<size_t>(i) * D + j];
  }
  for (int32_t i = 0; i < D; ++i)
    for (int32_t j = 0; j < i; ++j) g[static_cast<size_t>(i) * D + j] = g[static_cast<size_t>(j) * D + i];

  std::vector<double> v(static_cast<size_t>(r) * D), z(v.size());
  std::mt19937 rng(1);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (double& e : v) e = nd(rng);
  orthonormalize(v, D, r);
  for (int it = 0; it < kSubspaceIterations; ++it) {
    for (int32_t k = 0; k < r; ++k) {
      const double* vk = v.data() + static_cast<size_t>(k) * D;
      double* zk = z.data() + static_cast<size_t>(k) * D;
      for (int32_t i = 0; i < D; ++i) zk[i] = dot(g.data() + static_cast<size_t>(i) * D, vk, D);
    }
    if (it % 2 == 1 || it + 1 == kSubspaceIterations) orthonormalize(z, D, r);
    v.swap(z);
  }
  b.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = static_cast<float>(v[i]);
  // a = x b^T, row by row as sums of b's columns (b^T's rows) weighted by x: contiguous, in f32 (a is kept at f16).
  std::vector<float> bt(static_cast<size_t>(D) * r);
  for (int32_t k = 0; k < r; ++k)
    for (int32_t i = 0; i < D; ++i) bt[static_cast<size_t>(i) * r + k] = b[static_cast<size_t>(k) * D + i];
  a.assign(static_cast<size_t>(n) * r, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    float* at = a.data() + static_cast<size_t>(t) * r;
    for (int32_t i = 0; i < D; ++i) {
      const float xi = x[t * D + i];
      const float* bi = bt.data() + static_cast<size_t>(i) * r;
      for (int32_t k = 0; k < r; ++k) at[k] += xi * bi[k];
    }
  }
}

ShadowKvReadFilter::ShadowKvReadFilter(const ShadowKvOptions& o) : o_(o) {
  if (o.chunk < 1) fail("shadowkv: chunk must be at least 1 token, not {}", o.chunk);
  if (o.budget < o.chunk) fail("shadowkv: budget ({}) must hold at least one chunk of {}", o.budget, o.chunk);
  if (o.rank < 0 || o.outliers < 0 || o.recent < 0) fail("shadowkv: rank, outliers and recent must be >= 0");
}

int32_t ShadowKvReadFilter::rank_for(int32_t n_head_kv, int32_t head_dim) const {
  const int32_t width = n_head_kv * head_dim;
  if (o_.rank > 0) return std::min(o_.rank, width);
  // The paper's share of the width (160 of Llama-3-8B's 1,024, eight kv-heads sharing directions), but at least 64
  // and half of one head: on SmolLM2 (3 heads of 64) rank 32 truncated a needle's number that 64 kept; on Gemma 3
  // (one head of 256) rank 64 lost needles that 128 kept (EVAL.md, "ShadowKV").
  const int32_t paper = (width * 160 / 1024 + 7) / 8 * 8;
  return std::min(width, std::max({paper, 64, head_dim / 2}));
}

const ShadowKvReadFilter::Layer* ShadowKvReadFilter::layer(int32_t l) const {
  if (l < 0 || l >= static_cast<int32_t>(layers_.size())) return nullptr;
  const Layer& L = layers_[static_cast<size_t>(l)];
  return L.n_shadow > 0 ? &L : nullptr;
}

void ShadowKvReadFilter::reset() {
  layers_.clear();
  rope_tables_.clear();
  reset_counts();
}

size_t ShadowKvReadFilter::bytes_fast() const {
  size_t b = 0;
  for (const Layer& L : layers_) {
    b += L.a.capacity() * sizeof(uint16_t) + L.b.capacity() * sizeof(float);
    for (const Head& h : L.heads)
      b += h.exact_index.capacity() * sizeof(int32_t) +
           (h.landmarks.capacity() + h.exact_keys.capacity() + h.exact_values.capacity()) * sizeof(uint16_t);
  }
  for (const auto& [base, t] : rope_tables_) b += (t.cos.capacity() + t.sin.capacity()) * sizeof(float);
  return b;
}

size_t ShadowKvReadFilter::bytes_cold() const {
  size_t b = 0;
  for (const Layer& L : layers_)
    for (const Head& h : L.heads) b += h.values.capacity() * sizeof(uint16_t);
  return b;
}

const ShadowKvReadFilter::RopeTable& ShadowKvReadFilter::rope_table(float base, int32_t n_rot, int32_t n) {
  RopeTable& t = rope_tables_[base];
  const size_t half = static_cast<size_t>(n_rot / 2);
  if (t.n_rot == n_rot && t.cos.size() >= static_cast<size_t>(n) * half) return t;
  t.n_rot = n_rot;
  t.cos.resize(static_cast<size_t>(n) * half);
  t.sin.resize(t.cos.size());
  for (int32_t p = 0; p < n; ++p) rope_angles(p, n_rot, base, t.cos.data() + p * half, t.sin.data() + p * half);
  return t;
}

void ShadowKvReadFilter::after_prefill(KvSequence& seq, const KvScores& scores) {
  const KvGeometry& geo = seq.geometry();
  if (kv_format_is_packed(geo.format) || kv_format_is_packed(geo.sealed_format))
    fail("internal: shadowkv over packed pages");
  if (!scores.queries.wanted() || static_cast<int32_t>(scores.queries.layers.size()) != geo.n_layer)
    fail("internal: shadowkv needs each layer's RoPE from the prefill's query statistics");
  // A prompt added to a sequence that already has its shadow (a second prefill after the first) stays in the store:
  // the factors cover one prompt from position 0.
  if (std::any_of(layers_.begin(), layers_.end(), [](const Layer& L) { return L.n_shadow > 0; })) return;
  layers_.assign(static_cast<size_t>(geo.n_layer), Layer{});
  // The layers to shadow and their RoPE tables (shared by the layers of one base) first; then the factorizations,
  // the costly part, as many layers at once as the host pool has threads (a layer reads only its own heads and
  // writes only its own Layer), the store giving each batch's tokens back before the next starts: only a batch's
  // layers are ever held both in the pool and in the shadow.
  std::vector<std::pair<int32_t, int32_t>> shadowed;  // (layer, tokens it shadows)
  for (int32_t l = 0; l < geo.n_layer; ++l) {
    const int32_t n_shadow = shadow_length(seq, l);
    if (n_shadow == 0) continue;
    const KvQueryStats::Layer& ql = scores.queries.layers[static_cast<size_t>(l)];
    if (ql.n_rot < 2 || ql.n_rot > geo.head_dim) fail("internal: shadowkv got no RoPE for layer {}", l);
    rope_table(ql.rope_base, ql.n_rot, n_shadow);
    shadowed.emplace_back(l, n_shadow);
  }
  const size_t batch = host_pool() != nullptr ? static_cast<size_t>(std::max(1, host_pool()->n_threads())) : 1;
  for (size_t first = 0; first < shadowed.size(); first += batch) {
    const size_t n = std::min(batch, shadowed.size() - first);
    auto build = [&](int64_t i) {
      const auto [l, n_shadow] = shadowed[first + static_cast<size_t>(i)];
      shadow_layer(seq, l, n_shadow, scores);
    };
    if (host_pool() != nullptr) {
      host_pool()->run(static_cast<int64_t>(n), build);
    } else {
      build(0);
    }
    for (size_t i = first; i < first + n; ++i) {
      const auto [l, n_shadow] = shadowed[i];
      // The store keeps the rest: the last tokens of the prompt.
      std::vector<int32_t> keep(static_cast<size_t>(seq.head(l, 0).n_tokens() - n_shadow));
      std::iota(keep.begin(), keep.end(), n_shadow);
      for (int32_t g = 0; g < geo.n_head_kv; ++g) seq.keep_slots(l, g, keep);
    }
  }
}

int32_t ShadowKvReadFilter::shadow_length(const KvSequence& seq, int32_t l) const {
  const KvGeometry& geo = seq.geometry();
  const std::vector<int32_t>& pos = seq.head(l, 0).positions;
  const auto n = static_cast<int32_t>(pos.size());
  for (int32_t i = 0; i < n; ++i)
    if (pos[static_cast<size_t>(i)] != i) return 0;  // not the whole prompt: a sliding-window layer
  for (int32_t g = 1; g < geo.n_head_kv; ++g)
    if (seq.head(l, g).positions != pos) return 0;
  const int32_t n_chunks = std::max(0, n - o_.recent) / o_.chunk;
  // Nothing gained unless some chunks are neither exact nor read at every step.
  if (n_chunks <= 1 + o_.outliers + o_.budget / o_.chunk) return 0;
  return n_chunks * o_.chunk;
}

void ShadowKvReadFilter::shadow_layer(const KvSequence& seq, int32_t l, int32_t n_shadow, const KvScores& scores) {
  const KvGeometry& geo = seq.geometry();
  const int32_t H = geo.n_head_kv, d = geo.head_dim, C = o_.chunk, W = H * d, n_chunks = n_shadow / C;
  const KvQueryStats::Layer& ql = scores.queries.layers[static_cast<size_t>(l)];

  Layer& L = layers_[static_cast<size_t>(l)];
  L.n_shadow = n_shadow;
  L.rank = rank_for(H, d);
  L.rope_base = ql.rope_base;
  L.n_rot = ql.n_rot;
  L.rope_order = ql.rope_order;
  L.scale = ql.scale;
  const int32_t N = L.n_shadow;
  const RopeTable& rt = rope_tables_.at(L.rope_base);  // made long enough by after_prefill
  const size_t half = static_cast<size_t>(L.n_rot / 2);

  // The keys as stored (rotated), then turned back to before RoPE into x (N, W).
  std::vector<float> x(static_cast<size_t>(N) * W), keys(static_cast<size_t>(N) * d), vals(keys.size());
  std::vector<float> neg_sin(half);
  L.heads.resize(static_cast<size_t>(H));
  for (int32_t g = 0; g < H; ++g) {
    Head& h = L.heads[static_cast<size_t>(g)];
    seq.read_keys(l, g, 0, N, keys.data());
    seq.read_values(l, g, 0, N, vals.data());
    h.values.resize(vals.size());
    for (size_t i = 0; i < vals.size(); ++i) h.values[i] = f32_to_fp16(vals[i]);

    // Landmarks, and how badly each stands for its chunk: the lowest cosine between a key and the chunk's mean.
    h.landmarks.resize(static_cast<size_t>(n_chunks) * d);
    std::vector<std::pair<float, int32_t>> fit(static_cast<size_t>(n_chunks));
    std::vector<float> mean(static_cast<size_t>(d));
    for (int32_t c = 0; c < n_chunks; ++c) {
      float* lm = mean.data();
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int32_t t = c * C; t < (c + 1) * C; ++t)
        for (int32_t i = 0; i < d; ++i) lm[i] += keys[static_cast<size_t>(t) * d + i] / static_cast<float>(C);
      double lm_norm = 0;
      for (int32_t i = 0; i < d; ++i) lm_norm += static_cast<double>(lm[i]) * lm[i];
      double worst = 1;
      for (int32_t t = c * C; t < (c + 1) * C; ++t) {
        double dot = 0, k_norm = 0;
        for (int32_t i = 0; i < d; ++i) {
          const double k = keys[static_cast<size_t>(t) * d + i];
          dot += k * lm[i];
          k_norm += k * k;
        }
        const double den = std::sqrt(k_norm * lm_norm);
        worst = std::min(worst, den > 0 ? dot / den : 1.0);
      }
      fit[static_cast<size_t>(c)] = {static_cast<float>(worst), c};
      for (int32_t i = 0; i < d; ++i) h.landmarks[static_cast<size_t>(c) * d + i] = f32_to_fp16(lm[i]);
    }
    // Exact: the first chunk and the `outliers` worst fits among the rest (ties: the older chunk).
    std::sort(fit.begin() + 1, fit.end());
    h.exact_index.assign(static_cast<size_t>(n_chunks), -1);
    const int32_t n_exact = 1 + std::min(o_.outliers, n_chunks - 1);
    std::vector<int32_t> exact(static_cast<size_t>(n_exact));
    for (int32_t e = 0; e < n_exact; ++e) exact[static_cast<size_t>(e)] = fit[static_cast<size_t>(e)].second;
    std::sort(exact.begin(), exact.end());
    h.exact_keys.resize(static_cast<size_t>(n_exact) * C * d);
    h.exact_values.resize(h.exact_keys.size());
    for (int32_t e = 0; e < n_exact; ++e) {
      const int32_t c = exact[static_cast<size_t>(e)];
      h.exact_index[static_cast<size_t>(c)] = e;
      for (size_t i = 0; i < static_cast<size_t>(C) * d; ++i) {
        h.exact_keys[static_cast<size_t>(e) * C * d + i] = f32_to_fp16(keys[static_cast<size_t>(c) * C * d + i]);
        h.exact_values[static_cast<size_t>(e) * C * d + i] = h.values[static_cast<size_t>(c) * C * d + i];
      }
    }

    for (int32_t t = 0; t < N; ++t) {
      float* xt = x.data() + static_cast<size_t>(t) * W + static_cast<size_t>(g) * d;
      std::copy_n(keys.data() + static_cast<size_t>(t) * d, d, xt);
      const float* s = rt.sin.data() + t * half;
      for (size_t i = 0; i < half; ++i) neg_sin[i] = -s[i];
      rope_rotate(xt, 1, d, L.n_rot, rt.cos.data() + t * half, neg_sin.data(), L.rope_order);
    }
  }

  std::vector<float> a;
  low_rank_factorize(x.data(), N, W, L.rank, a, L.b);
  L.a.resize(a.size());
  for (size_t i = 0; i < a.size(); ++i) L.a[i] = f32_to_fp16(a[i]);
}

void ShadowKvReadFilter::select_chunks(const Layer& L, int32_t g, const float* q, int32_t n_tok, int32_t n_head,
                                       int32_t d) {
  const Head& h = L.heads[static_cast<size_t>(g)];
  const auto n_chunks = static_cast<int32_t>(h.exact_index.size());
  const auto H = static_cast<int32_t>(L.heads.size());
  const int32_t group = n_head / H, n_pick = o_.budget / o_.chunk;
  mark_.assign(static_cast<size_t>(n_chunks), 0);
  for (int32_t c = 0; c < n_chunks; ++c) mark_[static_cast<size_t>(c)] = h.exact_index[static_cast<size_t>(c)] >= 0;
  probs_.resize(static_cast<size_t>(n_chunks));
  for (int32_t t = 0; t < n_tok; ++t) {
    best_.assign(static_cast<size_t>(n_chunks), 0.0f);
    for (int32_t j = 0; j < group; ++j) {
      const float* qh = q + (static_cast<int64_t>(t) * n_head + static_cast<int64_t>(g) * group + j) * d;
      shadowkv_landmark_scores(qh, h.landmarks.data(), n_chunks, d, L.scale, probs_.data());
      shadowkv_softmax(probs_.data(), n_chunks);
      for (int32_t c = 0; c < n_chunks; ++c)
        best_[static_cast<size_t>(c)] = std::max(best_[static_cast<size_t>(c)], probs_[static_cast<size_t>(c)]);
    }
    chosen_.clear();
    for (int32_t c = 0; c < n_chunks; ++c)
      if (h.exact_index[static_cast<size_t>(c)] < 0) chosen_.push_back(c);
    auto higher = [&](int32_t x, int32_t y) {
      const float sx = best_[static_cast<size_t>(x)], sy = best_[static_cast<size_t>(y)];
      return sx > sy || (sx == sy && x < y);
    };
    const size_t k = std::min(chosen_.size(), static_cast<size_t>(n_pick));
    std::nth_element(chosen_.begin(), chosen_.begin() + static_cast<std::ptrdiff_t>(k), chosen_.end(), higher);
    for (size_t i = 0; i < k; ++i) mark_[static_cast<size_t>(chosen_[i])] = 1;
  }
  chosen_.clear();
  for (int32_t c = 0; c < n_chunks; ++c)
    if (mark_[static_cast<size_t>(c)]) chosen_.push_back(c);
}

void ShadowKvReadFilter::narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok,
                                KvLayerView& view) {
  (void)q_pos;  // every shadowed token is older than the chunk's queries
  const Layer* Lp = this->layer(layer);
  if (Lp == nullptr) return;
  const Layer& L = *Lp;
  const auto H = static_cast<int32_t>(view.heads.size());
  const int32_t d = view.head_dim, T = view.page_tokens, C = o_.chunk, W = H * d, r = L.rank;
  if (H != static_cast<int32_t>(L.heads.size()) || view.n_head <= 0 || view.n_head % H != 0)
    fail("internal: shadowkv holds {} kv-heads, the view {} of {} query heads", L.heads.size(), H, view.n_head);
  const RopeTable& rt = rope_tables_.at(L.rope_base);
  const size_t half = static_cast<size_t>(L.n_rot / 2);
  const size_t page_floats = kv_page_bytes(KvFormat::F32, T, d) / sizeof(float);
  pages_.resize(static_cast<size_t>(H));
  positions_.resize(static_cast<size_t>(H));
  chosen_by_head_.resize(static_cast<size_t>(H));
  // Which chunks each head reads (cheap, in order), then their rows rebuilt on the host pool: row i of head g is
  // token chosen[i / C] * C + i % C, at page i / T, row i % T of g's rebuilt pages; a plain page holds its keys
  // channel-major (d rows of T) and then its values token-major (kv/page_codec's layout).
  for (int32_t g = 0; g < H; ++g) {
    const KvHeadView& hv = view.heads[static_cast<size_t>(g)];
    if (hv.n_tokens > 0 && hv.positions[0] < L.n_shadow)
      fail("internal: the store holds position {} that shadowkv holds too", hv.positions[0]);
    select_chunks(L, g, q, n_tok, view.n_head, d);
    chosen_by_head_[static_cast<size_t>(g)] = chosen_;
    const auto n_rows = static_cast<int32_t>(chosen_.size()) * C;
    pages_[static_cast<size_t>(g)].resize(static_cast<size_t>((n_rows + T - 1) / T) * page_floats);
  }
  // An item a rebuilt page (its rows are its own: no two threads write one page).
  std::vector<std::pair<int32_t, int32_t>> items;  // (head, first row)
  for (int32_t g = 0; g < H; ++g)
    for (int32_t i = 0; i < static_cast<int32_t>(chosen_by_head_[static_cast<size_t>(g)].size()) * C; i += T)
      items.emplace_back(g, i);
  auto rebuild = [&](int64_t item) {
    const auto [g, i0] = items[static_cast<size_t>(item)];
    const Head& h = L.heads[static_cast<size_t>(g)];
    const std::vector<int32_t>& chosen = chosen_by_head_[static_cast<size_t>(g)];
    const int32_t i1 = std::min(static_cast<int32_t>(chosen.size()) * C, i0 + T);
    float* buf = pages_[static_cast<size_t>(g)].data();
    const float* bg = L.b.data() + static_cast<size_t>(g) * d;
    std::vector<float> k(static_cast<size_t>(d)), a_row(static_cast<size_t>(r));
    for (int32_t i = i0; i < i1; ++i) {
      const int32_t c = chosen[static_cast<size_t>(i / C)], t = c * C + i % C;
      const int32_t e = h.exact_index[static_cast<size_t>(c)];
      float* page = buf + static_cast<size_t>(i / T) * page_floats;
      float* v = page + static_cast<size_t>(T) * d + static_cast<size_t>(i % T) * d;
      if (e >= 0) {
        const size_t at = (static_cast<size_t>(e) * C + static_cast<size_t>(i % C)) * d;
        shadowkv_f16_to_f32(h.exact_keys.data() + at, d, k.data());
        shadowkv_f16_to_f32(h.exact_values.data() + at, d, v);
      } else {
        shadowkv_f16_to_f32(L.a.data() + static_cast<size_t>(t) * r, r, a_row.data());
        shadowkv_rebuild_key(a_row.data(), r, bg, W, d, k.data());
        rope_rotate(k.data(), 1, d, L.n_rot, rt.cos.data() + t * half, rt.sin.data() + t * half, L.rope_order);
        shadowkv_f16_to_f32(h.values.data() + static_cast<size_t>(t) * d, d, v);
      }
      for (int32_t j = 0; j < d; ++j) page[static_cast<size_t>(j) * T + i % T] = k[static_cast<size_t>(j)];
    }
  };
  if (host_pool() != nullptr) {
    host_pool()->run(static_cast<int64_t>(items.size()), rebuild);
  } else {
    for (size_t item = 0; item < items.size(); ++item) rebuild(static_cast<int64_t>(item));
  }
  // The rebuilt pages, then the store's.
  for (int32_t g = 0; g < H; ++g) {
    KvHeadView& hv = view.heads[static_cast<size_t>(g)];
    const Head& h = L.heads[static_cast<size_t>(g)];
    const std::vector<int32_t>& chosen = chosen_by_head_[static_cast<size_t>(g)];
    const auto n_rows = static_cast<int32_t>(chosen.size()) * C;
    const int32_t n_pages = (n_rows + T - 1) / T;
    std::vector<int32_t>& positions = positions_[static_cast<size_t>(g)];
    positions.clear();
    for (int32_t c : chosen)
      for (int32_t t = c * C; t < (c + 1) * C; ++t) positions.push_back(t);
    const std::vector<float>& buf = pages_[static_cast<size_t>(g)];
    KvHeadView merged;
    for (int32_t p = 0; p < n_pages; ++p) {
      merged.pages.push_back(reinterpret_cast<const uint8_t*>(buf.data() + static_cast<size_t>(p) * page_floats));
      merged.formats.push_back(KvFormat::F32);
      merged.slot0.push_back(p * T);
    }
    if (hv.n_tokens > 0) positions.insert(positions.end(), hv.positions, hv.positions + hv.n_tokens);
    for (int32_t p = 0; p < hv.n_pages(); ++p) {
      merged.pages.push_back(hv.pages[static_cast<size_t>(p)]);
      merged.formats.push_back(hv.formats[static_cast<size_t>(p)]);
      merged.slot0.push_back(n_rows + hv.slot0[static_cast<size_t>(p)]);
    }
    merged.n_tokens = n_rows + hv.n_tokens;
    merged.slot0.push_back(merged.n_tokens);
    merged.positions = positions.data();
    rows_read_ += merged.n_tokens;
    rows_held_ += L.n_shadow + hv.n_tokens;
    const int64_t n_exact_rows = static_cast<int64_t>(h.exact_keys.size()) / d;
    bytes_read_ += 2 * (static_cast<int64_t>(h.landmarks.size()) + (n_rows - n_exact_rows) * (r + d) + n_exact_rows * 2 * d);
    hv = std::move(merged);
  }
}

KvComponent kv_component_shadowkv() {
  const ShadowKvOptions def;
  return {"shadowkv",
          KvComponentKind::ReadPolicy,
          "ShadowKV (\"ShadowKV: KV Cache in Shadows for High-Throughput Long-Context LLM Inference\"): the prompt's "
          "keys kept as a low-rank factorization before RoPE and its values in a cold tier; each decode step rebuilds "
          "the chunks whose landmarks draw the most attention",
          {{"budget", std::to_string(def.budget), "tokens rebuilt per (layer, kv-head) each decode step, in chunks"},
           {"chunk", std::to_string(def.chunk), "tokens per chunk (one landmark each)"},
           {"rank", std::to_string(def.rank), "rank of each layer's key factorization; 0: 160/1024 of the layer's key "
            "width (kv-heads x head dim) as in the paper, at least 64 and half a head's dim"},
           {"outliers", std::to_string(def.outliers), "chunks per (layer, kv-head) kept exact besides the first"},
           {"recent", std::to_string(def.recent), "the prompt's last tokens that stay in the store"}},
          [](const SpecArgs& args, KvPolicyDraft& d) {
            ShadowKvOptions o;
            o.budget = args.get_int("budget", o.budget, 1, 1 << 30);
            o.chunk = args.get_int("chunk", o.chunk, 1, 1024);
            o.rank = args.get_int("rank", o.rank, 0, 1 << 16);
            o.outliers = args.get_int("outliers", o.outliers, 0, 1 << 20);
            o.recent = args.get_int("recent", o.recent, 0, 1 << 30);
            if (d.ranker != nullptr)
              fail("shadowkv keeps every token and factorizes each layer's keys over all its kv-heads; it does not "
                   "compose with a token policy ({})",
                   d.ranker->describe());
            if (kv_format_is_packed(d.sealed))
              fail("shadowkv keeps its exact chunks and the store's tokens at f16; it does not compose with {}",
                   d.format);
            d.read_filter = std::make_unique<ShadowKvReadFilter>(o);
            d.read = "shadowkv(budget=" + std::to_string(o.budget) + ", chunk=" + std::to_string(o.chunk) +
                     ", rank=" + (o.rank == 0 ? std::string("auto") : std::to_string(o.rank)) +
                     ", outliers=" + std::to_string(o.outliers) + ", recent=" + std::to_string(o.recent) + ")";
          }};
}

}  // namespace longctx::kv
