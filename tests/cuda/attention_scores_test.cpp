// CUDA attention scores (SnapKV's observation-window vote, H2O's accumulation) against a double-precision reference
// of cpu::attention_scores_reference's rule, on fresh random inputs: paged views with scattered page ids, per-head
// token counts, gapped positions, causal masking, sliding windows, GQA groups, plain and KIVI pages (the full pages
// packed by the CPU codec's rule, kivi_test_pages.h). The scores buffer starts with random values (the call adds to
// it, and must leave slots past each head's count alone) and the workspace is poisoned with NaN. Exit code 77 with no
// GPU.
//
// Tolerance: the kernel computes in f32 (logits of |q||k| up to ~1e3, exp in f32), so each slot's added score must be
// within 2e-6 + 1e-3 relative of the reference, and every (row, query head) that sees a slot adds exactly 1 in total
// (checked to 1e-4 relative per kv-head).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "core/fp16.h"
#include "kivi_test_pages.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;
using namespace longctx::cuda_test;

struct Case {
  const char* name;
  int32_t n_head, n_head_kv, head_dim, page_tokens;
  std::vector<std::vector<int32_t>> n_tokens;  // (n_seq, n_head_kv)
  int32_t window;
  bool gaps;
  int32_t n_q;  // query rows per sequence: the last n_q positions (SnapKV's window), or 1 (an H2O step)
};

void run_case(const Case& c, lc::KvDtype dt, lc::KvPacking packing, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_seq = static_cast<int32_t>(c.n_tokens.size()), d = c.head_dim, pt = c.page_tokens, hkv = c.n_head_kv;
  const int32_t group = c.n_head / hkv;
  const bool kivi = packing != lc::KvPacking::None;
  int32_t max_tokens = 1, max_pages = 1, total_pages = 0;
  for (const auto& s : c.n_tokens)
    for (int32_t n : s) {
      max_tokens = std::max(max_tokens, n);
      max_pages = std::max(max_pages, (n + pt - 1) / pt);
      total_pages += (n + pt - 1) / pt;
    }
  const int32_t stride = max_tokens + 3;
  std::vector<int32_t> ids(static_cast<size_t>(std::max(1, total_pages)));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);

  lc::PagedKvView kv;
  kv.n_seq = n_seq;
  kv.n_head_kv = hkv;
  kv.head_dim = d;
  kv.page_tokens = pt;
  kv.max_pages = max_pages;
  kv.max_tokens = max_tokens;
  kv.dtype = dt;
  kv.packing = packing;
  const size_t page_elems = 2 * static_cast<size_t>(pt) * d, packed_bytes = kv.packed_page_bytes();
  std::vector<uint16_t> pool(ids.size() * page_elems, 0xffffu);
  std::vector<uint8_t> packed_pool(kivi ? ids.size() * packed_bytes : 0, 0xff);
  std::vector<uint8_t> flags(static_cast<size_t>(n_seq) * hkv * max_pages, 0);
  std::vector<int32_t> table(flags.size(), -1), positions(static_cast<size_t>(n_seq) * hkv * max_tokens, 0);
  std::vector<int32_t> n_tok(static_cast<size_t>(n_seq) * hkv), q_pos(static_cast<size_t>(n_seq) * c.n_q);
  std::vector<float> keys(static_cast<size_t>(n_seq) * hkv * max_tokens * d, 0.0f);  // the values the device sees
  std::vector<float> chan_offset(static_cast<size_t>(d)), chan_spread(static_cast<size_t>(d));
  for (int32_t i = 0; i < d; ++i) {
    chan_offset[static_cast<size_t>(i)] = (i % 17 == 3) ? 6.0f * nd(rng) : 0.5f * nd(rng);
    chan_spread[static_cast<size_t>(i)] = 0.25f + 0.75f * static_cast<float>(rng() % 1000) / 1000.0f;
  }
  std::vector<float> kd(static_cast<size_t>(pt) * d), vd(kd.size());
  int32_t next = 0;
  for (int32_t s = 0; s < n_seq; ++s) {
    int32_t last_pos = 0;
    for (int32_t h = 0; h < hkv; ++h) {
      const size_t sh = static_cast<size_t>(s) * hkv + h;
      const int32_t n = c.n_tokens[static_cast<size_t>(s)][static_cast<size_t>(h)];
      n_tok[sh] = n;
      int32_t p = 0;
      for (int32_t i = 0; i < n; ++i) {
        positions[sh * max_tokens + i] = p;
        p += c.gaps ? 1 + static_cast<int32_t>(rng() % 3) : 1;
      }
      last_pos = std::max(last_pos, p - 1);
      for (int32_t pi = 0; pi < (n + pt - 1) / pt; ++pi) {
        const int32_t id = ids[static_cast<size_t>(next++)];
        table[sh * max_pages + pi] = id;
        const int32_t rows = std::min(pt, n - pi * pt);
        for (size_t e = 0; e < kd.size(); ++e) {
          kd[e] = nd(rng) * 2.0f * chan_spread[e % d] + chan_offset[e % d];
          vd[e] = nd(rng);
        }
        if (kivi && rows == pt) {
          flags[sh * max_pages + pi] = 1;
          CHECK_OK(kivi_test::kivi_test_page(packing, pt, d, kd, vd, packed_pool.data() + id * packed_bytes));
        } else {
          uint16_t* page = pool.data() + static_cast<size_t>(id) * page_elems;
          for (int32_t r = 0; r < rows; ++r)
            for (int32_t i = 0; i < d; ++i) {
              const size_t e = static_cast<size_t>(r) * d + i;
              page[e] = to_bits(kd[e], dt);
              kd[e] = from_bits(page[e], dt);
              page[static_cast<size_t>(pt) * d + e] = to_bits(vd[e], dt);
            }
        }
        for (int32_t r = 0; r < rows; ++r)
          std::copy(kd.begin() + static_cast<ptrdiff_t>(r) * d, kd.begin() + static_cast<ptrdiff_t>(r + 1) * d,
                    keys.begin() + static_cast<ptrdiff_t>((sh * max_tokens + pi * pt + r) * d));
      }
    }
    for (int32_t r = 0; r < c.n_q; ++r)  // the window's rows end at the newest position
      q_pos[static_cast<size_t>(s) * c.n_q + r] = std::max(0, last_pos - (c.n_q - 1 - r));
  }
  std::vector<uint16_t> q_bits(static_cast<size_t>(n_seq) * c.n_q * c.n_head * d);
  for (auto& b : q_bits) b = to_bits(nd(rng), dt);
  std::vector<float> base(static_cast<size_t>(n_seq) * hkv * stride);
  for (auto& x : base) x = static_cast<float>(rng() % 1000) / 1000.0f;

  // Reference: double, one (row, query head) at a time, as cpu::attention_scores_reference.
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<double> add(base.size(), 0.0);
  std::vector<double> want_total(static_cast<size_t>(n_seq) * hkv, 0.0);
  for (int32_t s = 0; s < n_seq; ++s)
    for (int32_t r = 0; r < c.n_q; ++r)
      for (int32_t h = 0; h < c.n_head; ++h) {
        const size_t sh = static_cast<size_t>(s) * hkv + h / group;
        const int32_t qp = q_pos[static_cast<size_t>(s) * c.n_q + r];
        const uint16_t* qb = q_bits.data() + ((static_cast<size_t>(s) * c.n_q + r) * c.n_head + h) * d;
        std::vector<double> logit(static_cast<size_t>(n_tok[sh]), -INFINITY);
        double mx = -INFINITY;
        for (int32_t j = 0; j < n_tok[sh]; ++j) {
          const int32_t kp = positions[sh * max_tokens + j];
          if (!(kp <= qp && (c.window <= 0 || kp > qp - c.window))) continue;
          double dot = 0;
          for (int32_t i = 0; i < d; ++i)
            dot += static_cast<double>(from_bits(qb[i], dt)) * keys[(sh * max_tokens + j) * d + i];
          logit[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, logit[static_cast<size_t>(j)]);
        }
        if (mx == -INFINITY) continue;
        double sum = 0;
        for (double l : logit) sum += std::exp(l - mx);
        for (int32_t j = 0; j < n_tok[sh]; ++j) add[sh * stride + j] += std::exp(logit[static_cast<size_t>(j)] - mx) / sum;
        want_total[sh] += 1.0;
      }

  DevBuf d_pool(pool.size() * 2), d_packed(packed_pool.size()), d_flags(flags.size()), d_table(table.size() * 4),
      d_pos(positions.size() * 4), d_ntok(n_tok.size() * 4), d_qpos(q_pos.size() * 4), d_q(q_bits.size() * 2),
      d_scores(base.size() * 4);
  CHECK_OK(lc::copy_to_device(d_pool.p, pool.data(), d_pool.bytes));
  if (kivi) {
    CHECK_OK(lc::copy_to_device(d_packed.p, packed_pool.data(), d_packed.bytes));
    CHECK_OK(lc::copy_to_device(d_flags.p, flags.data(), d_flags.bytes));
  }
  CHECK_OK(lc::copy_to_device(d_table.p, table.data(), d_table.bytes));
  CHECK_OK(lc::copy_to_device(d_pos.p, positions.data(), d_pos.bytes));
  CHECK_OK(lc::copy_to_device(d_ntok.p, n_tok.data(), d_ntok.bytes));
  CHECK_OK(lc::copy_to_device(d_qpos.p, q_pos.data(), d_qpos.bytes));
  CHECK_OK(lc::copy_to_device(d_q.p, q_bits.data(), d_q.bytes));
  CHECK_OK(lc::copy_to_device(d_scores.p, base.data(), d_scores.bytes));
  kv.pool = d_pool.p;
  kv.packed_pool = d_packed.p;
  kv.page_packed = static_cast<const uint8_t*>(d_flags.p);
  kv.page_table = static_cast<const int32_t*>(d_table.p);
  kv.positions = static_cast<const int32_t*>(d_pos.p);
  kv.n_tokens = static_cast<const int32_t*>(d_ntok.p);
  const lc::DecodeAttentionParams p{c.n_head, scale, c.window};
  lc::AttentionScoresPlan plan;
  CHECK_OK(lc::attention_scores_plan(p, kv, c.n_q, max_tokens, &plan));
  DevBuf d_ws(plan.workspace_bytes);
  CHECK_OK(lc::device_fill_bytes(d_ws.p, 0xff, d_ws.bytes));  // NaN
  CHECK_OK(lc::attention_scores(p, plan, c.n_q, d_q.p, static_cast<const int32_t*>(d_qpos.p), kv,
                                static_cast<float*>(d_scores.p), stride, d_ws.p));
  CHECK_OK(lc::device_synchronize());
  std::vector<float> out(base.size());
  CHECK_OK(lc::copy_to_host(out.data(), d_scores.p, d_scores.bytes));

  size_t n_bad = 0, first_bad = 0;
  double max_rel = 0, worst_total = 0;
  for (size_t sh = 0; sh < n_tok.size(); ++sh) {
    double total = 0;
    for (int32_t j = 0; j < stride; ++j) {
      const size_t e = sh * stride + j;
      const double got = static_cast<double>(out[e]) - base[e];
      const double want = add[e];
      const bool ok = j >= n_tok[sh] ? out[e] == base[e] : std::fabs(got - want) <= 2e-6 + 1e-3 * want;
      if (!ok && n_bad++ == 0) first_bad = e;
      if (j < n_tok[sh]) total += got;
      if (want > 1e-3) max_rel = std::max(max_rel, std::fabs(got - want) / want);
    }
    const double tot_err = std::fabs(total - want_total[sh]) / std::max(1.0, want_total[sh]);
    worst_total = std::max(worst_total, tot_err);
    if (!(tot_err <= 1e-4) && n_bad++ == 0) first_bad = sh * stride;
  }
  const bool ok = n_bad == 0;
  std::printf("%s %-30s %-4s %-5s n_q=%-2d chunks=%-3d max_rel(>1e-3)=%.1e sum_err=%.1e\n", ok ? "ok  " : "FAIL", c.name,
              dt == lc::KvDtype::F16 ? "f16" : "bf16",
              packing == lc::KvPacking::None ? "plain" : packing == lc::KvPacking::Kivi2 ? "kivi2"
                                                       : packing == lc::KvPacking::Kivi4 ? "kivi4" : "kivi8",
              c.n_q, plan.n_chunks, max_rel, worst_total);
  if (!ok) {
    ++g_failures;
    std::printf("     %zu bad; first: (seq, kv-head) %zu slot %zu: got %.9g want %.9g (base %.9g)\n", n_bad,
                first_bad / stride, first_bad % stride, static_cast<double>(out[first_bad]) - base[first_bad],
                add[first_bad], static_cast<double>(base[first_bad]));
  }
}

}  // namespace

int main() {
  lc::DeviceInfo info;
  if (lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.cc_major, info.cc_minor, info.n_sm);
  const std::vector<Case> cases = {
      {"h2o step 32/8 d128 1000", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, 1},
      {"snapkv window 8, 32/8 d128", 32, 8, 128, 64, {std::vector<int32_t>(8, 1500)}, 0, false, 8},
      {"per-head lengths, gaps", 32, 8, 128, 16, {{0, 1, 15, 16, 17, 63, 65, 2333}}, 0, true, 4},
      {"sliding window 50", 32, 8, 128, 16, {std::vector<int32_t>(8, 500)}, 50, true, 3},
      {"smollm 9/3 d64", 9, 3, 64, 64, {{200, 1300, 77}}, 0, true, 5},
      {"group 8, 16/2 d128", 16, 2, 128, 64, {{300, 129}}, 0, false, 2},
      {"2 sequences", 32, 8, 128, 64, {std::vector<int32_t>(8, 900), std::vector<int32_t>(8, 35)}, 0, true, 2},
      {"long 20000, h2o step", 32, 8, 128, 64, {std::vector<int32_t>(8, 20000)}, 0, false, 1},
  };
  uint32_t seed = 100;
  for (const auto& c : cases)
    for (lc::KvPacking f : {lc::KvPacking::None, lc::KvPacking::Kivi2, lc::KvPacking::Kivi4, lc::KvPacking::Kivi8})
      for (lc::KvDtype dt : {lc::KvDtype::BF16, lc::KvDtype::F16}) run_case(c, dt, f, seed++);
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
