// KVzip ("KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"): a cache that must answer
// questions not yet asked cannot be scored by the prompt's last queries (SnapKV's window sees only the prompt's
// end). KVzip asks the model itself which cached tokens it needs to reproduce the whole context: once the prompt
// is cached, the model is run teacher-forced on "repeat the previous context" followed by the context's own
// tokens, chunk by chunk, over that cache (kv::KvReconstruction, run by the engine); a cached token's score is the
// largest attention any reconstruction query, of any query head of its kv-head group, paid it (ScoreReduce::Max).
// The reconstruction's tokens then leave the cache, and each kv-head keeps its n_sink first tokens plus its top
// (budget - n_sink) by score: the budget is uniform over heads (the paper also shares one budget over all heads by
// a global threshold; not done here).
//
// Cost: one more forward pass over about the context's length (plus a short instruction per chunk) after
// prefill, each reconstruction query attending to the whole cached context, plus the score pass over those
// queries (attention_scores over every reconstruction row): roughly twice a prefill of the same prompt. The cache
// briefly holds one chunk more.
//
// Differences from the reference implementation, by design: the softmax of a reconstruction query runs over the
// whole cache (the reference restricts it to the sinks, the chunk's own context tokens and the reconstruction,
// to save memory), so a token is scored by every chunk, not only its own; the instruction is plain text after the
// context, without a chat template's turn markers.
#include <algorithm>

#include "core/error.h"
#include "kv/policy_registry.h"
#include "kv/token_ranker.h"

namespace longctx::kv {
namespace {

constexpr int32_t kDefaultBudget = 1024, kDefaultChunk = 2048, kDefaultSink = 4, kOverlap = 8;

class KvzipRanker final : public TokenRanker {
 public:
  KvzipRanker(int32_t budget, int32_t chunk, int32_t sink) : budget_(budget), chunk_(chunk), sink_(sink) {}
  std::string describe() const override {
    return "kvzip(budget=" + std::to_string(budget_) + ", chunk=" + std::to_string(chunk_) +
           ", sink=" + std::to_string(sink_) + ")";
  }
  int32_t budget() const override { return budget_; }
  KvReconstruction reconstruction() const override {
    return {chunk_, "\n\nRepeat the previous context exactly.\n",
            "\n\nRepeat the part of the previous context exactly, starting with", kOverlap};
  }
  std::vector<int32_t> select(const std::vector<int32_t>& positions, const float* scores, int32_t budget) const override {
    if (scores == nullptr)
      fail("kvzip scores the cache by reconstructing the whole prompt, after prefill; it cannot cut between prefill "
           "chunks (--kv-prefill-compress) or during decode");
    return sinks_and_top_slots(positions, scores, budget, sink_);
  }

 private:
  int32_t budget_, chunk_, sink_;
};

}  // namespace

std::unique_ptr<TokenRanker> make_kvzip_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t chunk = args.get_int("chunk", kDefaultChunk, 16, 1 << 20);
  const int32_t sink = args.get_int("sink", kDefaultSink, 0, 1 << 20);
  if (sink >= budget) fail("kvzip: sink={} must be below budget={}", sink, budget);
  return std::make_unique<KvzipRanker>(budget, chunk, sink);
}

KvComponent kv_component_kvzip() {
  return {"kvzip",
          KvComponentKind::TokenPolicy,
          "KVzip (\"KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction\"): the tokens the model "
          "attends to most while repeating the context after it, whatever the question; one more pass after prefill",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), the sinks included"},
           {"chunk", std::to_string(kDefaultChunk), "context tokens repeated per reconstruction pass"},
           {"sink", std::to_string(kDefaultSink), "first tokens always kept (attention sinks)"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_kvzip_ranker(args)); }};
}

}  // namespace longctx::kv
