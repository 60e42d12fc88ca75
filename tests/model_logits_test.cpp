// End to end: the engine's logits and greedy continuations against goldens from an independent implementation
// (HF transformers running the same GGUF dequantized to f32; scripts/gen_logit_goldens.py). The token ids fed are
// the reference tokenizer's, and our tokenizer must produce the same ids from the same text.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/matmul.h"
#include "engine/generator.h"
#include "kv/policy.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

using nlohmann::json;

// Tolerances, in logit units, for f32 activations and accumulation from the same f32-dequantized weights as the
// reference. The only difference is summation order (blocked dot products, online softmax) through 18-30 layers:
// relative differences of ~1e-6 per op grow to ~1e-4 of the logit scale (|logits| ~ 10-30) at the end
// (measured: at most 1.2e-4 on gemma3's 1,243-token prompt, 4e-5 on SmolLM2), so 2e-3 leaves a wide margin
// while a real fault (a wrong RoPE base, mask or norm) moves logits by whole units.
// With the KV cache in f16 (the default) each cached key and value is rounded to 11 bits, which moves logits by
// up to a few hundredths (measured: 1.2e-2); greedy tokens must still agree wherever the reference margin
// exceeds that.
// Prompts of 8 tokens or more multiply 16-bit activations (x ~ d (256 q + q2) per 32 values, matmul.h's
// Q16Activations) where the CPU has the int8 prefill panels (AVX-512 VNNI; matmul_quantizes). Each value is then
// off by up to 1/65,000 of its block's max, which moves the logits by more than summation order does: measured
// at most 4.8e-3 (SmolLM2) and 4.2e-3 (gemma3) with the f32 cache (2026-12-02, against 1.2e-4 with f32 prefill),
// greedy tokens all agreeing. There the f32-cache tolerance is 1e-2; elsewhere prefill is f32 and 2e-3 stays.
struct Tolerance {
  double logit;    // per logit, absolute
  double margin;   // greedy steps whose reference top-1/top-2 margin is below this may differ
};
const bool kQuantizedPrefill = cpu::matmul_quantizes(GgmlType::Q4_K, 512, cpu::MatmulPrecision::Q16Activations);
const Tolerance kF32Cache = kQuantizedPrefill ? Tolerance{1e-2, 1e-2} : Tolerance{2e-3, 2e-3};
constexpr Tolerance kF16Cache{6e-2, 6e-2};

json load_golden(const std::string& name) {
  std::ifstream in(test::golden_dir() + "/logits/" + name + ".json");
  EXPECT_TRUE(in.good()) << "missing golden " << name;
  return json::parse(in);
}

struct Summary {
  double max = -INFINITY, mean = 0, std = 0, lse = 0;
};

Summary summarize(const float* x, int64_t n) {
  Summary s;
  for (int64_t i = 0; i < n; ++i) s.max = std::max(s.max, double(x[i]));
  double sum = 0, sq = 0, e = 0;
  for (int64_t i = 0; i < n; ++i) {
    sum += x[i];
    e += std::exp(double(x[i]) - s.max);
  }
  s.mean = sum / n;
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - s.mean) * (x[i] - s.mean);
  s.std = std::sqrt(sq / n);
  s.lse = s.max + std::log(e);
  return s;
}

// Compares one position's logits with its golden record: every top id, every probe id, and the summary.
void check_position(const json& g, const json& probe_ids, const float* logits, int64_t n_vocab, double tol,
                    const std::string& where) {
  const auto& ids = g["top_ids"];
  const auto& ref = g["top_logits"];
  double worst = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const double d = std::abs(logits[ids[i].get<int64_t>()] - ref[i].get<double>());
    worst = std::max(worst, d);
    EXPECT_LE(d, tol) << where << " top id " << ids[i] << ": ours " << logits[ids[i].get<int64_t>()] << " ref " << ref[i];
  }
  if (g.contains("probe_logits"))
    for (size_t i = 0; i < probe_ids.size(); ++i) {
      const double d = std::abs(logits[probe_ids[i].get<int64_t>()] - g["probe_logits"][i].get<double>());
      worst = std::max(worst, d);
      EXPECT_LE(d, tol) << where << " probe id " << probe_ids[i];
    }
  const Summary s = summarize(logits, n_vocab);
  EXPECT_NEAR(s.max, g["max"].get<double>(), tol) << where;
  EXPECT_NEAR(s.mean, g["mean"].get<double>(), tol) << where;
  EXPECT_NEAR(s.std, g["std"].get<double>(), tol) << where;
  EXPECT_NEAR(s.lse, g["logsumexp"].get<double>(), tol) << where;
  // The argmax must agree unless the reference itself has a near-tie at the top.
  const auto top = std::max_element(logits, logits + n_vocab) - logits;
  if (ids.size() > 1 && ref[0].get<double>() - ref[1].get<double>() > 2 * tol) {
    EXPECT_EQ(top, ids[0].get<int64_t>()) << where;
  }
  std::printf("  %-40s max |diff| %.2e\n", where.c_str(), worst);
}

void check_model(const std::string& golden_name, const std::string& path, KvFormat format, const Tolerance& tol) {
  LONGCTX_REQUIRE_MODEL(path);
  const json gold = load_golden(golden_name);
  auto model = Model::load(path);
  auto tok = Tokenizer::from_gguf(model->file());
  const int64_t n_vocab = model->config().n_vocab;
  ThreadPool pool(2);
  auto policy = kv::make_kv_policy(format == KvFormat::F32 ? "full:type=f32" : "full", model->config().n_layer,
                                   model->config().n_head_kv);

  for (const auto& p : gold["prompts"]) {
    const std::string name = p["name"];
    const std::vector<int32_t> ids = p["input_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok->encode(p["text"].get<std::string>(), p["add_bos"].get<bool>(), true), ids)
        << golden_name << "/" << name << ": our tokenizer disagrees with the reference's ids";

    GenerateParams gp;
    gp.n_ctx = static_cast<int32_t>(ids.size()) + 64;
    gp.n_batch = 128;  // several chunks for the long prompt: chunked prefill is under test too
    gp.n_predict = p["greedy"]["n"].get<int32_t>();
    gp.sampling.temperature = 0;
    gp.ignore_eog = true;
    Generator gen(*model, *tok, pool, *policy, gp);

    std::vector<int32_t> positions;
    for (const auto& q : p["positions"]) positions.push_back(q["pos"].get<int32_t>());
    positions.push_back(p["last"]["pos"].get<int32_t>());
    const std::vector<float> logits = gen.prompt_logits(ids, positions);
    for (size_t i = 0; i < positions.size(); ++i) {
      const json& g = i + 1 < positions.size() ? p["positions"][i] : p["last"];
      check_position(g, gold["probe_ids"], logits.data() + i * n_vocab, n_vocab, tol.logit,
                     golden_name + "/" + name + " pos " + std::to_string(positions[i]));
    }

    const GenerateStats st = gen.generate(ids, [](std::string_view) { return true; }, nullptr);
    const auto& ref_ids = p["greedy"]["ids"];
    const auto& margins = p["greedy"]["margins"];
    ASSERT_EQ(st.tokens.size(), ref_ids.size()) << name;
    for (size_t i = 0; i < ref_ids.size(); ++i) {
      if (st.tokens[i] == ref_ids[i].get<int32_t>()) continue;
      // A near-tie in the reference may go either way; after it the continuations legitimately differ.
      EXPECT_LT(margins[i].get<double>(), tol.margin)
          << golden_name << "/" << name << ": greedy token " << i << " differs (ours " << st.tokens[i] << ", ref "
          << ref_ids[i] << ", reference margin " << margins[i] << ")";
      break;
    }
  }
}

TEST(ModelLogits, SmolLM2F32Cache) { check_model("smollm2", test::smollm2_path(), KvFormat::F32, kF32Cache); }
TEST(ModelLogits, Gemma3F32Cache) { check_model("gemma3", test::gemma3_path(), KvFormat::F32, kF32Cache); }
TEST(ModelLogits, SmolLM2F16Cache) { check_model("smollm2", test::smollm2_path(), KvFormat::F16, kF16Cache); }
TEST(ModelLogits, Gemma3F16Cache) { check_model("gemma3", test::gemma3_path(), KvFormat::F16, kF16Cache); }

}  // namespace
}  // namespace longctx
