// The cases of `longctx eval`: seeded needles, keys and passkeys placed at a depth of a haystack, and how an answer
// is scored. Plain host code with no model: the token count is a function, so tests can count words instead.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace longctx::eval {

enum class Task { Needle, MultiKey, MultiValue, KvRetrieval, Passkey, Perplexity };

const char* task_name(Task t);
// "needle", "multikey", "multivalue", "kvret", "passkey", "ppl"; throws Error listing the valid names.
Task parse_task(const std::string& name);
std::vector<Task> parse_task_list(const std::string& s);  // comma-separated; "all" is every task

// Tokens of a piece of text (without bos), as the model's tokenizer counts them.
using TokenCounter = std::function<int32_t(std::string_view)>;

// splitmix64: small, seedable, the same on every platform (std::uniform_int_distribution is not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t below(uint64_t n) { return next() % n; }  // n > 0; the modulo bias is irrelevant at these sizes

 private:
  uint64_t state_;
};

// Sentences of a text, in order: cut after '.', '?' or '!' followed by white space, white space runs folded to one
// space, a leading verse reference ("Gen1:1 ") dropped. Throws Error when the text holds no sentence.
std::vector<std::string> split_sentences(std::string_view text);

// Turns "1k", "2K", "1500" into tokens (k = 1024). Throws Error naming the bad entry.
std::vector<int32_t> parse_length_list(const std::string& s);
// "0,0.5,1" -> depths in [0, 1]. Throws Error for anything else.
std::vector<double> parse_depth_list(const std::string& s);

// One prompt and what its answer must contain.
struct Case {
  Task task = Task::Needle;
  int32_t length = 0;                  // target tokens of the whole case (prompt + answer, or prefix + scored)
  double depth = 0;                    // where the fact sits in the context, 0 (start) .. 1 (end)
  uint64_t seed = 0;
  std::string context;                 // the haystack with the facts in it
  std::string question;                // asked after the context
  std::string answer_prefix;           // the start of the answer, written for the model (completion and chat)
  std::vector<std::string> expected;   // every one must appear in the answer
  double depth_placed = 0;             // the depth the (first asked) fact landed at, measured in tokens
  // ppl only: the continuation that is scored (the context is the prefix).
  std::string continuation;
};

struct CaseParams {
  int32_t n_context_tokens = 0;  // tokens the context may hold (the prompt's wrapping and answer excluded)
  int32_t n_score_tokens = 0;    // ppl: tokens of the scored continuation
};

// Builds the case of (task, depth, seed) with a context of about n_context_tokens tokens (never more) from the
// haystack's sentences. The same arguments always give the same case.
Case make_case(Task task, int32_t length, double depth, uint64_t seed, const std::vector<std::string>& haystack,
               const TokenCounter& count, const CaseParams& p);

// Exact match: every expected value appears in the answer as a whole token (not inside a longer number or word).
bool score_answer(const std::vector<std::string>& expected, std::string_view answer);

// A --kv spec with relative budgets ("snapkv:budget=1/4") made absolute for a case of length tokens
// ("snapkv:budget=256"); other specs unchanged. Throws Error for a malformed fraction.
std::string resolve_budget(const std::string& spec, int32_t length);

}  // namespace longctx::eval
