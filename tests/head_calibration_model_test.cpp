// calibrate-heads end to end on SmolLM2: the forward pass's attention scored on a short repeated sequence, the
// roles file written by the command and loaded by the heads policy. Labelled slow (a few hundred forwards).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "calibrate_heads_command.h"
#include "core/thread_pool.h"
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
  const kv::HeadCalibration cal = calibrate_heads(*model, pool, 48, 1);
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

}  // namespace
}  // namespace longctx
