// The draft of lossless self-speculation ("TriForce: Lossless Acceleration of Long Sequence Generation with
// Hierarchical Speculative Decoding"): the same model drafts over a view of the full cache made of the pages that hold
// most of one token policy's selection, or of the pages Quest ranks highest for each draft step's own query (the
// paper's retrieval draft: its chunks chosen by the query, as Quest's pages are). Shared by the engine's draft view (engine/speculative.h) and plan's cost of it
// (plan/kv_footprint.h), so the two read the same pages by construction.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/token_ranker.h"

namespace longctx::kv {

// Lossless self-speculation's --spec, "self[:gamma=N,draft=SPEC]": draft= comes last and takes the rest of the spec,
// commas included (its own arguments are separated by commas too). A caller may take one more key (extra_key: plan's
// accept=, the acceptance it assumes) before draft= or as a last ",extra_key=V" after the draft's arguments, which no
// draft policy has. Throws Error naming what is wrong: another method, an unknown key, gamma outside [1, 32], a
// draft that cannot draft (make_draft_ranker).
struct SelfSpec {
  static constexpr int32_t kMaxGamma = 32;
  int32_t gamma = 4;                                  // tokens drafted per verify step
  std::string draft = "streaming:budget=512,sink=4";  // a --kv spec of one token policy or of quest: the draft's view
  bool extra_given = false;
  std::string extra;  // extra_key's value, when given (unchecked)
};
SelfSpec parse_self_spec(const std::string& spec, const std::string& extra_key = {});

// Whether the draft is a read policy's (quest[:budget=N,...]): its pages are chosen at every draft step from that
// step's query, over key summaries that the verifier's cache then keeps (the verifier's policy composed with it).
bool is_read_draft(const std::string& spec);
// The verifier's --kv spec with the draft's read policy composed in when the draft is one (the cache keeps what it
// ranks by, and pages of its size); else the verifier's spec.
std::string verifier_spec_for_draft(const std::string& verifier_spec, const std::string& draft_spec);

// The draft's token policy from its --kv spec (streaming, snapkv, ...): one token policy with a budget, ranking by
// what the prompt gives (no decode-step scores, no pass after prefill). Throws Error otherwise. owned keeps it alive.
const TokenRanker* make_draft_ranker(const std::string& spec, std::vector<std::unique_ptr<TokenRanker>>& owned);

// Pages a draft reads of one head, besides its newest: those holding budget tokens, plus 2 for a selection that
// straddles page edges.
int32_t draft_page_cap(int32_t budget, int32_t page_tokens);

// count[p]: the selected tokens in page p. The pages holding any, the n_pick most counted (ties to the newer page),
// in ascending order.
std::vector<int32_t> draft_pages(const std::vector<int32_t>& count, int32_t n_pick);

}  // namespace longctx::kv
