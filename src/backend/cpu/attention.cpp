// Grouped-query attention over the paged KV store as tiled online-softmax attention ("FlashAttention: Fast and
// Memory-Efficient Exact Attention with IO-Awareness"), one KV page per tile; for decode the pages are split
// across threads and the partial softmax states merged (the Flash-Decoding split-K scheme). Highway dynamic
// dispatch picks the widest SIMD target the CPU has.
//
// A work item is (kv-head, block of kQueryBlock query tokens, split of the pages). Its rows are every query head
// of the group for every token of the block, so each key and value read from a page serves all of them. Per page:
//   S = Q K^T    broadcast one q element, FMA it into a row of keys: plain pages store keys channel-major
//                (kv_page_codec.h), so a key row of page_tokens lanes is one load, and no horizontal sums occur;
//   softmax      online: running max m and sum l per row, probabilities written over S;
//   O += P V     broadcast one probability, FMA it into a value row (values are token-major).
// Both products keep a register tile of up to kRowTile rows by a few vectors, so each loaded key or value vector
// feeds kRowTile FMAs. F16 pages are read in place (converted in registers); packed pages (KIVI) are decoded to
// f32 once per tile into the same layout and go through the same code.
#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "backend/cpu/kv_page_codec.h"
#include "core/error.h"
#include "core/fp16.h"

// Same targets as matmul.cpp, for the same reasons (compile time; arrays of vectors).
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4 | HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128 | HWY_RVV)
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backend/cpu/attention.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
// foreach_target.h re-includes this file once per target; the code between here and HWY_ONCE is per target.
#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#ifndef LONGCTX_ATTENTION_SHARED
#define LONGCTX_ATTENTION_SHARED
namespace longctx::cpu {
namespace {

// Query tokens per work item: with GQA the item holds kQueryBlock * group query rows against one page of keys.
constexpr int32_t kQueryBlock = 16;
constexpr int32_t kRowTile = 4;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool key_visible(int32_t k_pos, int32_t q_pos, int32_t window) {
  return k_pos <= q_pos && (window <= 0 || k_pos > q_pos - window);
}

}  // namespace
}  // namespace longctx::cpu
#endif

HWY_BEFORE_NAMESPACE();
namespace longctx::cpu {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

// Vectors per register tile row: 4 with 32 registers (kRowTile x 4 accumulators + 4 loads), 2 with 16.
#if HWY_TARGET <= HWY_AVX3
constexpr int kTileVecs = 4;
#else
constexpr int kTileVecs = 2;
#endif

template <class D, typename T>
HWY_INLINE hn::Vec<D> LoadAs(D d, const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return hn::LoadU(d, p);
  } else {
    return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, D>(), p));
  }
}

// S[r, j0 + j] = sum_c Q[r, c] * Kt[c, j0 + j] for r < NR, j < NV lanes-vectors.
// Q: (NR, dim); Kt: (dim, T); S: (NR, lds).
template <int NR, int NV, class D, typename TK>
HWY_INLINE void ScoreTile(D d, const float* HWY_RESTRICT Q, int32_t dim, const TK* HWY_RESTRICT Kt, int32_t T,
                          int32_t j0, float* HWY_RESTRICT S, size_t lds) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(d));
  hn::Vec<D> acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = hn::Zero(d);
  for (int32_t c = 0; c < dim; ++c) {
    hn::Vec<D> k[NV];
    for (int v = 0; v < NV; ++v) k[v] = LoadAs(d, Kt + static_cast<size_t>(c) * T + j0 + v * N);
    for (int r = 0; r < NR; ++r) {
      const auto q = hn::Set(d, Q[static_cast<size_t>(r) * dim + c]);
      for (int v = 0; v < NV; ++v) acc[r][v] = hn::MulAdd(q, k[v], acc[r][v]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) hn::StoreU(acc[r][v], d, S + static_cast<size_t>(r) * lds + j0 + v * N);
}

template <int NR, class D, typename TK>
void ScoreRows(D d, const float* Q, int32_t dim, const TK* Kt, int32_t T, float* S, size_t lds) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(d));
  const int32_t n_vec = T / N;
  int32_t v = 0;
  for (; v + kTileVecs <= n_vec; v += kTileVecs) ScoreTile<NR, kTileVecs>(d, Q, dim, Kt, T, v * N, S, lds);
  for (; v < n_vec; ++v) ScoreTile<NR, 1>(d, Q, dim, Kt, T, v * N, S, lds);
}

// Calls f(std::integral_constant<int, NR>(), r) for consecutive row tiles [r, r + NR) covering [0, R): full tiles
// of kRowTile rows, then one tile of the 1 to 3 rows left.
template <class F>
HWY_INLINE void ForRowTiles(int32_t R, F f) {
  int32_t r = 0;
  for (; r + kRowTile <= R; r += kRowTile) f(std::integral_constant<int, kRowTile>(), r);
  switch (R - r) {
    case 3: f(std::integral_constant<int, 3>(), r); break;
    case 2: f(std::integral_constant<int, 2>(), r); break;
    case 1: f(std::integral_constant<int, 1>(), r); break;
    default: break;
  }
}

// S (R, lds) = Q (R, dim) Kt (dim, T), in the first T columns.
template <class D, typename TK>
void Scores(D d, const float* Q, int32_t R, int32_t dim, const TK* Kt, int32_t T, float* S, size_t lds) {
  ForRowTiles(R, [&](auto nr, int32_t r) {
    ScoreRows<decltype(nr)::value>(d, Q + static_cast<size_t>(r) * dim, dim, Kt, T, S + static_cast<size_t>(r) * lds, lds);
  });
}

// Codes [i0, i0 + lanes) of a packed KIVI row (kv_page_codec.h) as floats. They share one run of the row when
// row_bytes is a multiple of the lane count: then it is one load of a byte per lane and one shift for all.
template <class D>
HWY_INLINE hn::Vec<D> UnpackCodes(D d, const uint8_t* HWY_RESTRICT row, int bits, size_t row_bytes, size_t i0) {
  const hn::Rebind<uint8_t, D> d8;
  const hn::Rebind<int32_t, D> di;
  const auto bytes = hn::PromoteTo(di, hn::LoadU(d8, row + i0 % row_bytes));
  const auto codes = hn::And(hn::ShiftRightSame(bytes, bits * static_cast<int>(i0 / row_bytes)), hn::Set(di, (1 << bits) - 1));
  return hn::ConvertTo(d, codes);
}

// A packed page's keys decoded channel-major into K (dim, T), all T columns (a packed page is sealed full).
template <class D>
void DecodeKeysT(D d, KvFormat fmt, const uint8_t* page, int32_t T, int32_t dim, float* HWY_RESTRICT K) {
  const size_t N = hn::Lanes(d);
  const KiviPageLayout L = kivi_page_layout(fmt, T, dim);
  if (L.k_row_bytes % N != 0) {
    kv_page_read_keys_t(fmt, T, dim, page, T, K);
    return;
  }
  const auto* scale = reinterpret_cast<const uint16_t*>(page + L.k_scale);
  const auto* mn = reinterpret_cast<const uint16_t*>(page + L.k_min);
  for (int32_t c = 0; c < dim; ++c) {
    const auto vs = hn::Set(d, fp16_to_f32(scale[c])), vm = hn::Set(d, fp16_to_f32(mn[c]));
    const uint8_t* row = page + L.k_codes + c * L.k_row_bytes;
    float* out = K + static_cast<size_t>(c) * T;
    for (size_t j = 0; j < static_cast<size_t>(T); j += N)
      hn::StoreU(hn::MulAdd(UnpackCodes(d, row, L.bits, L.k_row_bytes, j), vs, vm), d, out + j);
  }
}

// Rows [0, nv) of a packed page's values decoded into V (nv, dim).
template <class D>
void DecodeValues(D d, KvFormat fmt, const uint8_t* page, int32_t T, int32_t dim, int32_t nv, float* HWY_RESTRICT V) {
  const size_t N = hn::Lanes(d);
  const KiviPageLayout L = kivi_page_layout(fmt, T, dim);
  if (L.v_row_bytes % N != 0 || kKiviValueGroup % N != 0) {
    kv_page_read_values(fmt, T, dim, page, 0, nv, V);
    return;
  }
  const int32_t n_groups = dim / kKiviValueGroup;
  const auto* scale = reinterpret_cast<const uint16_t*>(page + L.v_scale);
  const auto* mn = reinterpret_cast<const uint16_t*>(page + L.v_min);
  for (int32_t t = 0; t < nv; ++t) {
    const uint8_t* row = page + L.v_codes + t * L.v_row_bytes;
    float* out = V + static_cast<size_t>(t) * dim;
    for (int32_t g = 0; g < n_groups; ++g) {
      const auto vs = hn::Set(d, fp16_to_f32(scale[t * n_groups + g]));
      const auto vm = hn::Set(d, fp16_to_f32(mn[t * n_groups + g]));
      for (size_t i = static_cast<size_t>(g) * kKiviValueGroup; i < static_cast<size_t>(g + 1) * kKiviValueGroup; i += N)
        hn::StoreU(hn::MulAdd(UnpackCodes(d, row, L.bits, L.v_row_bytes, i), vs, vm), d, out + i);
    }
  }
}

// Logits of one page's keys: F16 and F32 read in place, packed pages decoded into K (dim, T) first.
template <class D>
void PageScores(D d, KvFormat fmt, const uint8_t* page, const float* Q, int32_t R, int32_t dim, int32_t T, float* K,
                float* S, size_t lds) {
  if (fmt == KvFormat::F16) {
    Scores(d, Q, R, dim, reinterpret_cast<const hwy::float16_t*>(page), T, S, lds);
  } else if (fmt == KvFormat::F32) {
    Scores(d, Q, R, dim, reinterpret_cast<const float*>(page), T, S, lds);
  } else {
    DecodeKeysT(d, fmt, page, T, dim, K);
    Scores(d, Q, R, dim, static_cast<const float*>(K), T, S, lds);
  }
}

// O[r, c0 + c] = O[r, c0 + c] * corr[r] + sum_{j < nv} P[r, j] V[j, c0 + c] for r < NR, c < NV lane-vectors.
// P: (NR, T); V: (nv, dim); O: (NR, dim).
template <int NR, int NV, class D, typename TV>
HWY_INLINE void PvTile(D d, const float* HWY_RESTRICT P, int32_t T, const TV* HWY_RESTRICT V, int32_t dim,
                       int32_t nv, const float* corr, float* HWY_RESTRICT O, int32_t c0) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(d));
  hn::Vec<D> acc[NR][NV];
  for (int r = 0; r < NR; ++r) {
    const auto cr = hn::Set(d, corr[r]);
    for (int v = 0; v < NV; ++v) acc[r][v] = hn::Mul(hn::LoadU(d, O + static_cast<size_t>(r) * dim + c0 + v * N), cr);
  }
  for (int32_t j = 0; j < nv; ++j) {
    hn::Vec<D> x[NV];
    for (int v = 0; v < NV; ++v) x[v] = LoadAs(d, V + static_cast<size_t>(j) * dim + c0 + v * N);
    for (int r = 0; r < NR; ++r) {
      const auto p = hn::Set(d, P[static_cast<size_t>(r) * T + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] = hn::MulAdd(p, x[v], acc[r][v]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) hn::StoreU(acc[r][v], d, O + static_cast<size_t>(r) * dim + c0 + v * N);
}

template <int NR, class D, typename TV>
void PvRows(D d, const float* P, int32_t T, const TV* V, int32_t dim, int32_t nv, const float* corr, float* O) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(d));
  const int32_t n_vec = dim / N;
  int32_t v = 0;
  for (; v + kTileVecs <= n_vec; v += kTileVecs) PvTile<NR, kTileVecs>(d, P, T, V, dim, nv, corr, O, v * N);
  for (; v < n_vec; ++v) PvTile<NR, 1>(d, P, T, V, dim, nv, corr, O, v * N);
}

// O (R, dim) = O * corr + P (R, T) V (nv, dim), over the first nv keys only (rows past nv may hold anything).
template <class D, typename TV>
void AccumulateValues(D d, const float* P, int32_t R, int32_t T, const TV* V, int32_t dim, int32_t nv,
                      const float* corr, float* O) {
  ForRowTiles(R, [&](auto nr, int32_t r) {
    PvRows<decltype(nr)::value>(d, P + static_cast<size_t>(r) * T, T, V, dim, nv, corr + r, O + static_cast<size_t>(r) * dim);
  });
}

// One page of the online softmax for rows [0, R): S (R, T) holds logits, -inf where masked; they become
// probabilities relative to the new running max m, l gains their sum, and corr[r] = exp(m_old - m_new) is the
// factor for what O has accumulated. A row that sees nothing in this page keeps its state (corr 1, P 0).
template <class D>
void SoftmaxPage(D d, float* S, int32_t R, int32_t T, float* m, float* l, float* corr) {
  const int32_t N = static_cast<int32_t>(hn::Lanes(d));
  // exp(x) is 0 in f32 below about -104; clamping there first keeps -inf (masked) out of Exp's integer part.
  const auto lo = hn::Set(d, -200.0f);
  for (int32_t r = 0; r < R; ++r) {
    float* Sr = S + static_cast<size_t>(r) * T;
    auto vmax = hn::Set(d, kNegInf);
    for (int32_t j = 0; j < T; j += N) vmax = hn::Max(vmax, hn::LoadU(d, Sr + j));
    const float row_max = hn::GetLane(hn::MaxOfLanes(d, vmax));
    if (row_max == kNegInf) {
      std::fill(Sr, Sr + T, 0.0f);
      corr[r] = 1.0f;
      continue;
    }
    const float m_new = std::max(m[r], row_max);
    corr[r] = std::exp(m[r] - m_new);  // exp(-inf) = 0 on a row's first visible page
    const auto vm = hn::Set(d, m_new);
    auto vsum = hn::Zero(d);
    for (int32_t j = 0; j < T; j += N) {
      const auto e = hn::Exp(d, hn::Max(hn::Sub(hn::LoadU(d, Sr + j), vm), lo));
      hn::StoreU(e, d, Sr + j);
      vsum = hn::Add(vsum, e);
    }
    l[r] = l[r] * corr[r] + hn::GetLane(hn::SumOfLanes(d, vsum));
    m[r] = m_new;
  }
}

struct Scratch {
  float *Q, *O, *m, *l, *corr, *S, *K, *V;
};

// Where AttendPages leaves each page's probabilities for the scores of a fused pass (attention_with_scores): S's
// rows at the head's slots, probs (R, n_slots), each relative to the row's running max after that page, page_m
// (R, n_pages). Null: not wanted.
struct PageProbs {
  float* probs = nullptr;
  float* page_m = nullptr;
  int32_t n_slots = 0, n_pages = 0;
};

// The pages [page_begin, page_end) of one kv-head against rows [0, R) of a query block; O, m, l accumulate.
template <class D>
void AttendPages(D d, const AttentionParams& p, const KvHeadView& hv, int32_t pt, const int32_t* row_pos, int32_t R,
                 int32_t page_begin, int32_t page_end, const Scratch& w, const PageProbs& keep) {
  const int32_t dim = p.head_dim;
  int32_t q_min = std::numeric_limits<int32_t>::max(), q_max = std::numeric_limits<int32_t>::min();
  for (int32_t r = 0; r < R; ++r) {
    q_min = std::min(q_min, row_pos[r]);
    q_max = std::max(q_max, row_pos[r]);
  }
  for (int32_t pi = page_begin; pi < page_end; ++pi) {
    const int32_t slot0 = hv.slot0[static_cast<size_t>(pi)];
    const int32_t nv = hv.page_rows(pi);
    if (nv == 0) continue;
    const int32_t* kp = hv.positions + slot0;
    const auto [pmin_it, pmax_it] = std::minmax_element(kp, kp + nv);
    const int32_t pmin = *pmin_it, pmax = *pmax_it;
    // Skip a page no row can see: all in the future, or all behind every window.
    if (pmin > q_max) continue;
    if (p.window > 0 && pmax <= q_min - p.window) continue;
    const KvFormat fmt = hv.formats[static_cast<size_t>(pi)];
    const uint8_t* page = hv.pages[static_cast<size_t>(pi)];
    PageScores(d, fmt, page, w.Q, R, dim, pt, w.K, w.S, static_cast<size_t>(pt));
    if (kv_format_is_packed(fmt)) DecodeValues(d, fmt, page, pt, dim, nv, w.V);
    // Mask: slots past the page's fill (whatever they hold), then keys a row may not see, unless all may.
    for (int32_t r = 0; r < R; ++r) std::fill(w.S + static_cast<size_t>(r) * pt + nv, w.S + static_cast<size_t>(r + 1) * pt, kNegInf);
    const bool all_visible = pmax <= q_min && (p.window <= 0 || pmin > q_max - p.window);
    if (!all_visible) {
      for (int32_t r = 0; r < R; ++r) {
        float* Sr = w.S + static_cast<size_t>(r) * pt;
        for (int32_t j = 0; j < nv; ++j)
          if (!key_visible(kp[j], row_pos[r], p.window)) Sr[j] = kNegInf;
      }
    }
    SoftmaxPage(d, w.S, R, pt, w.m, w.l, w.corr);
    if (keep.probs != nullptr)
      for (int32_t r = 0; r < R; ++r) {
        std::copy_n(w.S + static_cast<size_t>(r) * pt, nv, keep.probs + static_cast<size_t>(r) * keep.n_slots + slot0);
        keep.page_m[static_cast<size_t>(r) * keep.n_pages + pi] = w.m[r];
      }
    if (fmt == KvFormat::F16) {
      const auto* V = reinterpret_cast<const hwy::float16_t*>(page) + static_cast<size_t>(pt) * dim;
      AccumulateValues(d, w.S, R, pt, V, dim, nv, w.corr, w.O);
    } else if (fmt == KvFormat::F32) {
      const auto* V = reinterpret_cast<const float*>(page) + static_cast<size_t>(pt) * dim;
      AccumulateValues(d, w.S, R, pt, V, dim, nv, w.corr, w.O);
    } else {
      AccumulateValues(d, w.S, R, pt, static_cast<const float*>(w.V), dim, nv, w.corr, w.O);
    }
  }
}

// scores: null, or (n_head_kv, stride) gaining the probabilities every row paid to each slot (attention_with_scores;
// then n_tok <= kQueryBlock).
template <class D>
void AttentionWith(D d, ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos,
                   int32_t n_tok, const KvLayerView& kv, float* out, float* scores = nullptr, int32_t stride = 0) {
  const int32_t dim = p.head_dim;
  const int32_t group = p.n_head / p.n_head_kv;
  const int32_t pt = kv.page_tokens;
  const int32_t n_qblocks = (n_tok + kQueryBlock - 1) / kQueryBlock;
  const int32_t rows_max = kQueryBlock * group;
  int32_t n_pages_max = 0;
  for (const auto& h : kv.heads) n_pages_max = std::max(n_pages_max, h.n_pages());

  // Split the pages when heads and query blocks alone give too few items for the pool to balance (decode):
  // about four items per thread, each of at least one page.
  int32_t n_split = 1;
  const int64_t n_base = static_cast<int64_t>(p.n_head_kv) * n_qblocks;
  const int64_t n_want = 4 * static_cast<int64_t>(pool.n_threads());
  if (pool.n_threads() > 1 && n_base < n_want)
    n_split = static_cast<int32_t>(std::clamp<int64_t>((n_want + n_base - 1) / n_base, 1, std::max(1, n_pages_max)));
  const int64_t n_items = n_base * n_split;

  // Partial softmax states of split work items: O (n_items, rows_max, dim), m and l (n_items, rows_max); m and l
  // of every item when scores are wanted.
  std::vector<float> part_o, part_m, part_l;
  if (n_split > 1) part_o.resize(static_cast<size_t>(n_items) * rows_max * dim);
  if (n_split > 1 || scores != nullptr) {
    part_m.resize(static_cast<size_t>(n_items) * rows_max);
    part_l.resize(static_cast<size_t>(n_items) * rows_max);
  }
  // The pages' probabilities for the scores, per kv-head (PageProbs); the split items of a head fill disjoint pages.
  int32_t n_slots_max = 0;
  for (const auto& h : kv.heads) n_slots_max = std::max(n_slots_max, h.n_tokens);
  // The probabilities are read only where page_m says a page was visited, so they need no clearing, and stay
  // allocated from layer to layer in the calling thread (workers reach them through `probs`: a thread_local named
  // inside their lambdas would be their own).
  thread_local std::vector<float> probs_buffer;
  float* probs = nullptr;
  std::vector<float> page_m;
  if (scores != nullptr) {
    if (n_qblocks > 1) fail("internal: attention with scores over {} query rows, more than {}", n_tok, kQueryBlock);
    const size_t n_probs = static_cast<size_t>(p.n_head_kv) * rows_max * n_slots_max;
    if (probs_buffer.size() < n_probs) probs_buffer.resize(n_probs);
    probs = probs_buffer.data();
    page_m.assign(static_cast<size_t>(p.n_head_kv) * rows_max * std::max(1, n_pages_max), kNegInf);
  }
  auto page_probs = [&](int32_t g) {
    PageProbs pp;
    if (scores == nullptr) return pp;
    pp.n_slots = n_slots_max;
    pp.n_pages = std::max(1, n_pages_max);
    pp.probs = probs + static_cast<size_t>(g) * rows_max * pp.n_slots;
    pp.page_m = page_m.data() + static_cast<size_t>(g) * rows_max * pp.n_pages;
    return pp;
  };

  pool.run(n_items, [&](int64_t item) {
    const int32_t s = static_cast<int32_t>(item % n_split);
    const int32_t qb = static_cast<int32_t>((item / n_split) % n_qblocks);
    const int32_t g = static_cast<int32_t>(item / (static_cast<int64_t>(n_split) * n_qblocks));
    const int32_t t0 = qb * kQueryBlock;
    const int32_t nt = std::min(kQueryBlock, n_tok - t0);
    const int32_t R = nt * group;  // row r is query token t0 + r / group, head g * group + r % group

    thread_local std::vector<float> buf;
    thread_local std::vector<int32_t> row_pos;
    const size_t rd = static_cast<size_t>(rows_max) * dim, td = static_cast<size_t>(pt) * dim;
    const size_t need = 2 * rd + 3 * static_cast<size_t>(rows_max) + static_cast<size_t>(rows_max) * pt + 2 * td;
    if (buf.size() < need) buf.resize(need);
    if (row_pos.size() < static_cast<size_t>(rows_max)) row_pos.resize(static_cast<size_t>(rows_max));
    Scratch w;
    w.Q = buf.data();                // (R, dim), pre-scaled
    w.O = w.Q + rd;                  // (R, dim)
    w.m = w.O + rd;                  // (R) running max
    w.l = w.m + rows_max;            // (R) running sum
    w.corr = w.l + rows_max;         // (R) rescale factor of the current page
    w.S = w.corr + rows_max;         // (R, pt) logits, then probabilities, of the current page
    w.K = w.S + static_cast<size_t>(rows_max) * pt;  // (dim, pt) keys of a packed page
    w.V = w.K + td;                                  // (pt, dim) values of a packed page

    for (int32_t r = 0; r < R; ++r) {
      const float* src = q + (static_cast<size_t>(t0 + r / group) * p.n_head + g * group + r % group) * dim;
      for (int32_t i = 0; i < dim; ++i) w.Q[static_cast<size_t>(r) * dim + i] = src[i] * p.scale;
      w.m[r] = kNegInf;
      w.l[r] = 0.0f;
      row_pos[static_cast<size_t>(r)] = q_pos[t0 + r / group];
    }
    std::fill(w.O, w.O + static_cast<size_t>(R) * dim, 0.0f);

    const KvHeadView& hv = kv.heads[static_cast<size_t>(g)];
    const int32_t n_pages = hv.n_pages();
    const int32_t page_begin = static_cast<int32_t>(static_cast<int64_t>(n_pages) * s / n_split);
    const int32_t page_end = static_cast<int32_t>(static_cast<int64_t>(n_pages) * (s + 1) / n_split);
    AttendPages(d, p, hv, pt, row_pos.data(), R, page_begin, page_end, w, page_probs(g));

    if (!part_m.empty()) {
      std::memcpy(part_m.data() + static_cast<size_t>(item) * rows_max, w.m, static_cast<size_t>(R) * sizeof(float));
      std::memcpy(part_l.data() + static_cast<size_t>(item) * rows_max, w.l, static_cast<size_t>(R) * sizeof(float));
    }
    if (n_split == 1) {
      for (int32_t r = 0; r < R; ++r) {
        float* dst = out + (static_cast<size_t>(t0 + r / group) * p.n_head + g * group + r % group) * dim;
        const float inv = w.l[r] > 0.0f ? 1.0f / w.l[r] : 0.0f;
        for (int32_t i = 0; i < dim; ++i) dst[i] = w.O[static_cast<size_t>(r) * dim + i] * inv;
      }
    } else {
      std::memcpy(part_o.data() + static_cast<size_t>(item) * rd, w.O, static_cast<size_t>(R) * dim * sizeof(float));
    }
  });

  if (scores != nullptr) {
    // Each row's softmax over all its head's pages: max M and sum L merged from the items' (m, l); a slot's
    // probability is its page's stored value times exp(page max - M) / L. Summed over the rows (the query heads of
    // the kv-head and the block's tokens), as attention_scores sums them.
    const int32_t R = n_tok * group;
    for (int32_t g = 0; g < p.n_head_kv; ++g) {
      const KvHeadView& hv = kv.heads[static_cast<size_t>(g)];
      const PageProbs pp = page_probs(g);
      float* acc = scores + static_cast<size_t>(g) * stride;
      for (int32_t r = 0; r < R; ++r) {
        float M = kNegInf, L = 0.0f;
        for (int32_t s = 0; s < n_split; ++s) M = std::max(M, part_m[static_cast<size_t>(g * n_split + s) * rows_max + r]);
        if (M == kNegInf) continue;  // the row sees nothing: it adds nothing
        for (int32_t s = 0; s < n_split; ++s) {
          const size_t idx = static_cast<size_t>(g * n_split + s) * rows_max + r;
          if (part_m[idx] != kNegInf) L += part_l[idx] * std::exp(part_m[idx] - M);
        }
        const float* pr = pp.probs + static_cast<size_t>(r) * pp.n_slots;
        for (int32_t pi = 0; pi < hv.n_pages(); ++pi) {
          const float pm = pp.page_m[static_cast<size_t>(r) * pp.n_pages + pi];
          if (pm == kNegInf) continue;  // skipped, or the row saw none of it yet: no probability there
          const float f = std::exp(pm - M) / L;
          const int32_t s0 = hv.slot0[static_cast<size_t>(pi)];
          for (int32_t j = 0; j < hv.page_rows(pi); ++j) acc[s0 + j] += pr[s0 + j] * f;
        }
      }
    }
  }
  if (n_split == 1) return;
  // Merge the split states: O = sum_s O_s * exp(m_s - M) / sum_s l_s * exp(m_s - M).
  for (int32_t g = 0; g < p.n_head_kv; ++g) {
    for (int32_t qb = 0; qb < n_qblocks; ++qb) {
      const int32_t t0 = qb * kQueryBlock;
      const int32_t R = std::min(kQueryBlock, n_tok - t0) * group;
      const int64_t item0 = (static_cast<int64_t>(g) * n_qblocks + qb) * n_split;
      for (int32_t r = 0; r < R; ++r) {
        float M = kNegInf;
        for (int32_t s = 0; s < n_split; ++s) M = std::max(M, part_m[static_cast<size_t>(item0 + s) * rows_max + r]);
        float* dst = out + (static_cast<size_t>(t0 + r / group) * p.n_head + g * group + r % group) * dim;
        std::fill(dst, dst + dim, 0.0f);
        if (M == kNegInf) continue;
        float L = 0.0f;
        for (int32_t s = 0; s < n_split; ++s) {
          const size_t idx = static_cast<size_t>(item0 + s) * rows_max + r;
          if (part_m[idx] == kNegInf) continue;
          const float wgt = std::exp(part_m[idx] - M);
          L += part_l[idx] * wgt;
          const float* Os = part_o.data() + static_cast<size_t>(item0 + s) * rows_max * dim + static_cast<size_t>(r) * dim;
          for (int32_t i = 0; i < dim; ++i) dst[i] += Os[i] * wgt;
        }
        for (int32_t i = 0; i < dim; ++i) dst[i] /= L;
      }
    }
  }
}

// attention_scores (attention.h) for one query head h: acc (n_tokens of h's kv-head) gains, for every chunk row
// t >= first_row, the softmax probabilities of the row over the head's visible slots. All the row's logits are
// computed first (page by page, with the attention kernel's tiles), then normalized in two vector passes.
template <class D>
void HeadScores(D d, const AttentionParams& p, int32_t h, const float* q, const int32_t* q_pos, int32_t n_tok,
                int32_t first_row, const KvLayerView& kv, float* acc, bool take_max) {
  const int32_t dim = p.head_dim, group = p.n_head / p.n_head_kv, pt = kv.page_tokens;
  const KvHeadView& hv = kv.heads[static_cast<size_t>(h / group)];
  const int32_t n = hv.n_tokens;
  const int32_t R = n_tok - first_row;
  if (n == 0 || R <= 0) return;
  const int32_t n_pages = hv.n_pages();
  const size_t ld = static_cast<size_t>(n_pages) * pt;  // logits laid out by page: page p's row j at p * pt + j
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>(R) * dim + static_cast<size_t>(R) * ld + static_cast<size_t>(dim) * pt;
  if (buf.size() < need) buf.resize(need);
  float* Q = buf.data();                         // (R, dim), pre-scaled
  float* L = Q + static_cast<size_t>(R) * dim;   // (R, ld) logits, then probabilities
  float* K = L + static_cast<size_t>(R) * ld;    // (dim, pt) keys of a packed page
  for (int32_t r = 0; r < R; ++r) {
    const float* src = q + (static_cast<size_t>(first_row + r) * p.n_head + h) * dim;
    for (int32_t i = 0; i < dim; ++i) Q[static_cast<size_t>(r) * dim + i] = src[i] * p.scale;
  }
  for (int32_t pi = 0; pi < n_pages; ++pi) {
    PageScores(d, hv.formats[static_cast<size_t>(pi)], hv.pages[static_cast<size_t>(pi)], Q, R, dim, pt, K,
               L + static_cast<size_t>(pi) * pt, ld);
  }
  const int32_t N = static_cast<int32_t>(hn::Lanes(d));
  const auto lo = hn::Set(d, -200.0f);  // as in SoftmaxPage: keeps -inf out of Exp
  for (int32_t r = 0; r < R; ++r) {
    float* Lr = L + static_cast<size_t>(r) * ld;
    const int32_t qp = q_pos[first_row + r];
    for (int32_t pi = 0; pi < n_pages; ++pi) {
      float* Lp = Lr + static_cast<size_t>(pi) * pt;
      const int32_t s0 = hv.slot0[static_cast<size_t>(pi)], nv = hv.page_rows(pi);
      for (int32_t j = 0; j < nv; ++j)
        if (!key_visible(hv.positions[s0 + j], qp, p.window)) Lp[j] = kNegInf;
      std::fill(Lp + nv, Lp + pt, kNegInf);  // rows past the page's fill
    }
    auto vmax = hn::Set(d, kNegInf);
    for (size_t j = 0; j < ld; j += static_cast<size_t>(N)) vmax = hn::Max(vmax, hn::LoadU(d, Lr + j));
    const float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
    if (mx == kNegInf) continue;  // the row sees nothing
    const auto vm = hn::Set(d, mx);
    auto vsum = hn::Zero(d);
    for (size_t j = 0; j < ld; j += static_cast<size_t>(N)) {
      const auto e = hn::Exp(d, hn::Max(hn::Sub(hn::LoadU(d, Lr + j), vm), lo));
      hn::StoreU(e, d, Lr + j);
      vsum = hn::Add(vsum, e);
    }
    const float inv = 1.0f / hn::GetLane(hn::SumOfLanes(d, vsum));
    for (int32_t pi = 0; pi < n_pages; ++pi) {
      const float* Lp = Lr + static_cast<size_t>(pi) * pt;
      const int32_t s0 = hv.slot0[static_cast<size_t>(pi)], nv = hv.page_rows(pi);
      if (take_max) {
        for (int32_t j = 0; j < nv; ++j) acc[s0 + j] = std::max(acc[s0 + j], Lp[j] * inv);
      } else {
        for (int32_t j = 0; j < nv; ++j) acc[s0 + j] += Lp[j] * inv;
      }
    }
  }
}

// Vectors of up to 16 lanes where the head size and the page size allow them; one lane otherwise (test shapes).
template <class F>
void WithLanes(const AttentionParams& p, const KvLayerView& kv, const F& f) {
  const hn::CappedTag<float, 16> d16;
  const int32_t N = static_cast<int32_t>(hn::Lanes(d16));
  if (p.head_dim % N == 0 && kv.page_tokens % N == 0) {
    f(d16);
  } else {
    f(hn::CappedTag<float, 1>());
  }
}

}  // namespace

void AttentionImpl(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                   const KvLayerView& kv, float* out) {
  WithLanes(p, kv, [&](auto d) { AttentionWith(d, pool, p, q, q_pos, n_tok, kv, out); });
}

void AttentionWithScoresImpl(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos,
                             int32_t n_tok, const KvLayerView& kv, float* out, float* scores, int32_t stride) {
  WithLanes(p, kv, [&](auto d) { AttentionWith(d, pool, p, q, q_pos, n_tok, kv, out, scores, stride); });
}

void AttentionScoresImpl(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos,
                         int32_t n_tok, int32_t first_row, const KvLayerView& kv, float* scores,
                         int32_t n_slots_stride, ScoreReduce reduce) {
  if (first_row >= n_tok) return;
  const bool take_max = reduce == ScoreReduce::Max;
  const int32_t group = p.n_head / p.n_head_kv;
  // One private row of scores per query head, so heads of a group run in parallel; summed per group at the end.
  // Rows as long as the longest head (a decode step's caller sizes its stride for the whole context).
  int32_t stride = 0;
  for (const KvHeadView& hv : kv.heads) stride = std::max(stride, hv.n_tokens);
  thread_local std::vector<float> per_head_buffer;  // the caller's: workers see it through `per_head`
  per_head_buffer.assign(static_cast<size_t>(p.n_head) * stride, 0.0f);
  float* per_head = per_head_buffer.data();
  WithLanes(p, kv, [&](auto d) {
    pool.run(p.n_head, [&](int64_t h) {
      HeadScores(d, p, static_cast<int32_t>(h), q, q_pos, n_tok, first_row, kv,
                 per_head + static_cast<size_t>(h) * stride, take_max);
    });
  });
  for (int32_t h = 0; h < p.n_head; ++h) {
    float* dst = scores + static_cast<size_t>(h / group) * n_slots_stride;
    const float* src = per_head + static_cast<size_t>(h) * stride;
    const int32_t n = kv.heads[static_cast<size_t>(h / group)].n_tokens;
    if (take_max) {
      for (int32_t j = 0; j < n; ++j) dst[j] = std::max(dst[j], src[j]);
    } else {
      for (int32_t j = 0; j < n; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace longctx::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace longctx::cpu {

HWY_EXPORT(AttentionImpl);
HWY_EXPORT(AttentionScoresImpl);
HWY_EXPORT(AttentionWithScoresImpl);

void attention(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
               const KvLayerView& kv, float* out) {
  HWY_DYNAMIC_DISPATCH(AttentionImpl)(pool, p, q, q_pos, n_tok, kv, out);
}

void attention_with_scores(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos,
                           int32_t n_tok, const KvLayerView& kv, float* out, float* scores, int32_t n_slots_stride) {
  if (n_tok > kQueryBlock) {
    attention(pool, p, q, q_pos, n_tok, kv, out);
    attention_scores(pool, p, q, q_pos, n_tok, 0, kv, scores, n_slots_stride, ScoreReduce::Sum);
    return;
  }
  HWY_DYNAMIC_DISPATCH(AttentionWithScoresImpl)(pool, p, q, q_pos, n_tok, kv, out, scores, n_slots_stride);
}

void attention_scores(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                      int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride,
                      ScoreReduce reduce) {
  HWY_DYNAMIC_DISPATCH(AttentionScoresImpl)(pool, p, q, q_pos, n_tok, first_row, kv, scores, n_slots_stride, reduce);
}


namespace {

// The plain references' shared first step: one query row's logits against every slot of a head, in double
// (scaled; -inf where the key is not visible), and their maximum (-inf when the row sees nothing).
std::vector<double> reference_logits(const AttentionParams& p, const float* qr, int32_t q_pos, const KvHeadView& hv,
                                     int32_t pt, double* max_logit) {
  const int32_t d = p.head_dim;
  std::vector<float> krow(static_cast<size_t>(d));
  std::vector<double> logit(static_cast<size_t>(hv.n_tokens), -INFINITY);
  double mx = -INFINITY;
  for (int32_t j = 0; j < hv.n_tokens; ++j) {
    if (!key_visible(hv.positions[j], q_pos, p.window)) continue;
    const int32_t pi = hv.page_of(j);
    kv_page_read_keys(hv.formats[static_cast<size_t>(pi)], pt, d, hv.pages[static_cast<size_t>(pi)],
                      j - hv.slot0[static_cast<size_t>(pi)], 1, krow.data());
    double sc = 0;
    for (int32_t i = 0; i < d; ++i) sc += static_cast<double>(qr[i]) * krow[static_cast<size_t>(i)];
    logit[static_cast<size_t>(j)] = sc * p.scale;
    mx = std::max(mx, logit[static_cast<size_t>(j)]);
  }
  *max_logit = mx;
  return logit;
}

}  // namespace

void attention_scores_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                                int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride,
                                ScoreReduce reduce) {
  const int32_t d = p.head_dim;
  const int32_t group = p.n_head / p.n_head_kv;
  for (int32_t h = 0; h < p.n_head; ++h) {
    const KvHeadView& hv = kv.heads[static_cast<size_t>(h / group)];
    float* acc = scores + static_cast<size_t>(h / group) * n_slots_stride;
    for (int32_t t = first_row; t < n_tok; ++t) {
      double mx;
      const std::vector<double> logit =
          reference_logits(p, q + (static_cast<size_t>(t) * p.n_head + h) * d, q_pos[t], hv, kv.page_tokens, &mx);
      if (mx == -INFINITY) continue;
      double sum = 0;
      for (double l : logit) sum += std::exp(l - mx);
      for (int32_t j = 0; j < hv.n_tokens; ++j) {
        const float prob = static_cast<float>(std::exp(logit[static_cast<size_t>(j)] - mx) / sum);
        acc[j] = reduce == ScoreReduce::Max ? std::max(acc[j], prob) : acc[j] + prob;
      }
    }
  }
}

void attention_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                         const KvLayerView& kv, float* out) {
  const int32_t d = p.head_dim;
  const int32_t group = p.n_head / p.n_head_kv;
  const int32_t pt = kv.page_tokens;
  std::vector<float> vrow(static_cast<size_t>(d));
  for (int32_t t = 0; t < n_tok; ++t) {
    for (int32_t h = 0; h < p.n_head; ++h) {
      const KvHeadView& hv = kv.heads[static_cast<size_t>(h / group)];
      double mx;
      const std::vector<double> scores =
          reference_logits(p, q + (static_cast<size_t>(t) * p.n_head + h) * d, q_pos[t], hv, pt, &mx);
      std::vector<double> acc(static_cast<size_t>(d), 0.0);
      double sum = 0;
      for (int32_t j = 0; j < hv.n_tokens && mx != -INFINITY; ++j) {
        if (scores[static_cast<size_t>(j)] == -INFINITY) continue;
        const double w = std::exp(scores[static_cast<size_t>(j)] - mx);
        sum += w;
        const int32_t pi = hv.page_of(j);
        kv_page_read_values(hv.formats[static_cast<size_t>(pi)], pt, d, hv.pages[static_cast<size_t>(pi)],
                            j - hv.slot0[static_cast<size_t>(pi)], 1, vrow.data());
        for (int32_t i = 0; i < d; ++i) acc[static_cast<size_t>(i)] += w * vrow[static_cast<size_t>(i)];
      }
      float* dst = out + (static_cast<size_t>(t) * p.n_head + h) * d;
      for (int32_t i = 0; i < d; ++i) dst[i] = sum > 0 ? static_cast<float>(acc[static_cast<size_t>(i)] / sum) : 0.0f;
    }
  }
}

}  // namespace longctx::cpu
#endif  // HWY_ONCE
