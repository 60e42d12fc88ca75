// The eval case generator and scoring, with a word counter standing in for the tokenizer: the same seed gives the
// same case, facts land at the asked depth, and scoring is exact match of whole values.
#include <gtest/gtest.h>

#include <sstream>

#include "core/error.h"
#include "eval/eval_tasks.h"

namespace longctx::eval {
namespace {

int32_t count_words(std::string_view s) {
  std::istringstream in{std::string(s)};
  int32_t n = 0;
  std::string w;
  while (in >> w) ++n;
  return n;
}

std::vector<std::string> haystack() {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "Sentence number " + std::to_string(i) + " has a few words in it.\n";
  return split_sentences(text);
}

CaseParams params(int32_t n) {
  CaseParams p;
  p.n_context_tokens = n;
  p.n_score_tokens = 64;
  return p;
}

TEST(EvalTasks, SameSeedSameCaseOtherSeedOtherCase) {
  const auto h = haystack();
  for (Task t : {Task::Needle, Task::MultiKey, Task::MultiValue, Task::KvRetrieval, Task::Passkey, Task::Perplexity}) {
    const Case a = make_case(t, 1024, 0.5, 7, h, count_words, params(600));
    const Case b = make_case(t, 1024, 0.5, 7, h, count_words, params(600));
    const Case c = make_case(t, 1024, 0.5, 8, h, count_words, params(600));
    EXPECT_EQ(a.context, b.context) << task_name(t);
    EXPECT_EQ(a.question, b.question) << task_name(t);
    EXPECT_EQ(a.expected, b.expected) << task_name(t);
    EXPECT_NE(a.context, c.context) << task_name(t);
    if (t != Task::Perplexity) EXPECT_NE(a.expected, c.expected) << task_name(t);
  }
}

TEST(EvalTasks, ContextFitsAndNeedleSitsAtDepth) {
  const auto h = haystack();
  for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    const Case c = make_case(Task::Needle, 1024, depth, 3, h, count_words, params(800));
    ASSERT_EQ(c.expected.size(), 1u);
    EXPECT_LE(count_words(c.context), 800);
    EXPECT_GE(count_words(c.context), 780);  // filled to within one sentence (10 words) and the needle
    const size_t at = c.context.find(c.expected[0]);
    ASSERT_NE(at, std::string::npos);
    // Words before the needle over the context's words: within a sentence or so of the asked depth.
    const double measured = static_cast<double>(count_words(c.context.substr(0, at))) / count_words(c.context);
    EXPECT_NEAR(measured, depth, 0.03) << "depth " << depth;
    EXPECT_NEAR(c.depth_placed, depth, 0.03) << "depth " << depth;
  }
}

TEST(EvalTasks, KeyValueAndPasskeyAtDepth) {
  const auto h = haystack();
  const Case first = make_case(Task::KvRetrieval, 1024, 0.0, 5, h, count_words, params(500));
  const Case last = make_case(Task::KvRetrieval, 1024, 1.0, 5, h, count_words, params(500));
  EXPECT_LT(first.context.find(first.expected[0]), 40u);
  EXPECT_GT(last.context.find(last.expected[0]), last.context.size() - 20);
  const Case pk = make_case(Task::Passkey, 1024, 0.5, 5, h, count_words, params(500));
  EXPECT_NE(pk.context.find("The grass is green."), std::string::npos);
  EXPECT_NEAR(pk.depth_placed, 0.5, 0.03);
}

TEST(EvalTasks, MultiValueAsksEveryValue) {
  const Case c = make_case(Task::MultiValue, 1024, 0.5, 2, haystack(), count_words, params(600));
  ASSERT_EQ(c.expected.size(), 3u);
  for (const auto& v : c.expected) EXPECT_NE(c.context.find(v), std::string::npos);
}

TEST(EvalScoring, ExactMatchOfWholeValues) {
  EXPECT_TRUE(score_answer({"8658509"}, " 8658509."));
  EXPECT_TRUE(score_answer({"8658509"}, "It is 8658509, I think"));
  EXPECT_FALSE(score_answer({"8658509"}, " 86585090."));   // inside a longer number
  EXPECT_FALSE(score_answer({"8658509"}, " 18658509"));
  EXPECT_FALSE(score_answer({"8658509"}, " 865 8509"));
  EXPECT_FALSE(score_answer({"8658509"}, ""));
  EXPECT_TRUE(score_answer({"12", "34"}, "34 and 12"));
  EXPECT_FALSE(score_answer({"12", "34"}, "12 only"));
  EXPECT_FALSE(score_answer({}, "anything"));
}

TEST(EvalParse, ListsBudgetsAndSentences) {
  EXPECT_EQ(parse_length_list("1k,2K,1500"), (std::vector<int32_t>{1024, 2048, 1500}));
  EXPECT_THROW(parse_length_list("1k,,2k"), Error);
  EXPECT_THROW(parse_length_list("-1"), Error);
  EXPECT_EQ(parse_depth_list("0,0.5,1"), (std::vector<double>{0, 0.5, 1}));
  EXPECT_THROW(parse_depth_list("1.5"), Error);
  EXPECT_THROW(parse_depth_list("x"), Error);
  EXPECT_EQ(parse_task_list("needle,ppl").size(), 2u);
  EXPECT_EQ(parse_task_list("all").size(), 6u);
  EXPECT_THROW(parse_task("needles"), Error);
  EXPECT_EQ(resolve_budget("snapkv:budget=1/4+kivi:bits=2", 2048), "snapkv:budget=512+kivi:bits=2");
  EXPECT_EQ(resolve_budget("pyramid:budget=1/8+snapkv", 1024), "pyramid:budget=128+snapkv");
  EXPECT_EQ(resolve_budget("h2o:budget=300", 1024), "h2o:budget=300");
  EXPECT_THROW(resolve_budget("h2o:budget=1/0", 1024), Error);
  const auto s = split_sentences("Gen1:1 In the beginning.  And\nthen? Yes!\nGen1:2 More text");
  EXPECT_EQ(s, (std::vector<std::string>{"In the beginning.", "And then?", "Yes!", "More text"}));
  EXPECT_THROW(split_sentences(" \n "), Error);
}

}  // namespace
}  // namespace longctx::eval
