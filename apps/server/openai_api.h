// The OpenAI HTTP API's request bodies and error bodies (https://platform.openai.com/docs/api-reference): parsing and
// validation of /v1/chat/completions and /v1/completions into one request, before anything touches the model, so
// that every bad field is answered 400 with OpenAI's error shape and never reaches the engine.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/sampler.h"
#include "tokenizer/chat_template.h"

namespace longctx::server {

// An answer other than 200: the HTTP status and OpenAI's {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string type, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type;   // "invalid_request_error", "authentication_error", "rate_limit_error", "server_error"
  std::string param;  // the offending field, empty when none
  std::string code;   // a short machine-readable reason, empty when none
};

// 400 invalid_request_error about one field.
[[noreturn]] void bad_field(const std::string& param, const std::string& message);

// {"error": {...}}; param and code are null when empty, as OpenAI writes them.
nlohmann::json error_body(const ApiError& e);

enum class Endpoint { Chat, Completion };

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;                   // echoed back; any name is accepted (the server holds one model)
  std::vector<ChatMessage> messages;   // Chat
  std::string prompt;                  // Completion, as text
  std::vector<int32_t> prompt_tokens;  // Completion, given as token ids (then prompt is empty)
  std::optional<int32_t> max_tokens;   // unset: the server's cap, or what the context leaves
  SamplerParams sampling;              // OpenAI's defaults: temperature 1, top_p 1; top_k and min_p off
  std::vector<std::string> stop;       // at most 4, none empty
  bool stream = false;
  bool include_usage = false;          // stream_options.include_usage: a last chunk with usage
  int32_t n_logprobs = -1;             // -1: no logprobs; k >= 0: the chosen token's and the top k
  std::string kv;                      // the "kv" extension: a policy spec; empty means the server's --kv
  bool ignore_eos = false;             // llama-server's extension: generate max_tokens past end-of-generation tokens
  // The "kv_prefill_compress" extension: the policy cuts the cache after every prefill chunk; unset: the server's
  // --kv-prefill-compress.
  std::optional<bool> kv_prefill_compress;
};

struct ApiLimits {
  int32_t max_tokens_cap = 4096;  // a larger max_tokens is a 400
  int32_t max_top_logprobs = 20;
};

// Parses a JSON request body for the endpoint; throws ApiError (400) on malformed JSON, a missing or mistyped
// field, a value out of range, or a feature the server does not have (n > 1, several prompts). Fields it does not
// know are ignored, as OpenAI-compatible servers do, so clients that send extra fields work.
CompletionRequest parse_completion_request(std::string_view body, Endpoint endpoint, const ApiLimits& limits);

}  // namespace longctx::server
