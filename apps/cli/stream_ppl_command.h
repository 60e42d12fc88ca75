// `longctx stream-ppl`: perplexity of a long text read token by token under KV policies, per window of positions,
// with the memory held at each window's end (src/eval/stream_ppl.h does the work; this file binds the options).
#pragma once
#include "eval/stream_ppl.h"

namespace CLI {
class App;
}

namespace longctx {

// Adds the `stream-ppl` subcommand, its options bound to o (which must outlive parsing).
CLI::App* add_stream_ppl_subcommand(CLI::App& app, eval::StreamPplOptions& o);
// Runs it: progress on stderr, the tables on stdout; throws Error for bad input.
int stream_ppl_command(const eval::StreamPplOptions& o);

}  // namespace longctx
