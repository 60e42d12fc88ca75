// OpenAI's response bodies and server-sent events: the JSON of a whole completion, of one streamed chunk, of usage
// and logprobs, and the SSE framing ("data: <json>\n\n", closed by "data: [DONE]\n\n") that OpenAI's clients read.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "openai_api.h"

namespace longctx::server {

// One generated token's log-probability and the most likely alternatives at its step, by descending logprob.
struct TokenLogprob {
  std::string token;                                     // its bytes (may be part of a UTF-8 character)
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;        // (token bytes, logprob)
};

struct Usage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  size_t kv_bytes_held = 0;   // what the request's KV cache held at its end
  size_t kv_bytes_full = 0;   // what a full f16 cache of the same tokens holds
  int32_t cached_tokens = 0;   // prompt tokens whose K/V came from the kept cache (prefix reuse), not computed
  size_t kv_bytes_shared = 0;  // of kv_bytes_held, pages held with other requests or the prefix cache
};

// What identifies one response in all its chunks.
struct ResponseMeta {
  Endpoint endpoint = Endpoint::Chat;
  std::string id;       // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
};

// OpenAI's usage object, with the "kv" extension: the bytes held and saved against a full cache.
nlohmann::json usage_json(const Usage& u);

// The logprobs object: chat's {"content": [{token, logprob, bytes, top_logprobs}]}, or the legacy completions'
// {tokens, token_logprobs, top_logprobs, text_offset}; text_offset starts at offset0 (characters streamed before).
nlohmann::json logprobs_json(Endpoint e, const std::vector<TokenLogprob>& lps, size_t offset0);

// A whole non-streamed response; finish_reason is "stop" or "length".
nlohmann::json completion_json(const ResponseMeta& m, const std::string& text, const std::string& finish_reason,
                               const std::vector<TokenLogprob>* lps, const Usage& u);

// One streamed chunk: text and/or a finish reason (empty: null); chat's first chunk carries the role. lps may be
// null (no logprobs asked).
nlohmann::json chunk_json(const ResponseMeta& m, const std::string& text, const std::string& finish_reason,
                          bool first, const std::vector<TokenLogprob>* lps, size_t offset0);

// The chunk stream_options.include_usage asks for last: no choices, the usage.
nlohmann::json usage_chunk_json(const ResponseMeta& m, const Usage& u);

// "data: <json>\n\n". Bytes that are not UTF-8 are replaced by U+FFFD rather than failing the stream.
std::string sse_event(const nlohmann::json& j);
// The stream's end marker, "data: [DONE]\n\n".
std::string sse_done();
// JSON text of j, invalid UTF-8 replaced by U+FFFD (model tokens may hold partial characters).
std::string dump_json(const nlohmann::json& j);

// The length of the longest prefix of s that does not end inside a UTF-8 character: a stream holds back the
// incomplete tail until its next bytes come. Malformed bytes count as complete (they are replaced when written).
size_t utf8_complete_prefix(std::string_view s);

}  // namespace longctx::server
