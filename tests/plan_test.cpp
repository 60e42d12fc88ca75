// The cost model (src/plan): its KV accounting against a real store under real policies, the paper's running
// example from the paper's own assumptions, and its predictions against what was measured: the device benchmarks
// of an H200 recorded in BENCHMARKS.md (tests/golden/plan/h200_measured.json). Decode and prefill within 15%,
// memory within 2%. Quest's reads per decode step against what the engine's read filter leaves a real forward to
// read (2%), KVzip's reconstruction pass in prefill (exact arithmetic), self-speculation's arithmetic and its draft
// view against the engine's own (exact), and --spec's errors.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "expect_error.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/speculative.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/quest.h"
#include "model/forward.h"
#include "model/model.h"
#include "plan/cost_model.h"
#include "plan/kernel_rates_json.h"
#include "kv/spec_draft.h"
#include "plan/kv_footprint.h"
#include "plan/plan_arch.h"
#include "plan/probe.h"
#include "test_models.h"

namespace longctx {
namespace {

using nlohmann::json;

json load_golden(const std::string& name) {
  std::ifstream in(test::golden_dir() + "/plan/" + name);
  EXPECT_TRUE(in) << "missing golden " << name;
  return json::parse(in);
}

// A small arch of the given geometry, for the store comparisons (weights do not matter there).
plan::PlanArch small_arch(int32_t n_layer, int32_t n_head_kv, int32_t head_dim, int32_t window) {
  plan::PlanArch a;
  a.name = "test";
  a.n_layer = n_layer;
  a.n_head = n_head_kv * 2;
  a.n_head_kv = n_head_kv;
  a.head_dim = head_dim;
  a.sliding_window = window;
  a.layer_is_local.assign(static_cast<size_t>(n_layer), false);
  if (window > 0)
    for (int32_t i = 0; i < n_layer; ++i) a.layer_is_local[static_cast<size_t>(i)] = i % 2 == 0;
  return a;
}

// Fills a real store as the engine does (prefill with the policy's hooks, window expiry, sealing, then decode
// steps), and returns it with what a decode step at the last position reads (bench's kv_bytes_read rule).
struct Filled {
  std::unique_ptr<kv::KvPagePool> pool;
  std::unique_ptr<kv::KvSequence> seq;
  int64_t read_bytes = 0;
};

Filled fill_store(const plan::PlanArch& a, kv::KvPolicy& policy, int32_t n_prompt, int32_t n_gen) {
  kv::KvGeometry geo;
  geo.n_layer = a.n_layer;
  geo.n_head_kv = a.n_head_kv;
  geo.head_dim = a.head_dim;
  geo.format = policy.page_format();
  geo.sealed_format = policy.sealed_format();
  geo.n_recent_full_precision = policy.n_recent_full_precision();
  Filled f;
  f.pool = std::make_unique<kv::KvPagePool>(geo.page_tokens, geo.head_dim, size_t{1} << 32);
  f.seq = std::make_unique<kv::KvSequence>(geo, *f.pool);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1, 1);
  const auto append = [&](int32_t first, int32_t n) {
    std::vector<float> k(static_cast<size_t>(n) * a.n_head_kv * a.head_dim), v(k.size());
    for (float& x : k) x = u(rng);
    for (float& x : v) x = u(rng);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = first + i;
    for (int32_t il = 0; il < a.n_layer; ++il) f.seq->append(il, k.data(), v.data(), pos.data(), n);
  };
  const auto expire = [&](int32_t next_pos) {  // forward.cpp's kv_expire_window
    if (a.sliding_window <= 0) return;
    for (int32_t il = 0; il < a.n_layer; ++il) {
      if (!a.local(il)) continue;
      for (int32_t g = 0; g < a.n_head_kv; ++g) {
        std::vector<int32_t> slots;
        const kv::KvHeadCache& h = f.seq->head(il, g);
        for (int32_t s = 0; s < h.n_tokens(); ++s)
          if (h.positions[static_cast<size_t>(s)] <= next_pos - a.sliding_window) slots.push_back(s);
        const int32_t n_before = h.n_tokens();
        if (slots.empty()) continue;
        f.seq->remove_slots(il, g, slots);
        policy.on_slots_removed(il, g, n_before, slots);
      }
    }
  };
  const auto random_scores = [&](kv::KvScores& s, int32_t first_pos) {
    s.reset(a.n_layer, a.n_head_kv, n_prompt + n_gen + 1, n_prompt + n_gen + 1);
    s.first_pos = first_pos;
    for (auto& l : s.layers)
      for (float& x : l) x = u(rng) + 1.0f;
  };
  policy.reset();
  f.seq->set_auto_seal(false);
  kv::KvScores scores;
  const int32_t from = policy.prefill_score_from(n_prompt);
  // In chunks, the window expiring after each one that holds no voter, as Generator and bench prefill.
  constexpr int32_t kChunk = 256;
  for (int32_t start = 0; start < n_prompt; start += kChunk) {
    const int32_t len = std::min(kChunk, n_prompt - start);
    append(start, len);
    if (from == INT_MAX || start + len <= from) expire(start + len);
  }
  if (from != INT_MAX) random_scores(scores, from);
  policy.after_prefill(*f.seq, scores);
  expire(n_prompt);
  f.seq->seal_full_pages();
  f.seq->set_auto_seal(true);
  for (int32_t i = 0; i < n_gen; ++i) {
    append(n_prompt + i, 1);
    kv::KvScores step;
    if (policy.wants_decode_scores()) random_scores(step, n_prompt + i);
    policy.after_decode_step(*f.seq, step);
    if (i + 1 < n_gen) expire(n_prompt + i + 1);
  }
  const int32_t q = n_prompt + n_gen - 1;  // the last step's query
  for (int32_t il = 0; il < a.n_layer; ++il)
    for (int32_t g = 0; g < a.n_head_kv; ++g) {
      const kv::KvHeadCache& h = f.seq->head(il, g);
      int32_t s = 0;
      for (const kv::KvPage& page : h.pages)
        for (int32_t end = s + page.n_rows; s < end; ++s) {
          const int32_t p = h.positions[static_cast<size_t>(s)];
          if (p > q || (a.local(il) && p <= q - a.sliding_window)) continue;
          f.read_bytes += static_cast<int64_t>(f.pool->page_bytes(page.format) / 64);
        }
    }
  return f;
}

// The footprint's pages and reads are the store's own, byte for byte; its metadata counts the tables at their
// sizes, where the store's vectors may hold spare capacity.
TEST(PlanKvFootprint, MatchesTheStoreUnderEveryPolicyShape) {
  struct Case {
    const char* spec;
    int32_t n_prompt, n_gen, window;
    bool exact = true;
    bool page_slack = false;  // the store may hold one more open page in each local head
  };
  const Case cases[] = {
      {"full", 700, 5, 0},
      {"full:type=f32", 300, 3, 0},
      {"kivi:bits=2", 700, 70, 0},
      {"snapkv:budget=200+kivi:bits=4", 900, 9, 0},
      {"pyramid:budget=128", 600, 4, 0},
      {"streaming:budget=100,sink=4+kivi:bits=8", 500, 20, 0},
      {"h2o:budget=150", 400, 6, 0},
      // Sliding-window layers hold their window; expired one slot a step, the oldest page drains while the newest
      // fills (KvHeadCache::lazy_holes): within one open page a local head.
      {"full", 1000, 4, 256, true, true},
      // A budget above window + chunk: the window fills. The window expires tokens out of packed pages during
      // decode, which stay part full (they keep their scales) while the plan counts them dense: within one open
      // page a local head.
      {"snapkv:budget=600+kivi:bits=2", 1000, 2, 256, true, true},
      // A budget below it: how many of the policy's picks lie inside the window depends on the scores, so the
      // footprint's full window bounds the tokens (not the bytes: a partial window ends in an open f16 page).
      {"snapkv:budget=300+kivi:bits=2", 1000, 2, 256, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.spec);
    const plan::PlanArch a = small_arch(4, 2, 64, c.window);
    auto policy = kv::make_kv_policy(c.spec, a.n_layer, a.n_head_kv);
    const Filled f = fill_store(a, *policy, c.n_prompt, c.n_gen);
    const plan::KvFootprint fp = plan::kv_footprint(a, *policy, c.n_prompt, c.n_gen);
    const kv::KvBytes held = f.seq->bytes();
    int64_t n_slots = 0;
    for (int32_t il = 0; il < a.n_layer; ++il)
      for (int32_t g = 0; g < a.n_head_kv; ++g) n_slots += f.seq->head(il, g).n_tokens();
    if (!c.exact) {
      EXPECT_GE(fp.n_slots, n_slots);
      continue;
    }
    EXPECT_EQ(fp.n_slots, n_slots);
    if (c.page_slack) {
      int64_t n_local_heads = 0;
      for (int32_t il = 0; il < a.n_layer; ++il) n_local_heads += a.local(il) ? a.n_head_kv : 0;
      const int64_t open_page = static_cast<int64_t>(f.pool->page_bytes(policy->page_format()));
      EXPECT_LE(fp.payload_bytes, static_cast<int64_t>(held.payload));
      EXPECT_LE(static_cast<int64_t>(held.payload), fp.payload_bytes + n_local_heads * open_page);
      EXPECT_NEAR(static_cast<double>(fp.read_bytes), static_cast<double>(f.read_bytes), 0.01 * fp.read_bytes);
    } else {
      EXPECT_EQ(fp.payload_bytes, static_cast<int64_t>(held.payload));
      EXPECT_EQ(fp.read_bytes, f.read_bytes);
    }
    // The tables at their sizes; the store's vectors grow by doubling and shrink only well below capacity.
    EXPECT_LE(fp.metadata_bytes, static_cast<int64_t>(held.metadata));
    EXPECT_GE(2 * fp.metadata_bytes + 64 * 4 * a.n_layer * a.n_head_kv, static_cast<int64_t>(held.metadata));
  }
}

TEST(PlanArch, ShapesAndErrors) {
  const plan::PlanArch a = plan::plan_arch_from_shape("llama3-8b", GgmlType::BF16);
  EXPECT_EQ(a.n_params, 8030261248);  // Llama 3 8B's parameter count
  // What the device bench reads per token (BENCHMARKS.md: 15.01 GB).
  EXPECT_NEAR(static_cast<double>(a.weight_bytes_per_token()), 15.01e9, 0.005e9);
  EXPECT_THROW(plan::plan_arch_from_shape("llama5", GgmlType::BF16), Error);
  EXPECT_THROW(plan::parse_weight_type("q3_x"), Error);
  EXPECT_EQ(plan::parse_weight_type("q4_k"), GgmlType::Q4_K);
  EXPECT_THROW(plan::device_by_name("tpu"), Error);
  EXPECT_THROW(plan::device_by_name("h100:bw=fast"), Error);
  EXPECT_THROW(plan::device_by_name("h100:speed=2"), Error);
  EXPECT_EQ(plan::device_by_name("h100:mem=94").memory_bytes, int64_t{94} << 30);
}

// "Challenges in Deploying Long-Context Transformers: A Theoretical Peak Performance Analysis", its running
// example: a 34B model of Yi-34B-200K's shape (60 layers, 8 kv-heads of 128, bf16) on one A100 (312 TFLOP/s,
// 2 TB/s, 80 GB), at 100% of every rate. The paper's figures, as it reports them: KV 0.91 GB at 4K and 22.8 GB
// at 100K (GiB); prefill 0.89 s at 4K and 14.1 s at 50K; 250 decoded tokens in 8.5 s at 4K and 9.8 s at 50K.
TEST(PlanPaper, ThirtyFourBAtFiftyKOnAnA100) {
  const plan::PlanArch a = plan::plan_arch_from_shape("yi-34b", GgmlType::BF16);
  plan::DeviceSpec d = plan::device_by_name("a100");
  plan::set_peak_fractions(d);
  auto full = kv::make_kv_policy("full", a.n_layer, a.n_head_kv);
  const auto gib = [](int64_t b) { return static_cast<double>(b) / 1073741824.0; };

  // KV per token: 2 (K, V) x 60 layers x 8 heads x 128 x 2 bytes, exactly, in the store's pages.
  EXPECT_EQ(plan::kv_footprint(a, *full, 64 * 100).payload_bytes, 64 * 100 * 245760);
  EXPECT_NEAR(gib(plan::kv_footprint(a, *full, 4000).payload_bytes), 0.91, 0.02);
  EXPECT_NEAR(gib(plan::kv_footprint(a, *full, 100000).payload_bytes), 22.8, 0.2);
  EXPECT_NEAR(gib(plan::kv_footprint(a, *full, 50000).payload_bytes), 11.44, 0.02);

  // Prefill: the linear part is 2 FLOPs a weight a token (the paper's 2 x 34B; the shape has 33.5 B outside the
  // embeddings). The paper's 14.1 s at 50K counts the attention as n^2 x d x layers, half of what a causal
  // FlashAttention performs (QK^T and PV, each 2 FLOPs a multiply-add over half the n^2 pairs): with its count
  // the model gives 14.2 s; with the full count, which the H200 prefill figures below are measured in, 17.6 s.
  const plan::PrefillCost p4 = plan::prefill_cost(a, d, 4000), p50 = plan::prefill_cost(a, d, 50000);
  EXPECT_NEAR(p4.seconds, 0.89, 0.02 * 0.89);
  const double paper_count_50k = p50.matmul_s + 0.5 * p50.attention_s;
  EXPECT_NEAR(paper_count_50k, 14.1, 0.02 * 14.1);
  EXPECT_NEAR(p50.attention_flops, 2.0 * 50000.0 * 50000.0 * 7168 * 60, 0.001 * p50.attention_flops);
  EXPECT_NEAR(p50.seconds, 17.6, 0.1);

  // Decode, one user: weights plus KV over 2 TB/s; 250 tokens.
  const double d4 = plan::decode_cost(a, d, plan::kv_footprint(a, *full, 4000)).seconds;
  const double d50 = plan::decode_cost(a, d, plan::kv_footprint(a, *full, 50000)).seconds;
  EXPECT_NEAR(250 * d4, 8.5, 0.03 * 8.5);
  EXPECT_NEAR(250 * d50, 9.8, 0.03 * 9.8);

  // Concurrency is HBM-bound: 80 GB less 68.8 GB of weights leaves room for 11 users at 4K and none at 50K
  // (12.3 GB of KV; the paper's "about one" divides 12 GB by 11.4 GiB).
  plan::PlanOptions o;
  EXPECT_EQ(plan::plan_row(a, d, *full, "full", 4000, o).n_fit, 11);
  EXPECT_EQ(plan::plan_row(a, d, *full, "full", 50000, o).n_fit, 0);
  // Context switching is PCIe-bound: the 50K user's KV out and another's in.
  EXPECT_NEAR(plan::plan_row(a, d, *full, "full", 50000, o).swap_s, 2 * 12.4e9 / 32e9, 0.05);
}

double rel_err(double predicted, double measured) { return predicted / measured - 1.0; }

// The H200 figures of BENCHMARKS.md against the model with the h200 datasheet and the GPU fractions.
TEST(PlanValidation, H200AgainstBenchmarks) {
  const json g = load_golden("h200_measured.json");
  const plan::PlanArch a = plan::plan_arch_from_shape("llama3-8b", GgmlType::BF16);
  const plan::DeviceSpec d = plan::device_by_name("h200");
  EXPECT_LE(std::abs(rel_err(static_cast<double>(a.weight_bytes_per_token()), g["weight_bytes_per_token"])), 0.02);
  auto full = kv::make_kv_policy("full", a.n_layer, a.n_head_kv);
  EXPECT_EQ(plan::kv_footprint(a, *full, 64).read_bytes / 64, g["kv_bytes_per_cached_token"].get<int64_t>());
  for (const json& c : g["decode"]) {
    auto policy = kv::make_kv_policy(c["kv"], a.n_layer, a.n_head_kv);
    const plan::KvFootprint fp = plan::kv_footprint(a, *policy, c["ctx"].get<int64_t>());
    const plan::DecodeCost dc = plan::decode_cost(a, d, fp);
    const double e = rel_err(1.0 / dc.seconds, c["tokens_per_s"]);
    SCOPED_TRACE(c.dump());
    EXPECT_LE(std::abs(e), 0.15) << "predicted " << 1.0 / dc.seconds << " tok/s";
    if (c.contains("bytes_per_token")) {
      // The device packs its own KIVI layout and reads positions beside: within a few % of the CPU page's bytes.
      EXPECT_LE(std::abs(rel_err(static_cast<double>(dc.bytes), c["bytes_per_token"])), 0.02);
    }
  }
  for (const json& c : g["prefill"]) {
    const plan::PrefillCost pc = plan::prefill_cost(a, d, c["ctx"].get<int64_t>());
    SCOPED_TRACE(c.dump());
    EXPECT_LE(std::abs(rel_err(pc.seconds, c["seconds"])), 0.15) << "predicted " << pc.seconds << " s";
    // The benchmark's FLOP count is the model's.
    EXPECT_LE(std::abs(rel_err((pc.matmul_flops + pc.attention_flops) / c["seconds"].get<double>() / 1e12, c["tflops"])), 0.02);
  }
}

// The kernel rates survive their JSON form, and a measurement with a part missing is refused by name.
TEST(PlanKernelRates, JsonRoundTripAndErrors) {
  plan::KernelRates k;
  k.n_threads = 2;
  k.copy_bandwidth = 2.5e10;
  k.gemv_bytes_per_s[GgmlType::Q4_1] = 1.1e10;
  k.gemm_flops[GgmlType::Q8_0] = 3e11;
  k.attention_read_bytes_per_s[KvFormat::Kivi2] = 9e9;
  k.matmul_call_s = 2e-6;
  k.attention_call_s = 3e-6;
  k.attention_flops = 1e11;
  k.layer_overhead_s = 4e-6;
  k.prefill_row_overhead_s = 5e-7;
  k.quest_rank_s = 6e-9;
  k.attention_page_s = 7e-9;
  k.prefill_attention_page_s = 8e-9;
  k.view_page_s = 9e-9;
  const plan::KernelRates back = plan::kernel_rates_from_json(plan::kernel_rates_to_json(k));
  EXPECT_EQ(back.n_threads, 2);
  EXPECT_EQ(back.copy_bandwidth, k.copy_bandwidth);
  EXPECT_EQ(back.gemv_bytes_per_s, k.gemv_bytes_per_s);
  EXPECT_EQ(back.gemm_flops, k.gemm_flops);
  EXPECT_EQ(back.attention_read_bytes_per_s, k.attention_read_bytes_per_s);
  EXPECT_EQ(back.prefill_row_overhead_s, k.prefill_row_overhead_s);
  EXPECT_EQ(back.quest_rank_s, k.quest_rank_s);
  EXPECT_EQ(back.attention_page_s, k.attention_page_s);
  EXPECT_EQ(back.prefill_attention_page_s, k.prefill_attention_page_s);
  EXPECT_EQ(back.view_page_s, k.view_page_s);
  json j = plan::kernel_rates_to_json(k);
  j.erase("attention_call_s");
  EXPECT_THROW(plan::kernel_rates_from_json(j), Error);
  j = plan::kernel_rates_to_json(k);
  j["gemm_flops"]["Q9_9"] = 1.0;
  EXPECT_THROW(plan::kernel_rates_from_json(j), Error);
}

// A golden file's model: its arch from the real GGUF and the device of the probes taken beside its bench cases.
struct GoldenModel {
  std::unique_ptr<Model> model;
  plan::PlanArch arch;
  plan::DeviceSpec device;
};
void load_golden_model(const json& m, GoldenModel* out) {
  const std::string path = test::model_dir() + "/" + m["file"].get<std::string>();
  LONGCTX_REQUIRE_MODEL(path);
  out->model = Model::load(path);
  out->arch = plan::plan_arch_from_model(*out->model, m["file"]);
  out->device = plan::measured_cpu(plan::kernel_rates_from_json(m["probes"]), 0);
}

// What the plan predicts for one bench case: tg, the mean over its steps (step i reads the cache after the fill and
// i + 1 generated tokens, its own included); pp, the prompt on top of the cache the depth left under the policy.
double predicted_tokens_per_s(const plan::PlanArch& a, const plan::DeviceSpec& d, const kv::KvPolicy& policy,
                              const json& c) {
  const int64_t depth = c["depth"];
  if (c["test"].get<std::string>().rfind("tg", 0) == 0) {
    const int64_t n_gen = c["n_gen"];
    double seconds = 0;
    for (int64_t i = 0; i < n_gen; ++i)
      seconds += plan::decode_cost(a, d, plan::kv_footprint(a, policy, depth, i + 1), 1, policy.wants_decode_scores()).seconds;
    return static_cast<double>(n_gen) / seconds;
  }
  const plan::KvFootprint before = plan::kv_footprint(a, policy, depth, 0);
  return c["n_prompt"].get<double>() /
         plan::prefill_cost(a, d, c["n_prompt"].get<int64_t>(), before.slots, true, before.page_tokens).seconds;
}

// `longctx bench` on a CPU beside the plan's probes of the same kernels in the same run
// (scripts/plan_golden_cpu.py; tests/golden/plan/cpu_measured.json on an Intel Xeon, cpu_measured_epyc.json on an
// AMD EPYC with the probes of a page's own cost): the plan predicts every case from those probes and the real
// GGUF's tensors. Decode (tg, the mean over its steps) and prefill (pp) within 15% of the
// median measured, the KV bytes a decode step reads within 2% of what bench counted in the store; the two known
// gaps below have their own bounds until the model closes them.
void check_against_bench(const json& g) {
  ASSERT_TRUE(g.contains("models") && !g["models"].empty());
  for (const json& m : g["models"]) {
    GoldenModel gm;
    ASSERT_NO_FATAL_FAILURE(load_golden_model(m, &gm));
    const plan::PlanArch& a = gm.arch;
    for (const json& c : m["cases"]) {
      SCOPED_TRACE(m["file"].get<std::string>() + " " + c["kv_spec"].get<std::string>() + " " +
                   c["test"].get<std::string>() + " @ " + std::to_string(c["depth"].get<int64_t>()));
      auto policy = kv::make_kv_policy(c["kv_spec"], a.n_layer, a.n_head_kv);
      const int64_t depth = c["depth"];
      const double predicted = predicted_tokens_per_s(a, gm.device, *policy, c);
      if (c["test"].get<std::string>().rfind("tg", 0) == 0) {
        const int64_t n_gen = c["n_gen"];
        // Known gap: Quest's decode with pages of 16 over a deep cache is over-predicted by up to 19% on the second
        // machine (the ranking, the pages' attention and view costs probed and counted; BENCHMARKS.md, "A page's
        // own cost"); 20% there until the rest is found.
        const bool narrowed = policy->read_filter() != nullptr && depth > 0;
        EXPECT_LE(std::abs(rel_err(predicted, c["tokens_per_s"])), narrowed ? 0.20 : 0.15)
            << "predicted " << predicted << " tok/s";
        // bench counts the mean of its first and last steps' reads.
        const double read = 0.5 * static_cast<double>(plan::kv_footprint(a, *policy, depth, 1).read_bytes +
                                                      plan::kv_footprint(a, *policy, depth, n_gen).read_bytes);
        // Known gap: on sliding-window layers the window expires tokens out of packed pages, which stay part full
        // while the footprint counts them dense (PlanKvFootprint's page slack): 5% there, 2% elsewhere.
        const bool window_packs = a.sliding_window > 0 && policy->sealed_format() != policy->page_format();
        if (c["kv_bytes_per_token"].get<double>() > 0)
          EXPECT_LE(std::abs(rel_err(read, c["kv_bytes_per_token"])), window_packs ? 0.05 : 0.02)
              << "predicted " << read << " bytes";
        else
          EXPECT_LE(read, 64.0 * a.n_layer * a.n_head_kv * a.head_dim * 4) << "an empty cache reads at most a page";
        EXPECT_LE(std::abs(rel_err(static_cast<double>(a.weight_bytes_per_token()), c["weight_bytes_per_token"])), 0.02);
      } else {
        // Known gap: three prompts under a policy that works at the prompt's end (kivi2 @ 0, snapkv+kivi2 on Gemma
        // @ 4096 and 16384) are over-predicted by up to 23%. Not by the policy's work: perf puts scoring, selection,
        // compaction and packing under 1% of samples (BENCHMARKS.md, "Quest's ranking, and plan on a second CPU"),
        // and on a second machine the full cache's prefill is off as much. 25% there until the model finds it.
        const bool policy_work = policy->sealed_format() != policy->page_format() ||
                                 policy->prefill_score_from(c["n_prompt"].get<int32_t>()) != INT_MAX;
        EXPECT_LE(std::abs(rel_err(predicted, c["tokens_per_s"])), policy_work ? 0.25 : 0.15)
            << "predicted " << predicted << " tok/s";
      }
    }
  }
}

TEST(PlanValidation, CpuAgainstBench) { check_against_bench(load_golden("cpu_measured.json")); }
TEST(PlanValidation, CpuAgainstBenchOnASecondMachine) { check_against_bench(load_golden("cpu_measured_epyc.json")); }

// Quest's decode (its partial reads, its ranking and its pages' own costs, probed) on the second machine
// (tests/golden/plan/cpu_measured_epyc.json, SmolLM2 also under quest:budget=1024,page=16): what Quest changes, its
// predicted speed over the full cache's at the same depth and test, within 15% of the measured ratio.
TEST(PlanValidation, QuestOverFullOnASecondMachine) {
  const json g = load_golden("cpu_measured_epyc.json");
  for (const json& m : g["models"]) {
    GoldenModel gm;
    ASSERT_NO_FATAL_FAILURE(load_golden_model(m, &gm));
    ASSERT_GT(gm.device.kernels.quest_rank_s, 0.0);
    // (test, depth) -> predicted and measured tokens/s of each policy.
    std::map<std::pair<std::string, int64_t>, std::map<std::string, std::pair<double, double>>> by_case;
    for (const json& c : m["cases"]) {
      auto policy = kv::make_kv_policy(c["kv_spec"], gm.arch.n_layer, gm.arch.n_head_kv);
      by_case[{c["test"], c["depth"]}][c["kv_spec"]] = {predicted_tokens_per_s(gm.arch, gm.device, *policy, c),
                                                         c["tokens_per_s"].get<double>()};
    }
    for (const auto& [key, policies] : by_case) {
      ASSERT_TRUE(policies.count("full")) << key.first << " @ " << key.second;
      const auto [pf, mf] = policies.at("full");
      for (const auto& [spec, pm] : policies) {
        if (spec.rfind("quest", 0) != 0) continue;
        SCOPED_TRACE(m["file"].get<std::string>() + " " + spec + " " + key.first + " @ " + std::to_string(key.second));
        const double predicted_ratio = pm.first / pf, measured_ratio = pm.second / mf;
        EXPECT_LE(std::abs(rel_err(predicted_ratio, measured_ratio)), 0.15)
            << "predicted " << predicted_ratio << "x the full cache, measured " << measured_ratio << "x";
      }
    }
  }
}

// Wraps the engine's read filter and counts what each narrowed view leaves the attention to read: the rows of its
// pages at their page's bytes per row (the decode kernel's unit, as bench counts the dense read), and the key
// summaries Quest ranked (quest_select_pages reads the summary of every page but the recent ones of a head it narrows).
class CountingReadFilter final : public KvReadFilter {
 public:
  CountingReadFilter(kv::QuestReadFilter& quest, const kv::KvPagePool& pool) : quest_(quest), pool_(pool) {}
  void narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) override {
    std::vector<int32_t> pages_before;
    for (const KvHeadView& h : view.heads) pages_before.push_back(h.n_pages());
    quest_.narrow(layer, q, q_pos, n_tok, view);
    const int32_t n_read = quest_.read_pages(view.page_tokens), n_recent = quest_.recent_pages(view.page_tokens);
    for (size_t g = 0; g < view.heads.size(); ++g) {
      const KvHeadView& h = view.heads[g];
      for (int32_t p = 0; p < h.n_pages(); ++p)
        page_bytes += int64_t{h.page_rows(p)} *
                      static_cast<int64_t>(pool_.page_bytes(h.formats[static_cast<size_t>(p)]) / view.page_tokens);
      const bool narrowed = layer >= quest_.dense_layers() && pages_before[g] > n_read;
      if (narrowed) {
        EXPECT_EQ(h.n_pages(), n_read) << "layer " << layer;
        summary_bytes += int64_t{pages_before[g] - n_recent} * 2 * view.head_dim * static_cast<int64_t>(sizeof(float));
      }
      dense_pages += pages_before[g];
    }
  }
  int64_t page_bytes = 0, summary_bytes = 0, dense_pages = 0;

 private:
  kv::QuestReadFilter& quest_;
  const kv::KvPagePool& pool_;
};

// Quest's bytes per decode step: the plan's footprint against what the engine's read filter leaves a real forward
// (the tiny synthetic llama decoding after a dense prefill, as the session runs it) to read, summed over the steps
// (each step's prediction at its own context). The whole read (pages and key summaries, what bench reports as KV
// read/token) within 2%, the summaries exactly; the pages alone within 2% where they are all f16 (there the pages
// read are full but the newest, so the count is exact), within 5% under KIVI, where the plan counts the picked
// pages at the mean bytes of a head's pages and the query's pick decides how many of them are packed (+2.6% and
// -1.4% in the cases below).
TEST(PlanQuest, ReadPerStepIsWhatTheReadFilterReads) {
  const auto model = Model::synthetic("tiny:3");
  const ModelConfig& c = model->config();
  const plan::PlanArch a = plan::plan_arch_from_model(*model, "tiny");
  ThreadPool tp(1);
  struct Case {
    const char* spec;
    int32_t n_prompt, n_gen;
    double tol_pages;
  };
  const Case cases[] = {
      {"quest:budget=128,dense_layers=1,page=16", 1000, 8, 0.02},  // 63 pages, 8 read on layer 1
      {"quest:budget=256,dense_layers=0", 1500, 8, 0.02},          // pages of 64: 24, 4 read on both layers
      {"quest:budget=512,dense_layers=0,page=32", 600, 4, 0.02},   // 19 pages of 32, 16 read
      {"quest:budget=256,dense_layers=0,page=16,recent=64", 1000, 8, 0.02},  // 4 of the 16 read always the newest
      // Packed pages beside the f16 ones of KIVI's residual window and the newest page.
      {"quest:budget=128,dense_layers=0,page=16+kivi:bits=4", 1200, 8, 0.05},
      {"quest:budget=256,dense_layers=0,page=16+kivi:bits=2", 2000, 32, 0.05},
  };
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.spec);
    auto policy = kv::make_kv_policy(cs.spec, c.n_layer, c.n_head_kv);
    auto* quest = dynamic_cast<kv::QuestReadFilter*>(policy->read_filter());
    ASSERT_NE(quest, nullptr);
    kv::KvGeometry geo{c.n_layer, c.n_head_kv, c.head_dim, policy->page_tokens(), policy->page_format(),
                       policy->sealed_format()};
    geo.n_recent_full_precision = policy->n_recent_full_precision();
    geo.key_summaries = policy->wants_key_summaries();
    kv::KvPagePool pool(geo.page_tokens, c.head_dim, size_t{1} << 28);
    kv::KvSequence seq(geo, pool);
    Forward fwd(*model, tp, 256);
    std::vector<float> logits(static_cast<size_t>(c.n_vocab));
    seq.set_auto_seal(false);
    for (int32_t start = 0; start < cs.n_prompt; start += 256) {
      const int32_t len = std::min(256, cs.n_prompt - start);
      std::vector<int32_t> ids(static_cast<size_t>(len)), pos(ids.size());
      for (int32_t i = 0; i < len; ++i) {
        pos[static_cast<size_t>(i)] = start + i;
        ids[static_cast<size_t>(i)] = (start + i) * 37 % c.n_vocab;
      }
      fwd.run(seq, ids.data(), pos.data(), len, {}, nullptr);  // prefill reads everything
    }
    seq.seal_full_pages();
    seq.set_auto_seal(true);
    CountingReadFilter count(*quest, pool);
    int64_t predicted_pages = 0, predicted_summaries = 0, dense = 0;
    for (int32_t i = 0; i < cs.n_gen; ++i) {
      const int32_t pos = cs.n_prompt + i, id = (i * 11 + 5) % c.n_vocab;
      fwd.run(seq, &id, &pos, 1, {0}, logits.data(), nullptr, kv::KvPositions::Original, &count);
      // The step reads the cache after its own token is appended.
      const plan::KvFootprint fp = plan::kv_footprint(a, *policy, cs.n_prompt, i + 1);
      predicted_pages += fp.read_bytes - fp.read_bytes_summaries;
      predicted_summaries += fp.read_bytes_summaries;
      dense += fp.read_bytes_dense;
    }
    const double engine_total = static_cast<double>(count.page_bytes + count.summary_bytes);
    EXPECT_NEAR(static_cast<double>(predicted_pages + predicted_summaries), engine_total, 0.02 * engine_total);
    EXPECT_NEAR(static_cast<double>(predicted_pages), static_cast<double>(count.page_bytes),
                cs.tol_pages * count.page_bytes);
    EXPECT_EQ(predicted_summaries, count.summary_bytes);
    EXPECT_GT(count.summary_bytes, 0);
    EXPECT_LT(predicted_pages, dense) << "Quest reads part of the cache";
  }
}

// KVzip's reconstruction (EngineSession::reconstruct) after the prompt: the prompt's prefill is the full cache's,
// and the pass on top is, per chunk, the model's own prefill of the instruction and the chunk over the cached
// prompt without logits, its attention counted twice (the score pass). Exact arithmetic (1e-9 relative).
TEST(PlanKvzip, ReconstructionAddsItsPassToPrefill) {
  const plan::PlanArch a = plan::plan_arch_from_shape("llama3-8b", GgmlType::BF16);
  auto full = kv::make_kv_policy("full", a.n_layer, a.n_head_kv);
  for (const char* device : {"h200", "cpu"}) {
    SCOPED_TRACE(device);
    const plan::DeviceSpec d = plan::device_by_name(device);
    plan::PlanOptions o;
    o.reconstruction_first_tokens = 9;
    o.reconstruction_next_tokens = 14;
    const int64_t n = 5000;
    const auto rel = [](double x) { return 1e-9 * std::abs(x); };
    const plan::PlanRow rf = plan::plan_row(a, d, *full, "full", n, o);
    EXPECT_EQ(rf.reconstruction.n_rows, 0);

    // Chunks of 2048: [0, 2048), [2048, 4096), [4096, 5000); the later ones repeat 8 tokens of the one before.
    auto kvzip = kv::make_kv_policy("kvzip:budget=1024,chunk=2048", a.n_layer, a.n_head_kv);
    const plan::PlanRow rz = plan::plan_row(a, d, *kvzip, "kvzip", n, o);
    const int64_t rows[] = {9 + 2048, 14 + 8 + 2048, 14 + 8 + 904};
    EXPECT_EQ(rz.reconstruction.n_rows, rows[0] + rows[1] + rows[2]);
    EXPECT_NEAR(rz.prefill.seconds, rf.prefill.seconds + rz.reconstruction.seconds, rel(rz.prefill.seconds));
    EXPECT_GT(rz.reconstruction.seconds, rf.prefill.seconds) << "the pass costs more than the prompt it repeats";
    EXPECT_NEAR(rz.ttft_s, rz.prefill.seconds + plan::decode_cost(a, d, rz.kv).seconds, rel(rz.ttft_s));
    // Its matmuls: every row through the layers, no head; its attention: each row sees the n cached tokens and
    // the chunk's rows up to its own, 4 x head_dim FLOPs per (query head, key), twice.
    EXPECT_NEAR(rz.reconstruction.matmul_flops, (rows[0] + rows[1] + rows[2]) * a.layer_flops_per_token(),
                rel(rz.reconstruction.matmul_flops));
    double pairs = 0;
    for (int64_t r : rows) pairs += static_cast<double>(r) * n + static_cast<double>(r) * (r + 1) / 2;
    EXPECT_NEAR(rz.reconstruction.attention_flops, 2.0 * 4 * a.head_dim * a.n_head * a.n_layer * pairs,
                rel(rz.reconstruction.attention_flops));

    // One chunk covering the prompt: the pass is the model's own prefill of n + 9 tokens on a cache of n tokens,
    // without the head's row, its attention twice.
    auto one = kv::make_kv_policy("kvzip:budget=1024,chunk=8192", a.n_layer, a.n_head_kv);
    const plan::PlanRow r1 = plan::plan_row(a, d, *one, "kvzip", n, o);
    const std::vector<int64_t> cached(static_cast<size_t>(a.n_layer) * a.n_head_kv, n);
    const plan::PrefillCost own = plan::prefill_cost(a, d, n + 9, cached, /*logits=*/false);
    EXPECT_NEAR(r1.reconstruction.seconds, own.seconds + own.attention_s, rel(own.seconds));
    EXPECT_NEAR(r1.prefill.seconds, rf.prefill.seconds + own.seconds + own.attention_s, rel(r1.prefill.seconds));
    EXPECT_LT(own.matmul_s, plan::prefill_cost(a, d, n + 9, cached).matmul_s) << "the head is not run";
  }
}

// Self-speculation: tau is the geometric sum; decode time per token is (gamma x draft + verify) / tau, falls as
// acceptance rises, and on a bandwidth-bound GPU equals plain decode when the draft reads the whole cache and every
// draft is accepted (gamma + 1 steps' worth of reads for gamma + 1 tokens): the gain comes only from what the draft
// does not read. On the CPU the verify's matmuls are gamma + 1 one-row matmuls. Exact arithmetic (1e-9), the
// equality with plain decode within 0.1% (the verify's cache holds the gamma drafts, the draft its own).
TEST(PlanSpec, ArithmeticOfSelfSpeculation) {
  for (int32_t g : {1, 2, 4, 7}) {
    for (double acc : {0.0, 0.3, 0.85, 0.99, 1.0}) {
      double sum = 0;
      for (int32_t i = 0; i <= g; ++i) sum += std::pow(acc, i);
      EXPECT_NEAR(plan::spec_tokens_per_step(acc, g), sum, 1e-12) << g << " " << acc;
    }
  }
  EXPECT_EQ(plan::spec_tokens_per_step(0.0, 4), 1.0);
  EXPECT_EQ(plan::spec_tokens_per_step(1.0, 4), 5.0);

  const plan::PlanArch a = plan::plan_arch_from_shape("llama3-8b", GgmlType::BF16);
  auto full = kv::make_kv_policy("full", a.n_layer, a.n_head_kv);
  for (const char* device : {"h200", "cpu"}) {
    SCOPED_TRACE(device);
    const plan::DeviceSpec d = plan::device_by_name(device);
    const bool cpu = std::string(device) == "cpu";
    plan::SpecPlan sp = plan::parse_spec_plan("self:gamma=4,draft=streaming:budget=512,sink=4");
    EXPECT_FALSE(sp.accept_given);
    EXPECT_EQ(sp.accept, plan::SpecPlan::kDefaultAccept);
    const int64_t n = 32768;
    double last = 1e300;
    for (double acc : {0.0, 0.25, 0.5, 0.75, 0.9, 1.0}) {
      sp.accept = acc;
      const plan::SpecCost s = plan::spec_cost(a, d, *full, sp, n);
      EXPECT_NEAR(s.seconds_per_token, (4 * s.draft.seconds + s.verify.seconds) / plan::spec_tokens_per_step(acc, 4),
                  1e-9 * s.seconds_per_token);
      EXPECT_LT(s.seconds_per_token, last) << "acceptance " << acc;
      last = s.seconds_per_token;
      EXPECT_NEAR(s.plain_seconds, plan::decode_cost(a, d, plan::kv_footprint(a, *full, n)).seconds,
                  1e-12 * s.plain_seconds);
      // The draft reads 1/64 of the cache or so, the verify all of it once.
      EXPECT_LT(s.draft_kv.read_bytes, plan::kv_footprint(a, *full, n).read_bytes / 40);
      EXPECT_EQ(s.verify_kv_read_bytes, plan::kv_footprint(a, *full, n, 4).read_bytes);
      const plan::DecodeCost plain = plan::decode_cost(a, d, plan::kv_footprint(a, *full, n));
      if (cpu)
        EXPECT_NEAR(s.verify.weights_s, 5 * plain.weights_s, 1e-9 * s.verify.weights_s);
      else
        EXPECT_NEAR(s.verify.weights_s, plain.weights_s, 1e-9 * s.verify.weights_s);
    }
    // A draft over the whole cache (budget above the context), every draft accepted.
    sp = plan::parse_spec_plan("self:gamma=4,draft=streaming:budget=65536,sink=4,accept=1");
    EXPECT_TRUE(sp.accept_given);
    const plan::SpecCost whole = plan::spec_cost(a, d, *full, sp, n);
    if (cpu)
      EXPECT_LT(whole.speedup(), 0.9) << "on the CPU the verify pays per row: no gain without a smaller draft";
    else
      EXPECT_NEAR(whole.seconds_per_token, whole.plain_seconds, 1e-3 * whole.plain_seconds);
  }

  // A Quest draft costs what a quest row's decode step costs (its reads and ranking) on the same cache with the
  // drafts in it; the verify still reads the whole cache.
  for (const char* device : {"h200", "cpu"}) {
    SCOPED_TRACE(device);
    const plan::DeviceSpec d = plan::device_by_name(device);
    const plan::SpecPlan sp = plan::parse_spec_plan("self:gamma=3,draft=quest:budget=1024,page=16,accept=0.8");
    EXPECT_EQ(sp.draft, "quest:budget=1024,page=16");
    const int64_t n = 32768;
    const plan::SpecCost s = plan::spec_cost(a, d, *full, sp, n, "full");
    auto quest = kv::make_kv_policy("full+quest:budget=1024,page=16", a.n_layer, a.n_head_kv);
    const plan::KvFootprint want = plan::kv_footprint(a, *quest, n, 3);
    EXPECT_EQ(s.draft_kv.read_bytes, want.read_bytes);
    EXPECT_GT(s.draft_kv.read_bytes_summaries, 0);
    EXPECT_NEAR(s.draft.seconds, plan::decode_cost(a, d, want).seconds, 1e-12 * s.draft.seconds);
    EXPECT_EQ(s.verify_kv_read_bytes, plan::kv_footprint(a, *full, n, 3).read_bytes);
  }

  // Only the full cache verifies: the row of another policy gets no spec figures.
  plan::PlanOptions o;
  o.spec = plan::parse_spec_plan("self");
  const plan::DeviceSpec d = plan::device_by_name("h200");
  EXPECT_TRUE(plan::plan_row(a, d, *full, "full", 4096, o).spec.has_value());
  auto kivi = kv::make_kv_policy("kivi:bits=2", a.n_layer, a.n_head_kv);
  EXPECT_FALSE(plan::plan_row(a, d, *kivi, "kivi", 4096, o).spec.has_value());
  EXPECT_THROW(plan::spec_cost(a, d, *kivi, *o.spec, 4096), Error);
}

// What the plan says a draft forward reads is the engine's own draft view (SpecDraftView) over a full cache of the
// same positions: the rows of the pages it reads, exactly (the plan adds the drafts' own tokens, (gamma + 1) / 2 a
// head: 1 for gamma = 1).
TEST(PlanSpec, DraftViewIsTheEnginesPages) {
  const auto model = Model::synthetic("tiny:3");
  const ModelConfig& c = model->config();
  const plan::PlanArch a = plan::plan_arch_from_model(*model, "tiny");
  auto full = kv::make_kv_policy("full", a.n_layer, a.n_head_kv);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const char* draft : {"streaming:budget=256,sink=4", "streaming:budget=100,sink=70", "snapkv:budget=256",
                            "snapkv:budget=128,window=16", "streaming:budget=2048,sink=4"}) {
    for (int32_t n : {1000, 1024, 1500}) {
      SCOPED_TRACE(std::string(draft) + " @ " + std::to_string(n));
      kv::KvGeometry geo{c.n_layer, c.n_head_kv, c.head_dim};
      kv::KvPagePool pool(geo.page_tokens, c.head_dim, size_t{1} << 28);
      kv::KvSequence seq(geo, pool);
      std::vector<float> k(static_cast<size_t>(n) * c.n_head_kv * c.head_dim), v(k.size());
      for (float& x : k) x = u(rng);
      for (float& x : v) x = u(rng);
      std::vector<int32_t> pos(static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = i;
      for (int32_t il = 0; il < c.n_layer; ++il) seq.append(il, k.data(), v.data(), pos.data(), n);
      SpecDraftView view(draft, c);
      kv::KvScores scores;
      const int32_t from = view.prefill_score_from(n);
      if (from != INT_MAX) {
        scores.reset(c.n_layer, c.n_head_kv, n, n);
        scores.first_pos = from;
        for (auto& l : scores.layers)
          for (float& x : l) x = u(rng) + 1.0f;
      }
      view.select(seq, from != INT_MAX ? &scores : nullptr, n);
      int64_t rows = 0;
      for (int32_t il = 0; il < c.n_layer; ++il)
        for (int32_t g = 0; g < c.n_head_kv; ++g)
          for (int32_t p : view.pages(seq, il, g)) rows += seq.head(il, g).pages[static_cast<size_t>(p)].n_rows;
      std::vector<std::unique_ptr<kv::TokenRanker>> owned;
      const plan::KvFootprint fp = plan::spec_draft_footprint(a, *full, *kv::make_draft_ranker(draft, owned), n, 1);
      EXPECT_EQ(fp.n_slots_read - int64_t{a.n_layer} * a.n_head_kv, rows);
      EXPECT_EQ(fp.read_bytes, fp.n_slots_read * 64 * 2 * 2 * 2 / 2);  // f16 K and V: 256 bytes a token
    }
  }
}

// --spec for plan: the engine's spec plus accept=; what is wrong is named, and the spec without accept= is one the
// engine takes.
TEST(PlanSpec, ParsesAndRefusesBadSpecs) {
  plan::SpecPlan sp = plan::parse_spec_plan("self:gamma=3,accept=0.9,draft=snapkv:budget=1024,window=32");
  EXPECT_EQ(sp.gamma, 3);
  EXPECT_EQ(sp.accept, 0.9);
  EXPECT_TRUE(sp.accept_given);
  EXPECT_EQ(sp.draft, "snapkv:budget=1024,window=32");
  sp = plan::parse_spec_plan("self:gamma=2,draft=streaming:budget=256,sink=4,accept=0.75");
  EXPECT_EQ(sp.gamma, 2);
  EXPECT_EQ(sp.accept, 0.75);
  EXPECT_EQ(sp.draft, "streaming:budget=256,sink=4");
  // The engine reads the same spec without accept= the same way.
  const SpecParams engine = parse_spec("self:gamma=2,draft=streaming:budget=256,sink=4");
  EXPECT_EQ(engine.gamma, sp.gamma);
  EXPECT_EQ(engine.draft, sp.draft);
  sp = plan::parse_spec_plan("self");
  EXPECT_EQ(sp.gamma, 4);
  EXPECT_EQ(sp.draft, SpecParams{}.draft);
  EXPECT_EQ(parse_spec("self").draft, SpecParams{}.draft);

  const auto throws_with = [](const std::string& spec, const std::string& what) {
    expect_error_containing([&] { plan::parse_spec_plan(spec); }, what, spec);
  };
  throws_with("medusa", "unknown method 'medusa'");
  throws_with("self:", "nothing after");
  throws_with("self:gamma=0", "gamma must be an integer in [1, 32], not '0'");
  throws_with("self:gamma=33", "gamma must be");
  throws_with("self:gamma=2.5", "gamma must be");
  throws_with("self:accept=1.5", "accept is the acceptance per drafted token, a number in [0, 1], not '1.5'");
  throws_with("self:accept=-0.1", "accept is");
  throws_with("self:accept=high", "accept is");
  throws_with("self:gamma=4,draft=streaming:budget=256,accept=2", "not '2'");
  throws_with("self:beta=2", "unknown argument 'beta=2'");
  throws_with("self:draft=snapkv:budget=64,accept=0.9,gamma=3", "only a last ',accept=V'");
  throws_with("self:draft=", "draft= is empty");
  throws_with("self:draft=h2o:budget=256", "attention of every decode step");
  throws_with("self:draft=kivi:bits=2", "not a token policy");
  throws_with("self:draft=streaming:budget=256+kivi:bits=2", "composition");
  throws_with("self:draft=streaming:budget=256,sinks=4", "sinks");
  throws_with("self:draft=nope:budget=3", "unknown policy 'nope'");
}

}  // namespace
}  // namespace longctx
