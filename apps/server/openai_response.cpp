#include "openai_response.h"

namespace longctx::server {

using nlohmann::json;

json usage_json(const Usage& u) {
  const size_t saved = u.kv_bytes_full > u.kv_bytes_held ? u.kv_bytes_full - u.kv_bytes_held : 0;
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}},
          {"kv_bytes_held", u.kv_bytes_held},
          {"kv_bytes_full", u.kv_bytes_full},
          {"kv_bytes_shared", u.kv_bytes_shared},
          {"kv_bytes_saved", saved}};
}

namespace {

json token_bytes(const std::string& t) {
  json b = json::array();
  for (unsigned char c : t) b.push_back(static_cast<int>(c));
  return b;
}


}  // namespace

json logprobs_json(Endpoint e, const std::vector<TokenLogprob>& lps, size_t offset0) {
  if (e == Endpoint::Chat) {
    json content = json::array();
    for (const TokenLogprob& lp : lps) {
      json top = json::array();
      for (const auto& [t, l] : lp.top) top.push_back({{"token", t}, {"logprob", l}, {"bytes", token_bytes(t)}});
      content.push_back({{"token", lp.token}, {"logprob", lp.logprob}, {"bytes", token_bytes(lp.token)},
                         {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  size_t offset = offset0;
  for (const TokenLogprob& lp : lps) {
    tokens.push_back(lp.token);
    token_logprobs.push_back(lp.logprob);
    json top = json::object();
    for (const auto& [t, l] : lp.top) top[t] = l;
    top_logprobs.push_back(top);
    offsets.push_back(offset);
    offset += lp.token.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs},
          {"text_offset", offsets}};
}

json completion_json(const ResponseMeta& m, const std::string& text, const std::string& finish_reason,
                     const std::vector<TokenLogprob>* lps, const Usage& u) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
  if (lps) choice["logprobs"] = logprobs_json(m.endpoint, *lps, 0);
  if (m.endpoint == Endpoint::Chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return {{"id", m.id},
          {"object", m.endpoint == Endpoint::Chat ? "chat.completion" : "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array({choice})},
          {"usage", usage_json(u)}};
}

json chunk_json(const ResponseMeta& m, const std::string& text, const std::string& finish_reason, bool first,
                const std::vector<TokenLogprob>* lps, size_t offset0) {
  json choice = {{"index", 0}, {"logprobs", nullptr}};
  choice["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(finish_reason);
  if (lps) choice["logprobs"] = logprobs_json(m.endpoint, *lps, offset0);
  if (m.endpoint == Endpoint::Chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || finish_reason.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  return {{"id", m.id},
          {"object", m.endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array({choice})}};
}

json usage_chunk_json(const ResponseMeta& m, const Usage& u) {
  return {{"id", m.id},
          {"object", m.endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
          {"created", m.created},
          {"model", m.model},
          {"choices", json::array()},
          {"usage", usage_json(u)}};
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

size_t utf8_complete_prefix(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of a character that the end cuts short.
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for its lead
    size_t len = 1;
    if ((c & 0xE0) == 0xC0) len = 2;
    else if ((c & 0xF0) == 0xE0) len = 3;
    else if ((c & 0xF8) == 0xF0) len = 4;
    return len > back ? n - back : n;
  }
  return n;
}

}  // namespace longctx::server
