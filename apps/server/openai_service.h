// The OpenAI API over a RequestEngine, with no sockets: a request body becomes a validated, tokenized job (400 for
// anything wrong, before the engine sees it), then either one JSON answer or a stream of server-sent events. The
// HTTP layer (http_server.cpp) only checks the key and the body size, calls these and writes what they return.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "metrics.h"
#include "model/model.h"
#include "openai_api.h"
#include "openai_response.h"
#include "request_engine.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace longctx::server {

struct ServiceOptions {
  std::string model_name;       // what /v1/models lists and responses name
  std::string default_kv = "full";
  bool default_prefill_compress = false;  // --kv-prefill-compress
  int32_t n_ctx = 4096;         // prompt plus answer
  int32_t default_max_tokens = 512;  // when a request gives none (never past what the context leaves)
  Device device = Device::Cpu;  // where the engine runs: a policy it cannot run there is a 400
  ApiLimits limits;
};

// A request accepted and queued.
struct StartedRequest {
  ResponseMeta meta;
  CompletionRequest request;
  int32_t n_prompt = 0;
  std::shared_ptr<RequestChannel> channel;
};

class OpenAiService {
 public:
  // Throws Error when default_kv is not a valid spec or the model has no chat template we know (chat requests are
  // then refused with 400, completions still served).
  OpenAiService(const Model& model, const Tokenizer& tok, RequestEngine& engine, ServerMetrics& metrics,
                ServiceOptions o);

  // Parses, validates, tokenizes and queues; throws ApiError: 400 (bad body, bad "kv", prompt over the context with
  // the counts), 429 (queue full), 503 (shutting down).
  StartedRequest start(std::string_view body, Endpoint endpoint);

  // Waits for the whole answer; alive() is asked between waits and false cancels the job. Returns the response
  // body; throws ApiError 500 when generation failed, 499 when the client went away.
  nlohmann::json collect(StartedRequest& r, const std::function<bool()>& alive);

  // Streams the answer as SSE events through write() (false: the client is gone, which cancels the job); alive()
  // is asked while no event comes (a long prefill). A failure mid-stream is sent as a data event holding an error
  // object, then [DONE]. Returns whether the stream ran to its end.
  bool stream(StartedRequest& r, const std::function<bool(const std::string&)>& write,
              const std::function<bool()>& alive);

  nlohmann::json models() const;
  std::string metrics_text() const;
  const ServiceOptions& options() const { return opt_; }
  ServerMetrics& metrics() { return metrics_; }

 private:
  std::vector<int32_t> tokenize(const CompletionRequest& r) const;

  const Model& model_;
  const Tokenizer& tok_;
  RequestEngine& engine_;
  ServerMetrics& metrics_;
  ServiceOptions opt_;
  std::unique_ptr<ChatTemplate> chat_;  // null: the model has none we know
  std::string chat_error_;
  int64_t created_;
};

}  // namespace longctx::server
