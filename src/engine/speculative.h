// Lossless self-speculation, after TriForce ("TriForce: Lossless Acceleration of Long Sequence Generation with
// Hierarchical Speculative Decoding"): at long context a decode step is bound by reading the KV cache, so the same
// weights draft gamma tokens while reading only a small view of the cache (pages chosen by a --kv token policy:
// StreamingLLM's sinks and window, or SnapKV's selection), and the full cache verifies them in one multi-token
// forward, which reads the cache once for gamma + 1 tokens. The accept rule is speculative sampling ("Fast Inference
// from Transformers via Speculative Decoding", Leviathan et al.; "Accelerating Large Language Model Decoding with
// Speculative Sampling", Chen et al.): the emitted tokens are distributed exactly as the full cache's, and under
// greedy decoding they are the full cache's argmax tokens.
//
// No second copy of the weights or of the kept tokens exists: the draft view is a list of the full cache's own pages
// (keep_pages through a KvReadFilter). The draft's forwards append their tokens to the cache (their keys and
// values come from the draft's hidden states, wrong for the verifier), and are rolled back before the verifier
// appends the same tokens with their true keys and values; only trailing slots are ever removed, so the pages of
// the verified tokens are never touched.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/session.h"
#include "kv/policy.h"
#include "kv/spec_draft.h"
#include "kv/token_ranker.h"
#include "model/forward.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

struct SpecParams {
  int32_t gamma = kv::SelfSpec{}.gamma;      // tokens drafted per verify step
  std::string draft = kv::SelfSpec{}.draft;  // a --kv spec of one token policy, or quest: the draft's view
  std::string verifier_kv = "full";          // the --kv spec of the verifier: the full cache (f16 or f32)
};

// "self", "self:gamma=6" or "self:gamma=6,draft=snapkv:budget=1024,window=32" (kv::parse_self_spec). Throws Error
// naming what is wrong.
SpecParams parse_spec(const std::string& spec);
// The help line of --spec.
std::string spec_help();
// The verifier's policy for a --kv spec: only the full cache (full, full:type=f32, lossless) verifies losslessly;
// anything that evicts or packs is refused with a clear Error. A read draft (quest) is composed in
// (kv::verifier_spec_for_draft): it only adds the key summaries the draft ranks pages by, and the verify reads all.
std::unique_ptr<kv::KvPolicy> make_verifier_policy(const std::string& kv_spec, int32_t n_layer, int32_t n_head_kv,
                                                   const std::string& draft_spec = {});

// Speculative sampling's rule for one drafted token: p (n) the verifier's and q (n) the draft's distribution at that
// position, draft the token drawn from q. Accepts with probability min(1, p[draft] / q[draft]) (u_accept < that);
// else returns a token drawn with u_resample from normalize(max(0, p - q)) (residual: scratch of n). The token a
// rejection gives is then distributed so that the emitted token, over the draft's draw and the rule's, follows p.
struct SpecVerdict {
  bool accepted = false;
  int32_t token = -1;  // the draft token when accepted, else the resampled one
};
SpecVerdict speculative_verify_token(const float* p, const float* q, int32_t n, int32_t draft, double u_accept,
                                     double u_resample, std::vector<float>& residual);

// The draft's view of the full cache, page-granular: for each (layer, kv-head), the pages holding the most tokens
// the draft policy selected (at most ceil(budget / page_tokens) + 2 of them, ties to the newer page: room for a
// window straddling page edges and for the sinks' page), plus every page holding a token at or after the selection
// point (the tokens generated since, the draft's own among them). Sliding-window layers are read whole (their cache
// is already small). The selection is made over the prompt at prefill end (with the prompt's attention scores when
// the policy wants them: SnapKV's observation window) and, for a policy that keeps evicting during decode
// (StreamingLLM), again once a page of new tokens has come, so the view stays about budget + two pages.
//
// A Quest draft (kv::is_read_draft) instead narrows each draft step by that step's query: the verifier's policy holds
// the Quest read filter (make_verifier_policy composes it in), and the view hands it each layer (set_read_draft).
class SpecDraftView final : public KvReadFilter {
 public:
  SpecDraftView(const std::string& draft_spec, const ModelConfig& c);
  // A Quest draft's filter, owned by the verifier's policy. Required before drafting with a read draft.
  void set_read_draft(KvReadFilter* quest) { read_draft_ = quest; }
  bool is_read_draft() const { return ranker_ == nullptr; }

  std::string describe() const;
  // Queries at positions >= this vote at prefill end; INT_MAX when the policy needs no scores.
  int32_t prefill_score_from(int32_t n_prompt) const {
    return ranker_ != nullptr ? ranker_->prefill_score_from(n_prompt) : INT_MAX;
  }
  // Selects over the cache as it is (scores: the prompt's, or null when none are wanted); tokens at positions >=
  // next_pos are read whatever was selected.
  void select(const kv::KvSequence& kv, const kv::KvScores* scores, int32_t next_pos);
  // Before a draft round at next_pos: re-selects when the policy evicts during decode and a page of tokens came.
  void refresh(const kv::KvSequence& kv, int32_t next_pos);
  // The pages a token policy's draft reads of one (layer, kv-head), ascending, for the cache as it is now (a Quest
  // draft's depend on each step's query: Error).
  std::vector<int32_t> pages(const kv::KvSequence& kv, int32_t layer, int32_t kv_head) const;

  void narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) override;
  // Tokens the draft read in its last forward, summed over (layer, kv-head), and what the full cache holds.
  int64_t n_tokens_read() const { return n_read_; }
  int64_t n_tokens_full() const { return n_full_; }

 private:
  std::vector<std::unique_ptr<kv::TokenRanker>> owned_;
  const kv::TokenRanker* ranker_ = nullptr;  // null for a read draft
  KvReadFilter* read_draft_ = nullptr;
  std::string spec_;
  int32_t n_layer_ = 0, n_head_kv_ = 0;
  std::vector<bool> local_;                // (n_layer) sliding-window layers: read whole
  int32_t tail_from_ = 0;                  // positions >= this are always read
  std::vector<std::vector<int32_t>> sel_;  // (n_layer * n_head_kv) the selected pages, ascending
  const kv::KvSequence* kv_ = nullptr;     // the sequence being narrowed (set by refresh/select)
  std::vector<std::vector<int32_t>> positions_;  // (n_head_kv) scratch of keep_pages, alive while a layer runs
  int64_t n_read_ = 0, n_full_ = 0;
};

struct SpecStats {
  int64_t n_steps = 0;     // verify forwards
  int64_t n_drafted = 0;   // draft tokens proposed
  int64_t n_accepted = 0;  // of them accepted
  int64_t n_emitted = 0;   // tokens emitted by verify steps (accepted + one each)
  double draft_seconds = 0, verify_seconds = 0;
  double draft_read_fraction = 0;  // tokens the draft read over what the full cache held, mean over draft forwards
  double acceptance_rate() const { return n_drafted > 0 ? static_cast<double>(n_accepted) / n_drafted : 0; }
  double tokens_per_step() const { return n_steps > 0 ? static_cast<double>(n_emitted) / n_steps : 0; }
};

// Receives each generated token in order; returns false (with *why set) to stop.
using TokenFn = std::function<bool(int32_t id, StopReason* why)>;

class SpeculativeGenerator {
 public:
  // Throws Error on bad parameters or a draft spec that cannot draft (see parse_spec).
  SpeculativeGenerator(const Model& model, ThreadPool& pool, const GenerateParams& params, const SpecParams& spec);

  // Prefills the prompt (full cache, the draft's selection made at its end); logits (n_vocab) of its last token.
  void prefill(const std::vector<int32_t>& prompt, const ProgressFn& on_progress, std::vector<float>& logits);
  // Drafts up to g tokens after `cur` (not yet cached, at pos) over the draft view with a copy of `sampler` (its
  // repetition history; draws come from `sampler`'s random sequence), then rolls the cache back to what it was.
  // Returns the tokens; their draft distributions are in draft_probs() (g, n_vocab).
  std::vector<int32_t> draft(int32_t cur, int32_t pos, int32_t g, Sampler& sampler);
  const std::vector<float>& draft_probs() const { return q_; }

  // The whole request on tokens: prefill, then speculative steps; stops at n_predict, at the context's end, or when
  // on_token says so. Tokens and their order are the non-speculative decode's under greedy sampling.
  GenerateStats generate_tokens(const std::vector<int32_t>& prompt, const TokenFn& on_token, const ProgressFn& on_progress);
  // How decode() steps: speculatively, or the plain full-cache decode (one token per forward, no draft), the
  // reference a benchmark compares against on the same prefilled cache.
  enum class DecodeMode { Speculative, Plain };
  // After prefill(prompt, ..., logits): decodes from the prompt's last logits. The cache is first cut back to the
  // prompt, so several decodes may follow one prefill (not on models with sliding-window layers, whose expired
  // tokens do not come back: that is refused).
  GenerateStats decode(const std::vector<int32_t>& prompt, const std::vector<float>& logits, const TokenFn& on_token,
                       DecodeMode mode);
  // With text out, end-of-generation tokens and stop strings, as Generator::generate.
  GenerateStats generate(const std::vector<int32_t>& prompt, const Tokenizer& tok, const TextFn& on_text,
                         const ProgressFn& on_progress);

  // The sampler's seed for the next decode (many seeded draws on one prefill).
  void set_seed(uint64_t seed) { params_.sampling.seed = seed; }

  const SpecStats& spec_stats() const { return spec_stats_; }
  const SpecDraftView& draft_view() const { return view_; }
  kv::KvSequence& sequence() { return session_.sequence(seq_); }

 private:
  const Model& model_;
  GenerateParams params_;
  SpecParams spec_;
  SpecDraftView view_;
  // One sequence under the verifier's policy (keep all; sliding-window expiry reports to it). Prefill with the draft
  // view's scores, the draft's and the verifier's forwards (extend) and their rollback (truncate) run through it.
  EngineSession session_;
  SequenceId seq_;
  kv::KvScores scores_;         // the prompt's attention for the draft view's selection (when it wants any)
  std::vector<float> q_;        // (gamma, n_vocab) draft distributions of the last draft
  std::vector<float> p_;        // (gamma + 1, n_vocab) verifier distributions
  std::vector<float> logits_;   // (gamma + 1, n_vocab)
  std::vector<float> residual_; // (n_vocab)
  SpecStats spec_stats_;
  int32_t prefilled_ = -1;  // the prompt length of the last prefill
  bool decoded_ = false;    // a decode ran since it
};

}  // namespace longctx
