// Quest ("Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference") end to end on SmolLM2: with a
// generous budget (most pages of a short prompt read each step, but not all) greedy decoding keeps the full
// cache's tokens, composed with a token policy and KIVI too; the filter really reads less (its row counts).
#include <gtest/gtest.h>

#include <fstream>

#include "engine/generator.h"
#include "kv/policy.h"
#include "kv/quest.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

class QuestModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LONGCTX_REQUIRE_MODEL(test::smollm2_path());
    model_ = Model::load(test::smollm2_path()).release();
    tok_ = Tokenizer::from_gguf(model_->file()).release();
    std::string text;
    ASSERT_NO_FATAL_FAILURE(test::read_kjv_head(8000, &text));
    prompt_ = tok_->encode(text, tok_->add_bos(), false);
    prompt_.resize(1100);  // 18 pages of 64 per (layer, kv-head)
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
  }

  static GenerateStats run(kv::KvPolicy& policy) {
    ThreadPool pool(2);
    GenerateParams gp;
    gp.n_predict = 16;
    gp.n_ctx = 2048;
    gp.n_batch = 256;
    gp.ignore_eog = true;
    gp.sampling.temperature = 0;
    Generator gen(*model_, *tok_, pool, policy, gp);
    return gen.generate(prompt_, [](std::string_view) { return true; }, nullptr);
  }
  static GenerateStats run(const std::string& spec) {
    auto policy = kv::make_kv_policy(spec, model_->config().n_layer, model_->config().n_head_kv);
    return run(*policy);
  }

  static Model* model_;
  static Tokenizer* tok_;
  static std::vector<int32_t> prompt_;
};
Model* QuestModel::model_ = nullptr;
Tokenizer* QuestModel::tok_ = nullptr;
std::vector<int32_t> QuestModel::prompt_;

TEST_F(QuestModel, GenerousBudgetKeepsTheFullCachesGreedyTokens) {
  const GenerateStats full = run("full");
  // 16 of the 18 pages: on this prompt 14 pages keep 9 tokens, 10 keep 8, 6 keep 5, and reading the newest 16
  // pages instead (no attention sink) keeps 1.
  auto policy = kv::make_kv_policy("quest:budget=1024", model_->config().n_layer, model_->config().n_head_kv);
  auto* filter = dynamic_cast<kv::QuestReadFilter*>(policy->read_filter());
  ASSERT_NE(filter, nullptr);
  const GenerateStats quest = run(*policy);
  EXPECT_EQ(quest.tokens, full.tokens);
  // 16 of 18 pages (15 full and the newest) in 28 of 30 layers: about 89% of the rows read.
  const double read = static_cast<double>(filter->rows_read()) / static_cast<double>(filter->rows_held());
  std::printf("quest:budget=1024 read %.1f%% of the cached rows\n", 100 * read);
  EXPECT_LT(read, 0.93);
  EXPECT_GT(read, 0.85);
  // Memory: the same pages plus the summaries (2 x 64 f32 per page).
  EXPECT_EQ(quest.kv_bytes.payload, full.kv_bytes.payload);
  EXPECT_GT(quest.kv_bytes.summaries, 0u);
  EXPECT_EQ(full.kv_bytes.summaries, 0u);
}

TEST_F(QuestModel, ComposesWithKivi) {
  const GenerateStats kivi = run("kivi:bits=8");
  const GenerateStats quest = run("quest:budget=1024+kivi:bits=8");
  EXPECT_EQ(quest.tokens, kivi.tokens);
  EXPECT_EQ(quest.kv_bytes.payload, kivi.kv_bytes.payload);
}

}  // namespace
}  // namespace longctx
