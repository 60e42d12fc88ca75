// What a forward may be told to read of each layer's cache (DESIGN.md, "rank / sparse read: what is read each step").
// Declared below the model layer so that a KV policy (Quest's query-aware pages) can hand one to the forward pass.
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace longctx {

// Narrows what one layer's attention reads to part of the cache, given that layer's queries (Quest's query-aware
// pages, a speculative draft's view of the cache): called after the chunk's keys are appended, with q
// (n_tok, n_head, head_dim) rotated; it may replace view's heads with keep_pages subsets. The store is not
// changed, and the scores gathered for the policies are still over the whole view.
class KvReadFilter {
 public:
  virtual ~KvReadFilter() = default;
  virtual void narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) = 0;
};

}  // namespace longctx
