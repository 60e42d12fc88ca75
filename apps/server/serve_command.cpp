#include "serve_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <thread>

#include "core/error.h"
#include "device_option.h"
#include "batching_engine.h"
#include "http_server.h"
#include "engine/session.h"
#include "kv/policy.h"
#include "model/model.h"
#include "openai_service.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

CLI::App* add_serve_subcommand(CLI::App& app, ServeOptions& o) {
  auto* s = app.add_subcommand("serve", "OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, "
                                        "/v1/models, /health, /metrics");
  s->add_option("-m,--model", o.model, "GGUF model file")->required();
  s->add_option("--host", o.host, "Address to listen on (127.0.0.1: this machine only)")->capture_default_str();
  s->add_option("--port", o.port, "Port (0: any free one, printed)")->capture_default_str()->check(CLI::Range(0, 65535));
  s->add_option("--kv", o.kv, "Default KV cache policy; a request's \"kv\" field overrides it. " + kv::kv_policy_help())
      ->capture_default_str();
  s->add_option("--api-key", o.api_key, "Require Authorization: Bearer KEY (all but /health)");
  s->add_option("-c,--ctx", o.n_ctx, "Context: prompt plus answer (default: the model's trained context)")
      ->check(CLI::Range(2, 1 << 24));
  s->add_option("--max-tokens", o.max_tokens, "Largest max_tokens a request may ask, and the default")
      ->capture_default_str()->check(CLI::Range(1, 1 << 24));
  s->add_option("--max-queue", o.max_queue, "Requests that may wait; more get 429")->capture_default_str()
      ->check(CLI::Range(0, 4096));
  s->add_option("--max-running", o.max_running,
                "Requests generating at once, their decode steps batched (the KV pool holds this many full caches "
                "of --ctx; more wait in the queue)")
      ->capture_default_str()->check(CLI::Range(1, 1024));
  s->add_option("--kv-memory", o.kv_memory_mib,
                "KV cache memory in MiB that all requests share (default: --max-running full f16 caches of --ctx); "
                "requests wait for room, and the newest running one is recomputed later when the pool runs out")
      ->check(CLI::Range(0.0, 1e9));
  s->add_flag("--no-batch-invariant", o.no_batch_invariant,
              "Stack all running requests in one forward per decode step (faster with many; each answer then equals "
              "its answer alone only within rounding). Default: at most the backend's batch-invariant rows per "
              "forward (the CPU: 7), so every answer is bit for bit what it gets alone");
  s->add_option("--max-body", o.max_body, "Largest request body in bytes; larger gets 413")->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 34));
  s->add_option("-b,--batch", o.n_batch, "Prompt tokens per prefill chunk")->capture_default_str()->check(CLI::Range(1, 8192));
  s->add_option("-t,--threads", o.threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  s->add_flag("--no-prefix-reuse", o.no_prefix_reuse,
              "Run every prompt whole (default: prompts' prefixes, up to where their policy acts, and finished "
              "full-cache requests stay cached; a later request under any policy that starts with one shares its "
              "pages and prefills only the rest)");
  s->add_flag("--kv-prefill-compress", o.kv_prefill_compress,
              "Cut every prompt's cache with its policy after each prefill chunk, not only at the prompt's end, so a "
              "long prompt never holds more than the policy keeps plus a chunk, and admission counts only that: more "
              "requests fit in --kv-memory (each chunk is scored as if the prompt ended there; not for kvzip; a "
              "request's \"kv_prefill_compress\": true/false overrides it)");
  add_device_option(s, o.device);
  return s;
}

int serve_command(const ServeOptions& o) {
  // Before any thread exists, so every thread inherits the mask and the signals reach only serve_http's waiter.
  server::block_stop_signals();
  auto model = Model::load(o.model);
  auto tok = Tokenizer::from_gguf(model->file());
  const ModelConfig& c = model->config();

  server::ServerMetrics metrics;
  server::BatchingEngineOptions eo;
  eo.n_ctx = o.n_ctx > 0 ? o.n_ctx : c.n_ctx_train;
  eo.n_batch = o.n_batch;
  eo.max_queue = o.max_queue;
  eo.max_running = o.max_running;
  eo.batch_invariant = !o.no_batch_invariant;
  eo.kv_max_bytes = static_cast<size_t>(o.kv_memory_mib * 1048576.0);
  eo.device = pick_device(o.device);
  eo.prefix_reuse = !o.no_prefix_reuse;
  eo.n_threads = o.threads > 0 ? o.threads : static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  server::ServiceOptions so;
  so.model_name = std::filesystem::path(o.model).stem().string();
  so.default_kv = o.kv;
  so.default_prefill_compress = o.kv_prefill_compress;
  so.device = eo.device;
  so.n_ctx = eo.n_ctx;
  so.default_max_tokens = o.max_tokens;
  so.limits.max_tokens_cap = o.max_tokens;
  // Checked before the engine's thread starts: a bad --kv, or one the device cannot run, is an error at start.
  {
    const auto policy = kv::make_kv_policy(o.kv, c.n_layer, c.n_head_kv);
    check_policy_runs_on(eo.device, *policy);
    check_policy_serves(*policy);
    if (o.kv_prefill_compress) check_policy_compresses_chunks(*policy);
  }

  server::BatchingEngine engine(*model, *tok, eo, &metrics);
  server::OpenAiService service(*model, *tok, engine, metrics, so);
  server::HttpOptions ho;
  ho.host = o.host;
  ho.port = o.port;
  ho.api_key = o.api_key;
  ho.max_body_bytes = o.max_body;
  // Every queued or running request holds a connection while it waits, and a few more serve /health and /metrics.
  ho.n_http_threads = o.max_queue + o.max_running + 8;
  fmt::print(stderr, "longctx serve: {} ({}, {} layers), ctx {}, kv {}{}, {} threads, {} running, queue {}{}\n",
             o.model, arch_name(c.arch), c.n_layer, eo.n_ctx, o.kv, o.kv_prefill_compress ? " (cut per prefill chunk)" : "",
             eo.n_threads, o.max_running, o.max_queue,
             o.api_key.empty() ? "" : ", API key required");
  return server::serve_http(service, engine, ho);
}

}  // namespace longctx
