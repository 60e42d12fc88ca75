// `longctx serve`'s request core without sockets: request parsing and validation (every bad field a 400 naming it),
// OpenAI's response and SSE shapes, the UTF-8 hold-back of streams, logprobs against a plain log-softmax, the
// Prometheus histogram, and the request channel's one-done-event contract.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "metrics.h"
#include "openai_api.h"
#include "openai_response.h"
#include "request_engine.h"
#include "token_logprobs.h"

namespace longctx::server {
namespace {

using nlohmann::json;

CompletionRequest chat(const std::string& body, ApiLimits lim = {}) {
  return parse_completion_request(body, Endpoint::Chat, lim);
}

// The status and param of the ApiError that parsing body throws; fails the test when it does not throw.
std::pair<int, std::string> error_of(const std::string& body, Endpoint e = Endpoint::Chat) {
  try {
    parse_completion_request(body, e, ApiLimits{});
  } catch (const ApiError& err) {
    return {err.status, err.param};
  }
  ADD_FAILURE() << "no error for " << body;
  return {0, ""};
}

TEST(ServerApi, ParsesChatWithEveryField) {
  const CompletionRequest r = chat(R"({"model":"m","messages":[{"role":"system","content":"be brief"},
    {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
    "max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":5,"min_p":0.1,"seed":42,"stop":["\n","END"],
    "stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":3,"kv":"snapkv:budget=64",
    "ignore_eos":true,"kv_prefill_compress":true,"user":"ignored extra field"})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 5);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.n_logprobs, 3);
  EXPECT_EQ(r.kv, "snapkv:budget=64");
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_EQ(r.kv_prefill_compress, true);
}

TEST(ServerApi, DefaultsAreOpenAIs) {
  const CompletionRequest r = chat(R"({"messages":[{"role":"user","content":"x"}]})");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.0f);
  EXPECT_EQ(r.n_logprobs, -1);
  EXPECT_FALSE(r.stream);
  EXPECT_TRUE(r.kv.empty());
  EXPECT_FALSE(r.ignore_eos);
  EXPECT_FALSE(r.kv_prefill_compress.has_value());  // the server's --kv-prefill-compress
  // max_completion_tokens is chat's newer name for max_tokens.
  EXPECT_EQ(chat(R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":3})").max_tokens, 3);
}

TEST(ServerApi, ParsesCompletionPrompts) {
  const ApiLimits lim;
  auto r = parse_completion_request(R"({"prompt":"abc","logprobs":2})", Endpoint::Completion, lim);
  EXPECT_EQ(r.prompt, "abc");
  EXPECT_EQ(r.n_logprobs, 2);
  r = parse_completion_request(R"({"prompt":["one"]})", Endpoint::Completion, lim);
  EXPECT_EQ(r.prompt, "one");
  r = parse_completion_request(R"({"prompt":[1,2,3],"stop":"x"})", Endpoint::Completion, lim);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
}

TEST(ServerApi, BadBodiesAre400NamingTheField) {
  const std::string msg = R"("messages":[{"role":"user","content":"x"}])";
  EXPECT_EQ(error_of("{"), (std::pair<int, std::string>{400, ""}));
  EXPECT_EQ(error_of("[1,2]"), (std::pair<int, std::string>{400, ""}));
  EXPECT_EQ(error_of("{}").second, "messages");
  EXPECT_EQ(error_of(R"({"messages":[]})").second, "messages");
  EXPECT_EQ(error_of(R"({"messages":"hi"})").second, "messages");
  EXPECT_EQ(error_of(R"({"messages":[{"role":"wizard","content":"x"}]})").second, "messages[0].role");
  EXPECT_EQ(error_of(R"({"messages":[{"role":"user"}]})").second, "messages[0].content");
  EXPECT_EQ(error_of(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})").second,
            "messages[0].content");
  EXPECT_EQ(error_of("{" + msg + R"(,"max_tokens":0})").second, "max_tokens");
  EXPECT_EQ(error_of("{" + msg + R"(,"ignore_eos":1})").second, "ignore_eos");
  EXPECT_EQ(error_of("{" + msg + R"(,"max_tokens":"5"})").second, "max_tokens");
  EXPECT_EQ(error_of("{" + msg + R"(,"max_tokens":1.5})").second, "max_tokens");
  EXPECT_EQ(error_of("{" + msg + R"(,"max_tokens":100000})").second, "max_tokens");  // over the cap of 4096
  EXPECT_EQ(error_of("{" + msg + R"(,"temperature":3})").second, "temperature");
  EXPECT_EQ(error_of("{" + msg + R"(,"temperature":-1})").second, "temperature");
  EXPECT_EQ(error_of("{" + msg + R"(,"top_p":0})").second, "top_p");
  EXPECT_EQ(error_of("{" + msg + R"(,"top_k":-2})").second, "top_k");
  EXPECT_EQ(error_of("{" + msg + R"(,"min_p":1.5})").second, "min_p");
  EXPECT_EQ(error_of("{" + msg + R"(,"seed":"x"})").second, "seed");
  EXPECT_EQ(error_of("{" + msg + R"(,"seed":18446744073709551615})").second, "seed");
  EXPECT_EQ(error_of("{" + msg + R"(,"n":2})").second, "n");
  EXPECT_EQ(error_of("{" + msg + R"(,"stop":["a","b","c","d","e"]})").second, "stop");
  EXPECT_EQ(error_of("{" + msg + R"(,"stop":[""]})").second, "stop");
  EXPECT_EQ(error_of("{" + msg + R"(,"stop":5})").second, "stop");
  EXPECT_EQ(error_of("{" + msg + R"(,"stream":"yes"})").second, "stream");
  EXPECT_EQ(error_of("{" + msg + R"(,"stream_options":{"include_usage":true}})").second, "stream_options");
  EXPECT_EQ(error_of("{" + msg + R"(,"top_logprobs":2})").second, "top_logprobs");  // without logprobs
  EXPECT_EQ(error_of("{" + msg + R"(,"logprobs":true,"top_logprobs":21})").second, "top_logprobs");
  EXPECT_EQ(error_of("{" + msg + R"(,"kv":""})").second, "kv");
  EXPECT_EQ(error_of("{" + msg + R"(,"kv":3})").second, "kv");
  EXPECT_EQ(error_of("{" + msg + R"(,"kv_prefill_compress":"yes"})").second, "kv_prefill_compress");
  EXPECT_EQ(error_of("{" + msg + R"(,"frequency_penalty":0.5})").second, "frequency_penalty");
  EXPECT_EQ(error_of("{" + msg + R"(,"model":7})").second, "model");
  EXPECT_EQ(error_of(R"({"prompt":["a","b"]})", Endpoint::Completion).second, "prompt");
  EXPECT_EQ(error_of(R"({"prompt":[[1],[2]]})", Endpoint::Completion).second, "prompt");
  EXPECT_EQ(error_of(R"({"prompt":[1,-1]})", Endpoint::Completion).second, "prompt");
  EXPECT_EQ(error_of(R"({"prompt":7})", Endpoint::Completion).second, "prompt");
  EXPECT_EQ(error_of(R"({"prompt":"x","logprobs":true})", Endpoint::Completion).second, "logprobs");
  EXPECT_EQ(error_of(R"({"prompt":"x","echo":true})", Endpoint::Completion).second, "echo");
  // Null counts as absent, as in OpenAI's API.
  EXPECT_EQ(chat("{" + msg + R"(,"max_tokens":null,"stop":null})").stop.size(), 0u);
}

TEST(ServerApi, ErrorBodyHasOpenAIsShape) {
  const json b = error_body(ApiError(400, "bad", "invalid_request_error", "top_p"));
  EXPECT_EQ(b, json::parse(R"({"error":{"message":"bad","type":"invalid_request_error","param":"top_p","code":null}})"));
  const json c = error_body(ApiError(429, "full", "rate_limit_error", "", "queue_full"));
  EXPECT_EQ(c["error"]["param"], nullptr);
  EXPECT_EQ(c["error"]["code"], "queue_full");
}

TEST(ServerSse, EventsAreDataLinesEndedByABlankLine) {
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // A token that is half a character must not break the stream: replaced by U+FFFD.
  EXPECT_EQ(sse_event(json{{"t", std::string("\xE2\x82")}}), "data: {\"t\":\"\xEF\xBF\xBD\"}\n\n");
}

TEST(ServerSse, ChatChunksCarryRoleFirstAndFinishLast) {
  const ResponseMeta m{Endpoint::Chat, "chatcmpl-1", 123, "smol"};
  const json first = chunk_json(m, "Hel", "", true, nullptr, 0);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json::parse(R"({"role":"assistant","content":"Hel"})"));
  EXPECT_EQ(first["choices"][0]["finish_reason"], nullptr);
  const json last = chunk_json(m, "", "length", false, nullptr, 3);
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const json u = usage_chunk_json(m, Usage{5, 2, 1000, 4000, 3, 600});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 7);
  EXPECT_EQ(u["usage"]["kv_bytes_saved"], 3000);
  EXPECT_EQ(u["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
  EXPECT_EQ(u["usage"]["kv_bytes_shared"], 600);
  const ResponseMeta mc{Endpoint::Completion, "cmpl-1", 123, "smol"};
  const json cc = chunk_json(mc, "lo", "", false, nullptr, 0);
  EXPECT_EQ(cc["object"], "text_completion");
  EXPECT_EQ(cc["choices"][0]["text"], "lo");
}

TEST(ServerSse, CompletionBodiesAndLogprobs) {
  const std::vector<TokenLogprob> lps = {{"He", -0.5f, {{"He", -0.5f}, {"A", -1.5f}}}, {"llo", -0.25f, {}}};
  const json chat_body = completion_json({Endpoint::Chat, "c", 1, "m"}, "Hello", "stop", &lps, Usage{3, 2, 0, 0});
  EXPECT_EQ(chat_body["object"], "chat.completion");
  EXPECT_EQ(chat_body["choices"][0]["message"]["content"], "Hello");
  const json& content = chat_body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["bytes"], json::parse("[72,101]"));
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], "A");
  EXPECT_FLOAT_EQ(content[1]["logprob"].get<float>(), -0.25f);
  // The legacy shape: parallel arrays, text offsets from where the chunk starts.
  const json legacy = logprobs_json(Endpoint::Completion, lps, 10);
  EXPECT_EQ(legacy["tokens"], json::parse(R"(["He","llo"])"));
  EXPECT_EQ(legacy["text_offset"], json::parse("[10,12]"));
  EXPECT_FLOAT_EQ(legacy["top_logprobs"][0]["A"].get<float>(), -1.5f);
  EXPECT_EQ(completion_json({Endpoint::Completion, "c", 1, "m"}, "x", "length", nullptr, {})["choices"][0]["logprobs"],
            nullptr);
}

TEST(ServerSse, Utf8CompletePrefixHoldsBackACutCharacter) {
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  const std::string euro = "\xE2\x82\xAC";  // 3 bytes
  EXPECT_EQ(utf8_complete_prefix("a" + euro), 4u);
  EXPECT_EQ(utf8_complete_prefix("a" + euro.substr(0, 1)), 1u);
  EXPECT_EQ(utf8_complete_prefix("a" + euro.substr(0, 2)), 1u);
  const std::string emoji = "\xF0\x9F\x98\x80";  // 4 bytes
  EXPECT_EQ(utf8_complete_prefix(emoji.substr(0, 3)), 0u);
  EXPECT_EQ(utf8_complete_prefix("xy" + emoji), 6u);
  EXPECT_EQ(utf8_complete_prefix("\xC3"), 0u);
  // A stray continuation byte is malformed, not incomplete: it goes out (and is replaced).
  EXPECT_EQ(utf8_complete_prefix("a\x80\x80\x80\x80"), 5u);
}

// token_logprobs against a plain log-softmax in long double; tolerance 1e-5 absolute (float results).
TEST(ServerLogprobs, MatchPlainLogSoftmax) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f, 80.0f, 79.0f};
  const int32_t n = static_cast<int32_t>(logits.size());
  long double z = 0;
  for (float l : logits) z += std::exp(static_cast<long double>(l));
  for (int32_t id = 0; id < n; ++id) {
    const StepLogprobs s = token_logprobs(logits.data(), n, id, 4);
    EXPECT_NEAR(s.logprob, static_cast<double>(logits[static_cast<size_t>(id)] - std::log(z)), 1e-5);
    ASSERT_EQ(s.top.size(), 4u);
    // Descending, ties (the two 3.0) by ascending id.
    EXPECT_EQ(s.top[0].first, 5);
    EXPECT_EQ(s.top[1].first, 6);
    EXPECT_EQ(s.top[2].first, 1);
    EXPECT_EQ(s.top[3].first, 3);
    for (const auto& [t, lp] : s.top)
      EXPECT_NEAR(lp, static_cast<double>(logits[static_cast<size_t>(t)] - std::log(z)), 1e-5);
  }
  EXPECT_TRUE(token_logprobs(logits.data(), n, 0, 0).top.empty());
  EXPECT_THROW(token_logprobs(logits.data(), n, n, 1), std::exception);
  EXPECT_THROW(token_logprobs(logits.data(), n, 0, n + 1), std::exception);
}

TEST(ServerMetricsTest, HistogramIsCumulativeWithInf) {
  Histogram h({0.1, 1.0});
  h.observe(0.05);
  h.observe(0.1);  // on a bound: counted in that bucket (le)
  h.observe(0.5);
  h.observe(7.0);
  EXPECT_EQ(h.count(), 4u);
  const std::string t = h.render("x_seconds", "help");
  EXPECT_NE(t.find("# TYPE x_seconds histogram\n"), std::string::npos);
  EXPECT_NE(t.find("x_seconds_bucket{le=\"0.1\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("x_seconds_bucket{le=\"1\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("x_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(t.find("x_seconds_sum 7.65\n"), std::string::npos);
  EXPECT_NE(t.find("x_seconds_count 4\n"), std::string::npos);
  EXPECT_THROW(Histogram({1.0, 1.0}), std::exception);
}

TEST(ServerMetricsTest, RendersCountersAndGauges) {
  ServerMetrics m;
  m.count_request("chat/completions", 200);
  m.count_request("chat/completions", 200);
  m.count_request("completions", 400);
  m.count_finish("stop");
  m.add_tokens(10, 3);
  const std::string t = m.render({2, 1, 30, 60, 10});
  EXPECT_NE(t.find("longctx_requests_total{endpoint=\"chat/completions\",code=\"200\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_requests_total{endpoint=\"completions\",code=\"400\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_generations_finished_total{reason=\"stop\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_prompt_tokens_total 10\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_generated_tokens_total 3\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_queue_length 2\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_kv_pages_in_use 30\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_kv_pages_free 60\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_kv_pages_cached 10\n"), std::string::npos);
  EXPECT_NE(t.find("longctx_time_to_first_token_seconds_count 0\n"), std::string::npos);
}

TEST(ServerChannel, DeliversInOrderAndEndsOnce) {
  RequestChannel ch;
  std::thread producer([&] {
    for (int i = 0; i < 100; ++i) ch.push(std::to_string(i) + ",", {});
    ch.finish(FinishReason::Length, Usage{1, 100, 0, 0});
    ch.finish(FinishReason::Error, {}, "ignored: the channel has ended");
    ch.push("ignored", {});
  });
  std::string text;
  std::vector<GenerationEvent> ev;
  bool done = false;
  int n_done = 0;
  while (!done) {
    ev.clear();
    ch.wait_pop(ev, std::chrono::milliseconds(50));
    for (const auto& e : ev) {
      text += e.text;
      if (e.done) {
        done = true;
        ++n_done;
        EXPECT_EQ(e.finish, FinishReason::Length);
        EXPECT_EQ(e.usage.completion_tokens, 100);
      }
    }
  }
  producer.join();
  ev.clear();
  EXPECT_FALSE(ch.wait_pop(ev, std::chrono::milliseconds(1)));
  EXPECT_EQ(n_done, 1);
  std::string want;
  for (int i = 0; i < 100; ++i) want += std::to_string(i) + ",";
  EXPECT_EQ(text, want);
  EXPECT_FALSE(ch.cancelled());
  ch.cancel();
  EXPECT_TRUE(ch.cancelled());
}

}  // namespace
}  // namespace longctx::server
