// The cost model (src/plan): its KV accounting against a real store under real policies, the paper's running
// example from the paper's own assumptions, and its predictions against what was measured: the device benchmarks
// of an H200 recorded in BENCHMARKS.md (tests/golden/plan/h200_measured.json). Decode and prefill within 15%,
// memory within 2%.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "model/model.h"
#include "plan/cost_model.h"
#include "plan/kernel_rates_json.h"
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
      {"full", 1000, 4, 256},                       // sliding-window layers hold their window
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
  const plan::KernelRates back = plan::kernel_rates_from_json(plan::kernel_rates_to_json(k));
  EXPECT_EQ(back.n_threads, 2);
  EXPECT_EQ(back.copy_bandwidth, k.copy_bandwidth);
  EXPECT_EQ(back.gemv_bytes_per_s, k.gemv_bytes_per_s);
  EXPECT_EQ(back.gemm_flops, k.gemm_flops);
  EXPECT_EQ(back.attention_read_bytes_per_s, k.attention_read_bytes_per_s);
  EXPECT_EQ(back.prefill_row_overhead_s, k.prefill_row_overhead_s);
  json j = plan::kernel_rates_to_json(k);
  j.erase("attention_call_s");
  EXPECT_THROW(plan::kernel_rates_from_json(j), Error);
  j = plan::kernel_rates_to_json(k);
  j["gemm_flops"]["Q9_9"] = 1.0;
  EXPECT_THROW(plan::kernel_rates_from_json(j), Error);
}

// `longctx bench` on a CPU beside the plan's probes of the same kernels in the same run
// (scripts/plan_golden_cpu.py, tests/golden/plan/cpu_measured.json): the plan predicts every case from those
// probes and the real GGUF's tensors. Decode (tg, the mean over its steps) and prefill (pp) within 15% of the
// median measured, the KV bytes a decode step reads within 2% of what bench counted in the store; the two known
// gaps below have their own bounds until the model closes them.
TEST(PlanValidation, CpuAgainstBench) {
  const json g = load_golden("cpu_measured.json");
  ASSERT_TRUE(g.contains("models") && !g["models"].empty());
  for (const json& m : g["models"]) {
    const std::string path = test::model_dir() + "/" + m["file"].get<std::string>();
    LONGCTX_REQUIRE_MODEL(path);
    const auto model = Model::load(path);
    const plan::PlanArch a = plan::plan_arch_from_model(*model, m["file"]);
    const plan::DeviceSpec d = plan::measured_cpu(plan::kernel_rates_from_json(m["probes"]), 0);
    for (const json& c : m["cases"]) {
      SCOPED_TRACE(m["file"].get<std::string>() + " " + c["kv_spec"].get<std::string>() + " " +
                   c["test"].get<std::string>() + " @ " + std::to_string(c["depth"].get<int64_t>()));
      auto policy = kv::make_kv_policy(c["kv_spec"], a.n_layer, a.n_head_kv);
      const int64_t depth = c["depth"];
      if (c["test"].get<std::string>().rfind("tg", 0) == 0) {
        const int64_t n_gen = c["n_gen"];
        // Step i reads the cache after the fill and i + 1 generated tokens (its own included).
        double seconds = 0;
        for (int64_t i = 0; i < n_gen; ++i) {
          const plan::KvFootprint fp = plan::kv_footprint(a, *policy, depth, i + 1);
          seconds += plan::decode_cost(a, d, fp, 1, policy->wants_decode_scores()).seconds;
        }
        const double predicted = static_cast<double>(n_gen) / seconds;
        EXPECT_LE(std::abs(rel_err(predicted, c["tokens_per_s"])), 0.15) << "predicted " << predicted << " tok/s";
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
        const plan::KvFootprint before = plan::kv_footprint(a, *policy, depth, 0);
        const plan::PrefillCost pc = plan::prefill_cost(a, d, c["n_prompt"].get<int64_t>(), before.slots);
        const double predicted = c["n_prompt"].get<double>() / pc.seconds;
        // Known gap: the model does not count KIVI packing at the end of a prompt nor SnapKV's scoring and cut,
        // which bench's pp includes; it over-predicts those prompts by up to 23%. 25% there until it does.
        const bool policy_work = policy->sealed_format() != policy->page_format() ||
                                 policy->prefill_score_from(c["n_prompt"].get<int32_t>()) != INT_MAX;
        EXPECT_LE(std::abs(rel_err(predicted, c["tokens_per_s"])), policy_work ? 0.25 : 0.15)
            << "predicted " << predicted << " tok/s";
      }
    }
  }
}

}  // namespace
}  // namespace longctx
