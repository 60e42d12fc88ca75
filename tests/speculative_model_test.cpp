// Lossless self-speculation on the real models: greedy speculative decoding gives the plain full-cache decode's
// tokens (Generator, the product's loop) token for token, over prompts at several depths, gamma values and both
// draft policies, on SmolLM2 and on Gemma 3 (whose sliding-window layers expire tokens between steps). Slow: each
// case prefills its prompt twice.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "engine/speculative.h"
#include "kv/policy.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

// n tokens of the KJV from a character offset.
std::vector<int32_t> kjv_tokens(const Tokenizer& tok, size_t offset, int32_t n) {
  const std::string path = std::string(LONGCTX_SOURCE_DIR) + "/data/kjv.txt";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path << " is missing: run scripts/setup.sh (README) first";
  in.seekg(static_cast<std::streamoff>(offset));
  std::string text(static_cast<size_t>(n) * 8, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  std::vector<int32_t> ids = tok.encode(text, tok.add_bos(), false);
  EXPECT_GE(static_cast<int32_t>(ids.size()), n);
  ids.resize(static_cast<size_t>(n));
  return ids;
}

struct Case {
  size_t offset;
  int32_t n_prompt;
  int32_t gamma;
  const char* draft;
};

void check_identical(const std::string& path, const std::vector<Case>& cases) {
  const auto model = Model::load(path);
  const auto tok = Tokenizer::from_gguf(model->file());
  ThreadPool pool(2);
  const int32_t n_predict = 32;
  int64_t n_drafted = 0, n_accepted = 0;
  for (const Case& k : cases) {
    const std::vector<int32_t> prompt = kjv_tokens(*tok, k.offset, k.n_prompt);
    GenerateParams gp;
    gp.n_predict = n_predict;
    gp.n_ctx = k.n_prompt + n_predict;
    gp.n_batch = 256;
    gp.ignore_eog = true;
    gp.sampling.temperature = 0;
    auto full = kv::make_kv_policy("full", model->config().n_layer, model->config().n_head_kv);
    Generator gen(*model, *tok, pool, *full, gp);
    const GenerateStats want = gen.generate(prompt, [](std::string_view) { return true; }, {});
    SpecParams sp;
    sp.gamma = k.gamma;
    sp.draft = k.draft;
    SpeculativeGenerator sg(*model, pool, gp, sp);
    const GenerateStats got = sg.generate(prompt, *tok, [](std::string_view) { return true; }, {});
    ASSERT_EQ(want.tokens.size(), static_cast<size_t>(n_predict));
    EXPECT_EQ(got.tokens, want.tokens) << "offset " << k.offset << ", prompt " << k.n_prompt << ", gamma " << k.gamma
                                       << ", draft " << k.draft;
    const SpecStats& s = sg.spec_stats();
    std::printf("  %d tokens, gamma %d, %s: %.2f tokens per step, %lld of %lld accepted\n", k.n_prompt, k.gamma,
                k.draft, s.tokens_per_step(), static_cast<long long>(s.n_accepted),
                static_cast<long long>(s.n_drafted));
    n_drafted += s.n_drafted;
    n_accepted += s.n_accepted;
  }
  EXPECT_GT(n_accepted, 0);  // the accept path ran
}

TEST(SpeculativeModel, SmolLM2GreedyIsThePlainDecode) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  check_identical(test::smollm2_path(), {{0, 300, 2, "streaming:budget=128,sink=4"},
                                          {400000, 1200, 5, "streaming:budget=256,sink=4"},
                                          {2000000, 2400, 4, "snapkv:budget=512,window=32"},
                                          {3000000, 1800, 3, "streaming:budget=64,sink=4"}});
}

TEST(SpeculativeModel, Gemma3GreedyIsThePlainDecode) {
  LONGCTX_REQUIRE_MODEL(test::gemma3_path());
  check_identical(test::gemma3_path(), {{100000, 1100, 4, "streaming:budget=256,sink=4"},
                                         {1500000, 900, 3, "snapkv:budget=256,window=32"}});
}

}  // namespace
}  // namespace longctx
