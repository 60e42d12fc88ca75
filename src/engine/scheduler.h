// Continuous batching over one engine session (the server's scheduler; "Orca: A Distributed Serving System for
// Transformer-Based Generative Models" for iteration-level scheduling, "Taming Throughput-Latency Tradeoff in LLM
// Inference with Sarathi-Serve" for chunked prefill interleaved with decode). Requests arrive with a prompt, a KV
// policy and sampling parameters; each step() admits what the page pool holds, runs one waiting prompt's prefill
// with a decode step of every running request between its chunks (so a long prompt stalls no stream for more than
// one chunk), or else one decode step of every running request in stacked forwards (each weight read once for many
// sequences). Each request is sampled exactly as Generator::generate samples it alone, and with the session's
// batch_invariant (the default) its tokens are the ones it gets alone.
//
// Memory: admission waits until the pool can hold a prompt's full-format pages (under --kv-prefill-compress, what
// the policy keeps of it plus a chunk: kv::KvPolicy::max_tokens_after_cut) beside what every running sequence may
// add in its next step; when the running sequences would outgrow the pool, the newest is preempted (its pages
// go back, it waits at the front of the queue, and on its turn its prompt and the tokens it generated are prefilled
// again: "recompute" preemption) and the oldest always goes on, so no request is aborted for memory.
//
// Prefix reuse together with compression (on models without sliding-window layers): cached sequences are full
// caches, never written again, whose pages requests share (copy on write, kv::KvSequence::share_prefix). A prompt's
// prefix is cached as its prefill passes it, up to where its policy starts to act (SnapKV's observation window,
// the queries whose statistics Expected Attention gathers: nothing before that is changed until the prompt's end),
// and a finished request under a policy that keeps every token leaves its whole sequence cached. A later request
// whose prompt starts with a cached prefix, under any policy that leaves that much as written, holds those pages
// without computing them and prefills only the rest; its policy then compresses the whole prompt as if it had
// prefilled it alone, copying each shared page it evicts from, so the prefix stays full and shared for the next
// request while each request's compressed cache is its own. Pages are counted once in the pool however many
// sequences hold them (KvBytes::shared says how much of a request's cache is shared). Cached sequences go, least
// recently used first, when admission or a step needs their pages.
#pragma once
#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/thread_pool.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "kv/policy.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

struct SchedulerOptions {
  SessionOptions session;    // n_ctx: every request's context; n_seq_max: the most requests running at once
  bool prefix_reuse = true;  // keep full prefixes for later prompts that start with them (see above)
};

// How a request ended.
struct RequestOutcome {
  StopReason stop = StopReason::Length;
  std::string error;         // non-empty: failed (bad policy spec, a prompt past the context, ...)
  int32_t n_prompt = 0;
  int32_t n_reused = 0;      // prompt tokens whose K/V came from a cached sequence
  int32_t n_generated = 0;
  int32_t n_preempted = 0;   // times its pages were taken back and it was recomputed
  kv::KvBytes kv_bytes;      // held at its end
  size_t kv_full_f16_bytes = 0;
  std::vector<int32_t> tokens;  // generated ids
};

struct ScheduledRequest {
  std::vector<int32_t> prompt;
  std::string kv = "full";   // the --kv spec of its policy
  int32_t n_predict = 16;
  SamplerParams sampling;
  std::vector<std::string> stop;
  bool ignore_eog = false;   // go on past end-of-generation tokens (benchmarks)
  // The policy cuts the cache after every prefill chunk (PrefillOptions::compress_chunks): the prompt never holds
  // more than the policy keeps plus a chunk, and admission counts only that (no prefix is then shared).
  bool prefill_compress = false;
  // On the scheduler's thread. on_token sees each generated token and the logits it was drawn from before its text
  // goes out; on_text gets text as it becomes final; either returning false cancels the request, as does
  // cancelled() (polled every step). on_done is called exactly once, last.
  std::function<bool(int32_t id, const float* logits)> on_token;
  TextFn on_text;
  std::function<bool()> cancelled;
  std::function<void(const RequestOutcome&)> on_done;
};

class Scheduler {
 public:
  Scheduler(const Model& model, const Tokenizer& tok, ThreadPool& pool, const SchedulerOptions& opts);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request (FIFO). Its spec and prompt are checked when it is admitted; a bad one ends with an error.
  void add(ScheduledRequest r);
  // One iteration (see above). Returns whether any request is still waiting or running.
  bool step();
  // Cancels every request (each ends with StopReason::Cancelled) and drops the cached sequences.
  void cancel_all();

  int32_t n_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t n_running() const { return static_cast<int32_t>(running_.size()); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  // Pages in the pool, each counted once: those running requests hold (alone or with the cache), and those only
  // the sequences kept for prefix reuse hold. Together: every page in use.
  struct KvPageCounts {
    int64_t in_use = 0;
    int64_t cached = 0;
  };
  KvPageCounts kv_pages() const;
  const EngineSession& session() const { return session_; }
  // Sequences in each decode step so far (for the server's batch-size histogram), cleared by the caller.
  std::vector<int32_t>& decode_batch_sizes() { return batch_sizes_; }

 private:
  struct Request;
  struct Cached;
  void admit();
  bool try_admit(Request& r);
  // Prefills r's prompt (and, after a preemption, the tokens it generated); between chunks every running request
  // takes a decode step. Then samples its first token.
  void prefill(Request& r);
  // One decode step of every running request with a token to feed.
  void decode_step(const Request* prefilling);
  // Samples from r's logits, streams the token and sets the next token to feed; false when r has finished.
  bool sample_next(Request& r);
  void finish(Request& r, StopReason stop, std::string error = {});
  void release_finished();
  // Frees cached sequences, least recently used first, until `bytes` are free in the pool; false when they cannot be.
  bool make_room(size_t bytes);
  size_t free_bytes() const;
  // Pages of each format (by KvFormat) that decode steps may take from the pool.
  using StepPages = std::array<int64_t, 5>;
  // The most one decode step adds to a sequence. Not prefilled yet (live -1): a page of its open format per (layer,
  // kv-head) and, where pages are sealed, a packed one beside it. Live: per head, an open page when its last page is
  // full or others hold it too (copy on write; a policy that evicts while decoding may copy one shared page more),
  // and a packed page when the step's token makes one due for sealing.
  void add_step_pages(const kv::KvGeometry& g, SequenceId live, StepPages& n) const;
  // The bytes the pool takes for those pages at most: whole chunks of each format.
  size_t step_pages_bytes(const StepPages& n, int32_t page_tokens) const;
  // add_step_pages of every running sequence.
  StepPages running_step_pages() const;
  // The most a prompt of n_tokens holds while it is prefilled under policy p (cut after every chunk or not).
  size_t prompt_bytes(const kv::KvPolicy& p, int32_t n_tokens, bool compress_chunks) const;
  // How many of n prompt tokens may come from a cached prefix for request r under policy p (0: none).
  int32_t shareable_prefix(const Request& r, const kv::KvPolicy& p, int32_t n) const;
  // Keeps a full cache of these tokens for prefix reuse (dropping those it covers, and the oldest past twice
  // n_seq_max).
  void keep_cached(SequenceId seq, std::vector<int32_t> tokens);

  const Model& model_;
  const Tokenizer& tok_;
  SchedulerOptions opts_;
  EngineSession session_;
  std::deque<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;  // by admission, oldest first
  std::vector<std::unique_ptr<Cached>> cached_;    // most recently used last
  std::vector<int32_t> batch_sizes_;
  std::vector<float> step_logits_;
};

}  // namespace longctx
