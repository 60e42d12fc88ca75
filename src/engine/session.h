// The engine session: one model's forward pass and one KV page pool, holding any number of sequences, each with its
// own KV policy. It is the one place where a cache is laid out from its policy (page format, sealed format, page
// size, key summaries), where a prompt is prefilled in chunks with the policy's hooks (prefill scores and query
// statistics, per-chunk compression, KVzip's reconstruction pass, selection at prefill end, sealing), where a
// decode step runs (the policy's read filter, in-cache positions, per-step scores and hook) and where sliding-window
// layers expire what no later query reads. `run`, `eval`, `bench`, `calibrate-heads` and speculative decoding all
// run on it, and the server's scheduler builds on it: step() takes one token for each of several sequences.
//
// The policies are the papers' (kv/policy.h names them); this file only wires their hooks in the order they expect.
#pragma once
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/read_filter.h"
#include "model/forward.h"
#include "engine/text_breaks.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

using SequenceId = int32_t;

// Progress of prefill: tokens done, tokens in all.
using ProgressFn = std::function<void(int32_t, int32_t)>;

// Sliding-window expiry (kv_expire_window) after each chunk and step; Off leaves expired tokens in the cache, for
// callers that rewind by dropping the newest slots (bench's timed tests).
enum class WindowExpiry { On, Off };
// Whether a prefill calls the policy's hooks (prefill scores, selection, reconstruction) or only fills the cache.
enum class PolicyHooks { On, Off };

struct SessionOptions {
  Device device = Device::Cpu;  // where the forward runs and the KV pages live
  // The largest position a sequence reaches (see context_has_room); sizes the attention-score buffers.
  int32_t n_ctx = 4096;
  int32_t n_batch = 256;       // prefill chunk
  // The most tokens one extend() call runs when more than n_batch (a speculative verify step: gamma + 1); the
  // forward's buffers are sized for max(n_batch, n_step_tokens).
  int32_t n_step_tokens = 1;
  // The page pool's byte limit. 0: what n_seq_max full caches of n_ctx tokens (plus KVzip's reconstruction tokens
  // and a slab of every format per head) take in the layout of the first sequence's policy; kUnlimited: none.
  size_t kv_max_bytes = 0;
  int32_t n_seq_max = 1;
  // A decode step of several sequences gives each the bits it gets alone: it stacks at most the backend's
  // batch_invariant_rows() sequences per forward (the CPU: 7, each weight read twice per 7). false: up to n_batch
  // per forward, the weights read once, each sequence's logits within the matmul's rounding of its own.
  bool batch_invariant = true;
  static constexpr size_t kUnlimited = SIZE_MAX / 4;
};

// How prefill() runs its tokens. Logit positions index into the tokens given (not absolute positions).
struct PrefillOptions {
  std::vector<int32_t> logit_positions;  // logits out: (logit_positions.size(), n_vocab)
  ProgressFn progress;
  PolicyHooks hooks = PolicyHooks::On;
  WindowExpiry expiry = WindowExpiry::On;
  // > 0: the policy compresses the cache after the first n_compressed tokens (a document cached before the
  // question is known) and the rest are read afterwards, unscored, over the compressed cache; 0: after all.
  int32_t n_compressed = 0;
  // The policy cuts the cache after every chunk, not only at the prompt's end (--kv-prefill-compress): a prompt
  // longer than memory then holds at most the policy's budget plus a chunk (kv::KvPolicy::max_tokens_after_cut).
  // Each chunk is scored as if the prompt ended with it. Not for a policy with a reconstruction pass (KVzip).
  bool compress_chunks = false;
  // Someone beside the policy (speculative decoding's draft view) asks for the prefill's attention from queries at
  // positions >= score_from, handed to on_scores at prefill end, before window expiry. Only where the policy
  // gathers no prefill scores itself.
  int32_t score_from = INT_MAX;
  std::function<void(const kv::KvSequence&, const kv::KvScores&)> on_scores;
  // > 0: a chunk ends after this many of the tokens given, and on_prefix runs there: those tokens are cached as
  // written and no policy hook has touched them yet (the server shares them with later requests). It may not pass
  // the first position the policy scores or gathers query statistics from, nor come with compress_chunks.
  int32_t prefix_at = 0;
  std::function<void()> on_prefix;
};

// One sequence's token in a decode step: it runs at the sequence's next position.
struct SequenceStep {
  SequenceId seq = -1;
  int32_t token = 0;
};

// Throws Error when a policy cannot run on a device (positions within the cache, StreamingLLM's, need host memory
// for now): a request asks for it before any work, not in the middle of a batch.
void check_policy_runs_on(Device d, const kv::KvPolicy& policy);
// Throws Error when the policy cannot cut between prefill chunks (PrefillOptions::compress_chunks): KVzip scores the
// cache by reconstructing the whole prompt.
void check_policy_compresses_chunks(const kv::KvPolicy& policy);
// Throws Error when the server cannot run the policy: it admits requests by the pool's pages, and a policy that
// holds tokens beside the store (ShadowKV) would hold memory it does not count.
void check_policy_serves(const kv::KvPolicy& policy);

class EngineSession {
 public:
  // tok: needed by policies with a reconstruction pass (KVzip's instructions are text) and those that cut at text
  // boundaries (ChunkKV's align=: without it they cut by token counts alone); may be null.
  // Throws Error for n_ctx or n_batch below 1.
  EngineSession(const Model& model, ThreadPool& pool, const SessionOptions& options, const Tokenizer* tok = nullptr);
  ~EngineSession();
  EngineSession(const EngineSession&) = delete;
  EngineSession& operator=(const EngineSession&) = delete;

  // A new empty sequence under a policy: from a --kv spec, owned, or borrowed (it must outlive the sequence). Every
  // sequence of a session shares its page pool, so all must use one page size (Quest's page= differs): else Error.
  SequenceId add_sequence(const std::string& kv_spec);
  SequenceId add_sequence(std::unique_ptr<kv::KvPolicy> policy);
  SequenceId add_sequence(kv::KvPolicy& policy);
  // Frees the sequence's pages into the pool at once; its id is not reused.
  void remove_sequence(SequenceId id);
  // Empties the sequence and forgets its policy's state: the next prefill starts at position 0.
  void reset_sequence(SequenceId id);
  // Makes the empty sequence dst hold the first n_tokens tokens of src, sharing src's pages (copy on write,
  // kv::KvSequence::share_prefix); dst's next prefill continues at position n_tokens. src must hold every token
  // 0 .. n_tokens - 1 as written, in dst's page format.
  void share_prefix(SequenceId dst, SequenceId src, int32_t n_tokens);

  // Runs tokens at the sequence's next positions, in chunks of n_batch, with the policy's hooks as a prompt needs
  // them; then full pages are sealed. Throws Error when they do not fit in n_ctx. Empty tokens: nothing happens.
  void prefill(SequenceId id, std::span<const int32_t> tokens, const PrefillOptions& opts, std::vector<float>& logits);

  // One token for each listed sequence (each at most once), at its next position: the forward with the policy's read
  // filter and key positions, its decode scores when it wants them, its per-step hook, then window expiry.
  // logits: (steps.size(), n_vocab). The sequences run stacked in forwards (Forward::run's segments: each weight
  // read once for all of them), as many at a time as SessionOptions::batch_invariant allows.
  void step(std::span<const SequenceStep> steps, float* logits, WindowExpiry expiry = WindowExpiry::On);

  // The plain forward with no policy hook: n tokens at the next positions (original key positions), logits of the
  // listed rows, scores gathered into `scores` when given, attention narrowed by `read` when given. Speculative
  // decoding's draft and verify steps and the calibrations' teacher-forced spans.
  void extend(SequenceId id, const int32_t* tokens, int32_t n, const std::vector<int32_t>& logit_rows, float* logits,
              kv::KvScores* scores = nullptr, KvReadFilter* read = nullptr);
  // Removes every slot at a position >= from_pos in every (layer, kv-head) (what extend appended); the next position
  // becomes from_pos. The policy is not told: only for policies that keep no per-slot state of those slots.
  void truncate(SequenceId id, int32_t from_pos);
  // Sliding-window expiry up to next_pos after tokens decoded through extend (kv_expire_window's decode-step form).
  void expire_window(SequenceId id, int32_t next_pos);

  // Whether the next token of the sequence may still run: its position as the model sees it (the original one, or
  // with in-cache positions the count of tokens cached) must be inside n_ctx.
  bool context_has_room(SequenceId id) const;

  kv::KvSequence& sequence(SequenceId id);
  const kv::KvSequence& sequence(SequenceId id) const;
  kv::KvPolicy& policy(SequenceId id);
  const kv::KvPolicy& policy(SequenceId id) const;
  int32_t position(SequenceId id) const;     // the next position: tokens run since the last reset
  kv::KvBytes bytes(SequenceId id) const;    // held by the sequence now
  size_t peak_bytes(SequenceId id) const;    // the most it held since its last reset (checked after every forward)
  int32_t n_sequences() const;               // live ones
  // The pool every sequence allocates from (created with the first sequence). Error before any sequence.
  const kv::KvPagePool& pages() const;
  const Model& model() const { return model_; }
  const SessionOptions& options() const { return opts_; }

 private:
  struct Sequence;
  Sequence& seq(SequenceId id);
  const Sequence& seq(SequenceId id) const;
  SequenceId add(kv::KvPolicy& policy, std::unique_ptr<kv::KvPolicy> owned);
  // The store's bytes and those the policy's read filter holds beside it.
  static kv::KvBytes bytes_of(const Sequence& s);
  void note_peak(Sequence& s);
  // Tells s's policy, if it cuts at text boundaries, the boundaries before the tokens at [from, from + n).
  void tell_text(Sequence& s, int32_t from, int32_t n);
  // KVzip's reconstruction pass over the first m tokens (positions 0..m-1, all cached): leaves in s.scores the most
  // attention any reconstruction query paid each slot, and the cache as it was.
  void reconstruct(Sequence& s, std::span<const int32_t> prompt, int32_t m);

  const Model& model_;
  const Tokenizer* tok_;
  std::unique_ptr<TextBreaks> text_breaks_;  // built when a policy first asks
  SessionOptions opts_;
  std::unique_ptr<Backend> backend_;  // opts_.device's; the forward's ops and the page pool's memory
  Forward forward_;                   // the one forward of the session; every sequence runs through it
  std::unique_ptr<kv::KvPagePool> pages_;
  std::vector<std::unique_ptr<Sequence>> seqs_;  // by id; null once removed
};

}  // namespace longctx
