// The smallest eval case end to end on SmolLM2: a needle at 1K tokens under the full cache, found, and the JSON
// holding every field the plot script reads.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/eval_runner.h"
#include "test_models.h"

namespace longctx::eval {
namespace {

TEST(EvalEndToEnd, FullCacheFindsNeedleAt1K) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const std::string hay = std::string(LONGCTX_SOURCE_DIR) + "/data/kjv.txt";
  ASSERT_TRUE(std::filesystem::exists(hay)) << hay << " is missing: run scripts/setup.sh (README) first";
  EvalOptions o;
  o.model = test::smollm2_path();
  o.tasks = "needle";
  o.kv_specs = {"full", "snapkv:budget=1/8"};
  o.lengths = "1k";
  o.depths = "0.5";
  o.haystack = hay;
  o.n_predict = 12;
  o.n_threads = 2;
  o.progress = ProgressMode::Off;
  o.out = (std::filesystem::temp_directory_path() / ("eval_e2e_" + std::to_string(getpid()) + ".json")).string();
  const EvalReport rep = run_eval(o);
  EXPECT_EQ(rep.n_cases, 2);
  EXPECT_NE(rep.table.find("| full |"), std::string::npos);

  std::ifstream in(o.out);
  const nlohmann::json j = nlohmann::json::parse(in);
  std::filesystem::remove(o.out);
  for (const char* k : {"model", "tasks", "policies", "lengths", "depths", "seed", "prompt_style", "cases", "summary"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["prompt_style"], "chat");
  ASSERT_EQ(j["cases"].size(), 2u);
  for (const auto& c : j["cases"]) {
    for (const char* k : {"policy", "task", "length", "depth", "expected", "got", "correct", "kv_bytes",
                          "kv_bytes_per_token", "prefill_seconds", "decode_seconds", "n_prompt"})
      EXPECT_TRUE(c.contains(k)) << k;
    EXPECT_EQ(c["task"], "needle");
    EXPECT_EQ(c["length"], 1024);
    EXPECT_LE(c["n_prompt"].get<int>() + 12, 1024);
    EXPECT_GT(c["kv_bytes"].get<double>(), 0);
  }
  const auto& full = j["cases"][0];
  EXPECT_EQ(full["policy"], "full");
  EXPECT_TRUE(full["correct"].get<bool>()) << "expected " << full["expected"].dump() << ", got " << full["got"].dump();
  // The 1/8 budget must hold far fewer bytes than the full cache of the same prompt.
  EXPECT_LT(j["cases"][1]["kv_bytes"].get<double>(), 0.3 * full["kv_bytes"].get<double>());
  ASSERT_EQ(j["summary"].size(), 2u);
  EXPECT_DOUBLE_EQ(j["summary"][0]["accuracy"]["needle"].get<double>(), 1.0);
}

}  // namespace
}  // namespace longctx::eval
