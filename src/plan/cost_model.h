// The cost model of long-context serving ("Challenges in Deploying Long-Context Transformers: A Theoretical Peak
// Performance Analysis"): every extra cost of a long context follows from the size of its KV cache.
//   - concurrency is memory-bound: (memory - weights - scratch) / KV bytes per sequence;
//   - prefill is compute-bound: 2 FLOPs per weight per prompt token, plus the attention's quadratic part,
//     4 * head_dim FLOPs per (query head, visible key) pair (both products, causal: each query sees the keys up
//     to its own position, or its window);
//   - decode is bandwidth-bound: every step reads the weights once for the whole batch and each sequence's KV as
//     the policy left it (what the attention may see: windows and evicted tokens are not read), or as a read
//     policy narrows it (Quest's pages of highest bound, plus the key summaries it ranks them by);
//   - a policy that scores the cache by reconstructing the prompt (KVzip) adds that pass to prefill: one more
//     forward over the prompt's tokens, chunk by chunk, each chunk's queries seeing the whole cached prompt, and
//     its score pass;
//   - lossless self-speculation (--spec self) drafts gamma tokens reading the weights and the draft's view of the
//     cache, then verifies them in one forward of gamma + 1 rows that reads the full cache once; a verify step
//     emits tau = (1 - a^(gamma+1)) / (1 - a) tokens for acceptance a;
//   - context switching is link-bound: a sequence's KV out to host memory and another's in.
// Rates are the device's figures times its roofline fractions, or the kernels' probed rates (device.h).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kv/spec_draft.h"
#include "plan/device.h"
#include "plan/kv_footprint.h"
#include "plan/plan_arch.h"

namespace longctx::kv {
class KvPolicy;
struct KvReconstruction;
}

namespace longctx::plan {

struct DecodeCost {
  double seconds = 0;     // one step of the batch
  double weights_s = 0;   // the weight stream (or the batch's matmul FLOPs, when those take longer)
  double kv_s = 0;        // the KV read of every sequence in the batch
  double other_s = 0;     // the ops besides matmul and attention, and the attention calls' fixed cost
  int64_t bytes = 0;      // read per step: weights once, KV of every sequence
};

struct PrefillCost {
  double seconds = 0;
  double matmul_s = 0;
  double attention_s = 0;   // the attention (and KVzip's score pass over the same pairs)
  double other_s = 0;
  double matmul_flops = 0;
  double attention_flops = 0;
  int64_t n_rows = 0;       // token rows run through the layers

  PrefillCost& operator+=(const PrefillCost& o);
};

// One decode step of n_seq sequences whose KV reads are `kv` each (the footprint at their context).
DecodeCost decode_cost(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv, int64_t n_seq = 1,
                       bool scores_pass = false);

// Prefill of n_new prompt tokens on top of a cache whose (layer, kv-head) i already holds cached[i] tokens at
// the positions before them (empty: nothing cached), logits of the last row only (as bench's pp and a run's
// prompt) or of none (logits false: KVzip's reconstruction asks for none); the cache in pages of page_tokens.
PrefillCost prefill_cost(const PlanArch& arch, const DeviceSpec& dev, int64_t n_new,
                         const std::vector<int64_t>& cached = {}, bool logits = true,
                         int32_t page_tokens = kPlanPageTokens);

// KVzip's reconstruction pass (kv::KvReconstruction, run by EngineSession::reconstruct) after a prompt of n_prompt
// tokens: per chunk of rec.chunk prompt tokens, one forward (no logits) of the instruction (n_first tokens before
// the first chunk; n_next plus the previous chunk's last rec.n_overlap tokens before every later one) and the
// chunk, every row seeing the n_prompt cached tokens and the rows before it (the chunk's rows leave the cache
// after it), and the score pass over the same rows (attention_scores: the probabilities of every pair, counted as
// the attention's FLOPs again). Zero when rec.chunk is 0.
PrefillCost reconstruction_cost(const PlanArch& arch, const DeviceSpec& dev, const kv::KvReconstruction& rec,
                                int64_t n_prompt, int32_t n_first, int32_t n_next);
// Tokens of an instruction when no tokenizer is at hand (a --shape): one per 4 characters, at least 1.
int32_t estimate_text_tokens(const std::string& text);

// One forward of n_rows consecutive tokens of one sequence whose KV reads are `kv` (a speculative verify: gamma + 1
// rows, reading the cache once). On a CPU with probed rates the one-row matmul's rate is per row, so the matmuls
// cost n_rows one-row matmuls (the rows path is compute-bound per row: tests/matmul_rates measured a 5-row call at
// ~4.3x a 1-row call); on a datasheet device the weights stream once, or the rows' FLOPs take longer. Logits for
// every row (the head n_rows times on the CPU, once streamed on a GPU).
DecodeCost verify_cost(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv, int32_t n_rows);

// `--spec self[:gamma=N,draft=SPEC][,accept=A]` for plan: the engine's --spec, parsed by the engine's own parser
// (kv::parse_self_spec), plus the acceptance a that the cost model assumes (accept= before draft=, or last, after
// the draft's own arguments).
struct SpecPlan {
  static constexpr double kDefaultAccept = 0.85;  // assumed when accept= is not given (stated in the output)
  int32_t gamma = kv::SelfSpec{}.gamma;
  std::string draft = kv::SelfSpec{}.draft;
  double accept = kDefaultAccept;
  bool accept_given = false;
};
// Throws Error naming what is wrong: another method than self, an unknown key, gamma outside [1, 32], accept
// outside [0, 1], a draft that is neither one token policy with a budget that needs no decode scores (streaming or
// snapkv) nor quest, or a bad draft argument.
SpecPlan parse_spec_plan(const std::string& spec);
// Tokens emitted per verify step for per-token acceptance a (each draft accepted with probability a, independently,
// until the first rejection; the verify's own token always): sum_{i=0..gamma} a^i.
double spec_tokens_per_step(double accept, int32_t gamma);

struct SpecCost {
  double tokens_per_step = 0;   // tau
  DecodeCost draft;             // one draft forward (one token, the draft's view of the cache)
  DecodeCost verify;            // the verify forward of gamma + 1 rows over the full cache
  KvFootprint draft_kv;         // what a draft forward reads
  int64_t verify_kv_read_bytes = 0;  // what the verify reads of the full cache (once for its gamma + 1 rows)
  double seconds_per_token = 0; // (gamma x draft + verify) / tau
  double plain_seconds = 0;     // a plain decode step at the same context, one sequence
  double speedup() const { return seconds_per_token > 0 ? plain_seconds / seconds_per_token : 0; }
};
// One sequence (the engine's --spec decodes one) at context n_ctx under the full cache `verifier` (made from
// verifier_spec, which a Quest draft is composed with: kv::verifier_spec_for_draft).
SpecCost spec_cost(const PlanArch& arch, const DeviceSpec& dev, const kv::KvPolicy& verifier, const SpecPlan& spec,
                   int64_t n_ctx, const std::string& verifier_spec = "full");

struct PlanOptions {
  int64_t concurrency = 0;   // sequences served at once; 0: as many as fit
  int64_t memory_bytes = 0;  // memory for weights, KV and scratch; 0: the device's
  // Tokens of KVzip's instructions (KvReconstruction's first_instruction, next_instruction) as the model's tokenizer
  // encodes them; -1: estimated from their length (estimate_text_tokens).
  int32_t reconstruction_first_tokens = -1, reconstruction_next_tokens = -1;
  std::optional<SpecPlan> spec;  // --spec: the spec figures of the rows under a full cache
};

// Everything `longctx plan` prints for one (policy, context).
struct PlanRow {
  std::string kv_spec;
  std::string kv_describe;
  int64_t n_ctx = 0;
  KvFootprint kv;
  int64_t kv_full_f16_bytes = 0;   // the same context in full f16, the reference of compression
  int64_t scratch_bytes = 0;       // per sequence: the policy's attention scores, when it gathers them
  int64_t memory_bytes = 0;        // what the plan may use
  int64_t n_fit = 0;               // sequences that fit in memory_bytes
  int64_t n_seq = 0;               // sequences served (the concurrency asked, or n_fit)
  int64_t memory_needed = 0;       // weights + n_seq x (KV + scratch) + the pool's slack
  bool fits = false;
  PrefillCost prefill;             // one sequence's whole prompt, and the policy's reconstruction pass (KVzip)
  PrefillCost reconstruction;      // the part of prefill in that pass (zero without one)
  DecodeCost decode;               // one step of the n_seq batch at this context
  double ttft_s = 0;               // prefill + the first decode step
  std::optional<SpecCost> spec;    // with PlanOptions::spec, for a policy that keeps the full cache
  double tokens_per_s_user = 0;
  double tokens_per_s_total = 0;
  double swap_s = 0;               // one sequence's KV out to host memory and another's in; 0 without a link
};

PlanRow plan_row(const PlanArch& arch, const DeviceSpec& dev, const kv::KvPolicy& policy, const std::string& kv_spec,
                 int64_t n_ctx, const PlanOptions& o);

// The assumptions behind the figures, one per line, for the output (the spec's when one is given).
std::vector<std::string> plan_assumptions(const DeviceSpec& dev, const std::optional<SpecPlan>& spec = std::nullopt);
// What the model assumes of this policy beyond the common lines (Quest's reads, KVzip's pass); empty for others.
std::vector<std::string> policy_assumptions(const kv::KvPolicy& policy);

}  // namespace longctx::plan
