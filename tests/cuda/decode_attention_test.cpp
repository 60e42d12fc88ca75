// CUDA decode attention against the one-pass double-precision reference of the CPU backend (its math ported below),
// on fresh random inputs, over a paged layout with scattered page ids, per-head token counts, gapped positions,
// causal masking, sliding windows and several GQA shapes. Outputs and the split workspace are poisoned with NaN
// before every run (the workspace's split counters then zeroed, as its contract asks), and the rows past each head's
// last token hold NaN, so an unwritten output or a read past the end fails. Each case runs with the splits merged
// in the attention kernel, twice (the counters must come back to zero), and by the separate merge kernel. Exit code 77
// (CTest's skip) when no GPU is present.
//
// KIVI pages (2, 4 and 8 bits): every full page of a head is quantized on the host by the CPU codec's rule
// (kv_page_codec.cpp: per-channel keys over the page, per-token values in groups of 32, f16 scale and min, the
// scale stepped up one f16 ulp where rounding shrank the range), laid out for the device by lc::kivi_page_pack, and
// the reference sees the dequantized values min + scale * code in f32, as the CPU decodes them; the partial last
// page stays plain, as KIVI's full-precision tail (one case also leaves every third full page plain). Keys get
// per-channel offsets and spreads, KIVI's outlier channels.
//
// Tolerance (elementwise |out - ref| <= atol + rtol |ref|, plus the relative L2 error): the inputs are rounded to the
// KV dtype before both sides see them, so what differs is the kernel's own rounding: P is rounded to the dtype for
// the P V product and the output is stored in the dtype. bf16 has an 8-bit significand (rounding 2^-9 = 2e-3),
// f16 an 11-bit one (2^-12 = 2.4e-4); we allow about four roundings of an order-one output:
//   bf16: atol = rtol = 1e-2, relative L2 <= 5e-3;   f16: atol = rtol = 2e-3, relative L2 <= 1e-3.
// A packed tile is computed in f16 whatever the dtype, after rounding each dequantized key and value to f16 once
// (2^-12 relative): two more roundings of the inputs than a plain f16 tile, so KIVI views with f16 plain pages allow
// atol = rtol = 3e-3, relative L2 <= 1.5e-3; with bf16 plain pages the bf16 bounds above hold.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "core/fp16.h"
#include "kivi_test_pages.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;
using namespace longctx::cuda_test;

// The math of cpu::attention_reference (src/backend/cpu/attention.cpp) for one query row, ported so that the device
// script can build this test with nvcc alone: softmax over every visible key in one pass, in double.
// pages: the head's pages as f32, keys (page_tokens, d) then values (page_tokens, d).
void reference_row(const float* q, int32_t q_pos, const std::vector<std::vector<float>>& pages, const int32_t* positions,
                   int32_t n_tokens, int32_t pt, int32_t d, float scale, int32_t window, float* out) {
  std::vector<double> scores(static_cast<size_t>(n_tokens), -INFINITY);
  double mx = -INFINITY;
  for (int32_t j = 0; j < n_tokens; ++j) {
    const int32_t kp = positions[j];
    if (!(kp <= q_pos && (window <= 0 || kp > q_pos - window))) continue;
    const float* k = pages[static_cast<size_t>(j / pt)].data() + static_cast<size_t>(j % pt) * d;
    double sc = 0;
    for (int32_t i = 0; i < d; ++i) sc += static_cast<double>(q[i]) * k[i];
    scores[static_cast<size_t>(j)] = sc * scale;
    mx = std::max(mx, scores[static_cast<size_t>(j)]);
  }
  std::vector<double> acc(static_cast<size_t>(d), 0.0);
  double sum = 0;
  for (int32_t j = 0; j < n_tokens && mx != -INFINITY; ++j) {
    if (scores[static_cast<size_t>(j)] == -INFINITY) continue;
    const double w = std::exp(scores[static_cast<size_t>(j)] - mx);
    sum += w;
    const float* v = pages[static_cast<size_t>(j / pt)].data() + static_cast<size_t>(pt + j % pt) * d;
    for (int32_t i = 0; i < d; ++i) acc[static_cast<size_t>(i)] += w * v[i];
  }
  for (int32_t i = 0; i < d; ++i) out[i] = sum > 0 ? static_cast<float>(acc[static_cast<size_t>(i)] / sum) : 0.0f;
}

struct Case {
  const char* name;
  int32_t n_head, n_head_kv, head_dim, page_tokens;
  std::vector<std::vector<int32_t>> n_tokens;  // (n_seq, n_head_kv)
  int32_t window;
  bool gaps;         // positions with holes, as after eviction
  bool mid_query;    // the query sits among the keys, so later keys are masked by causality
  int32_t n_splits;  // 0: the planner's choice
  int32_t plain_every = 0;  // KIVI views: every plain_every-th full page stays plain too (0: none)
};

void run_case(const Case& c, lc::KvDtype dt, lc::KvPacking packing, uint32_t seed) {
  const char* dname = dt == lc::KvDtype::F16 ? "f16" : "bf16";
  const char* pname = packing == lc::KvPacking::Kivi2   ? " kivi2"
                      : packing == lc::KvPacking::Kivi4 ? " kivi4"
                      : packing == lc::KvPacking::Kivi8 ? " kivi8"
                                                        : "";
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int32_t n_seq = static_cast<int32_t>(c.n_tokens.size());
  const int32_t d = c.head_dim, pt = c.page_tokens, hkv = c.n_head_kv;
  int32_t max_tokens = 1, max_pages = 1, n_tokens_max = 0, total_pages = 0;
  for (const auto& s : c.n_tokens)
    for (int32_t n : s) {
      max_tokens = std::max(max_tokens, n);
      max_pages = std::max(max_pages, (n + pt - 1) / pt);
      n_tokens_max = std::max(n_tokens_max, n);
      total_pages += (n + pt - 1) / pt;
    }

  // Scatter the pages over the pool in a random order, as a long-running pool would.
  std::vector<int32_t> page_ids(static_cast<size_t>(total_pages));
  for (int32_t i = 0; i < total_pages; ++i) page_ids[static_cast<size_t>(i)] = i;
  std::shuffle(page_ids.begin(), page_ids.end(), rng);

  const size_t page_elems = 2 * static_cast<size_t>(pt) * d;
  std::vector<uint16_t> pool(std::max<size_t>(1, static_cast<size_t>(total_pages)) * page_elems, 0xffffu);  // NaN
  // KIVI pages share the ids' space (each id is plain or packed, never both); unused bytes are NaN too.
  const bool kivi = packing != lc::KvPacking::None;
  lc::PagedKvView kv;
  kv.head_dim = d;
  kv.page_tokens = pt;
  kv.packing = packing;
  const size_t packed_bytes = kv.packed_page_bytes();
  std::vector<uint8_t> packed_pool(kivi ? std::max<size_t>(1, static_cast<size_t>(total_pages)) * packed_bytes : 0, 0xff);
  std::vector<uint8_t> page_packed(static_cast<size_t>(n_seq) * hkv * max_pages, 0);
  std::vector<float> kd(static_cast<size_t>(pt) * d), vd(static_cast<size_t>(pt) * d);
  std::vector<int32_t> table(static_cast<size_t>(n_seq) * hkv * max_pages, -1);
  std::vector<int32_t> positions(static_cast<size_t>(n_seq) * hkv * max_tokens, 0);
  std::vector<int32_t> n_tok(static_cast<size_t>(n_seq) * hkv);
  std::vector<int32_t> q_pos(static_cast<size_t>(n_seq));
  std::vector<uint16_t> q_bits(static_cast<size_t>(n_seq) * c.n_head * d);
  std::vector<float> q_f(q_bits.size());
  for (size_t i = 0; i < q_bits.size(); ++i) {
    q_bits[i] = to_bits(nd(rng), dt);
    q_f[i] = from_bits(q_bits[i], dt);
  }

  // The reference's view: f32 pages holding exactly the rounded values the device sees.
  std::vector<std::vector<std::vector<float>>> ref_pages(static_cast<size_t>(n_seq) * hkv);
  // KIVI pages' keys: fixed outlier channels (an offset and a spread per channel), as KIVI observes in real models.
  std::vector<float> chan_offset(static_cast<size_t>(d)), chan_spread(static_cast<size_t>(d));
  for (int32_t i = 0; i < d && kivi; ++i) {
    chan_offset[static_cast<size_t>(i)] = (i % 17 == 3) ? 6.0f * nd(rng) : 0.5f * nd(rng);
    chan_spread[static_cast<size_t>(i)] = 0.25f + 0.75f * static_cast<float>(rng() % 1000) / 1000.0f;
  }
  auto key_value = [&](int32_t i) {  // keys spread the softmax
    return kivi ? nd(rng) * 2.0f * chan_spread[static_cast<size_t>(i)] + chan_offset[static_cast<size_t>(i)]
                : nd(rng) * 2.0f;
  };
  int32_t next_page = 0;
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
      last_pos = std::max(last_pos, p);
      auto& rp = ref_pages[sh];
      for (int32_t pi = 0; pi < (n + pt - 1) / pt; ++pi) {
        const int32_t id = page_ids[static_cast<size_t>(next_page++)];
        table[sh * max_pages + pi] = id;
        rp.emplace_back(page_elems, 0.0f);
        const int32_t n_full_pages = n / pt;
        if (kivi && pi < n_full_pages && !(c.plain_every > 0 && pi % c.plain_every == c.plain_every - 1)) {
          page_packed[sh * max_pages + pi] = 1;
          for (int32_t r = 0; r < pt; ++r)
            for (int32_t i = 0; i < d; ++i) {
              kd[static_cast<size_t>(r) * d + i] = key_value(i);
              vd[static_cast<size_t>(r) * d + i] = nd(rng);
            }
          CHECK_OK(kivi_test::kivi_test_page(packing, pt, d, kd, vd, packed_pool.data() + static_cast<size_t>(id) * packed_bytes));
          std::copy(kd.begin(), kd.end(), rp.back().begin());
          std::copy(vd.begin(), vd.end(), rp.back().begin() + static_cast<ptrdiff_t>(pt) * d);
          continue;
        }
        uint16_t* dev_page = pool.data() + static_cast<size_t>(id) * page_elems;
        for (int32_t r = 0; r < std::min(pt, n - pi * pt); ++r)
          for (int32_t half = 0; half < 2; ++half)  // keys, then values
            for (int32_t i = 0; i < d; ++i) {
              const size_t e = static_cast<size_t>(half) * pt * d + static_cast<size_t>(r) * d + i;
              const float x = half == 0 ? key_value(i) : nd(rng);
              dev_page[e] = to_bits(x, dt);
              rp.back()[e] = from_bits(dev_page[e], dt);
            }
      }
    }
    q_pos[static_cast<size_t>(s)] = c.mid_query ? last_pos / 2 : last_pos;
  }

  // Reference, one (sequence, head) at a time.
  std::vector<float> ref(q_f.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int32_t s = 0; s < n_seq; ++s)
    for (int32_t h = 0; h < c.n_head; ++h) {
      const size_t sh = static_cast<size_t>(s) * hkv + h / (c.n_head / hkv);
      const size_t row = static_cast<size_t>(s) * c.n_head + h;
      reference_row(q_f.data() + row * d, q_pos[static_cast<size_t>(s)], ref_pages[sh], positions.data() + sh * max_tokens,
                    n_tok[sh], pt, d, scale, c.window, ref.data() + row * d);
    }

  // Device.
  DevBuf d_packed(packed_pool.size()), d_flags(page_packed.size());
  if (kivi) {
    CHECK_OK(lc::copy_to_device(d_packed.p, packed_pool.data(), d_packed.bytes));
    CHECK_OK(lc::copy_to_device(d_flags.p, page_packed.data(), d_flags.bytes));
  }
  DevBuf d_pool(pool.size() * 2), d_table(table.size() * 4), d_pos(positions.size() * 4), d_ntok(n_tok.size() * 4),
      d_qpos(q_pos.size() * 4), d_q(q_bits.size() * 2), d_out(q_bits.size() * 2);
  CHECK_OK(lc::copy_to_device(d_pool.p, pool.data(), d_pool.bytes));
  CHECK_OK(lc::copy_to_device(d_table.p, table.data(), d_table.bytes));
  CHECK_OK(lc::copy_to_device(d_pos.p, positions.data(), d_pos.bytes));
  CHECK_OK(lc::copy_to_device(d_ntok.p, n_tok.data(), d_ntok.bytes));
  CHECK_OK(lc::copy_to_device(d_qpos.p, q_pos.data(), d_qpos.bytes));
  CHECK_OK(lc::copy_to_device(d_q.p, q_bits.data(), d_q.bytes));

  kv.packed_pool = d_packed.p;
  kv.page_packed = static_cast<const uint8_t*>(d_flags.p);
  kv.pool = d_pool.p;
  kv.page_table = static_cast<const int32_t*>(d_table.p);
  kv.positions = static_cast<const int32_t*>(d_pos.p);
  kv.n_tokens = static_cast<const int32_t*>(d_ntok.p);
  kv.n_seq = n_seq;
  kv.n_head_kv = hkv;
  kv.head_dim = d;
  kv.page_tokens = pt;
  kv.max_pages = max_pages;
  kv.max_tokens = max_tokens;
  kv.dtype = dt;
  lc::DecodeAttentionParams p{c.n_head, scale, c.window};
  lc::DecodeAttentionPlan plan;
  CHECK_OK(lc::decode_attention_plan(p, kv, n_tokens_max, &plan, c.n_splits));
  DevBuf d_ws(plan.workspace_bytes);
  if (d_ws.p) {  // poisoned, then the counters zeroed as the contract asks
    CHECK_OK(lc::device_fill_bytes(d_ws.p, 0xff, d_ws.bytes));
    CHECK_OK(lc::decode_attention_workspace_init(plan, d_ws.p));
  }
  int32_t n_packed = 0;
  for (uint8_t f : page_packed) n_packed += f;
  const bool f16 = dt == lc::KvDtype::F16;
  const double atol = f16 ? (kivi ? 3e-3 : 2e-3) : 1e-2, rtol = atol, l2_tol = f16 ? (kivi ? 1.5e-3 : 1e-3) : 5e-3;

  // The splits merged in the kernel twice (the second call relies on the first leaving its counters at zero), then
  // by the separate merge kernel; the output is poisoned before each.
  const char* merge_names[] = {"in-kernel merge", "again", "merge kernel"};
  for (int mode = 0; mode < 3; ++mode) {
    plan.merge = mode < 2 ? lc::DecodeMerge::InKernel : lc::DecodeMerge::Kernel;
    CHECK_OK(lc::device_fill_bytes(d_out.p, 0xff, d_out.bytes));  // NaN in f16 and bf16
    CHECK_OK(lc::decode_attention(p, plan, d_q.p, static_cast<const int32_t*>(d_qpos.p), kv, d_out.p, d_ws.p));
    CHECK_OK(lc::device_synchronize());
    std::vector<uint16_t> out_bits(q_bits.size());
    CHECK_OK(lc::copy_to_host(out_bits.data(), d_out.p, d_out.bytes));
    std::vector<int32_t> counters(plan.counter_bytes / 4);
    if (!counters.empty()) CHECK_OK(lc::copy_to_host(counters.data(), d_ws.p, plan.counter_bytes));
    size_t n_counters_set = 0;
    for (int32_t v : counters) n_counters_set += v != 0;

    double err2 = 0, ref2 = 0, max_err = 0;
    size_t n_bad = 0, first_bad = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double o = from_bits(out_bits[i], dt), r = ref[i];
      const double e = std::fabs(o - r);
      if (!(e <= atol + rtol * std::fabs(r))) {  // NaN fails here
        if (n_bad++ == 0) first_bad = i;
      }
      if (std::isfinite(e)) max_err = std::max(max_err, e);
      err2 += std::isfinite(e) ? e * e : 1e30;
      ref2 += r * r;
    }
    const double rel = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
    const bool ok = n_bad == 0 && rel <= l2_tol && n_counters_set == 0;
    std::printf("%s %-28s %-4s%-6s splits=%-3d packed pages=%-4d %-15s rel_l2=%.2e max_abs=%.2e\n",
                ok ? "ok  " : "FAIL", c.name, dname, pname, plan.n_splits, n_packed, merge_names[mode], rel, max_err);
    if (!ok) {
      ++g_failures;
      if (n_counters_set) std::printf("     %zu split counters left non-zero\n", n_counters_set);
      if (n_bad) {
        const size_t row = first_bad / static_cast<size_t>(d);
        std::printf("     %zu bad elements; first: seq %zu head %zu channel %zu: got %g want %g\n", n_bad,
                    row / static_cast<size_t>(c.n_head), row % static_cast<size_t>(c.n_head),
                    first_bad % static_cast<size_t>(d), from_bits(out_bits[first_bad], dt), ref[first_bad]);
      }
    }
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
      {"llama3 32/8 d128 1000 tok", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, false, 0},
      {"llama3 one split", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, false, 1},
      {"llama3 5 splits", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, false, 5},
      {"per-head lengths, gaps", 32, 8, 128, 64, {{0, 1, 15, 16, 17, 63, 65, 333}}, 0, true, false, 0},
      {"per-head lengths, 3 splits", 32, 8, 128, 16, {{0, 1, 15, 16, 17, 63, 65, 333}}, 0, true, false, 3},
      {"causal mid query", 32, 8, 128, 64, {std::vector<int32_t>(8, 700)}, 0, true, true, 0},
      {"window 50", 32, 8, 128, 16, {std::vector<int32_t>(8, 500)}, 50, true, false, 0},
      {"window 37 mid query", 32, 8, 128, 32, {std::vector<int32_t>(8, 400)}, 37, false, true, 4},
      {"smollm 9/3 d64", 9, 3, 64, 64, {{200, 130, 77}}, 0, true, false, 0},
      {"no gqa 8/8 d64", 8, 8, 64, 16, {{5, 40, 1, 0, 99, 16, 31, 48}}, 0, false, false, 0},
      {"group 8, 16/2 d128", 16, 2, 128, 64, {{300, 129}}, 0, false, false, 0},
      {"group 7, 14/2 d64", 14, 2, 64, 48, {{250, 251}}, 0, true, false, 2},
      {"2 sequences", 32, 8, 128, 64, {std::vector<int32_t>(8, 900), std::vector<int32_t>(8, 35)}, 0, true, false, 0},
      {"long 20000 tok", 32, 8, 128, 64, {std::vector<int32_t>(8, 20000)}, 0, false, false, 0},
  };
  uint32_t seed = 1;
  for (const auto& c : cases)
    for (lc::KvDtype dt : {lc::KvDtype::BF16, lc::KvDtype::F16}) run_case(c, dt, lc::KvPacking::None, seed++);

  // KIVI views: packed full pages, plain tails, at 2, 4 and 8 bits.
  const std::vector<Case> kivi_cases = {
      {"kivi llama3 32/8 d128 1000", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, false, 0},
      {"kivi one split", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, false, 1},
      {"kivi 5 splits, plain pages", 32, 8, 128, 64, {std::vector<int32_t>(8, 1000)}, 0, false, false, 5, 3},
      {"kivi per-head lengths, gaps", 32, 8, 128, 16, {{0, 1, 15, 16, 17, 63, 65, 333}}, 0, true, false, 3},
      {"kivi causal mid query", 32, 8, 128, 64, {std::vector<int32_t>(8, 700)}, 0, true, true, 0},
      {"kivi window 50", 32, 8, 128, 16, {std::vector<int32_t>(8, 500)}, 50, true, false, 0},
      {"kivi window 37 mid query", 32, 8, 128, 32, {std::vector<int32_t>(8, 400)}, 37, false, true, 4},
      {"kivi smollm 9/3 d64", 9, 3, 64, 64, {{200, 130, 77}}, 0, true, false, 0},
      {"kivi d64 pages 16, 3 splits", 8, 8, 64, 16, {{5, 40, 1, 0, 99, 16, 31, 48}}, 0, false, false, 3, 2},
      {"kivi group 8, 16/2 d128", 16, 2, 128, 64, {{300, 129}}, 0, false, false, 0},
      {"kivi group 7, 14/2 d64", 14, 2, 64, 48, {{250, 251}}, 0, true, false, 2},
      {"kivi 2 sequences", 32, 8, 128, 64, {std::vector<int32_t>(8, 900), std::vector<int32_t>(8, 35)}, 0, true, false, 0},
      {"kivi long 20000", 32, 8, 128, 64, {std::vector<int32_t>(8, 20000)}, 0, false, false, 0},
  };
  for (const auto& c : kivi_cases)
    for (lc::KvPacking f : {lc::KvPacking::Kivi2, lc::KvPacking::Kivi4, lc::KvPacking::Kivi8})
      for (lc::KvDtype dt : {lc::KvDtype::BF16, lc::KvDtype::F16}) run_case(c, dt, f, seed++);

  // Clear errors, nothing crashes: an unsupported shape and an allocation the device cannot hold.
  {
    lc::PagedKvView kv;
    kv.head_dim = 96;
    kv.page_tokens = 16;
    kv.n_head_kv = 1;
    kv.n_seq = 1;
    lc::DecodeAttentionPlan plan;
    const lc::Status s = lc::decode_attention_plan({4, 1.0f, 0}, kv, 100, &plan);
    std::printf("%s unsupported head_dim -> \"%s\"\n", s.ok() ? "FAIL" : "ok  ", s.message().c_str());
    if (s.ok()) ++g_failures;
    void* p = nullptr;
    const lc::Status s2 = lc::device_alloc(&p, size_t{1} << 52);
    std::printf("%s 4 PiB allocation -> \"%s\"\n", s2.ok() ? "FAIL" : "ok  ", s2.message().c_str());
    if (s2.ok()) ++g_failures;
    DevBuf after(1 << 20);  // the device still works after the refusal
  }

  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
