// The query-agnostic policies on a real model (SmolLM2), through the generator:
//   - KVzip's reconstruction pass leaves the cache exactly as it found it except for the evictions: every kept
//     slot holds the very key and value bits the full cache holds at that position, none of the reconstruction's
//     tokens stays, and with a budget above the prompt the answer's logits are the full cache's, bit for bit;
//   - a prompt compressed before its question (Generator::generate's n_compressed) keeps the budget for the
//     context and every question token on top, and without a policy gives the logits of reading the prompt whole.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include "engine/generator.h"
#include "kv/policy.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

class QueryAgnosticModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LONGCTX_REQUIRE_MODEL(test::smollm2_path());
    model_ = Model::load(test::smollm2_path()).release();
    tok_ = Tokenizer::from_gguf(model_->file()).release();
    std::string text;
    ASSERT_NO_FATAL_FAILURE(test::read_kjv_head(20000, &text));
    prompt_ = tok_->encode(text, tok_->add_bos(), false);
    prompt_.resize(600);
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
  }

  // The cache after prefill and one decoded token under a policy: the last logits (logits_hash) are those of the
  // decode step, so they read the compressed cache.
  struct Run {
    std::unique_ptr<kv::KvPolicy> policy;
    std::unique_ptr<Generator> gen;
    GenerateStats st;
  };
  static Run run(const std::string& spec, int32_t n_compressed = 0, int32_t n_batch = 128) {
    Run r;
    r.policy = kv::make_kv_policy(spec, model_->config().n_layer, model_->config().n_head_kv);
    GenerateParams gp;
    gp.n_predict = 2;
    gp.n_ctx = 1024;
    gp.n_batch = n_batch;
    gp.ignore_eog = true;
    gp.sampling.temperature = 0;
    r.gen = std::make_unique<Generator>(*model_, *tok_, pool_, *r.policy, gp);
    r.st = r.gen->generate(prompt_, [](std::string_view) { return true; }, nullptr, n_compressed);
    return r;
  }
  // position -> the key and value bits of one head's slot.
  static std::map<int32_t, std::vector<float>> rows(kv::KvSequence& seq, int32_t l, int32_t g) {
    std::map<int32_t, std::vector<float>> out;
    const int32_t d = seq.geometry().head_dim;
    const kv::KvHeadCache& h = seq.head(l, g);
    for (int32_t s = 0; s < h.n_tokens(); ++s) {
      std::vector<float> kv(static_cast<size_t>(2 * d));
      seq.read_keys(l, g, s, 1, kv.data());
      seq.read_values(l, g, s, 1, kv.data() + d);
      out[h.positions[static_cast<size_t>(s)]] = kv;
    }
    return out;
  }

  static Model* model_;
  static Tokenizer* tok_;
  static ThreadPool pool_;
  static std::vector<int32_t> prompt_;
};
Model* QueryAgnosticModel::model_ = nullptr;
Tokenizer* QueryAgnosticModel::tok_ = nullptr;
ThreadPool QueryAgnosticModel::pool_(2);
std::vector<int32_t> QueryAgnosticModel::prompt_;

TEST_F(QueryAgnosticModel, KvzipPassLeavesTheCacheButItsEvictions) {
  Run full = run("full");
  // Chunks of 256: three reconstruction passes over the 599 text tokens, the later two with the overlap.
  Run cut = run("kvzip:budget=200,chunk=256");
  const int32_t n = static_cast<int32_t>(prompt_.size());
  const ModelConfig& c = model_->config();
  for (int32_t l = 0; l < c.n_layer; ++l)
    for (int32_t g = 0; g < c.n_head_kv; ++g) {
      const auto want = rows(full.gen->sequence(), l, g);
      const auto got = rows(cut.gen->sequence(), l, g);
      ASSERT_EQ(static_cast<int32_t>(want.size()), n + 1);  // the prompt and the decoded token
      ASSERT_EQ(got.size(), 201u) << "layer " << l << " head " << g;
      for (const auto& [pos, kv] : got) {
        ASSERT_LE(pos, n) << "a reconstruction token stayed in the cache";
        if (pos == n) continue;  // the decoded token, computed over the cut cache from layer 1 on
        ASSERT_EQ(std::memcmp(kv.data(), want.at(pos).data(), kv.size() * sizeof(float)), 0)
            << "layer " << l << " head " << g << " position " << pos << " changed";
      }
      for (int32_t s = 0; s < 4; ++s) EXPECT_EQ(got.count(s), 1u) << "sink " << s << " evicted";
    }
  // Nothing evicted: the pass must leave no trace at all.
  Run all = run("kvzip:budget=4096,chunk=256");
  EXPECT_EQ(all.st.logits_hash, full.st.logits_hash);
  EXPECT_NE(cut.st.logits_hash, full.st.logits_hash) << "an eviction of two thirds must show in the logits";
}

TEST_F(QueryAgnosticModel, CompressingBeforeTheQuestionKeepsTheQuestion) {
  const int32_t n = static_cast<int32_t>(prompt_.size()), m = 500;
  Run whole = run("full");
  // Without a policy, reading the question after the context is reading the prompt (in other prefill chunks):
  // the same greedy token.
  Run split = run("full", m);
  ASSERT_EQ(split.st.tokens.size(), 2u);
  EXPECT_EQ(split.st.tokens, whole.st.tokens);
  for (const std::string& spec : {std::string("expected:budget=128"), std::string("kvzip:budget=128,chunk=512"),
                                  std::string("snapkv:budget=128")}) {
    Run r = run(spec, m);
    const ModelConfig& c = model_->config();
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t g = 0; g < c.n_head_kv; ++g) {
        const kv::KvHeadCache& h = r.gen->sequence().head(l, g);
        ASSERT_EQ(h.n_tokens(), 128 + (n - m) + 1) << spec << ": the budget for the context, the question and the "
                                                          "decoded token on top";
        for (int32_t i = 0; i <= n - m; ++i)
          ASSERT_EQ(h.positions[static_cast<size_t>(128 + i)], m + i) << spec << ": question token " << i;
      }
  }
}

}  // namespace
}  // namespace longctx
