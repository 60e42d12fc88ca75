// Decode attention timings against the device's own ceilings, measured in the same run (DESIGN.md, Benchmarking):
//   copy:  cudaMemcpy device to device, bytes read plus bytes written over time;
//   read:  a kernel that only reads (what decode attention does), bytes read over time;
//   ours:  decode attention at B = 1, 32 query / 8 kv heads, d = 128, over the paged store (64-token pages scattered
//          over the pool), bytes of K and V read over time;
//   kivi:  the same step over KIVI pages at 2 and 4 bits (every page of a head packed but the last, which stays
//          bf16 as KIVI's full-precision tail), with two rates: the bytes actually read (packed pages, the plain
//          page, the positions) over time, and the effective rate, bf16-equivalent bytes 2 * n_ctx * 8 * 128 * 2
//          over time, which issue 6 asks to be above the copy bandwidth.
// Every figure is the median of several CUDA-graph replays, each replay many back-to-back steps; inputs rotate over
// enough copies that they never sit in L2, and hold random values (never zeros).
// Usage: attention_bench [out.jsonl [context ...]]   (one JSON object per measurement; a table on stdout)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kivi_layout.h"
#include "bench_util.cuh"

namespace lc = longctx::cuda;
using namespace longctx::cuda_bench;

namespace {

FILE* g_json = nullptr;

void record(const char* what, const char* dtype, long ctx, int n_splits, double us, double bytes, double tbps) {
  if (g_json)
    std::fprintf(g_json,
                 "{\"what\":\"%s\",\"dtype\":\"%s\",\"ctx\":%ld,\"n_splits\":%d,\"us\":%.3f,\"bytes\":%.0f,\"tbps\":%.4f}\n",
                 what, dtype, ctx, n_splits, us, bytes, tbps);
}

// Makes the scales and mins of n_pages KIVI pages (kivi_layout.h) finite and of a plausible size, over pages whose
// codes fill_random left random: key scale in [0.02, 0.3), min in [-2, 0); value scale in [0.1, 0.6), min [-1, 0).
__global__ void fix_kivi_scales(uint8_t* pool, size_t n_pages, int d, int bits, int pt, uint32_t seed) {
  namespace kv = longctx::cuda::kivi;
  const size_t page_bytes = kv::page_bytes(d, bits, pt);
  const int k_words = d, tiles = pt / kv::kTile, v_words = kv::kTile * d / kv::kGroup;
  const int per_page = k_words + tiles * v_words;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n_pages * per_page;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t page = i / per_page;
    const int w = static_cast<int>(i % per_page);
    uint32_t x = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    x ^= x >> 13;
    const float u0 = static_cast<float>(x & 0xffff) / 65536.0f, u1 = static_cast<float>(x >> 16) / 65536.0f;
    uint8_t* pg = pool + page * page_bytes;
    uint32_t* dst;
    __half2 val;
    if (w < k_words) {  // key block: words alternate between scale pairs and min pairs (k_scale_word)
      dst = reinterpret_cast<uint32_t*>(pg) + w;
      val = (w & 1) ? __floats2half2_rn(-2.0f * u0, -2.0f * u1) : __floats2half2_rn(0.02f + 0.28f * u0, 0.02f + 0.28f * u1);
    } else {
      const int t = (w - k_words) / v_words, j = (w - k_words) % v_words;
      dst = reinterpret_cast<uint32_t*>(pg + kv::k_scale_bytes(d) + t * kv::tile_bytes(d, bits) + 2 * kv::code_bytes(d, bits)) + j;
      val = __floats2half2_rn(0.1f + 0.5f * u0, -u1);  // (scale, min)
    }
    *dst = *reinterpret_cast<uint32_t*>(&val);
  }
}

struct KvCopy {
  void* pool = nullptr;
  void* packed = nullptr;
  uint8_t* page_packed = nullptr;
  int32_t *table = nullptr, *positions = nullptr, *n_tokens = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_json = std::fopen(argv[1], "w");
  const std::vector<long> contexts = contexts_from_args(argc, argv, {4096L, 32768L, 131072L});
  const lc::DeviceInfo info = device_or_skip();
  std::printf("device: %s, %d SMs, L2 %.0f MB\n", info.name.c_str(), info.n_sm, info.l2_bytes / 1e6);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // Ceilings.
  const size_t big = size_t{1} << 30;
  void *src, *dst;
  uint32_t* sink;
  CK(cudaMalloc(&src, big));
  CK(cudaMalloc(&dst, big));
  CK(cudaMalloc(&sink, 4));
  fill_random<<<4096, 256, 0, st>>>(static_cast<uint16_t*>(src), big / 2, 7, 1);
  CK(cudaGetLastError());
  const double copy_us = time_graph(st, 10, 7, [&](int) { CK(cudaMemcpyAsync(dst, src, big, cudaMemcpyDeviceToDevice, st)); });
  const double copy_tbps = 2.0 * big / (copy_us * 1e-6) / 1e12;
  record("copy", "-", 0, 0, copy_us, 2.0 * big, copy_tbps);
  const double read_us = time_graph(st, 10, 7, [&](int) {
    read_only<<<info.n_sm * 8, 512, 0, st>>>(static_cast<const uint4*>(src), big / 16, sink);
  });
  const double read_tbps = big / (read_us * 1e-6) / 1e12;
  record("read", "-", 0, 0, read_us, static_cast<double>(big), read_tbps);
  CK(cudaFree(src));
  CK(cudaFree(dst));
  std::printf("copy (D2D, read+write): %.3f TB/s    read-only kernel: %.3f TB/s\n", copy_tbps, read_tbps);

  // Decode attention, Llama-3-8B shape.
  const int32_t n_head = 32, n_head_kv = 8, d = 128, pt = 64;
  struct Row {
    const char* dtype;
    long ctx;
    int splits;
    double us, tbps;
  };
  std::vector<Row> rows;
  const bool kivi_only = std::getenv("LONGCTX_BENCH_KIVI_ONLY") != nullptr;  // for A/B runs of the packed path
  for (lc::KvDtype dt : {lc::KvDtype::BF16, lc::KvDtype::F16}) {
    if (kivi_only) break;
    const char* dname = dt == lc::KvDtype::BF16 ? "bf16" : "f16";
    for (long ctx : contexts) {
      if (dt == lc::KvDtype::F16 && ctx != 32768) continue;  // f16 reads the same bytes; one size shows it
      const int32_t n = static_cast<int32_t>(ctx);
      const int32_t n_pages_head = (n + pt - 1) / pt;
      const size_t page_bytes = 2 * static_cast<size_t>(pt) * d * 2;
      const double kv_bytes = 2.0 * n * n_head_kv * d * 2;
      const int n_copies = std::max(1, static_cast<int>(3.0 * info.l2_bytes / kv_bytes + 0.999));
      std::vector<KvCopy> copies(static_cast<size_t>(n_copies) + 1);  // the last: pages in order, for comparison
      std::mt19937 rng(42);
      for (int ci = 0; ci <= n_copies; ++ci) {
        KvCopy& kc = copies[static_cast<size_t>(ci)];
        const int32_t n_pages = n_pages_head * n_head_kv;
        CK(cudaMalloc(&kc.pool, static_cast<size_t>(n_pages) * page_bytes));
        fill_random<<<4096, 256, 0, st>>>(static_cast<uint16_t*>(kc.pool), static_cast<size_t>(n_pages) * page_bytes / 2,
                                          1000u + ci, dt == lc::KvDtype::BF16);
        CK(cudaGetLastError());
        std::vector<int32_t> ids(static_cast<size_t>(n_pages));
        std::iota(ids.begin(), ids.end(), 0);
        if (ci < n_copies) std::shuffle(ids.begin(), ids.end(), rng);  // pages scattered over the pool
        std::vector<int32_t> pos(static_cast<size_t>(n) * n_head_kv), ntok(n_head_kv, n);
        for (int32_t h = 0; h < n_head_kv; ++h)
          for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(h) * n + i] = i;
        CK(cudaMalloc(&kc.table, ids.size() * 4));
        CK(cudaMalloc(&kc.positions, pos.size() * 4));
        CK(cudaMalloc(&kc.n_tokens, ntok.size() * 4));
        CK(cudaMemcpy(kc.table, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kc.positions, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kc.n_tokens, ntok.data(), ntok.size() * 4, cudaMemcpyHostToDevice));
      }
      void *q, *out;
      int32_t* qpos;
      CK(cudaMalloc(&q, static_cast<size_t>(n_head) * d * 2));
      CK(cudaMalloc(&out, static_cast<size_t>(n_head) * d * 2));
      CK(cudaMalloc(&qpos, 4));
      fill_random<<<16, 256, 0, st>>>(static_cast<uint16_t*>(q), static_cast<size_t>(n_head) * d, 5, dt == lc::KvDtype::BF16);
      CK(cudaMemcpy(qpos, &n, 4, cudaMemcpyHostToDevice));
      CK(cudaDeviceSynchronize());

      auto view = [&](int ci) {
        lc::PagedKvView kv;
        kv.pool = copies[static_cast<size_t>(ci)].pool;
        kv.page_table = copies[static_cast<size_t>(ci)].table;
        kv.positions = copies[static_cast<size_t>(ci)].positions;
        kv.n_tokens = copies[static_cast<size_t>(ci)].n_tokens;
        kv.n_seq = 1;
        kv.n_head_kv = n_head_kv;
        kv.head_dim = d;
        kv.page_tokens = pt;
        kv.max_pages = n_pages_head;
        kv.max_tokens = n;
        kv.dtype = dt;
        return kv;
      };
      const lc::DecodeAttentionParams p{n_head, 1.0f / std::sqrt(static_cast<float>(d)), 0};
      lc::DecodeAttentionPlan auto_plan;
      CS(lc::decode_attention_plan(p, view(0), n, &auto_plan));
      // The planner's split count, and two others to show how sensitive the time is to it.
      std::vector<int> split_options = {0, auto_plan.n_splits * 2, std::max(1, auto_plan.n_splits / 2)};
      for (int so : split_options) {
        lc::DecodeAttentionPlan plan;
        CS(lc::decode_attention_plan(p, view(0), n, &plan, so));
        void* ws = nullptr;
        if (plan.workspace_bytes) CK(cudaMalloc(&ws, plan.workspace_bytes));
        CS(lc::decode_attention_workspace_init(plan, ws, st));
        const int steps = std::max(20, n_copies * ((20 + n_copies - 1) / n_copies));
        const double us = time_graph(st, steps, 9, [&](int i) {
          CS(lc::decode_attention(p, plan, q, qpos, view(i % n_copies), out, ws, st));
        });
        const double tbps = kv_bytes / (us * 1e-6) / 1e12;
        record(so == 0 ? "ours" : "ours_splits", dname, ctx, plan.n_splits, us, kv_bytes, tbps);
        if (so == 0) rows.push_back({dname, ctx, plan.n_splits, us, tbps});
        std::printf("decode %s ctx %6ld splits %4d%s: %8.2f us  %.3f TB/s\n", dname, ctx, plan.n_splits,
                    so == 0 ? " (plan)" : "       ", us, tbps);
        if (so == 0) {  // the same plan with the splits merged by a second kernel (DecodeMerge::Kernel)
          lc::DecodeAttentionPlan plan_k = plan;
          plan_k.merge = lc::DecodeMerge::Kernel;
          const double usk = time_graph(st, steps, 9, [&](int i) {
            CS(lc::decode_attention(p, plan_k, q, qpos, view(i % n_copies), out, ws, st));
          });
          record("ours_merge_kernel", dname, ctx, plan.n_splits, usk, kv_bytes, kv_bytes / (usk * 1e-6) / 1e12);
          std::printf("decode %s ctx %6ld splits %4d merge kernel:      %8.2f us  %.3f TB/s\n", dname, ctx,
                      plan.n_splits, usk, kv_bytes / (usk * 1e-6) / 1e12);
        }
        if (so == 0 && n_copies == 1) {  // the same step with the pages in pool order: what scattering costs
          const double us2 = time_graph(st, steps, 9, [&](int) {
            CS(lc::decode_attention(p, plan, q, qpos, view(n_copies), out, ws, st));
          });
          record("ours_pages_in_order", dname, ctx, plan.n_splits, us2, kv_bytes, kv_bytes / (us2 * 1e-6) / 1e12);
          std::printf("decode %s ctx %6ld splits %4d pages in pool order: %8.2f us  %.3f TB/s\n", dname, ctx,
                      plan.n_splits, us2, kv_bytes / (us2 * 1e-6) / 1e12);
        }
        if (ws) CK(cudaFree(ws));
      }
      for (auto& kc : copies) {
        CK(cudaFree(kc.pool));
        CK(cudaFree(kc.table));
        CK(cudaFree(kc.positions));
        CK(cudaFree(kc.n_tokens));
      }
      CK(cudaFree(q));
      CK(cudaFree(out));
      CK(cudaFree(qpos));
    }
  }
  // KIVI: packed pages, the last page of each head plain bf16.
  struct KiviRow {
    const char* fmt;
    long ctx;
    int splits;
    double us, bytes, tbps, eff_tbps;
  };
  std::vector<KiviRow> kivi_rows;
  for (lc::KvPacking f : {lc::KvPacking::Kivi2, lc::KvPacking::Kivi4}) {
    const int bits = lc::kv_packing_bits(f);
    const char* fname = bits == 2 ? "kivi2" : "kivi4";
    for (long ctx : contexts) {
      if (ctx < 32768 && bits != 2) continue;
      const int32_t n = static_cast<int32_t>(ctx);
      const int32_t n_pages_head = (n + pt - 1) / pt;
      const size_t plain_bytes = 2 * static_cast<size_t>(pt) * d * 2;
      lc::PagedKvView shape;
      shape.head_dim = d;
      shape.page_tokens = pt;
      shape.packing = f;
      const size_t packed_bytes = shape.packed_page_bytes();
      const double read_bytes = static_cast<double>(n_head_kv) *
                                ((n_pages_head - 1) * static_cast<double>(packed_bytes) + plain_bytes + 4.0 * n);
      const double bf16_bytes = 2.0 * n * n_head_kv * d * 2;
      const int n_copies = std::max(1, static_cast<int>(3.0 * info.l2_bytes / read_bytes + 0.999));
      std::vector<KvCopy> copies(static_cast<size_t>(n_copies));
      std::mt19937 rng(43);
      const int32_t n_pages = n_pages_head * n_head_kv;
      for (int ci = 0; ci < n_copies; ++ci) {
        KvCopy& kc = copies[static_cast<size_t>(ci)];
        CK(cudaMalloc(&kc.pool, static_cast<size_t>(n_head_kv) * plain_bytes));
        CK(cudaMalloc(&kc.packed, static_cast<size_t>(n_pages) * packed_bytes));
        fill_random<<<4096, 256, 0, st>>>(static_cast<uint16_t*>(kc.pool), n_head_kv * plain_bytes / 2, 2000u + ci, 1);
        fill_random<<<4096, 256, 0, st>>>(static_cast<uint16_t*>(kc.packed), n_pages * packed_bytes / 2, 3000u + ci, 1);
        fix_kivi_scales<<<4096, 256, 0, st>>>(static_cast<uint8_t*>(kc.packed), static_cast<size_t>(n_pages), d, bits, pt,
                                              4000u + ci);
        CK(cudaGetLastError());
        // Packed pages scattered over the packed pool; the plain tail page of head h is plain page h.
        std::vector<int32_t> packed_ids(static_cast<size_t>(n_pages));
        std::iota(packed_ids.begin(), packed_ids.end(), 0);
        std::shuffle(packed_ids.begin(), packed_ids.end(), rng);
        std::vector<int32_t> ids(static_cast<size_t>(n_pages));
        std::vector<uint8_t> flags(static_cast<size_t>(n_pages), 1);
        for (int32_t h = 0; h < n_head_kv; ++h)
          for (int32_t i = 0; i < n_pages_head; ++i) {
            const size_t e = static_cast<size_t>(h) * n_pages_head + i;
            const bool last = i == n_pages_head - 1;
            ids[e] = last ? h : packed_ids[e];
            flags[e] = last ? 0 : 1;
          }
        std::vector<int32_t> pos(static_cast<size_t>(n) * n_head_kv), ntok(n_head_kv, n);
        for (int32_t h = 0; h < n_head_kv; ++h)
          for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(h) * n + i] = i;
        CK(cudaMalloc(&kc.table, ids.size() * 4));
        CK(cudaMalloc(&kc.page_packed, flags.size()));
        CK(cudaMalloc(&kc.positions, pos.size() * 4));
        CK(cudaMalloc(&kc.n_tokens, ntok.size() * 4));
        CK(cudaMemcpy(kc.table, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kc.page_packed, flags.data(), flags.size(), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kc.positions, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kc.n_tokens, ntok.data(), ntok.size() * 4, cudaMemcpyHostToDevice));
      }
      void *q, *out;
      int32_t* qpos;
      CK(cudaMalloc(&q, static_cast<size_t>(n_head) * d * 2));
      CK(cudaMalloc(&out, static_cast<size_t>(n_head) * d * 2));
      CK(cudaMalloc(&qpos, 4));
      fill_random<<<16, 256, 0, st>>>(static_cast<uint16_t*>(q), static_cast<size_t>(n_head) * d, 6, 1);
      CK(cudaMemcpy(qpos, &n, 4, cudaMemcpyHostToDevice));
      CK(cudaDeviceSynchronize());
      auto view = [&](int ci) {
        lc::PagedKvView kv = shape;
        const KvCopy& kc = copies[static_cast<size_t>(ci)];
        kv.pool = kc.pool;
        kv.packed_pool = kc.packed;
        kv.page_packed = kc.page_packed;
        kv.page_table = kc.table;
        kv.positions = kc.positions;
        kv.n_tokens = kc.n_tokens;
        kv.n_seq = 1;
        kv.n_head_kv = n_head_kv;
        kv.max_pages = n_pages_head;
        kv.max_tokens = n;
        kv.dtype = lc::KvDtype::BF16;
        return kv;
      };
      const lc::DecodeAttentionParams p{n_head, 1.0f / std::sqrt(static_cast<float>(d)), 0};
      lc::DecodeAttentionPlan plan;
      CS(lc::decode_attention_plan(p, view(0), n, &plan));
      void* ws = nullptr;
      if (plan.workspace_bytes) CK(cudaMalloc(&ws, plan.workspace_bytes));
      CS(lc::decode_attention_workspace_init(plan, ws, st));
      // One step checked for finite output (random codes under sane scales give finite attention).
      CS(lc::decode_attention(p, plan, q, qpos, view(0), out, ws, st));
      CK(cudaStreamSynchronize(st));
      std::vector<uint16_t> ho(static_cast<size_t>(n_head) * d);
      CK(cudaMemcpy(ho.data(), out, ho.size() * 2, cudaMemcpyDeviceToHost));
      int n_bad = 0;
      for (uint16_t b : ho) n_bad += (b & 0x7f80u) == 0x7f80u;  // inf or NaN in bf16
      if (n_bad) std::printf("kivi %s ctx %ld: %d non-finite outputs\n", fname, ctx, n_bad);
      const int steps = std::max(20, n_copies * ((20 + n_copies - 1) / n_copies));
      const double us = time_graph(st, steps, 9, [&](int i) {
        CS(lc::decode_attention(p, plan, q, qpos, view(i % n_copies), out, ws, st));
      });
      const double tbps = read_bytes / (us * 1e-6) / 1e12, eff = bf16_bytes / (us * 1e-6) / 1e12;
      if (g_json)
        std::fprintf(g_json,
                     "{\"what\":\"kivi\",\"dtype\":\"%s\",\"ctx\":%ld,\"n_splits\":%d,\"us\":%.3f,\"bytes\":%.0f,"
                     "\"tbps\":%.4f,\"bf16_bytes\":%.0f,\"eff_tbps\":%.4f,\"finite\":%s}\n",
                     fname, ctx, plan.n_splits, us, read_bytes, tbps, bf16_bytes, eff, n_bad ? "false" : "true");
      kivi_rows.push_back({fname, ctx, plan.n_splits, us, read_bytes, tbps, eff});
      std::printf("decode %s ctx %6ld splits %4d: %8.2f us  read %.1f MB at %.3f TB/s  effective %.3f TB/s\n", fname,
                  ctx, plan.n_splits, us, read_bytes / 1e6, tbps, eff);
      if (ws) CK(cudaFree(ws));
      // The token policies' scores over the same view (attention_scores.cu): an H2O step (1 row) and a SnapKV
      // window (32 rows), timed once per run at 32K on 2-bit pages; not the product's hot path, a cost to know.
      if (bits == 2 && ctx == 32768) {
        for (int n_q : {1, 32}) {
          void *sq, *sws;
          int32_t* sqpos;
          float* sc;
          CK(cudaMalloc(&sq, static_cast<size_t>(n_q) * n_head * d * 2));
          CK(cudaMalloc(&sqpos, static_cast<size_t>(n_q) * 4));
          CK(cudaMalloc(&sc, static_cast<size_t>(n_head_kv) * n * 4));
          fill_random<<<64, 256, 0, st>>>(static_cast<uint16_t*>(sq), static_cast<size_t>(n_q) * n_head * d, 9, 1);
          std::vector<int32_t> qp(static_cast<size_t>(n_q));
          for (int r = 0; r < n_q; ++r) qp[static_cast<size_t>(r)] = n - n_q + r;
          CK(cudaMemcpy(sqpos, qp.data(), qp.size() * 4, cudaMemcpyHostToDevice));
          CK(cudaMemset(sc, 0, static_cast<size_t>(n_head_kv) * n * 4));
          lc::AttentionScoresPlan splan;
          CS(lc::attention_scores_plan(p, view(0), n_q, n, &splan));
          CK(cudaMalloc(&sws, splan.workspace_bytes));
          const double sus = time_graph(st, steps, 5, [&](int i) {
            CS(lc::attention_scores(p, splan, n_q, sq, sqpos, view(i % n_copies), sc, n, sws, st));
          });
          if (g_json)
            std::fprintf(g_json, "{\"what\":\"scores\",\"dtype\":\"%s\",\"ctx\":%ld,\"n_q\":%d,\"us\":%.3f}\n", fname,
                         ctx, n_q, sus);
          std::printf("attention scores %s ctx %6ld rows %2d: %8.2f us\n", fname, ctx, n_q, sus);
          CK(cudaFree(sq));
          CK(cudaFree(sqpos));
          CK(cudaFree(sc));
          CK(cudaFree(sws));
        }
      }
      for (auto& kc : copies) {
        CK(cudaFree(kc.pool));
        CK(cudaFree(kc.packed));
        CK(cudaFree(kc.page_packed));
        CK(cudaFree(kc.table));
        CK(cudaFree(kc.positions));
        CK(cudaFree(kc.n_tokens));
      }
      CK(cudaFree(q));
      CK(cudaFree(out));
      CK(cudaFree(qpos));
    }
  }

  CK(cudaStreamDestroy(st));
  std::printf("\n| kernel | dtype | context | splits | us | TB/s | of copy | of read |\n|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows)
    std::printf("| longctx decode | %s | %ld | %d | %.1f | %.2f | %.2f | %.2f |\n", r.dtype, r.ctx, r.splits, r.us, r.tbps,
                r.tbps / copy_tbps, r.tbps / read_tbps);
  for (const KiviRow& r : kivi_rows)
    std::printf("| longctx decode | %s | %ld | %d | %.1f | %.2f (read) / %.2f (effective) | %.2f | %.2f |\n", r.fmt,
                r.ctx, r.splits, r.us, r.tbps, r.eff_tbps, r.eff_tbps / copy_tbps, r.eff_tbps / read_tbps);
  if (g_json) std::fclose(g_json);
  return 0;
}
