#include "plan/probe.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/attention.h"
#include "backend/cpu/kv_page_codec.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/ops.h"
#include "core/error.h"
#include "core/memory_bandwidth.h"
#include "kv/kv_store.h"
#include "kv/quest.h"
#include "plan/kv_footprint.h"

namespace longctx::plan {

namespace {

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t, FreeDeleter>;

Buffer alloc_bytes(size_t n) {
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, (n + 63) / 64 * 64));
  if (p == nullptr) fail("out of memory allocating {} MiB for a probe", n >> 20);
  return Buffer(p);
}

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Best time of n_reps calls of fn, after one untimed call (page faults, wake-up of the workers).
template <typename Fn>
double best_of(int n_reps, Fn&& fn) {
  fn();
  double best = std::numeric_limits<double>::max();
  for (int r = 0; r < n_reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, seconds(t0));
  }
  return best;
}

// A row length of the format near the model's own: the embedding width where the block divides it, else the FFN
// width, else a multiple of the block.
int64_t probe_row(const PlanArch& arch, GgmlType t) {
  const int64_t block = ggml_traits(t).block_values;
  for (int64_t n : {int64_t{arch.n_embd}, int64_t{arch.n_ff}})
    if (n % block == 0) return n;
  return std::max<int64_t>(block, int64_t{arch.n_embd} / block * block);
}

// Weight bytes whose every f16 field (scales, minimums) is a finite normal number: bytes in [0x10, 0x4f]. The
// values do not matter to the kernels' speed, only that no NaN or subnormal takes a slow path.
void fill_weights(uint8_t* w, size_t n) {
  for (size_t i = 0; i < n; ++i) w[i] = static_cast<uint8_t>(0x10 + (i * 0x9e3779b1u >> 7) % 0x40);
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// The KV of n_layer layers at a depth, in one format, held by the store itself: filled as a prefill fills it
// (chunks of 512 tokens, every layer's heads in turn), so its pages lie in the pool as a real cache's do.
struct ProbeCache {
  std::unique_ptr<kv::KvPagePool> pool;
  std::unique_ptr<kv::KvSequence> seq;
  std::vector<cpu::KvLayerView> views;  // (n_layer)
  int64_t bytes = 0;                    // as the decode kernel reads them

  int64_t pages = 0;                    // summed over layers and kv-heads

  ProbeCache(const PlanArch& arch, int32_t n_layer, int32_t depth, KvFormat f, int32_t page_tokens = kPlanPageTokens) {
    kv::KvGeometry geo;
    geo.n_layer = n_layer;
    geo.n_head_kv = arch.n_head_kv;
    geo.head_dim = arch.head_dim;
    geo.page_tokens = page_tokens;
    geo.format = kv_format_is_packed(f) ? KvFormat::F16 : f;
    geo.sealed_format = f;
    pool = std::make_unique<kv::KvPagePool>(geo.page_tokens, geo.head_dim, std::numeric_limits<size_t>::max() / 4);
    seq = std::make_unique<kv::KvSequence>(geo, *pool);
    constexpr int32_t kChunk = 512;
    const size_t row = static_cast<size_t>(arch.n_head_kv) * arch.head_dim;
    const std::vector<float> k = random_floats(kChunk * row, 1), v = random_floats(kChunk * row, 2);
    std::vector<int32_t> pos(kChunk);
    for (int32_t start = 0; start < depth; start += kChunk) {
      const int32_t n = std::min(kChunk, depth - start);
      for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = start + i;
      for (int32_t il = 0; il < n_layer; ++il) seq->append(il, k.data(), v.data(), pos.data(), n);
    }
    seq->seal_full_pages();
    for (int32_t il = 0; il < n_layer; ++il) {
      views.push_back(seq->layer_view(il));
      for (const cpu::KvHeadView& h : views.back().heads) {
        pages += h.n_pages();
        for (size_t p = 0; p < h.pages.size(); ++p)
          bytes += static_cast<int64_t>(std::min<int32_t>(page_tokens, h.n_tokens - static_cast<int32_t>(p) * page_tokens)) *
                   static_cast<int64_t>(pool->page_bytes(h.formats[p]) / page_tokens);
      }
    }
  }
};

// A decode step's weight stream, cut into one share per layer: each layer's attention runs between two shares, as
// in the forward, so that it finds the caches as a decode step leaves them (the weights have just evicted its KV).
struct WeightStream {
  GgmlType type;
  int64_t n_in = 0, n_out_per_layer = 0;
  Buffer w;
  size_t layer_bytes = 0;
  std::vector<float> x, y;

  WeightStream(const PlanArch& arch, int32_t n_layer) {
    // The format holding most of the layers' bytes.
    const WeightUse* top = &arch.layers.front();
    for (const WeightUse& u : arch.layers)
      if (u.bytes > top->bytes) top = &u;
    type = top->type;
    n_in = probe_row(arch, type);
    const size_t row_bytes = ggml_row_bytes(type, n_in);
    n_out_per_layer = std::max<int64_t>(8, arch.weight_bytes_per_token() / arch.n_layer / static_cast<int64_t>(row_bytes));
    layer_bytes = row_bytes * static_cast<size_t>(n_out_per_layer);
    w = alloc_bytes(layer_bytes * static_cast<size_t>(n_layer));
    fill_weights(w.get(), layer_bytes * static_cast<size_t>(n_layer));
    x = random_floats(static_cast<size_t>(n_in), 12);
    y.resize(static_cast<size_t>(n_out_per_layer));
  }
  void layer(ThreadPool& pool, int32_t il) {
    cpu::matmul(pool, type, w.get() + layer_bytes * static_cast<size_t>(il), n_out_per_layer, n_in, x.data(), 1, y.data());
  }
};

// Seconds per layer of decode attention over a cache, each layer after its share of the weight stream, less the
// stream alone.
double time_decode_attention(ThreadPool& pool, const PlanArch& arch, const ProbeCache& cache, WeightStream& stream,
                             int32_t depth, int n_reps) {
  cpu::AttentionParams ap{arch.n_head, arch.n_head_kv, arch.head_dim, 1.0f / std::sqrt(float(arch.head_dim)), 0};
  const std::vector<float> q = random_floats(static_cast<size_t>(arch.n_head) * arch.head_dim, 3);
  std::vector<float> out(q.size());
  const int32_t pos = depth - 1;
  const int32_t n_layer = static_cast<int32_t>(cache.views.size());
  const double both = best_of(n_reps, [&] {
    for (int32_t il = 0; il < n_layer; ++il) {
      stream.layer(pool, il);
      cpu::attention(pool, ap, q.data(), &pos, 1, cache.views[static_cast<size_t>(il)], out.data());
    }
  });
  const double alone = best_of(n_reps, [&] {
    for (int32_t il = 0; il < n_layer; ++il) stream.layer(pool, il);
  });
  return std::max(0.0, both - alone) / n_layer;
}

}  // namespace

int64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

KernelRates probe_kernels(ThreadPool& pool, const PlanArch& arch, const std::vector<KvFormat>& kv_formats,
                          const ProbeOptions& o) {
  KernelRates r;
  r.n_threads = pool.n_threads();
  r.copy_bandwidth = measure_copy_bandwidth(pool).bytes_per_s;

  // Weights: every format the model holds, streamed through a working set of the model's own per-token size, so
  // that what the caches hold of it is what they hold of the model's.
  std::vector<GgmlType> types;
  for (const WeightUse& u : arch.layers) types.push_back(u.type);
  if (std::find(types.begin(), types.end(), arch.head.type) == types.end()) types.push_back(arch.head.type);
  const size_t stream_bytes = static_cast<size_t>(std::max<int64_t>(arch.weight_bytes_per_token(), int64_t{16} << 20));
  for (GgmlType t : types) {
    const int64_t n_in = probe_row(arch, t);
    const size_t row_bytes = ggml_row_bytes(t, n_in);
    const int64_t n_out = std::max<int64_t>(64, static_cast<int64_t>(stream_bytes / row_bytes));
    Buffer w = alloc_bytes(row_bytes * static_cast<size_t>(n_out));
    fill_weights(w.get(), row_bytes * static_cast<size_t>(n_out));
    const std::vector<float> x = random_floats(static_cast<size_t>(o.prompt_rows) * n_in, 4);
    std::vector<float> y(static_cast<size_t>(o.prompt_rows) * static_cast<size_t>(std::max<int64_t>(n_out, arch.n_ff)));
    const double t1 = best_of(o.n_reps, [&] { cpu::matmul(pool, t, w.get(), n_out, n_in, x.data(), 1, y.data()); });
    r.gemv_bytes_per_s[t] = static_cast<double>(row_bytes) * static_cast<double>(n_out) / t1;
    // The prompt-chunk product on an FFN-sized matrix (its first rows).
    const int64_t n_out_mm = std::min<int64_t>(n_out, arch.n_ff);
    const double tp = best_of(std::max(1, o.n_reps / 2),
                              [&] { cpu::matmul(pool, t, w.get(), n_out_mm, n_in, x.data(), o.prompt_rows, y.data()); });
    r.gemm_flops[t] = 2.0 * static_cast<double>(o.prompt_rows) * static_cast<double>(n_out_mm) * n_in / tp;
  }

  // The fixed cost of a one-row matmul call: the workers meet once per call, whatever its size. A matrix of a
  // few rows per thread, from the first format's probe.
  {
    const GgmlType t = types.front();
    const int64_t n_in = probe_row(arch, t), n_out = 8 * pool.n_threads();
    Buffer w = alloc_bytes(ggml_row_bytes(t, n_in) * static_cast<size_t>(n_out));
    fill_weights(w.get(), ggml_row_bytes(t, n_in) * static_cast<size_t>(n_out));
    const std::vector<float> x = random_floats(static_cast<size_t>(n_in), 10);
    std::vector<float> y(static_cast<size_t>(n_out));
    constexpr int kCalls = 200;
    r.matmul_call_s = best_of(o.n_reps, [&] {
                        for (int i = 0; i < kCalls; ++i) cpu::matmul(pool, t, w.get(), n_out, n_in, x.data(), 1, y.data());
                      }) / kCalls;
  }

  // Decode attention: two depths give the bytes' rate and the fixed cost of a call, and the deep one again in pages
  // of 16 tokens the cost of a page (the same bytes in 4x the pages). All layers of the model (up to 1 GiB of KV),
  // each after its share of the weights, so the working set is a decode step's at that depth.
  constexpr int32_t kShallow = 256, kDeep = 4096;
  const int64_t deep_layer_bytes = int64_t{kDeep} * arch.n_head_kv * kv_plan_page_bytes(KvFormat::F16, kPlanPageTokens, arch.head_dim) / kPlanPageTokens;
  const int32_t n_layer_probe = static_cast<int32_t>(std::clamp<int64_t>((int64_t{1} << 30) / std::max<int64_t>(1, deep_layer_bytes), 1, arch.n_layer));
  std::vector<KvFormat> formats = kv_formats;
  if (std::find(formats.begin(), formats.end(), KvFormat::F16) == formats.end()) formats.push_back(KvFormat::F16);
  WeightStream stream(arch, n_layer_probe);
  constexpr int32_t kSmallPage = 16;
  {
    const ProbeCache deep(arch, n_layer_probe, kDeep, KvFormat::F16),
        small(arch, n_layer_probe, kDeep, KvFormat::F16, kSmallPage);
    const double td = time_decode_attention(pool, arch, deep, stream, kDeep, o.n_reps);
    const double t16 = time_decode_attention(pool, arch, small, stream, kDeep, o.n_reps);
    r.attention_page_s = std::max(0.0, (t16 - td) / (static_cast<double>(small.pages - deep.pages) / n_layer_probe));
    // The views the forward hands the attention, built every step: each layer's pages (KvSequence::layer_view), and
    // a read filter's pages of them (keep_pages: here a quarter of each head's).
    std::vector<int32_t> kept, positions;
    int64_t n_built = 0;
    const double tv = best_of(o.n_reps, [&] {
      n_built = 0;
      for (int32_t il = 0; il < n_layer_probe; ++il) {
        const KvLayerView v = small.seq->layer_view(il);
        for (const KvHeadView& h : v.heads) {
          kept.clear();
          for (int32_t p = 0; p < h.n_pages(); p += 4) kept.push_back(p);
          const KvHeadView narrowed = keep_pages(h, kept, positions);
          n_built += h.n_pages() + narrowed.n_pages();
        }
      }
    });
    r.view_page_s = tv / static_cast<double>(std::max<int64_t>(1, n_built));
  }
  for (KvFormat f : formats) {
    const ProbeCache shallow(arch, n_layer_probe, kShallow, f), deep(arch, n_layer_probe, kDeep, f);
    // Net of the pages' cost.
    const double ts = time_decode_attention(pool, arch, shallow, stream, kShallow, o.n_reps) -
                      r.attention_page_s * static_cast<double>(shallow.pages) / n_layer_probe;
    const double td = time_decode_attention(pool, arch, deep, stream, kDeep, o.n_reps) -
                      r.attention_page_s * static_cast<double>(deep.pages) / n_layer_probe;
    const double bytes_s = static_cast<double>(shallow.bytes) / n_layer_probe;
    const double bytes_d = static_cast<double>(deep.bytes) / n_layer_probe;
    const double rate = td > ts ? (bytes_d - bytes_s) / (td - ts) : bytes_d / std::max(td, 1e-9);
    r.attention_read_bytes_per_s[f] = rate;
    if (f == KvFormat::F16) r.attention_call_s = std::max(0.0, ts - bytes_s / rate);
  }

  // Prefill attention: a prompt chunk over a cache of a few thousand keys, f16 pages of 64 and of 16 tokens (the
  // same FLOPs, 4x the pages): the FLOP rate net of the pages, and a page's cost per prompt token.
  {
    constexpr int32_t kDepth = 2048;
    const int32_t n = o.prompt_rows, n_layer_pf = std::min(arch.n_layer, 4);
    cpu::AttentionParams ap{arch.n_head, arch.n_head_kv, arch.head_dim, 1.0f / std::sqrt(float(arch.head_dim)), 0};
    const std::vector<float> q = random_floats(static_cast<size_t>(n) * arch.n_head * arch.head_dim, 5);
    std::vector<float> out(q.size());
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = kDepth + i;
    // (prompt token, kv-head, page) visits over the probed layers: each token's keys in whole pages.
    auto visits = [&](int32_t page_tokens) {
      double v = 0;
      for (int32_t i = 0; i < n; ++i) v += (kDepth + i + page_tokens) / page_tokens;
      return v * arch.n_head_kv * n_layer_pf;
    };
    auto time_at = [&](int32_t page_tokens) {
      const ProbeCache cache(arch, n_layer_pf, kDepth + n, KvFormat::F16, page_tokens);
      return best_of(std::max(1, o.n_reps / 2), [&] {
        for (const cpu::KvLayerView& v : cache.views) cpu::attention(pool, ap, q.data(), pos.data(), n, v, out.data());
      });
    };
    const double t64 = time_at(kPlanPageTokens), t16 = time_at(kSmallPage);
    r.prefill_attention_page_s = std::max(0.0, (t16 - t64) / (visits(kSmallPage) - visits(kPlanPageTokens)));
    const double visible = static_cast<double>(n) * kDepth + 0.5 * n * (n + 1.0);
    const double t = std::max(t64 - r.prefill_attention_page_s * visits(kPlanPageTokens), 0.5 * t64);
    r.attention_flops = 4.0 * arch.n_head * arch.head_dim * visible * n_layer_pf / t;
  }

  // The other ops of a layer (serial, on the calling thread): norms, RoPE, the KV append, the gated activation
  // and the residual adds, for one token and for a prompt chunk.
  {
    const int64_t E = arch.n_embd, D = arch.head_dim;
    const bool gemma = arch.sliding_window > 0;
    kv::KvGeometry geo;
    geo.n_layer = 1;
    geo.n_head_kv = arch.n_head_kv;
    geo.head_dim = arch.head_dim;
    kv::KvPagePool pages(geo.page_tokens, geo.head_dim, std::numeric_limits<size_t>::max() / 4);
    kv::KvSequence seq(geo, pages);
    const auto layer_ops = [&](int32_t n_rows, int32_t first_pos) {
      std::vector<float> x = random_floats(static_cast<size_t>(n_rows) * E, 6), y(x.size());
      std::vector<float> w(static_cast<size_t>(E), 1.0f);
      std::vector<float> q = random_floats(static_cast<size_t>(n_rows) * arch.n_head * D, 7);
      std::vector<float> k = random_floats(static_cast<size_t>(n_rows) * arch.n_head_kv * D, 8), v(k);
      std::vector<float> gate = random_floats(static_cast<size_t>(n_rows) * arch.n_ff, 9), up(gate);
      std::vector<int32_t> pos(static_cast<size_t>(n_rows));
      return best_of(o.n_reps, [&] {
        seq.clear();
        for (int32_t i = 0; i < n_rows; ++i) pos[static_cast<size_t>(i)] = first_pos + i;
        for (int norm = 0; norm < (gemma ? 4 : 2); ++norm) cpu::rmsnorm(x.data(), w.data(), y.data(), n_rows, E, 1e-6f);
        if (gemma) {
          cpu::rmsnorm(q.data(), w.data(), q.data(), int64_t{n_rows} * arch.n_head, D, 1e-6f);
          cpu::rmsnorm(k.data(), w.data(), k.data(), int64_t{n_rows} * arch.n_head_kv, D, 1e-6f);
        }
        cpu::rope(q.data(), pos.data(), n_rows, arch.n_head, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
        cpu::rope(k.data(), pos.data(), n_rows, arch.n_head_kv, D, D, 10000.0f, cpu::RopeOrder::Adjacent);
        seq.append(0, k.data(), v.data(), pos.data(), n_rows);
        cpu::gated_activation(gate.data(), up.data(), int64_t{n_rows} * arch.n_ff, cpu::GatedActivation::SiLU);
        cpu::add_in_place(x.data(), y.data(), int64_t{n_rows} * E);
        cpu::add_in_place(x.data(), y.data(), int64_t{n_rows} * E);
      });
    };
    r.layer_overhead_s = layer_ops(1, 1000);
    r.prefill_row_overhead_s = layer_ops(o.prompt_rows, 1000) / o.prompt_rows;
  }

  // Quest's page ranking, as kv::QuestReadFilter runs it on the forward's thread for each narrowed (layer, kv-head):
  // a deep head's page summaries bounded for the kv-head's query heads, then the pages to read chosen. The bound's
  // cost does not depend on the summaries' values.
  {
    const int32_t d = arch.head_dim, group = arch.heads_per_kv_head();
    constexpr int32_t kPages = 512, kRead = 64, kCalls = 20;
    const std::vector<float> summary = random_floats(static_cast<size_t>(kPages) * 2 * d, 11);
    const std::vector<float> q = random_floats(static_cast<size_t>(group) * d, 13);
    KvHeadView head;
    head.pages.assign(kPages, nullptr);
    head.key_summary = summary.data();
    std::vector<int32_t> chosen;
    std::vector<float> bounds;
    const double t = best_of(o.n_reps, [&] {
      for (int i = 0; i < kCalls; ++i) kv::quest_select_pages(head, q.data(), group, d, d, kRead, chosen, bounds);
    });
    r.quest_rank_s = t / kCalls / (static_cast<double>(kPages - 1) * group);
  }
  return r;
}

DeviceSpec measured_cpu(const KernelRates& rates, int64_t memory_bytes) {
  DeviceSpec d;
  d.name = "cpu";
  d.source = "probed on this machine now at " + std::to_string(rates.n_threads) + " threads";
  d.memory_bytes = memory_bytes;
  d.kernels = rates;
  d.bandwidth = rates.copy_bandwidth;
  double best = 0;
  for (const auto& [t, f] : rates.gemm_flops) best = std::max(best, f);
  d.matmul_flops = best;
  return d;
}

}  // namespace longctx::plan
