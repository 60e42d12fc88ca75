// `longctx eval`: runs every case of the listed tasks, lengths, depths and seeds under every listed KV policy, on
// exactly the same prompts, and writes one JSON file of results plus a summary table.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "eval/eval_tasks.h"

namespace longctx::eval {

enum class PromptStyle {
  Auto,        // chat when the GGUF carries a chat template (instruct models), completion otherwise (base models)
  Chat,        // the question in a user turn, the answer's start written into the assistant turn
  Completion,  // "context\n\nQuestion: ...\nAnswer: <answer start>"
};

enum class ProgressMode { Bar, Off };

struct EvalOptions {
  std::string model;
  std::string tasks = "needle";
  std::vector<std::string> kv_specs{"full"};  // budget=1/4 style fractions are taken of each case's length
  std::string lengths = "1k";
  std::string depths = "0,0.25,0.5,0.75,1";
  int32_t n_seeds = 1;           // seeds seed, seed+1, ...
  uint64_t seed = 1;
  std::string haystack = "data/kjv.txt";
  std::string out;               // results JSON; required
  // Optional: one JSON line per case prompt (not per policy), written before any case runs, so that another
  // implementation (scripts/kvpress_answers.py) can run the very same token ids and score them the same way.
  std::string prompts_out;
  int32_t n_predict = 24;        // answer tokens
  int32_t n_score = 128;         // ppl: teacher-forced tokens after the prefix
  int32_t n_threads = 0;         // 0: every core
  Device device = Device::Cpu;   // where the model runs (GenerateParams::device)
  int32_t n_batch = 256;
  PromptStyle style = PromptStyle::Auto;
  ProgressMode progress = ProgressMode::Bar;
  // Query-agnostic compression: the prompt up to the question is prefilled and compressed, then the question is
  // read over the compressed cache and answered (a cached document serving questions not yet asked). ppl cases
  // are unaffected.
  bool question_after_compress = false;
  // The policies cut the cache after every prefill chunk (`run --kv-prefill-compress`, the server's admission by
  // budget), not only at the prompt's end.
  bool prefill_compress = false;
  // --spec self[:...]: answers decoded speculatively (lossless: the --kv policies must be the full cache); ppl's
  // teacher-forced scoring has nothing to draft and runs as without it. Empty: plain decode.
  std::string spec;
};

// One line of the summary: a policy over all lengths (or one length).
struct PolicySummary {
  std::string policy;
  double kv_bytes_per_token = 0;  // mean over the cases
  size_t kv_pool_peak_bytes = 0;  // the most the page allocator held in any case
  std::vector<std::pair<std::string, double>> accuracy;  // (task, fraction correct); ppl excluded
  double perplexity = 0;          // 0: no ppl case
  double decode_tok_s = 0;
};

struct EvalReport {
  int32_t n_cases = 0;            // (case, policy) runs
  std::vector<PolicySummary> summary;
  std::string table;              // the summary as Markdown, printed by the CLI
};

// Checks everything (model, tasks, lengths against the model's context, haystack, policies, the output path)
// before any case runs; throws Error with a clear message on bad input.
EvalReport run_eval(const EvalOptions& o);

}  // namespace longctx::eval
