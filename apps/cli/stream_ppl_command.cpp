#include "stream_ppl_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

namespace longctx {

CLI::App* add_stream_ppl_subcommand(CLI::App& app, eval::StreamPplOptions& o) {
  auto* s = app.add_subcommand(
      "stream-ppl",
      "Perplexity of a long text read token by token under KV policies, per window of positions, with the KV "
      "memory at each window's end: streaming goes past the trained context, other policies stop at --ctx");
  s->add_option("-m,--model", o.model, "GGUF model file")->required();
  s->add_option("--text", o.text, "The text to read")->capture_default_str();
  s->add_option("--kv", o.kv_specs, "KV policy (repeatable; each reads the same tokens). Syntax as in `longctx run --help`")
      ->capture_default_str();
  s->add_option("--tokens", o.n_tokens, "Tokens of the text read, prefix included")->capture_default_str()
      ->check(CLI::Range(2, 1 << 24));
  s->add_option("--prefix", o.n_prefix, "Tokens read as a prompt before scoring starts")->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  s->add_option("--window", o.window, "Positions per reported window")->capture_default_str()->check(CLI::Range(1, 1 << 24));
  s->add_option("-c,--ctx", o.n_ctx, "Context (default: the model's trained context)")->check(CLI::Range(1, 1 << 24));
  s->add_option("-t,--threads", o.n_threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  s->add_option("--reference-context", o.n_reference_context,
                "Also score each window with the full cache afresh, after this many tokens before it (the text's own "
                "difficulty along the stream); 0: off")
      ->capture_default_str()->check(CLI::Range(0, 1 << 24));
  s->add_option("-o,--output", o.out, "JSON file of the runs");
  return s;
}

int stream_ppl_command(const eval::StreamPplOptions& o) {
  fmt::print("{}", eval::run_stream_ppl(o));
  return 0;
}

}  // namespace longctx
