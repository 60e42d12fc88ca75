#include "eval_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <map>

#include "device_option.h"

namespace longctx {

CLI::App* add_eval_subcommand(CLI::App& app, eval::EvalOptions& o, std::string& device) {
  auto* e = app.add_subcommand(
      "eval", "Quality against KV memory: needle, multikey, multivalue, kvret, passkey and ppl cases under every "
              "--kv policy on the same prompts; writes a JSON of results (plot it with scripts/plot_eval.py)");
  e->add_option("tasks", o.tasks, "Comma-separated tasks: needle, multikey, multivalue, kvret, passkey, ppl, all")
      ->capture_default_str();
  e->add_option("-m,--model", o.model, "GGUF model file")->required();
  e->add_option("--kv", o.kv_specs,
                "KV policy (repeatable; every one runs the same prompts). budget=1/4 is a quarter of each case's "
                "length. Syntax as in `longctx run --help`")
      ->capture_default_str();
  e->add_option("--spec", o.spec,
                "Decode answers speculatively, lossless (--kv full only): self[:gamma=N,draft=SPEC]; ppl runs as without");
  e->add_option("--lengths", o.lengths, "Tokens per case (prompt + answer), like 1k,2k,4096")->capture_default_str();
  e->add_option("--depths", o.depths, "Where the fact sits, as fractions of the context")->capture_default_str();
  e->add_option("--seed", o.seed, "First seed of the case generator")->capture_default_str();
  e->add_option("--seeds", o.n_seeds, "Seeds per (task, length, depth): seed, seed+1, ...")->capture_default_str()
      ->check(CLI::Range(1, 1000));
  e->add_option("--haystack", o.haystack, "Text the facts are hidden in, cut at sentence boundaries")->capture_default_str();
  e->add_option("-o,--output", o.out, "Results JSON file")->required();
  e->add_option("--prompts-out", o.prompts_out,
                "Also write each case's prompt once (not per policy) to FILE, one JSON line each, before any case "
                "runs: task, length, depth, seed, tokens (the ids prefilled: chat template and bos as the engine "
                "adds them), n_compressed (with --question-after-compress: the leading tokens compressed before "
                "the rest is read; else 0), expected, n_predict, and the decode's stop strings and end-of-generation "
                "ids; answers are scored by `score` (every expected value as a whole word). For running another "
                "implementation on the very same ids (scripts/kvpress_answers.py)");
  e->add_option("-n,--n-predict", o.n_predict, "Answer tokens")->capture_default_str()->check(CLI::Range(1, 4096));
  e->add_option("--ppl-tokens", o.n_score, "ppl: tokens scored after the prefix")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  e->add_option("-t,--threads", o.n_threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  add_device_option(e, device);
  e->add_option("-b,--batch", o.n_batch, "Prompt tokens per prefill chunk")->capture_default_str()->check(CLI::Range(1, 8192));
  static const std::map<std::string, eval::PromptStyle> styles{
      {"auto", eval::PromptStyle::Auto}, {"chat", eval::PromptStyle::Chat}, {"completion", eval::PromptStyle::Completion}};
  e->add_option("--prompt-style", o.style, "auto (chat when the model has a chat template), chat or completion")
      ->transform(CLI::CheckedTransformer(styles, CLI::ignore_case));
  static const std::map<std::string, eval::ProgressMode> modes{{"bar", eval::ProgressMode::Bar},
                                                                {"off", eval::ProgressMode::Off}};
  e->add_flag("--question-after-compress", o.question_after_compress,
              "Compress the cache after the context, before the question is read (query-agnostic: a cached "
              "document serving questions not yet asked)");
  e->add_flag("--kv-prefill-compress", o.prefill_compress,
              "Cut the cache with each policy after every prefill chunk, not only at the prompt's end (as `run "
              "--kv-prefill-compress` and `serve --kv-prefill-compress` do; each chunk is scored as if the prompt "
              "ended there)");
  e->add_option("--progress", o.progress, "bar or off")->transform(CLI::CheckedTransformer(modes, CLI::ignore_case));
  return e;
}

int eval_command(eval::EvalOptions o, const std::string& device) {
  o.device = pick_device(device);
  const eval::EvalReport rep = eval::run_eval(o);
  fmt::print("{}", rep.table);
  fmt::print(stderr, "eval: {} runs written to {}\n", rep.n_cases, o.out);
  return 0;
}

}  // namespace longctx
