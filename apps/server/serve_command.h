// `longctx serve`: an OpenAI-compatible HTTP server over one model (http_server.h, openai_service.h); this file
// binds the options and puts the pieces together.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace longctx {

struct ServeOptions {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string kv = "full";
  std::string api_key;
  int32_t n_ctx = 0;           // 0: the model's trained context
  int32_t max_tokens = 4096;   // the largest max_tokens a request may ask; also the default
  int32_t max_queue = 16;
  int32_t max_running = 8;
  double kv_memory_mib = 0;    // 0: max_running full f16 caches of the context
  bool no_batch_invariant = false;
  size_t max_body = 8u << 20;
  int32_t n_batch = 256;
  int32_t threads = 0;         // 0: all cores
  std::string device = "auto";  // --device (apps/cli/device_option.h)
  bool no_prefix_reuse = false;
  bool kv_prefill_compress = false;
};

// Adds the `serve` subcommand, its options bound to o (which must outlive parsing).
CLI::App* add_serve_subcommand(CLI::App& app, ServeOptions& o);
// Loads the model and serves until SIGINT/SIGTERM; throws Error for bad options or an address it cannot bind.
int serve_command(const ServeOptions& o);

}  // namespace longctx
