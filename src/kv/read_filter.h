// What a forward may be told to read of each layer's cache (DESIGN.md, "rank / sparse read: what is read each step").
// Declared below the model layer so that a KV policy (Quest's query-aware pages) can hand one to the forward pass.
#pragma once
#include <climits>
#include <cstddef>
#include <cstdint>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace longctx {

namespace kv {
class KvSequence;
struct KvScores;
}  // namespace kv

// Narrows what one layer's attention reads to part of the cache, given that layer's queries (Quest's query-aware
// pages, a speculative draft's view of the cache): called after the chunk's keys are appended, with q
// (n_tok, n_head, head_dim) rotated; it may replace view's heads with keep_pages subsets. The store is not
// changed, and the scores gathered for the policies are still over the whole view.
//
// A filter may also hold tokens itself, beside the store (ShadowKV: keys as low-rank factors, values in a cold
// tier): it takes them out of the store at the prompt's end, and narrow() adds those a query needs to the view, in
// pages of its own placed before the store's (their positions are older than every token the store still holds).
class KvReadFilter {
 public:
  virtual ~KvReadFilter() = default;
  virtual void narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) = 0;

  // Whether it holds tokens beside the store: then every read after the prompt's end goes through narrow() (the
  // store alone lacks them), and the tokens' bytes count in the sequence's.
  virtual bool holds_tokens() const { return false; }
  // Queries at positions >= this are gathered into the prefill's KvQueryStats (which carry each layer's RoPE and
  // attention scale); INT_MAX: none.
  virtual int32_t prefill_query_stats_from(int32_t n_prompt) const { return INT_MAX; }
  // Once the whole prompt is in the cache, after the token policy's cut.
  virtual void after_prefill(kv::KvSequence& seq, const kv::KvScores& scores) {}
  // Forgets the tokens held: called before every new prompt.
  virtual void reset() {}
  // Bytes of the tokens held in fast memory (what a GPU keeps on the device) and in the cold tier (host memory
  // there, a second tier here).
  virtual size_t bytes_fast() const { return 0; }
  virtual size_t bytes_cold() const { return 0; }

  // The host threads its own work may spread over (the forward's: EngineSession sets it when the sequence is
  // added); null: the calling thread.
  void set_host_pool(ThreadPool* pool) { host_pool_ = pool; }

 protected:
  ThreadPool* host_pool() const { return host_pool_; }

 private:
  ThreadPool* host_pool_ = nullptr;
};

}  // namespace longctx
