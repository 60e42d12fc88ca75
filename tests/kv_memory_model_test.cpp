// The KV memory the engine reports is what its page allocator holds, on a real model: a full cache holds the whole
// prompt; a policy's cut gives the pages back at once; packing replaces f16 pages; cutting after every prefill
// chunk bounds the peak too.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "engine/generator.h"
#include "kv/policy.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

struct Run {
  GenerateStats st;
  int32_t n_prompt = 0;
};

class KvMemory : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LONGCTX_REQUIRE_MODEL(test::smollm2_path());
    model_ = Model::load(test::smollm2_path()).release();
    tok_ = Tokenizer::from_gguf(model_->file()).release();
    std::string text;
    ASSERT_NO_FATAL_FAILURE(test::read_kjv_head(60000, &text));
    prompt_ = tok_->encode(text, tok_->add_bos(), false);
    prompt_.resize(3000);
    full_ = run("full", false);
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
  }

  static GenerateStats run(const std::string& kv, bool prefill_compress) {
    ThreadPool pool(2);
    auto policy = kv::make_kv_policy(kv, model_->config().n_layer, model_->config().n_head_kv);
    GenerateParams gp;
    gp.n_predict = 4;
    gp.n_ctx = 4096;
    gp.n_batch = 256;
    gp.ignore_eog = true;
    gp.prefill_compress = prefill_compress;
    gp.sampling.temperature = 0;
    Generator gen(*model_, *tok_, pool, *policy, gp);
    return gen.generate(prompt_, [](std::string_view) { return true; }, nullptr);
  }

  static Model* model_;
  static Tokenizer* tok_;
  static std::vector<int32_t> prompt_;
  static GenerateStats full_;  // the full cache on the same prompt, the reference of every test
};
Model* KvMemory::model_ = nullptr;
Tokenizer* KvMemory::tok_ = nullptr;
std::vector<int32_t> KvMemory::prompt_;
GenerateStats KvMemory::full_;

// SmolLM2: 30 layers x 3 kv-heads, f16 pages of 64 tokens x head dim 64 = 16 KiB, one system-page chunk each.
constexpr size_t kHeads = 30 * 3, kF16Page = 16384;

TEST_F(KvMemory, FullCacheHoldsTheWholePromptAndNoMore) {
  const GenerateStats& st = full_;
  const size_t pages = (3000 + 3 + 63) / 64;  // the prompt and the three tokens decoded after it
  EXPECT_EQ(st.kv_pool_bytes, pages * kHeads * kF16Page);
  EXPECT_EQ(st.kv_pool_peak_bytes, st.kv_pool_bytes);
  EXPECT_EQ(st.kv_bytes.payload, st.kv_pool_bytes);
}

TEST_F(KvMemory, CutAndPackedCacheGivesThePagesBack) {
  const GenerateStats& full = full_;
  const GenerateStats st = run("snapkv:budget=256+kivi:bits=2", false);
  // The prompt is read at f16 first: the peak is the full cache's (plus at most one packed chunk a format).
  EXPECT_GE(st.kv_pool_peak_bytes, full.kv_pool_peak_bytes - kHeads * kF16Page);
  // At the end the pool holds what the sequence holds, rounded up to whole chunks of each format: 2 formats.
  EXPECT_GE(st.kv_pool_bytes, st.kv_bytes.payload);
  EXPECT_LE(st.kv_pool_bytes, st.kv_bytes.payload + 2 * 64 * 1024);
  // 256 kept + 3 decoded tokens a head: the 128 newest f16 (2-3 pages), the rest in 2-bit pages.
  EXPECT_LT(st.kv_pool_bytes * 8, full.kv_pool_bytes);
}

TEST_F(KvMemory, CompressingWhilePrefillingBoundsThePeak) {
  const GenerateStats& full = full_;
  const GenerateStats st = run("snapkv:budget=256+kivi:bits=2", true);
  // At most the budget, a chunk and the open pages are ever held, never the whole prompt.
  const size_t bound = kHeads * ((256 + 256 + 128) / 64 + 3) * kF16Page;
  EXPECT_LE(st.kv_pool_peak_bytes, bound);
  EXPECT_LT(st.kv_pool_peak_bytes * 3, full.kv_pool_peak_bytes);
}

}  // namespace
}  // namespace longctx
