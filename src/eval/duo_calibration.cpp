// The forward-only DuoAttention calibration ("DuoAttention: Efficient Long-Context LLM Inference with Retrieval and
// Streaming Heads"): see duo_calibration.h.
#include "eval/duo_calibration.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "engine/session.h"
#include "kv/kv_store.h"
#include "tokenizer/chat_template.h"

namespace longctx::eval {
namespace {

// Makes one (layer, kv-head) read only its sinks and recent window; every other head reads the whole cache.
class OneStreamingHead final : public KvReadFilter {
 public:
  OneStreamingHead(int32_t layer, int32_t kv_head, int32_t sink, int32_t window)
      : layer_(layer), kv_head_(kv_head), sink_(sink), window_(window) {}
  void narrow(int32_t layer, const float*, const int32_t* q_pos, int32_t, KvLayerView& view) override {
    if (layer != layer_) return;
    KvHeadView& h = view.heads[static_cast<size_t>(kv_head_)];
    h = kv::streaming_head_view(h, sink_, window_, q_pos[0], positions_);
  }

 private:
  int32_t layer_, kv_head_, sink_, window_;
  std::vector<int32_t> positions_;
};

}  // namespace

void check_duo_task(Task t) {
  if (t == Task::MultiValue || t == Task::Perplexity)
    fail("duo calibration needs a task with one answer (passkey, needle, multikey, kvret), not {}", task_name(t));
}

DuoPrompt duo_prompt(const Model& model, const Tokenizer& tok, const DuoCalibrationParams& p, int32_t index,
                     const std::vector<std::string>& haystack) {
  check_duo_task(p.task);
  if (p.length < 256) fail("duo calibration: a prompt length of {} is too short (at least 256)", p.length);
  // The facts sit at depths spread over [0.1, 0.8] of the context: far enough from its end that a streaming head's
  // recent window does not reach them at the lengths the calibration runs at.
  const double depth = p.n_prompts > 1 ? 0.1 + 0.7 * index / (p.n_prompts - 1) : 0.5;
  CaseParams cp;
  cp.n_context_tokens = p.length;
  const TokenCounter count = [&](std::string_view s) {
    return static_cast<int32_t>(tok.encode(s, /*add_bos=*/false, /*parse_special=*/false).size());
  };
  // Passkey draws its filler itself; make_case only asks that the haystack be non-empty.
  static const std::vector<std::string> kUnused{"(unused)"};
  const Case c = make_case(p.task, p.length, depth, p.seed + static_cast<uint64_t>(index),
                           p.task == Task::Passkey && haystack.empty() ? kUnused : haystack, count, cp);
  // Wrapped as `longctx eval` wraps it, so the heads are measured on the prompts they are evaluated on.
  const bool chat = model.file().has("tokenizer.chat_template");
  std::string text;
  if (chat) {
    const std::vector<ChatMessage> msgs{{"user", c.context + "\n\n" + c.question}};
    text = apply_chat_template(chat_template_for(model.file()), msgs, true) + c.answer_prefix;
  } else {
    text = c.context + "\n\nQuestion: " + c.question + "\nAnswer: " + c.answer_prefix;
  }
  const std::vector<int32_t> prompt = tok.encode(text, tok.add_bos(), /*parse_special=*/chat);
  DuoPrompt out;
  out.tokens = tok.encode(text + " " + c.expected.at(0), tok.add_bos(), chat);
  // The answer starts where the two tokenizations part (a merge across the boundary moves it back, never on).
  const size_t m = std::mismatch(prompt.begin(), prompt.end(), out.tokens.begin(), out.tokens.end()).first - prompt.begin();
  if (m < 2 || m >= out.tokens.size()) fail("duo calibration: the answer '{}' has no tokens of its own", c.expected[0]);
  out.answer_begin = static_cast<int32_t>(m);
  if (static_cast<int32_t>(out.tokens.size()) > model.config().n_ctx_train)
    fail("duo calibration: a prompt of {} tokens exceeds the model's context ({})", out.tokens.size(),
         model.config().n_ctx_train);
  return out;
}

kv::DuoHeadScores duo_calibrate(const Model& model, const Tokenizer& tok, ThreadPool& pool,
                                const DuoCalibrationParams& p, const std::vector<std::string>& haystack,
                                const DuoProgress& progress) {
  const ModelConfig& c = model.config();
  if (p.n_prompts < 1) fail("duo calibration needs at least one prompt, not {}", p.n_prompts);
  if (p.sink < 0 || p.window < 1) fail("duo calibration: sink {} must be >= 0 and window {} >= 1", p.sink, p.window);
  std::vector<DuoPrompt> prompts;
  for (int32_t i = 0; i < p.n_prompts; ++i) prompts.push_back(duo_prompt(model, tok, p, i, haystack));
  int32_t n_span_max = 0;
  for (const DuoPrompt& dp : prompts)
    n_span_max = std::max(n_span_max, static_cast<int32_t>(dp.tokens.size()) - dp.answer_begin);

  int32_t n_tokens_max = 0;
  for (const DuoPrompt& dp : prompts) n_tokens_max = std::max(n_tokens_max, static_cast<int32_t>(dp.tokens.size()));
  SessionOptions so;
  so.n_ctx = n_tokens_max;
  so.n_batch = p.n_batch;
  so.device = p.device;
  so.n_step_tokens = n_span_max;  // the answer span runs in one forward
  so.kv_max_bytes = SessionOptions::kUnlimited;
  EngineSession session(model, pool, so);
  kv::DuoHeadScores scores(c.n_layer, c.n_head_kv);
  const int64_t runs_per_prompt = 1 + static_cast<int64_t>(c.n_layer) * c.n_head_kv;
  const int64_t total = runs_per_prompt * p.n_prompts;
  int64_t done = 0;

  for (const DuoPrompt& dp : prompts) {
    const int32_t n = static_cast<int32_t>(dp.tokens.size()), a = dp.answer_begin;
    const SequenceId seq = session.add_sequence("full");  // f16 pages, as the policies' caches hold them
    // The prompt up to (not including) its last token; the span is that token and the answer's but the last, and
    // its row r predicts answer token r. Nothing expires: the cache serves every run unchanged.
    PrefillOptions po;
    po.hooks = PolicyHooks::Off;
    po.expiry = WindowExpiry::Off;
    std::vector<float> unused;
    session.prefill(seq, std::span<const int32_t>(dp.tokens).first(static_cast<size_t>(a - 1)), po, unused);
    const int32_t k = n - a;
    std::vector<int32_t> rows(static_cast<size_t>(k));
    for (int32_t r = 0; r < k; ++r) rows[static_cast<size_t>(r)] = r;
    const int32_t* span = dp.tokens.data() + a - 1;
    const int32_t* targets = dp.tokens.data() + a;
    std::vector<float> ref(static_cast<size_t>(k) * c.n_vocab), test(ref.size());
    // A run appends the span's keys to the cache; truncating removes them again.
    session.extend(seq, span, k, rows, ref.data());
    session.truncate(seq, a - 1);
    if (progress) progress(++done, total);
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t h = 0; h < c.n_head_kv; ++h) {
        OneStreamingHead filter(l, h, p.sink, p.window);
        session.extend(seq, span, k, rows, test.data(), nullptr, &filter);
        session.truncate(seq, a - 1);
        scores.add(l, h, ref.data(), test.data(), targets, k, c.n_vocab);
        if (progress) progress(++done, total);
      }
    session.remove_sequence(seq);
  }
  return scores;
}

}  // namespace longctx::eval
