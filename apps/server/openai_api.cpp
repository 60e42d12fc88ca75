#include "openai_api.h"

#include <cmath>
#include <limits>

namespace longctx::server {

using nlohmann::json;

void bad_field(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

json error_body(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return {{"error", err}};
}

namespace {

const char* json_type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

std::string fmt_msg(const char* name, const char* what, const json& v) {
  return std::string("'") + name + "' " + what + ", not " + json_type_name(v);
}

// A field that is absent or null counts as not given, as in OpenAI's API.
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double number_in(const json& body, const char* name, double lo, double hi) {
  const json& v = *field(body, name);
  if (!v.is_number()) bad_field(name, fmt_msg(name, "must be a number", v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad_field(name, std::string("'") + name + "' is " + v.dump() + "; it must be between " + json(lo).dump() +
                        " and " + json(hi).dump());
  return x;
}

int64_t integer_in(const json& body, const char* name, int64_t lo, int64_t hi) {
  const json& v = *field(body, name);
  if (!v.is_number_integer()) bad_field(name, fmt_msg(name, "must be an integer", v));
  // Unsigned values above int64's range read as negative through get<int64_t>; they are out of range either way.
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    bad_field(name, std::string("'") + name + "' is " + v.dump() + ", out of range");
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad_field(name, std::string("'") + name + "' is " + std::to_string(x) + "; it must be between " +
                        std::to_string(lo) + " and " + std::to_string(hi));
  return x;
}

bool boolean(const json& body, const char* name) {
  const json& v = *field(body, name);
  if (!v.is_boolean()) bad_field(name, fmt_msg(name, "must be a boolean", v));
  return v.get<bool>();
}


std::string message_content(const json& m, size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) bad_field(param, "'" + param + "' is missing");
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) bad_field(param, "'" + param + "' must be a string or an array of text parts");
  std::string text;
  for (const json& part : *it) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      bad_field(param, "'" + param + "': only parts of type \"text\" with a string \"text\" are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* ms = field(body, "messages");
  if (!ms) bad_field("messages", "'messages' is required");
  if (!ms->is_array()) bad_field("messages", fmt_msg("messages", "must be an array", *ms));
  if (ms->empty()) bad_field("messages", "'messages' is empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < ms->size(); ++i) {
    const json& m = (*ms)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad_field(param, "'" + param + "' must be an object");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) bad_field(param + ".role", "'" + param + ".role' must be a string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system turn
    if (r != "system" && r != "user" && r != "assistant")
      bad_field(param + ".role", "'" + param + ".role' is \"" + r + "\"; supported: system, user, assistant");
    out.push_back({r, message_content(m, i)});
  }
  return out;
}

void parse_prompt(const json& body, CompletionRequest& r) {
  const json* p = field(body, "prompt");
  if (!p) bad_field("prompt", "'prompt' is required");
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    return;
  }
  if (!p->is_array() || p->empty()) bad_field("prompt", "'prompt' must be a string, or an array of token ids");
  if ((*p)[0].is_string()) {
    if (p->size() != 1) bad_field("prompt", "'prompt' holds several prompts; this server answers one per request");
    r.prompt = (*p)[0].get<std::string>();
    return;
  }
  for (const json& t : *p) {
    if (t.is_array()) bad_field("prompt", "'prompt' holds several prompts; this server answers one per request");
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max())
      bad_field("prompt", "'prompt' as an array must hold token ids (non-negative integers)");
    r.prompt_tokens.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
}

void parse_stop(const json& body, CompletionRequest& r) {
  const json* s = field(body, "stop");
  if (!s) return;
  if (s->is_string()) {
    r.stop.push_back(s->get<std::string>());
  } else if (s->is_array()) {
    for (const json& x : *s) {
      if (!x.is_string()) bad_field("stop", "'stop' must be a string or an array of strings");
      r.stop.push_back(x.get<std::string>());
    }
  } else {
    bad_field("stop", fmt_msg("stop", "must be a string or an array of strings", *s));
  }
  if (r.stop.size() > 4) bad_field("stop", "'stop' holds more than 4 strings");
  for (const auto& x : r.stop)
    if (x.empty()) bad_field("stop", "'stop' holds an empty string");
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view text, Endpoint endpoint, const ApiLimits& limits) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what(), "invalid_request_error", "",
                   "invalid_json");
  }
  if (!body.is_object()) throw ApiError(400, "the body must be a JSON object", "invalid_request_error");
  CompletionRequest r;
  r.endpoint = endpoint;
  if (const json* m = field(body, "model")) {
    if (!m->is_string()) bad_field("model", fmt_msg("model", "must be a string", *m));
    r.model = m->get<std::string>();
  }
  if (endpoint == Endpoint::Chat)
    r.messages = parse_messages(body);
  else
    parse_prompt(body, r);

  // Chat calls it max_completion_tokens now; both are read, the newer name winning.
  const char* max_name = endpoint == Endpoint::Chat && field(body, "max_completion_tokens") ? "max_completion_tokens"
                                                                                               : "max_tokens";
  if (field(body, max_name)) r.max_tokens = static_cast<int32_t>(integer_in(body, max_name, 1, limits.max_tokens_cap));

  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 1.0f;
  r.sampling.top_k = 0;
  r.sampling.min_p = 0.0f;
  r.sampling.repeat_penalty = 1.0f;
  if (field(body, "temperature")) r.sampling.temperature = static_cast<float>(number_in(body, "temperature", 0, 2));
  if (field(body, "top_p")) {
    r.sampling.top_p = static_cast<float>(number_in(body, "top_p", 0, 1));
    if (r.sampling.top_p == 0) bad_field("top_p", "'top_p' must be above 0 (use temperature 0 for greedy)");
  }
  if (field(body, "top_k")) r.sampling.top_k = static_cast<int32_t>(integer_in(body, "top_k", 0, 1 << 30));
  if (field(body, "min_p")) r.sampling.min_p = static_cast<float>(number_in(body, "min_p", 0, 1));
  if (field(body, "seed"))
    r.sampling.seed = static_cast<uint64_t>(
        integer_in(body, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
  for (const char* name : {"frequency_penalty", "presence_penalty"})
    if (field(body, name) && number_in(body, name, -2, 2) != 0)
      bad_field(name, std::string("'") + name + "' is not supported (only 0)");
  if (field(body, "n") && integer_in(body, "n", 1, 128) != 1)
    bad_field("n", "'n' must be 1: this server returns one choice per request");
  parse_stop(body, r);

  if (field(body, "stream")) r.stream = boolean(body, "stream");
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad_field("stream_options", fmt_msg("stream_options", "must be an object", *so));
    if (!r.stream) bad_field("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (field(*so, "include_usage")) r.include_usage = boolean(*so, "include_usage");
  }

  if (endpoint == Endpoint::Chat) {
    // logprobs: a boolean; top_logprobs: how many alternatives, which needs logprobs.
    const bool lp = field(body, "logprobs") && boolean(body, "logprobs");
    if (field(body, "top_logprobs")) {
      const int64_t k = integer_in(body, "top_logprobs", 0, limits.max_top_logprobs);
      if (!lp) bad_field("top_logprobs", "'top_logprobs' needs 'logprobs' to be true");
      r.n_logprobs = static_cast<int32_t>(k);
    } else if (lp) {
      r.n_logprobs = 0;
    }
  } else if (field(body, "logprobs")) {
    // The legacy API: logprobs is the number of alternatives.
    r.n_logprobs = static_cast<int32_t>(integer_in(body, "logprobs", 0, limits.max_top_logprobs));
  }
  if (endpoint == Endpoint::Completion && field(body, "echo") && boolean(body, "echo"))
    bad_field("echo", "'echo' is not supported");
  if (endpoint == Endpoint::Completion && field(body, "suffix")) bad_field("suffix", "'suffix' is not supported");

  if (const json* kv = field(body, "kv")) {
    if (!kv->is_string() || kv->get<std::string>().empty())
      bad_field("kv", "'kv' must be a KV policy spec string, e.g. \"snapkv:budget=1024\"");
    r.kv = kv->get<std::string>();
  }
  if (field(body, "ignore_eos")) r.ignore_eos = boolean(body, "ignore_eos");
  if (field(body, "kv_prefill_compress")) r.kv_prefill_compress = boolean(body, "kv_prefill_compress");
  // The sampler's own checks, so a combination it refuses is a 400 here, not a failure in the engine.
  try {
    Sampler check(r.sampling);
  } catch (const std::exception& e) {
    bad_field("temperature", e.what());
  }
  return r;
}

}  // namespace longctx::server
