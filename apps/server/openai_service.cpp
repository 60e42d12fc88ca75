#include "openai_service.h"

#include <atomic>
#include <chrono>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "engine/session.h"
#include "kv/policy.h"

namespace longctx::server {

using nlohmann::json;

namespace {

constexpr auto kPoll = std::chrono::milliseconds(100);

std::string new_id(Endpoint e) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t salt = std::random_device{}();
  return fmt::format("{}-{:08x}{:06x}", e == Endpoint::Chat ? "chatcmpl" : "cmpl", salt & 0xffffffffu, ++counter);
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Asks whether the client is still there at most once per kPoll, however fast events come.
class ClientWatch {
 public:
  explicit ClientWatch(const std::function<bool()>& alive) : alive_(alive), last_(std::chrono::steady_clock::now()) {}
  bool gone() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < kPoll) return false;
    last_ = now;
    return !alive_();
  }

 private:
  const std::function<bool()>& alive_;
  std::chrono::steady_clock::time_point last_;
};

ApiError engine_failure(const std::string& what) { return ApiError(500, "generation failed: " + what, "server_error"); }

}  // namespace

OpenAiService::OpenAiService(const Model& model, const Tokenizer& tok, RequestEngine& engine, ServerMetrics& metrics,
                             ServiceOptions o)
    : model_(model), tok_(tok), engine_(engine), metrics_(metrics), opt_(std::move(o)), created_(unix_now()) {
  const ModelConfig& c = model.config();
  // A bad --kv, or one the device cannot run, is an Error at start.
  const auto default_policy = kv::make_kv_policy(opt_.default_kv, c.n_layer, c.n_head_kv);
  check_policy_runs_on(opt_.device, *default_policy);
  check_policy_serves(*default_policy);
  try {
    chat_ = std::make_unique<ChatTemplate>(chat_template_for(model.file()));
  } catch (const Error& e) {
    chat_error_ = e.what();
  }
}

std::vector<int32_t> OpenAiService::tokenize(const CompletionRequest& r) const {
  if (r.endpoint == Endpoint::Chat) {
    if (!chat_) throw ApiError(400, "this model has no chat template the server knows: " + chat_error_,
                               "invalid_request_error", "messages");
    // The template's own control tokens are parsed as such, so a message must not spell one: its text would
    // otherwise end a turn or open another role's.
    for (size_t i = 0; i < r.messages.size(); ++i) {
      const std::string& content = r.messages[i].content;
      if (tok_.encode(content, false, /*parse_special=*/true) != tok_.encode(content, false, /*parse_special=*/false))
        bad_field(fmt::format("messages[{}].content", i),
                  fmt::format("messages[{}].content holds the text of one of the model's control tokens", i));
    }
    std::string text;
    try {
      text = apply_chat_template(*chat_, r.messages, /*add_generation_prompt=*/true);
    } catch (const Error& e) {
      bad_field("messages", e.what());
    }
    // As `longctx run --chat` encodes it, so a greedy answer is the same token for token.
    return tok_.encode(text, tok_.add_bos(), /*parse_special=*/true);
  }
  if (!r.prompt_tokens.empty()) {
    const int32_t n_vocab = std::min(tok_.n_vocab(), model_.config().n_vocab);
    for (int32_t t : r.prompt_tokens)
      if (t >= n_vocab) bad_field("prompt", fmt::format("token id {} is outside the vocabulary of {}", t, n_vocab));
    return r.prompt_tokens;
  }
  return tok_.encode(r.prompt, tok_.add_bos(), /*parse_special=*/false);
}

StartedRequest OpenAiService::start(std::string_view body, Endpoint endpoint) {
  StartedRequest s;
  s.request = parse_completion_request(body, endpoint, opt_.limits);
  const CompletionRequest& r = s.request;
  const std::string kv_spec = r.kv.empty() ? opt_.default_kv : r.kv;
  const ModelConfig& c = model_.config();
  std::unique_ptr<kv::KvPolicy> policy;
  try {
    policy = kv::make_kv_policy(kv_spec, c.n_layer, c.n_head_kv);
  } catch (const Error& e) {
    bad_field("kv", std::string("bad KV policy: ") + e.what());
  }
  try {
    check_policy_runs_on(opt_.device, *policy);
    check_policy_serves(*policy);
  } catch (const Error& e) {
    bad_field("kv", e.what());
  }
  const bool prefill_compress = r.kv_prefill_compress.value_or(opt_.default_prefill_compress);
  if (prefill_compress) {
    try {
      check_policy_compresses_chunks(*policy);
    } catch (const Error& e) {
      bad_field(r.kv_prefill_compress ? "kv_prefill_compress" : "kv", e.what());
    }
  }
  GenerationJob job;
  job.prompt = tokenize(r);
  const int32_t n_prompt = static_cast<int32_t>(job.prompt.size());
  if (n_prompt == 0) bad_field(endpoint == Endpoint::Chat ? "messages" : "prompt", "the prompt is empty");
  // Never cut silently: a prompt the context cannot hold is refused with the counts.
  if (n_prompt >= opt_.n_ctx)
    throw ApiError(400,
                   fmt::format("the prompt has {} tokens; this server's context is {} tokens (--ctx), which must "
                               "hold the prompt and at least one generated token",
                               n_prompt, opt_.n_ctx),
                   "invalid_request_error", endpoint == Endpoint::Chat ? "messages" : "prompt",
                   "context_length_exceeded");
  // Positions within the cache (StreamingLLM) let generation go past the context; other policies stop at it.
  const bool in_cache = policy->positions() == kv::KvPositions::InCache;
  const int32_t room = opt_.n_ctx - n_prompt;
  if (r.max_tokens) {
    if (!in_cache && *r.max_tokens > room)
      throw ApiError(400,
                     fmt::format("the prompt has {} tokens and max_tokens is {}: {} in all, more than this server's "
                                 "context of {} tokens (--ctx)",
                                 n_prompt, *r.max_tokens, n_prompt + *r.max_tokens, opt_.n_ctx),
                     "invalid_request_error", "max_tokens", "context_length_exceeded");
    job.max_tokens = *r.max_tokens;
  } else {
    job.max_tokens = in_cache ? opt_.default_max_tokens : std::min(opt_.default_max_tokens, room);
  }
  job.sampling = r.sampling;
  job.stop = r.stop;
  job.n_logprobs = r.n_logprobs;
  job.kv = kv_spec;
  job.ignore_eog = r.ignore_eos;
  job.prefill_compress = prefill_compress;
  job.arrival = std::chrono::steady_clock::now();
  try {
    s.channel = engine_.submit(std::move(job));
  } catch (const QueueFull& e) {
    throw ApiError(429, e.what(), "rate_limit_error", "", "queue_full");
  } catch (const EngineStopped& e) {
    throw ApiError(503, e.what(), "server_error", "", "shutting_down");
  }
  s.n_prompt = n_prompt;
  s.meta.endpoint = endpoint;
  s.meta.id = new_id(endpoint);
  s.meta.created = unix_now();
  s.meta.model = r.model.empty() ? opt_.model_name : r.model;
  return s;
}

json OpenAiService::collect(StartedRequest& s, const std::function<bool()>& alive) {
  std::string text;
  std::vector<TokenLogprob> lps;
  std::vector<GenerationEvent> events;
  ClientWatch watch(alive);
  while (true) {
    events.clear();
    const bool got = s.channel->wait_pop(events, kPoll);
    if (watch.gone()) {
      s.channel->cancel();
      throw ApiError(499, "the client closed the connection", "invalid_request_error", "", "client_closed");
    }
    if (!got) continue;
    for (GenerationEvent& e : events) {
      text += e.text;
      for (auto& lp : e.logprobs) lps.push_back(std::move(lp));
      if (!e.done) continue;
      if (e.finish == FinishReason::Error) throw engine_failure(e.error);
      if (e.finish == FinishReason::Cancelled)
        throw ApiError(503, e.error.empty() ? "the request was cancelled" : e.error, "server_error", "", "cancelled");
      return completion_json(s.meta, text, finish_reason_name(e.finish), s.request.n_logprobs >= 0 ? &lps : nullptr,
                             e.usage);
    }
  }
}

bool OpenAiService::stream(StartedRequest& s, const std::function<bool(const std::string&)>& write,
                           const std::function<bool()>& alive) {
  const bool want_lps = s.request.n_logprobs >= 0;
  std::string held;                      // bytes that end inside a UTF-8 character, waiting for the rest
  std::vector<TokenLogprob> held_lps;
  size_t offset = 0;                     // bytes of text sent so far (completions' text_offset)
  bool first = true;
  std::vector<GenerationEvent> events;
  const auto gone = [&] {
    s.channel->cancel();
    return false;
  };
  ClientWatch watch(alive);
  while (true) {
    events.clear();
    const bool got = s.channel->wait_pop(events, kPoll);
    if (watch.gone()) return gone();
    if (!got) continue;
    for (GenerationEvent& e : events) {
      held += e.text;
      for (auto& lp : e.logprobs) held_lps.push_back(std::move(lp));
      // At the end everything goes out, a broken character included (replaced when written).
      const size_t n = e.done ? held.size() : utf8_complete_prefix(held);
      if (n > 0 || (want_lps && !held_lps.empty() && e.done)) {
        const std::string out = held.substr(0, n);
        if (!write(sse_event(chunk_json(s.meta, out, "", first, want_lps ? &held_lps : nullptr, offset)))) return gone();
        first = false;
        offset += n;
        held.erase(0, n);
        held_lps.clear();
      }
      if (!e.done) continue;
      if (e.finish == FinishReason::Error || e.finish == FinishReason::Cancelled) {
        const ApiError err = e.finish == FinishReason::Error
                                 ? engine_failure(e.error)
                                 : ApiError(503, e.error.empty() ? "cancelled" : e.error, "server_error", "", "cancelled");
        write(sse_event(error_body(err)));
        write(sse_done());
        return false;
      }
      if (!write(sse_event(chunk_json(s.meta, "", finish_reason_name(e.finish), first, nullptr, offset)))) return gone();
      if (s.request.include_usage && !write(sse_event(usage_chunk_json(s.meta, e.usage)))) return gone();
      return write(sse_done()) || gone();
    }
  }
}

json OpenAiService::models() const {
  return {{"object", "list"},
          {"data", json::array({{{"id", opt_.model_name},
                                 {"object", "model"},
                                 {"created", created_},
                                 {"owned_by", "longctx"},
                                 {"context_length", opt_.n_ctx}}})}};
}

std::string OpenAiService::metrics_text() const { return metrics_.render(engine_.gauges()); }

}  // namespace longctx::server
