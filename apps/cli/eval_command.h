// `longctx eval`: quality against memory against speed (needle, multikey, multivalue, kvret, passkey, ppl) under
// several KV policies on the same prompts; src/eval does the work, this file binds the options.
#pragma once
#include <string>

#include "eval/eval_runner.h"

namespace CLI {
class App;
}

namespace longctx {

// Adds the `eval` subcommand to the app, its options bound to o and --device to device (both must outlive parsing).
CLI::App* add_eval_subcommand(CLI::App& app, eval::EvalOptions& o, std::string& device);
// Runs it on the device named (device_option.h): the progress bar on stderr, the summary table on stdout; throws
// Error for bad input.
int eval_command(eval::EvalOptions o, const std::string& device);

}  // namespace longctx
