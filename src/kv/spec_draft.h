// The draft of lossless self-speculation ("TriForce: Lossless Acceleration of Long Sequence Generation with
// Hierarchical Speculative Decoding"): the same model drafts over a view of the full cache made of the pages that hold
// most of one token policy's selection. Shared by the engine's draft view (engine/speculative.h) and plan's cost of it
// (plan/kv_footprint.h), so the two read the same pages by construction.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/token_ranker.h"

namespace longctx::kv {

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
