// The smallest eval case end to end on SmolLM2: a needle at 1K tokens under the full cache, found, and the JSON
// holding every field the plot script reads; the prompts file (--prompts-out) holds each prompt once, with as many
// ids as the engine prefilled.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/eval_runner.h"
#include "test_models.h"

namespace longctx::eval {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "_" + std::to_string(getpid()))).string();
}

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// One needle case of 1K tokens at depth 0.5 on SmolLM2, 12 answer tokens (a fatal failure when the model or the
// haystack is missing: call under ASSERT_NO_FATAL_FAILURE).
void needle_1k_options(EvalOptions* o) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const std::string hay = std::string(LONGCTX_SOURCE_DIR) + "/data/kjv.txt";
  ASSERT_TRUE(std::filesystem::exists(hay)) << hay << " is missing: run scripts/setup.sh (README) first";
  o->model = test::smollm2_path();
  o->tasks = "needle";
  o->lengths = "1k";
  o->depths = "0.5";
  o->haystack = hay;
  o->n_predict = 12;
  o->n_threads = 2;
  o->progress = ProgressMode::Off;
}

TEST(EvalEndToEnd, FullCacheFindsNeedleAt1K) {
  EvalOptions o;
  ASSERT_NO_FATAL_FAILURE(needle_1k_options(&o));
  o.kv_specs = {"full", "snapkv:budget=1/8"};
  o.out = temp_path("eval_e2e") + ".json";
  o.prompts_out = temp_path("eval_e2e_prompts") + ".jsonl";
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

  // One prompt for the two policies: the very ids both prefilled.
  const std::vector<nlohmann::json> prompts = read_lines(o.prompts_out);
  std::filesystem::remove(o.prompts_out);
  ASSERT_EQ(prompts.size(), 1u);
  const auto& p = prompts[0];
  EXPECT_EQ(p["task"], "needle");
  EXPECT_EQ(p["length"], 1024);
  EXPECT_EQ(p["depth"], full["depth"]);
  EXPECT_EQ(p["seed"], full["seed"]);
  EXPECT_EQ(p["expected"], full["expected"]);
  EXPECT_EQ(p["n_predict"], 12);
  EXPECT_EQ(p["prompt_style"], "chat");
  EXPECT_EQ(p["n_compressed"], 0);
  EXPECT_TRUE(p["stop"].empty());  // chat: the answer ends at an end-of-turn id
  EXPECT_FALSE(p["eog_ids"].empty());
  ASSERT_EQ(p["tokens"].size(), full["n_prompt"].get<size_t>());
  EXPECT_EQ(p["n_tokens"], full["n_prompt"]);
}

TEST(EvalEndToEnd, PromptsFileSplitsAtTheQuestion) {
  EvalOptions o;
  ASSERT_NO_FATAL_FAILURE(needle_1k_options(&o));
  o.question_after_compress = true;
  o.out = temp_path("eval_e2e_qac") + ".json";
  o.prompts_out = temp_path("eval_e2e_qac_prompts") + ".jsonl";
  (void)run_eval(o);
  std::ifstream in(o.out);
  const nlohmann::json j = nlohmann::json::parse(in);
  std::filesystem::remove(o.out);
  const std::vector<nlohmann::json> prompts = read_lines(o.prompts_out);
  std::filesystem::remove(o.prompts_out);
  ASSERT_EQ(prompts.size(), 1u);
  const auto& p = prompts[0];
  EXPECT_TRUE(p["question_after_compress"].get<bool>());
  ASSERT_EQ(p["tokens"].size(), j["cases"][0]["n_prompt"].get<size_t>());
  // The context is most of the prompt; the question and the assistant turn's start follow it.
  const int n_compressed = p["n_compressed"].get<int>();
  EXPECT_GT(n_compressed, 800);
  EXPECT_LT(n_compressed, static_cast<int>(p["tokens"].size()) - 8);
}

}  // namespace
}  // namespace longctx::eval
