// calibrate-heads end to end on SmolLM2: the forward pass's attention scored on a short repeated sequence, the
// roles file written by the command and loaded by the heads policy; and DuoAttention's forward-only measure on a
// passkey prompt. Labelled slow (a few hundred forwards).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "calibrate_heads_command.h"
#include "core/thread_pool.h"
#include "eval/duo_calibration.h"
#include "kv/duo_head_scores.h"
#include "kv/head_calibration.h"
#include "kv/policy.h"
#include "model/model.h"
#include "test_models.h"

namespace longctx {
namespace {

TEST(CalibrateHeads, SmolLM2HasInductionHeads) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  auto model = Model::load(test::smollm2_path());
  ThreadPool pool(2);
  const kv::HeadCalibration cal = calibrate_heads(*model, pool, Device::Cpu, 48, 1);
  const auto ind = cal.induction_scores(), echo = cal.echo_scores();
  ASSERT_EQ(ind.size(), static_cast<size_t>(30 * 3));
  for (size_t i = 0; i < ind.size(); ++i) {
    EXPECT_GE(ind[i], 0.0);
    EXPECT_LE(ind[i], 1.0 + 1e-6);
    EXPECT_LE(echo[i], 1.0 + 1e-6);
  }
  // A model that copies a repeated random sequence has heads that look at the copy: a uniform head would put
  // about 1/70 of its attention on the target at these lengths.
  EXPECT_GT(*std::max_element(ind.begin(), ind.end()), 0.3);

  CalibrateHeadsOptions o;
  o.model = test::smollm2_path();
  o.out = ::testing::TempDir() + "/smollm2_heads.json";
  o.method = "razor";
  o.length = 48;
  o.count = 9;
  o.n_threads = 2;
  ASSERT_EQ(calibrate_heads_command(o), 0);
  std::ifstream in(o.out);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["n_layer"], 30);
  EXPECT_EQ(j["n_head_kv"], 3);
  EXPECT_GE(j["retrieval"].size(), 9u);
  EXPECT_LE(j["retrieval"].size(), 10u);
  EXPECT_NO_THROW(kv::make_kv_policy("heads:file=" + o.out + "+kivi:bits=4", 30, 3));
}

// DuoAttention, forward-only, on one passkey prompt. A window that reaches past the prompt's start leaves every head
// reading the whole cache, so every run must give the reference run's logits to the bit: that also checks that the
// span's keys are removed after each run (a left-over key would shift every later run). A short window must move
// the answer for some head, the scores must be the same on a second run, and the command must write a roles file of
// the asked size that the heads policy loads.
TEST(CalibrateHeads, DuoOnSmolLM2IsExactWithAWholeWindowAndDeterministic) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  auto model = Model::load(test::smollm2_path());
  auto tok = Tokenizer::from_gguf(model->file());
  ThreadPool pool(2);
  eval::DuoCalibrationParams p;
  p.length = 320;
  p.n_prompts = 1;
  p.window = 1 << 20;
  const auto whole = eval::duo_calibrate(*model, *tok, pool, p, {});
  for (double x : whole.kl()) ASSERT_EQ(x, 0.0);
  for (double x : whole.answer_drop()) ASSERT_EQ(x, 0.0);

  const eval::DuoPrompt dp = eval::duo_prompt(*model, *tok, p, 0, {});
  EXPECT_GE(static_cast<int32_t>(dp.tokens.size()) - dp.answer_begin, 1);  // the passkey's digits
  EXPECT_GT(dp.answer_begin, 300);

  p.window = 32;
  const auto a = eval::duo_calibrate(*model, *tok, pool, p, {});
  const auto b = eval::duo_calibrate(*model, *tok, pool, p, {});
  EXPECT_EQ(a.kl(), b.kl());
  EXPECT_EQ(a.answer_drop(), b.answer_drop());
  const auto kl = a.kl();
  EXPECT_GT(*std::max_element(kl.begin(), kl.end()), 1e-3);

  CalibrateHeadsOptions o;
  o.model = test::smollm2_path();
  o.out = ::testing::TempDir() + "/smollm2_duo_heads.json";
  o.method = "duo";
  o.length = 320;
  o.n_prompts = 1;
  o.window = 32;
  o.count = 9;
  o.n_threads = 2;
  ASSERT_EQ(calibrate_heads_command(o), 0);
  std::ifstream in(o.out);
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["retrieval"].size(), 9u);
  std::vector<int32_t> picked;
  for (const auto& lh : j["retrieval"]) picked.push_back(lh[0].get<int32_t>() * 3 + lh[1].get<int32_t>());
  EXPECT_EQ(picked, kv::top_heads(kl, 9));  // the command's pick is the measure's
  EXPECT_NO_THROW(kv::make_kv_policy("heads:file=" + o.out + ",compensation=none", 30, 3));
}

}  // namespace
}  // namespace longctx
