// KVzip ("KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"): a cache that must answer
// questions not yet asked cannot be scored by the prompt's last queries (SnapKV's window sees only the prompt's
// end). KVzip asks the model itself which cached tokens it needs to reproduce the whole context: once the prompt
// is cached, the model is run teacher-forced on "repeat the previous context" followed by the context's own
// tokens, chunk by chunk, over that cache (kv::KvReconstruction, run by the engine); a cached token's score is the
// largest attention any reconstruction query, of any query head of its kv-head group, paid it (ScoreReduce::Max).
// The reconstruction's tokens then leave the cache, and each kv-head keeps its n_sink first tokens plus its top
// (budget - n_sink) by score (alloc=head, a uniform budget), or, as the paper does (alloc=global), all heads of all
// layers share budget x n_heads tokens by one threshold on the scores (sinks first): the scores are attention
// probabilities, comparable across heads, and heads that reconstruction barely uses give their room to those it
// leans on.
//
// Cost: one more forward pass over about the context's length (plus a short instruction per chunk) after
// prefill, where every reconstruction query attends to the whole cached context (a causal prefill's queries see
// half of it on average), plus the score pass over those queries (attention_scores over every reconstruction
// row, as costly again as their attention). Where attention dominates, that is 3-4 prefills: SmolLM2 at 4K
// tokens on 2 CPU threads, 48 s against 12.8 s for the prompt alone (longctx eval, 3 cases). The cache briefly
// holds one chunk more (chunk=2048: a pool peak 1.5x the full cache's at 4K); a smaller chunk lowers the peak,
// not the work.
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
  KvzipRanker(int32_t budget, int32_t chunk, int32_t sink, bool global)
      : budget_(budget), chunk_(chunk), sink_(sink), global_(global) {}
  std::string describe() const override {
    return "kvzip(budget=" + std::to_string(budget_) + ", chunk=" + std::to_string(chunk_) +
           ", sink=" + std::to_string(sink_) + (global_ ? ", global" : "") + ")";
  }
  bool shares_budget() const override { return global_; }
  std::vector<int32_t> share_budget(const std::vector<const std::vector<int32_t>*>& positions,
                                    const std::vector<const float*>& scores, int64_t total) const override;
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
  bool global_;
};

std::vector<int32_t> KvzipRanker::share_budget(const std::vector<const std::vector<int32_t>*>& positions,
                                               const std::vector<const float*>& scores, int64_t total) const {
  // Every head's sinks first (as select keeps them), then the highest scores of all heads' other tokens until
  // `total` are taken; ties to the earlier head.
  const size_t n_heads = positions.size();
  std::vector<int32_t> budget(n_heads, 0);
  struct Entry {
    float score;
    uint32_t head;
  };
  std::vector<Entry> rest;
  for (size_t i = 0; i < n_heads; ++i) {
    const std::vector<int32_t>& pos = *positions[i];
    const std::vector<int32_t> order = slots_by_position(pos);
    const int32_t n_sinks = std::min<int32_t>(sink_, static_cast<int32_t>(order.size()));
    budget[i] = n_sinks;
    total -= n_sinks;
    for (size_t k = static_cast<size_t>(n_sinks); k < order.size(); ++k)
      rest.push_back({scores[i][order[k]], static_cast<uint32_t>(i)});
  }
  const size_t take = static_cast<size_t>(std::clamp<int64_t>(total, 0, static_cast<int64_t>(rest.size())));
  if (take > 0) {
    std::nth_element(rest.begin(), rest.begin() + static_cast<ptrdiff_t>(take - 1), rest.end(), [](const Entry& a, const Entry& b) {
      return a.score != b.score ? a.score > b.score : a.head < b.head;
    });
    for (size_t k = 0; k < take; ++k) ++budget[rest[k].head];
  }
  return budget;
}

}  // namespace

std::unique_ptr<TokenRanker> make_kvzip_ranker(const SpecArgs& args) {
  const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
  const int32_t chunk = args.get_int("chunk", kDefaultChunk, 16, 1 << 20);
  const int32_t sink = args.get_int("sink", kDefaultSink, 0, 1 << 20);
  const std::string alloc = args.get_string("alloc", "head");
  if (alloc != "head" && alloc != "global") fail("kvzip: alloc must be head or global, not '{}'", alloc);
  if (sink >= budget) fail("kvzip: sink={} must be below budget={}", sink, budget);
  return std::make_unique<KvzipRanker>(budget, chunk, sink, alloc == "global");
}

KvComponent kv_component_kvzip() {
  return {"kvzip",
          KvComponentKind::TokenPolicy,
          "KVzip (\"KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction\"): the tokens the model "
          "attends to most while repeating the context after it, whatever the question; one more pass after prefill",
          {{"budget", std::to_string(kDefaultBudget), "tokens kept per (layer, kv-head), the sinks included"},
           {"chunk", std::to_string(kDefaultChunk), "context tokens repeated per reconstruction pass"},
           {"sink", std::to_string(kDefaultSink), "first tokens always kept (attention sinks)"},
           {"alloc", "head", "head: budget per (layer, kv-head); global: budget x heads shared by one score threshold"}},
          [](const SpecArgs& args, KvPolicyDraft& d) { d.ranker = d.add_ranker(make_kvzip_ranker(args)); }};
}

}  // namespace longctx::kv
