#include "backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/kv_page_codec.h"

namespace longctx::cpu {
namespace {

// Query tokens per tile: with GQA the tile holds kQueryBlock * group query rows against one page of keys,
// so each key row converted from the page format is reused by all of them.
constexpr int32_t kQueryBlock = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Eight independent partial sums, so the compiler vectorizes without reassociating a single f32 chain.
float dot(const float* a, const float* b, int32_t n) {
  float acc[8] = {};
  int32_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int32_t k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

bool key_visible(int32_t k_pos, int32_t q_pos, int32_t window) {
  return k_pos <= q_pos && (window <= 0 || k_pos > q_pos - window);
}

}  // namespace

void attention(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
               const KvLayerView& kv, float* out) {
  const int32_t d = p.head_dim;
  const int32_t group = p.n_head / p.n_head_kv;
  const int32_t pt = kv.page_tokens;
  const int32_t n_qblocks = (n_tok + kQueryBlock - 1) / kQueryBlock;
  const int32_t rows_max = kQueryBlock * group;
  int32_t n_pages_max = 0;
  for (const auto& h : kv.heads) n_pages_max = std::max(n_pages_max, (h.n_tokens + pt - 1) / pt);

  // Split the pages across threads only when heads and query blocks alone cannot keep every thread busy.
  int32_t n_split = 1;
  if (p.n_head_kv * n_qblocks < pool.n_threads()) n_split = std::max(1, std::min(pool.n_threads(), n_pages_max));
  const int64_t n_items = static_cast<int64_t>(p.n_head_kv) * n_qblocks * n_split;

  // Partial softmax states of split work items: O (n_items, rows_max, d), m and l (n_items, rows_max).
  std::vector<float> part_o, part_m, part_l;
  if (n_split > 1) {
    part_o.resize(static_cast<size_t>(n_items) * rows_max * d);
    part_m.resize(static_cast<size_t>(n_items) * rows_max);
    part_l.resize(static_cast<size_t>(n_items) * rows_max);
  }

  pool.run(n_items, [&](int64_t item) {
    const int32_t s = static_cast<int32_t>(item % n_split);
    const int32_t qb = static_cast<int32_t>((item / n_split) % n_qblocks);
    const int32_t g = static_cast<int32_t>(item / (static_cast<int64_t>(n_split) * n_qblocks));
    const int32_t t0 = qb * kQueryBlock;
    const int32_t nt = std::min(kQueryBlock, n_tok - t0);
    const int32_t rows = nt * group;  // row r is query token t0 + r / group, head g * group + r % group

    thread_local std::vector<float> scratch;
    const size_t need = static_cast<size_t>(rows_max) * d * 2 + static_cast<size_t>(rows_max) * (2 + pt) +
                        static_cast<size_t>(pt) * d * 2;
    if (scratch.size() < need) scratch.resize(need);
    float* Q = scratch.data();                      // (rows, d), pre-scaled
    float* O = Q + static_cast<size_t>(rows_max) * d;  // (rows, d)
    float* m = O + static_cast<size_t>(rows_max) * d;  // (rows) running max
    float* l = m + rows_max;                        // (rows) running sum
    float* S = l + rows_max;                        // (rows, pt) scores of the current page
    float* K = S + static_cast<size_t>(rows_max) * pt;  // (pt, d)
    float* V = K + static_cast<size_t>(pt) * d;         // (pt, d)

    int32_t q_min = std::numeric_limits<int32_t>::max(), q_max = std::numeric_limits<int32_t>::min();
    for (int32_t t = 0; t < nt; ++t) {
      q_min = std::min(q_min, q_pos[t0 + t]);
      q_max = std::max(q_max, q_pos[t0 + t]);
    }
    for (int32_t r = 0; r < rows; ++r) {
      const float* src = q + (static_cast<size_t>(t0 + r / group) * p.n_head + g * group + r % group) * d;
      for (int32_t i = 0; i < d; ++i) Q[static_cast<size_t>(r) * d + i] = src[i] * p.scale;
      m[r] = kNegInf;
      l[r] = 0.0f;
    }
    std::fill(O, O + static_cast<size_t>(rows) * d, 0.0f);

    const KvHeadView& hv = kv.heads[static_cast<size_t>(g)];
    const int32_t n_pages = (hv.n_tokens + pt - 1) / pt;
    const int32_t page_begin = static_cast<int32_t>(static_cast<int64_t>(n_pages) * s / n_split);
    const int32_t page_end = static_cast<int32_t>(static_cast<int64_t>(n_pages) * (s + 1) / n_split);
    for (int32_t pi = page_begin; pi < page_end; ++pi) {
      const int32_t slot0 = pi * pt;
      const int32_t nv = std::min(pt, hv.n_tokens - slot0);
      const int32_t* kp = hv.positions + slot0;
      const auto [pmin_it, pmax_it] = std::minmax_element(kp, kp + nv);
      // Skip a page no query of this tile can see: all in the future, or all behind every window.
      if (*pmin_it > q_max) continue;
      if (p.window > 0 && *pmax_it <= q_min - p.window) continue;
      const KvFormat fmt = hv.formats[static_cast<size_t>(pi)];
      kv_page_read_keys(fmt, pt, d, hv.pages[static_cast<size_t>(pi)], 0, nv, K);
      kv_page_read_values(fmt, pt, d, hv.pages[static_cast<size_t>(pi)], 0, nv, V);

      for (int32_t r = 0; r < rows; ++r) {
        const int32_t qp = q_pos[t0 + r / group];
        float* Sr = S + static_cast<size_t>(r) * pt;
        float row_max = kNegInf;
        for (int32_t j = 0; j < nv; ++j) {
          Sr[j] = key_visible(kp[j], qp, p.window) ? dot(Q + static_cast<size_t>(r) * d, K + static_cast<size_t>(j) * d, d)
                                                   : kNegInf;
          row_max = std::max(row_max, Sr[j]);
        }
        if (row_max == kNegInf) continue;
        // Online softmax: rescale what has been accumulated to the new running max.
        const float m_new = std::max(m[r], row_max);
        const float corr = std::exp(m[r] - m_new);  // exp(-inf) = 0 on the first visible page
        float* Or = O + static_cast<size_t>(r) * d;
        l[r] *= corr;
        for (int32_t i = 0; i < d; ++i) Or[i] *= corr;
        for (int32_t j = 0; j < nv; ++j) {
          if (Sr[j] == kNegInf) continue;
          const float pj = std::exp(Sr[j] - m_new);
          l[r] += pj;
          const float* Vj = V + static_cast<size_t>(j) * d;
          for (int32_t i = 0; i < d; ++i) Or[i] += pj * Vj[i];
        }
        m[r] = m_new;
      }
    }

    if (n_split == 1) {
      for (int32_t r = 0; r < rows; ++r) {
        float* dst = out + (static_cast<size_t>(t0 + r / group) * p.n_head + g * group + r % group) * d;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        for (int32_t i = 0; i < d; ++i) dst[i] = O[static_cast<size_t>(r) * d + i] * inv;
      }
    } else {
      std::memcpy(part_o.data() + static_cast<size_t>(item) * rows_max * d, O, static_cast<size_t>(rows) * d * sizeof(float));
      std::memcpy(part_m.data() + static_cast<size_t>(item) * rows_max, m, static_cast<size_t>(rows) * sizeof(float));
      std::memcpy(part_l.data() + static_cast<size_t>(item) * rows_max, l, static_cast<size_t>(rows) * sizeof(float));
    }
  });

  if (n_split == 1) return;
  // Merge the split states: O = sum_s O_s * exp(m_s - M) / sum_s l_s * exp(m_s - M).
  for (int32_t g = 0; g < p.n_head_kv; ++g) {
    for (int32_t qb = 0; qb < n_qblocks; ++qb) {
      const int32_t t0 = qb * kQueryBlock;
      const int32_t rows = std::min(kQueryBlock, n_tok - t0) * group;
      const int64_t item0 = (static_cast<int64_t>(g) * n_qblocks + qb) * n_split;
      for (int32_t r = 0; r < rows; ++r) {
        float M = kNegInf;
        for (int32_t s = 0; s < n_split; ++s) M = std::max(M, part_m[static_cast<size_t>(item0 + s) * rows_max + r]);
        float* dst = out + (static_cast<size_t>(t0 + r / group) * p.n_head + g * group + r % group) * d;
        std::fill(dst, dst + d, 0.0f);
        if (M == kNegInf) continue;
        float L = 0.0f;
        for (int32_t s = 0; s < n_split; ++s) {
          const size_t idx = static_cast<size_t>(item0 + s) * rows_max + r;
          if (part_m[idx] == kNegInf) continue;
          const float w = std::exp(part_m[idx] - M);
          L += part_l[idx] * w;
          const float* Os = part_o.data() + idx * d;
          for (int32_t i = 0; i < d; ++i) dst[i] += Os[i] * w;
        }
        for (int32_t i = 0; i < d; ++i) dst[i] /= L;
      }
    }
  }
}

void attention_scores(ThreadPool& pool, const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                      int32_t first_row, const KvLayerView& kv, float* scores, int32_t n_slots_stride) {
  const int32_t d = p.head_dim;
  const int32_t group = p.n_head / p.n_head_kv;
  const int32_t pt = kv.page_tokens;
  if (first_row >= n_tok) return;
  // One private row of scores per query head, so heads of a group run in parallel; summed per group at the end.
  std::vector<float> per_head(static_cast<size_t>(p.n_head) * n_slots_stride, 0.0f);
  pool.run(p.n_head, [&](int64_t hi) {
    const int32_t h = static_cast<int32_t>(hi);
    const KvHeadView& hv = kv.heads[static_cast<size_t>(h / group)];
    const int32_t n = hv.n_tokens;
    std::vector<float> K(static_cast<size_t>(pt) * d), logits(static_cast<size_t>(n) * (n_tok - first_row));
    float* acc = per_head.data() + static_cast<size_t>(h) * n_slots_stride;
    // Logits of every selected row against every slot, page by page so each page is decoded once.
    for (int32_t pi = 0; pi * pt < n; ++pi) {
      const int32_t nv = std::min(pt, n - pi * pt);
      kv_page_read_keys(hv.formats[static_cast<size_t>(pi)], pt, d, hv.pages[static_cast<size_t>(pi)], 0, nv, K.data());
      for (int32_t t = first_row; t < n_tok; ++t) {
        const float* qr = q + (static_cast<size_t>(t) * p.n_head + h) * d;
        float* lr = logits.data() + static_cast<size_t>(t - first_row) * n;
        for (int32_t j = 0; j < nv; ++j) {
          const int32_t slot = pi * pt + j;
          lr[slot] = key_visible(hv.positions[slot], q_pos[t], p.window)
                         ? dot(qr, K.data() + static_cast<size_t>(j) * d, d) * p.scale
                         : kNegInf;
        }
      }
    }
    for (int32_t t = first_row; t < n_tok; ++t) {
      const float* lr = logits.data() + static_cast<size_t>(t - first_row) * n;
      float mx = kNegInf;
      for (int32_t j = 0; j < n; ++j) mx = std::max(mx, lr[j]);
      if (mx == kNegInf) continue;
      double sum = 0;
      for (int32_t j = 0; j < n; ++j) sum += lr[j] == kNegInf ? 0.0 : std::exp(double(lr[j]) - mx);
      const double inv = 1.0 / sum;
      for (int32_t j = 0; j < n; ++j)
        if (lr[j] != kNegInf) acc[j] += static_cast<float>(std::exp(double(lr[j]) - mx) * inv);
    }
  });
  for (int32_t h = 0; h < p.n_head; ++h) {
    float* dst = scores + static_cast<size_t>(h / group) * n_slots_stride;
    const float* src = per_head.data() + static_cast<size_t>(h) * n_slots_stride;
    for (int32_t j = 0; j < kv.heads[static_cast<size_t>(h / group)].n_tokens; ++j) dst[j] += src[j];
  }
}

void attention_reference(const AttentionParams& p, const float* q, const int32_t* q_pos, int32_t n_tok,
                         const KvLayerView& kv, float* out) {
  const int32_t d = p.head_dim;
  const int32_t group = p.n_head / p.n_head_kv;
  const int32_t pt = kv.page_tokens;
  std::vector<float> krow(static_cast<size_t>(d)), vrow(static_cast<size_t>(d));
  for (int32_t t = 0; t < n_tok; ++t) {
    for (int32_t h = 0; h < p.n_head; ++h) {
      const KvHeadView& hv = kv.heads[static_cast<size_t>(h / group)];
      const float* qr = q + (static_cast<size_t>(t) * p.n_head + h) * d;
      std::vector<double> scores(static_cast<size_t>(hv.n_tokens), -INFINITY);
      double mx = -INFINITY;
      for (int32_t j = 0; j < hv.n_tokens; ++j) {
        if (!key_visible(hv.positions[j], q_pos[t], p.window)) continue;
        kv_page_read_keys(hv.formats[static_cast<size_t>(j / pt)], pt, d, hv.pages[static_cast<size_t>(j / pt)], j % pt, 1,
                          krow.data());
        double sc = 0;
        for (int32_t i = 0; i < d; ++i) sc += static_cast<double>(qr[i]) * krow[static_cast<size_t>(i)];
        scores[static_cast<size_t>(j)] = sc * p.scale;
        mx = std::max(mx, scores[static_cast<size_t>(j)]);
      }
      std::vector<double> acc(static_cast<size_t>(d), 0.0);
      double sum = 0;
      for (int32_t j = 0; j < hv.n_tokens && mx != -INFINITY; ++j) {
        if (scores[static_cast<size_t>(j)] == -INFINITY) continue;
        const double w = std::exp(scores[static_cast<size_t>(j)] - mx);
        sum += w;
        kv_page_read_values(hv.formats[static_cast<size_t>(j / pt)], pt, d, hv.pages[static_cast<size_t>(j / pt)], j % pt, 1,
                            vrow.data());
        for (int32_t i = 0; i < d; ++i) acc[static_cast<size_t>(i)] += w * vrow[static_cast<size_t>(i)];
      }
      float* dst = out + (static_cast<size_t>(t) * p.n_head + h) * d;
      for (int32_t i = 0; i < d; ++i) dst[i] = sum > 0 ? static_cast<float>(acc[static_cast<size_t>(i)] / sum) : 0.0f;
    }
  }
}

}  // namespace longctx::cpu
