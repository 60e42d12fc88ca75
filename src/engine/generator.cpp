#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "engine/stop_filter.h"

namespace longctx {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eog: return "end of generation token";
    case StopReason::StopString: return "stop string";
    case StopReason::Length: return "length limit (-n)";
    case StopReason::ContextFull: return "context full (--ctx)";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

std::string logits_hash(const float* logits, int64_t n) {
  // FNV-1a over the bytes: any change in any logit shows.
  uint64_t h = 1469598103934665603ull;
  const auto* b = reinterpret_cast<const uint8_t*>(logits);
  for (int64_t i = 0; i < n * 4; ++i) h = (h ^ b[i]) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string(buf, 8);
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

namespace {

SessionOptions session_options(const GenerateParams& p) {
  SessionOptions o;
  o.n_ctx = p.n_ctx;
  o.n_batch = p.n_batch;
  o.device = p.device;
  return o;
}

}  // namespace

Generator::Generator(const Model& model, const Tokenizer& tok, ThreadPool& pool, kv::KvPolicy& policy,
                     const GenerateParams& params)
    : model_(model), tok_(tok), params_(params), session_(model, pool, session_options(params), &tok),
      seq_(session_.add_sequence(policy)) {}

void Generator::prefill(const std::vector<int32_t>& prompt, const ProgressFn& on_progress, std::vector<float>& logits,
                        PolicyHooks hooks, int32_t n_compressed, const std::vector<int32_t>& logit_positions) {
  if (prompt.empty()) fail("the prompt is empty");
  session_.reset_sequence(seq_);
  PrefillOptions po;
  po.logit_positions = logit_positions;
  po.progress = on_progress;
  po.hooks = hooks;
  po.n_compressed = n_compressed;
  po.compress_chunks = params_.prefill_compress;
  session_.prefill(seq_, prompt, po, logits);
}

std::vector<float> Generator::prompt_logits(const std::vector<int32_t>& prompt, const std::vector<int32_t>& positions) {
  for (int32_t p : positions)
    if (p < 0 || p >= static_cast<int32_t>(prompt.size())) fail("logit position {} is outside the prompt", p);
  std::vector<float> logits;
  prefill(prompt, nullptr, logits, PolicyHooks::Off, 0, positions);
  return logits;
}

ScoreStats Generator::score_continuation(const std::vector<int32_t>& prefix, const std::vector<int32_t>& continuation,
                                         const ProgressFn& on_progress, const ScoreStepFn& on_step) {
  ScoreStats st;
  const ModelConfig& c = model_.config();
  const int32_t n_vocab = c.n_vocab;
  const int32_t n_prefix = static_cast<int32_t>(prefix.size());
  const bool in_cache = session_.policy(seq_).positions() == kv::KvPositions::InCache;
  if (!in_cache && n_prefix + static_cast<int64_t>(continuation.size()) > params_.n_ctx)
    fail("prefix and continuation have {} tokens, more than the context of {} (only a policy of positions within "
         "the cache, --kv streaming, goes past it)",
         n_prefix + continuation.size(), params_.n_ctx);
  std::vector<float> logits;  // (n_vocab): the prediction of the next token
  auto t0 = std::chrono::steady_clock::now();
  prefill(prefix, on_progress, logits, PolicyHooks::On, 0, {n_prefix - 1});
  st.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  int32_t pos = n_prefix;
  for (size_t i = 0; i < continuation.size(); ++i) {
    const int32_t id = continuation[i];
    if (id < 0 || id >= n_vocab) fail("continuation token {} is outside the vocabulary", id);
    // log softmax in double: a sum over thousands of tokens must not drift.
    const float mx = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (float l : logits) z += std::exp(static_cast<double>(l - mx));
    const double nll = std::log(z) - static_cast<double>(logits[static_cast<size_t>(id)] - mx);
    st.nll_sum += nll;
    ++st.n_scored;
    if (on_step) {
      ScoreStep step;
      step.index = static_cast<int32_t>(i);
      step.nll = nll;
      step.logits = logits.data();
      step.kv_bytes = session_.bytes(seq_);
      step.kv_pool_bytes = session_.pages().bytes_reserved();
      step.n_cached = sequence().n_tokens_max();
      on_step(step);
    }
    if (i + 1 == continuation.size()) break;  // the last token's prediction is not needed
    if (!session_.context_has_room(seq_))
      fail("the cache holds {} tokens, the whole context of {}: positions within the cache cannot go further; give "
           "the streaming policy a budget below --ctx",
           sequence().n_tokens_max(), params_.n_ctx);
    const SequenceStep s{seq_, id};
    session_.step({&s, 1}, logits.data());
    ++pos;
  }
  st.decode_seconds = seconds_since(t0);
  st.kv_bytes = session_.bytes(seq_);
  st.kv_full_f16_bytes = sequence().full_f16_bytes(pos);  // every token seen, kept or evicted: the uncompressed cache
  st.kv_pool_bytes = session_.pages().bytes_reserved();
  st.kv_pool_peak_bytes = session_.pages().bytes_reserved_peak();
  return st;
}

GenerateStats Generator::generate(const std::vector<int32_t>& prompt, const TextFn& on_text,
                                  const ProgressFn& on_progress, int32_t n_compressed) {
  GenerateStats st;
  const int32_t n_vocab = model_.config().n_vocab;
  st.n_prompt = static_cast<int32_t>(prompt.size());
  std::vector<float> logits;
  auto t0 = std::chrono::steady_clock::now();
  prefill(prompt, on_progress, logits, PolicyHooks::On, n_compressed, {st.n_prompt - 1});
  st.prefill_seconds = seconds_since(t0);

  Sampler sampler(params_.sampling);
  for (int32_t t : prompt) sampler.accept(t);
  StopFilter filter(params_.stop);
  bool keep_going = true;
  int32_t pos = st.n_prompt;
  st.stop_reason = StopReason::Length;
  t0 = std::chrono::steady_clock::now();
  while (true) {
    if (st.n_generated >= params_.n_predict) {
      st.stop_reason = StopReason::Length;
      break;
    }
    const int32_t id = sampler.sample(logits.data(), n_vocab);
    sampler.accept(id);
    if (!params_.ignore_eog && tok_.is_eog(id)) {
      st.stop_reason = StopReason::Eog;
      break;
    }
    st.tokens.push_back(id);
    ++st.n_generated;
    if (params_.on_token && !params_.on_token(id, logits.data())) {
      st.stop_reason = StopReason::Cancelled;
      break;
    }
    if (filter.push(tok_.token_bytes(id), on_text, keep_going)) {
      st.stop_reason = StopReason::StopString;
      break;
    }
    if (!keep_going) {
      st.stop_reason = StopReason::Cancelled;
      break;
    }
    if (st.n_generated >= params_.n_predict) continue;  // no need to run the last token
    if (!session_.context_has_room(seq_)) {
      st.stop_reason = StopReason::ContextFull;
      break;
    }
    const SequenceStep s{seq_, id};
    session_.step({&s, 1}, logits.data());
    ++pos;
  }
  if (st.stop_reason != StopReason::StopString) filter.flush(on_text);
  st.decode_seconds = seconds_since(t0);
  st.kv_bytes = session_.bytes(seq_);
  st.kv_full_f16_bytes = sequence().full_f16_bytes(pos);  // every token seen, kept or evicted: the uncompressed cache
  st.kv_pool_bytes = session_.pages().bytes_reserved();
  st.kv_pool_peak_bytes = session_.pages().bytes_reserved_peak();
  st.kv_peak_bytes = session_.peak_bytes(seq_);
  st.logits_hash = logits_hash(logits.data(), n_vocab);
  return st;
}

}  // namespace longctx
