// The HTTP layer of `longctx serve` (cpp-httplib): routes, the API key, the body-size limit, writing the service's
// JSON and server-sent events, noticing clients that went away, and stopping on SIGINT/SIGTERM. Everything about the
// API itself is in OpenAiService.
#pragma once
#include <cstddef>
#include <string>

#include "openai_service.h"

namespace longctx::server {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (the one bound is printed)
  std::string api_key;           // empty: no key asked
  size_t max_body_bytes = 8u << 20;
  int n_http_threads = 32;       // connections served at once (each waiting or streaming request holds one)
};

// Serves until SIGINT or SIGTERM, then stops taking connections, ends the queued and running requests (their
// clients get an answer) and returns 0; throws Error when the address cannot be bound. Call with SIGINT and
// SIGTERM blocked in every thread (block_stop_signals() before any thread starts).
int serve_http(OpenAiService& service, RequestEngine& engine, const HttpOptions& o);

// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later), so serve_http's signal thread
// receives them; ignores SIGPIPE (a client gone mid-write is an error return, not a signal).
void block_stop_signals();

}  // namespace longctx::server
