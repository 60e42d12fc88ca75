// One request end to end: prefill a prompt in chunks, then sample token by token, streaming text out, under a
// KV policy; reports what it cost.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/thread_pool.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "kv/policy.h"
#include "model/forward.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

struct GenerateParams {
  int32_t n_predict = 256;          // most tokens to generate
  // The largest position the model sees: prompt + generated tokens may not exceed it, except under a policy of
  // in-cache positions (StreamingLLM, kv::KvPositions::InCache), where the cache may not: generation goes on
  // past it, the cache staying below it.
  int32_t n_ctx = 4096;
  int32_t n_batch = 256;            // prefill chunk
  Device device = Device::Cpu;      // where the forward runs and the KV pages live (SessionOptions::device)
  SamplerParams sampling;
  std::vector<std::string> stop;    // generation ends before any of these strings; they are not printed
  bool ignore_eog = false;          // keep going past end-of-generation tokens (benchmarks)
  // Apply the KV policy after every prefill chunk, not only at the end, so a prompt whose full cache would not
  // fit is read in memory bounded by the budget. Costs quality: each chunk's eviction is decided by the queries
  // seen so far, before the question at the end of the prompt is read.
  bool prefill_compress = false;
  // Called with each generated token and the logits (n_vocab) it was drawn from, before its text goes out (the
  // server's logprobs and per-token timing); returning false stops generation (StopReason::Cancelled).
  std::function<bool(int32_t id, const float* logits)> on_token;
};

enum class StopReason { Eog, StopString, Length, ContextFull, Cancelled };
const char* stop_reason_name(StopReason r);

struct GenerateStats {
  int32_t n_prompt = 0;
  int32_t n_generated = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  kv::KvBytes kv_bytes;              // held by the sequence at the end
  size_t kv_full_f16_bytes = 0;      // what a full f16 cache of the same tokens holds
  size_t kv_pool_bytes = 0;          // what the page allocator holds from the system at the end
  size_t kv_pool_peak_bytes = 0;     // the most it held at any point
  size_t kv_peak_bytes = 0;          // the most the sequence held at any point (after a chunk, before eviction)
  std::string logits_hash;           // short hash of the last logits, for regressions
  StopReason stop_reason = StopReason::Length;
  std::vector<int32_t> tokens;       // generated ids
};

struct ScoreStats {
  double nll_sum = 0;                // natural log, summed over the scored tokens
  int32_t n_scored = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;         // the teacher-forced steps
  kv::KvBytes kv_bytes;              // held by the sequence at the end
  size_t kv_full_f16_bytes = 0;
  size_t kv_pool_bytes = 0;          // what the page allocator holds from the system at the end
  size_t kv_pool_peak_bytes = 0;     // the most it held at any point
};

// One teacher-forced token of score_continuation, as it is scored.
struct ScoreStep {
  int32_t index = 0;                 // in the continuation
  double nll = 0;                    // of that token, natural log
  const float* logits = nullptr;     // (n_vocab) the prediction it was scored on
  kv::KvBytes kv_bytes;              // held by the sequence at that point
  size_t kv_pool_bytes = 0;          // what the page allocator has reserved
  int32_t n_cached = 0;              // tokens held by the most populated (layer, kv-head)
};
using ScoreStepFn = std::function<void(const ScoreStep&)>;

// Receives generated text as it becomes final; returns false to stop.
using TextFn = std::function<bool(std::string_view)>;

// The sampling loop of one request over an EngineSession of one sequence (session.h does the cache, the prefill
// with the policy's hooks and the decode steps).
class Generator {
 public:
  Generator(const Model& model, const Tokenizer& tok, ThreadPool& pool, kv::KvPolicy& policy,
            const GenerateParams& params);

  // Throws Error when the prompt is empty or does not fit in n_ctx. n_compressed > 0: the policy compresses the
  // cache after the first n_compressed prompt tokens (a document cached before the question is known), and the
  // rest of the prompt (the question) is read over the compressed cache; 0: after the whole prompt.
  GenerateStats generate(const std::vector<int32_t>& prompt, const TextFn& on_text, const ProgressFn& on_progress,
                         int32_t n_compressed = 0);

  // Prefill only, the policy's hooks off: returns the logits of every listed prompt position (rows, n_vocab), for
  // tests and eval.
  std::vector<float> prompt_logits(const std::vector<int32_t>& prompt, const std::vector<int32_t>& positions);

  // Teacher-forced scoring (perplexity under a policy): prefills prefix with the policy applied as generate() does,
  // then feeds continuation one token at a time, policy hooks running after each step, and sums the negative log
  // likelihood of every continuation token. The cache then holds what a reader of prefix + continuation holds.
  // Throws Error when the tokens do not fit the context (n_ctx); with in-cache positions only the prefix must.
  ScoreStats score_continuation(const std::vector<int32_t>& prefix, const std::vector<int32_t>& continuation,
                                const ProgressFn& on_progress, const ScoreStepFn& on_step = {});

  kv::KvSequence& sequence() { return session_.sequence(seq_); }
  EngineSession& session() { return session_; }
  const kv::KvPagePool& page_pool() const { return session_.pages(); }

 private:
  // Prefills the prompt into the emptied sequence: logits of the listed prompt positions.
  void prefill(const std::vector<int32_t>& prompt, const ProgressFn& on_progress, std::vector<float>& logits,
               PolicyHooks hooks, int32_t n_compressed, const std::vector<int32_t>& logit_positions);

  const Model& model_;
  const Tokenizer& tok_;
  GenerateParams params_;
  EngineSession session_;
  SequenceId seq_;
};

std::string logits_hash(const float* logits, int64_t n);

}  // namespace longctx
