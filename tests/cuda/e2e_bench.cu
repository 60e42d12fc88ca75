// End-to-end decode of the synthetic Llama-3-8B (bf16 weights and KV, batch 1) against the memory roofline, all
// measured in one run (DESIGN.md, Benchmarking; issue 6's target: >= 85% of the roofline at 4K and 32K):
//   copy:   cudaMemcpy device to device, bytes read plus written over time (the roofline of the issue);
//   read:   a kernel that only reads, bytes over time (what a decode step does: the stricter ceiling);
//   decode: tokens/s of the CUDA-graph step with the KV filled with synthetic values at each context;
//           roofline tokens/s = bandwidth / (weight bytes + KV bytes read per token);
//   parts:  cuBLASLt GEMV alone per product (tuned, rotating over the 32 layers' weights) against the read-only
//           kernel over the same bytes, and decode attention alone over all layers, so the step's time is placed.
// Usage: e2e_bench [out.jsonl [context ...]]   (default contexts 4096 32768; a context N:R:kivi2 is a cache of N
// tokens compressed to N / R slots per head in 2-bit KIVI pages; a table on stdout, printed last)
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/llama_decode.h"
#include "backend/cuda/synthetic.h"
#include "bench_util.cuh"

namespace lc = longctx::cuda;
using namespace longctx::cuda_bench;

namespace {

FILE* g_json = nullptr;

// Median microseconds per launch of `body`, over reps events-timed runs of `inner` launches.
template <typename F>
double time_us(cudaStream_t st, int reps, int inner, F&& body) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  body();  // warm-up
  CK(cudaStreamSynchronize(st));
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(e0, st));
    for (int i = 0; i < inner; ++i) body();
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms * 1e3 / inner);
  }
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return median(t);
}

struct PrefillRow {
  long ctx;
  double ms, tok_s, tflops;
};

struct Row {
  const char* path;
  long ctx;
  int ratio;  // 1, or the compression of the cache (ctx / ratio slots kept per head)
  double us_token, tok_s, bytes_token, gbs, roof_copy_tok_s, roof_read_tok_s, gemm_us, attn_us;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_json = std::fopen(argv[1], "w");
  // A context N, or N:R:kiviB for a cache compressed to N / R slots per head with B-bit KIVI pages (the shape
  // SnapKV at a 1/R budget plus KIVI leaves; fill_kv_compressed_synthetic), timed on the fused path.
  struct Case {
    long ctx;
    int ratio;
    lc::KvPacking packing;
  };
  // Settings for A/B runs (LlamaDecodeOptions): --pdl=0, --gemv-unroll=4|8, --decode-merge=kernel.
  std::vector<Case> contexts;
  lc::LlamaDecodeOptions ab;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) == 0) {
      if (arg == "--pdl=0") {
        ab.pdl = false;
      } else if (arg.rfind("--gemv-unroll=", 0) == 0) {
        ab.gemv_unroll = std::atoi(arg.c_str() + 14);
      } else if (arg == "--decode-merge=kernel") {
        ab.decode_merge = lc::DecodeMerge::Kernel;
      } else {
        std::fprintf(stderr, "unknown setting '%s' (--pdl=0, --gemv-unroll=4|8, --decode-merge=kernel)\n", argv[i]);
        return 2;
      }
      continue;
    }
    Case c{std::atol(argv[i]), 1, lc::KvPacking::None};
    if (const char* r = std::strchr(argv[i], ':')) {
      c.ratio = std::atoi(r + 1);
      const char* k = std::strstr(r, ":kivi");
      const int bits = k ? std::atoi(k + 5) : 0;
      c.packing = bits == 2 ? lc::KvPacking::Kivi2 : bits == 4 ? lc::KvPacking::Kivi4 : bits == 8 ? lc::KvPacking::Kivi8
                                                                                      : lc::KvPacking::None;
      if (c.ratio < 1 || c.packing == lc::KvPacking::None) {
        std::fprintf(stderr, "bad case '%s': expected N or N:R:kivi2|4|8\n", argv[i]);
        return 2;
      }
    }
    contexts.push_back(c);
  }
  if (contexts.empty()) contexts = {{4096, 1, lc::KvPacking::None}, {32768, 1, lc::KvPacking::None}};
  lc::DeviceInfo info;
  if (lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s, %d SMs, L2 %.0f MB, %.1f GB\n", info.name.c_str(), info.n_sm, info.l2_bytes / 1e6,
              info.global_bytes / 1e9);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // Ceilings, on 2 GiB buffers of synthetic (never zero) data.
  const size_t big = size_t{2} << 30;
  void *src, *dst;
  uint32_t* sink;
  CK(cudaMalloc(&src, big));
  CK(cudaMalloc(&dst, big));
  CK(cudaMalloc(&sink, 4));
  CS(lc::synthetic_fill_bf16(src, big / 2, 99, 0xfff0u, longctx::tensor_init(0.0f, 1.0f), 0, st));
  const double copy_us = time_us(st, 7, 5, [&] { CK(cudaMemcpyAsync(dst, src, big, cudaMemcpyDeviceToDevice, st)); });
  const double copy_tbps = 2.0 * big / copy_us / 1e6;
  const double read_us = time_us(st, 7, 5, [&] {
    read_only<<<info.n_sm * 8, 512, 0, st>>>(static_cast<const uint4*>(src), big / 16, sink);
  });
  const double read_tbps = big / read_us / 1e6;
  CK(cudaGetLastError());
  CK(cudaFree(src));
  CK(cudaFree(dst));
  std::printf("copy (D2D, read + write): %.3f TB/s   read-only kernel: %.3f TB/s\n", copy_tbps, read_tbps);
  if (g_json) std::fprintf(g_json, "{\"what\":\"ceilings\",\"copy_tbps\":%.4f,\"read_tbps\":%.4f}\n", copy_tbps, read_tbps);

  longctx::ModelShape m;
  uint64_t seed = 0;
  CS(lc::synthetic_shape("llama3-8b:1", &m, &seed));
  std::vector<Row> rows;
  std::vector<PrefillRow> prefills;
  std::vector<lc::LlamaGemmReport> gemms;
  const int n_inner = 32, n_reps = 5;
  for (const Case& cs : contexts) {
    const long ctx = cs.ctx;
    const bool compressed = cs.packing != lc::KvPacking::None;
    const int32_t kept = static_cast<int32_t>(ctx / cs.ratio);
    lc::LlamaDecodeOptions opt = ab;
    opt.max_context = (compressed ? kept : static_cast<int32_t>(ctx)) + (n_reps + 2) * n_inner + 16;
    opt.kv_packing = cs.packing;
    opt.tune_gemms = gemms.empty();  // the products' tuning is reported once
    std::unique_ptr<lc::LlamaDecoder> dec;
    CS(lc::LlamaDecoder::create(m, seed, opt, &dec));
    const lc::LlamaDecodeBytes b = dec->bytes();
    if (gemms.empty()) gemms = dec->gemm_report();
    auto fill = [&] {
      return compressed ? dec->fill_kv_compressed_synthetic(static_cast<int32_t>(ctx), kept)
                        : dec->fill_kv_synthetic(static_cast<int32_t>(ctx));
    };
    // E2E_QUICK=1: the default path's decode alone (no prefill, no other variants, no tuning): for A/B runs of
    // builds or settings, one process each (scripts/cuda_device_e2e.sh, E2E_AB).
    static const bool quick = std::getenv("E2E_QUICK") != nullptr;
    if (quick) opt.tune_gemms = false;
    // The prompt through prefill() (the first call registers its GEMM shapes, the next two are timed), up to the
    // decoder's one-call prefill limit of 65535 tokens; past it, decode alone over the synthetic cache.
    if (!compressed && !quick && ctx <= 65535) {
      std::vector<int32_t> prompt(static_cast<size_t>(ctx));
      for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 2654435761u) % m.n_vocab);
      double best_ms = 1e30;
      bool finite = true;
      for (int rep = 0; rep < 3; ++rep) {
        CS(dec->reset());
        CS(dec->synchronize());
        const auto t0 = std::chrono::steady_clock::now();
        CS(dec->prefill(prompt));
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (rep > 0) best_ms = std::min(best_ms, ms);
        std::vector<float> lg;
        CS(dec->read_logits(&lg));
        for (float v : lg) finite &= std::isfinite(v);
      }
      // FLOPs: 2 per weight of the layers per token, and the attention as FlashAttention counts it (causal: halved).
      const double layer_w = static_cast<double>(m.q_dim() + 2 * m.kv_dim()) * m.n_embd +
                             static_cast<double>(m.n_embd) * m.q_dim() + 3.0 * m.n_ff * m.n_embd;
      const double flops = 2.0 * layer_w * m.n_layer * ctx + 4.0 * ctx * ctx * m.head_dim * m.n_head / 2 * m.n_layer;
      const PrefillRow pr{ctx, best_ms, ctx / (best_ms * 1e-3), flops / (best_ms * 1e-3) / 1e12};
      prefills.push_back(pr);
      std::printf("ctx %ld, prefill: %.1f ms (%.0f tok/s, %.0f TFLOP/s, logits %s)\n", ctx, pr.ms, pr.tok_s, pr.tflops,
                  finite ? "finite" : "NOT FINITE");
      if (g_json)
        std::fprintf(g_json, "{\"what\":\"prefill\",\"ctx\":%ld,\"ms\":%.2f,\"tok_s\":%.1f,\"tflops\":%.1f}\n", ctx,
                     pr.ms, pr.tok_s, pr.tflops);
      if (!finite) return 1;
    }
    CS(fill());
    float attn_us = 0;
    CS(dec->time_attention(20, &attn_us));
    struct Variant {
      const char* name;
      lc::MatvecPath path;
      lc::WeightPrefetch prefetch;
    };
    const Variant variants[] = {{"cuBLASLt", lc::MatvecPath::CublasLt, lc::WeightPrefetch::None},
                                {"fused GEMV", lc::MatvecPath::Fused, lc::WeightPrefetch::None},
                                {"fused, Wo to L2 evict_last", lc::MatvecPath::Fused, lc::WeightPrefetch::WoEvictLast}};
    for (const Variant& v : variants) {
      const bool fused = v.path == lc::MatvecPath::Fused;
      if ((compressed || quick) && (!fused || v.prefetch != lc::WeightPrefetch::None)) continue;  // the default only
      CS(dec->set_matvec(v.path));
      CS(dec->set_prefetch(v.prefetch));
      CS(fill());
      CS(dec->set_token(128000));
      CS(dec->step(n_inner));  // warm-up: captures the graph, then replays
      CS(dec->synchronize());
      auto dstream = static_cast<cudaStream_t>(dec->stream());
      std::vector<double> t;
      cudaEvent_t e0, e1;
      CK(cudaEventCreate(&e0));
      CK(cudaEventCreate(&e1));
      for (int r = 0; r < n_reps; ++r) {
        CK(cudaEventRecord(e0, dstream));
        CS(dec->step(n_inner));
        CK(cudaEventRecord(e1, dstream));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms * 1e3 / n_inner);
      }
      CK(cudaEventDestroy(e0));
      CK(cudaEventDestroy(e1));
      std::vector<float> logits;
      CS(dec->read_logits(&logits));
      std::vector<int32_t> toks;
      CS(dec->read_generated(&toks));
      bool finite = true;
      for (float v : logits) finite &= std::isfinite(v);
      uint64_t h = 1469598103934665603ull;  // FNV-1a of the generated tokens: a regression hash (DESIGN.md, Style 7)
      for (int32_t tk : toks) h = (h ^ static_cast<uint32_t>(tk)) * 1099511628211ull;
      double gemm_us = 0;
      for (const auto& g : dec->gemm_report()) gemm_us += g.n_per_token * (fused ? g.fused_us : g.tune.best_us);

      Row row;
      row.path = compressed ? (cs.packing == lc::KvPacking::Kivi2 ? "fused, 1/R kept, kivi2"
                               : cs.packing == lc::KvPacking::Kivi4 ? "fused, 1/R kept, kivi4" : "fused, 1/R kept, kivi8")
                            : v.name;
      row.ctx = ctx;
      row.ratio = cs.ratio;
      row.us_token = median(t);
      row.tok_s = 1e6 / row.us_token;
      const double grown = n_inner * (1 + n_reps / 2.0);  // the cache grows by one token a step
      if (compressed) {  // packed pages, then the bf16 tail (and what the steps appended), and 4 B of position a slot
        const double n_heads = static_cast<double>(m.n_layer) * m.n_head_kv;
        const double n_packed = (kept - 1) / opt.page_tokens;
        const double tail = kept - n_packed * opt.page_tokens + grown;
        row.bytes_token = static_cast<double>(b.weights_per_token) +
                          n_heads * (n_packed * b.kv_packed_page + tail * 2.0 * m.head_dim * 2 + (kept + grown) * 4.0);
      } else {
        row.bytes_token = static_cast<double>(b.weights_per_token) + static_cast<double>(b.kv_per_token_per_ctx) * (ctx + grown);
      }
      row.gbs = row.bytes_token / row.us_token / 1e3;
      row.roof_copy_tok_s = copy_tbps * 1e12 / row.bytes_token;
      row.roof_read_tok_s = read_tbps * 1e12 / row.bytes_token;
      row.gemm_us = gemm_us;
      row.attn_us = attn_us;
      rows.push_back(row);
      std::printf("ctx %ld, %s: %.1f us/token (%.1f tok/s), %.2f GB/token (weights %.2f GB held %.2f, KV store %.2f GB), "
                  "%.0f GB/s; attention alone %.1f us, products alone %.1f us; logits %s; %zu tokens, hash %016llx\n",
                  ctx, row.path, row.us_token, row.tok_s, row.bytes_token / 1e9, b.weights_per_token / 1e9,
                  b.weights_total / 1e9, b.kv_store / 1e9, row.gbs, attn_us, gemm_us, finite ? "finite" : "NOT FINITE",
                  toks.size(), static_cast<unsigned long long>(h));
      if (g_json)
        std::fprintf(g_json,
                     "{\"what\":\"decode\",\"path\":\"%s\",\"ctx\":%ld,\"ratio\":%d,\"us_token\":%.2f,\"tok_s\":%.2f,\"bytes_token\":%.0f,"
                     "\"gbs\":%.1f,\"roof_copy_tok_s\":%.2f,\"roof_read_tok_s\":%.2f,\"attn_us\":%.2f,\"gemm_us\":%.2f,"
                     "\"finite\":%d}\n",
                     row.path, ctx, row.ratio, row.us_token, row.tok_s, row.bytes_token, row.gbs, row.roof_copy_tok_s,
                     row.roof_read_tok_s, attn_us, gemm_us, finite ? 1 : 0);
      if (!finite) return 1;
    }
  }

  std::printf("\n| GEMV alone | n_out x n_in | MB | per token | cuBLASLt first us | cuBLASLt tuned us | TB/s | fused GEMV us | TB/s | fused of read-only |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& g : gemms) {
    const double mb = 2.0 * g.n_out * g.n_in / 1e6;
    const double tbps = mb / g.tune.best_us, fused_tbps = mb / g.fused_us;
    std::printf("| %s | %d x %d | %.1f | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", g.name, g.n_out, g.n_in, mb,
                g.n_per_token, g.tune.first_us, g.tune.best_us, tbps, g.fused_us, fused_tbps, fused_tbps / read_tbps);
    if (g_json)
      std::fprintf(g_json,
                   "{\"what\":\"gemv\",\"name\":\"%s\",\"n_out\":%d,\"n_in\":%d,\"first_us\":%.3f,\"best_us\":%.3f,"
                   "\"fused_us\":%.3f}\n",
                   g.name, g.n_out, g.n_in, g.tune.first_us, g.tune.best_us, g.fused_us);
  }
  std::printf("\nceilings: copy %.3f TB/s (read + write), read-only %.3f TB/s\n", copy_tbps, read_tbps);
  std::printf("| decode, llama3-8b bf16, B=1 | context | us/token | tok/s | GB/s | roofline tok/s (copy) | of copy roofline | roofline tok/s (read) | of read roofline | products alone us | attention alone us | rest us |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows)
    std::printf("| longctx, %s%s | %ldK | %.1f | %.1f | %.0f | %.1f | %.0f%% | %.1f | %.0f%% | %.0f | %.0f | %.0f |\n", r.path,
                r.ratio > 1 ? (" (R = " + std::to_string(r.ratio) + ")").c_str() : "", r.ctx / 1024, r.us_token, r.tok_s, r.gbs, r.roof_copy_tok_s, 100.0 * r.tok_s / r.roof_copy_tok_s, r.roof_read_tok_s,
                100.0 * r.tok_s / r.roof_read_tok_s, r.gemm_us, r.attn_us, r.us_token - r.gemm_us - r.attn_us);
  std::printf("\n| prefill, llama3-8b bf16, B=1 (cuBLASLt GEMMs, wgmma attention) | prompt | ms | tok/s | TFLOP/s |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const PrefillRow& r : prefills)
    std::printf("| longctx prefill() | %ldK | %.1f | %.0f | %.0f |\n", r.ctx / 1024, r.ms, r.tok_s, r.tflops);
  if (g_json) std::fclose(g_json);
  return 0;
}
