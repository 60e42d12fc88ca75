// A KV policy decides which tokens each (layer, kv-head) keeps and in which format (DESIGN.md, "The KV cache").
// It is an object with hooks the engine calls; the store does the compaction and frees the pages at once.
//
// Policies compose along the axes of DESIGN.md: a token ranker decides which tokens stay (token_ranker.h), a
// budget decides how many per (layer, head) (uniform, pyramid, head roles), a format decides how sealed pages are
// stored (f16, KIVI). ComposedPolicy (composed_policy.h) puts one of each together from a --kv spec.
#pragma once
#include <climits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/kv_format.h"
#include "core/thread_pool.h"
#include "kv/kv_store.h"
#include "kv/read_filter.h"

namespace longctx::kv {

// The queries of each layer before RoPE, gathered by the forward pass for policies that model the queries still
// to come (Expected Attention) from those seen: per query head, the count, sum and sum of outer products of the
// queries at positions >= first_pos (after any q-norm, before RoPE), and the layer's RoPE and attention scale, so
// that the policy can turn the statistics as the layer turns a query at a given position. INT_MAX: none gathered.
struct KvQueryStats {
  struct Layer {
    int64_t count = 0;
    std::vector<double> sum;    // (n_head, head_dim)
    std::vector<double> outer;  // (n_head, head_dim, head_dim): sum of q q^T
    float rope_base = 0;
    int32_t n_rot = 0;
    RopeOrder rope_order = RopeOrder::Adjacent;
    float scale = 1;            // of q·k in the layer's attention
  };
  int32_t first_pos = INT_MAX;
  int32_t n_head = 0, head_dim = 0;
  std::vector<Layer> layers;  // (n_layer)

  bool wanted() const { return first_pos != INT_MAX; }
  // Sizes for a model and zeroes every sum.
  void reset(int32_t n_layer, int32_t n_heads, int32_t dim);
  // Adds the rows of q: (n_tok, n_head, head_dim) at q_pos (ascending) whose position is >= first_pos, into one
  // layer's sums.
  void add(ThreadPool& pool, int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok);
};

// The attention that queries paid to cached slots, gathered by the forward pass for the policies: per layer,
// (n_head_kv, stride) probabilities reduced (summed, or with reduce Max their maximum taken) over the contributing
// queries and the query heads of each kv-head. Queries at positions >= first_pos contribute; INT_MAX means no
// policy asked, and then nothing is computed. `queries` gathers what the queries were, when a policy asks.
struct KvScores {
  int32_t first_pos = INT_MAX;
  int32_t stride = 0;                     // >= every head's slot count
  ScoreReduce reduce = ScoreReduce::Sum;
  std::vector<std::vector<float>> layers;  // (n_layer) of (n_head_kv, stride)
  KvQueryStats queries;

  bool wanted() const { return first_pos != INT_MAX; }
  const float* head(int32_t layer, int32_t kv_head) const {
    return layers[static_cast<size_t>(layer)].data() + static_cast<size_t>(kv_head) * stride;
  }
  // Sizes for a cache and zeroes the first n_slots of every head.
  void reset(int32_t n_layer, int32_t n_head_kv, int32_t n_stride, int32_t n_slots);
};

// KVzip's context reconstruction ("KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"):
// once the prompt is cached, the engine feeds an instruction and then the prompt's own tokens after it, teacher
// forced, one chunk of the prompt at a time (each chunk: instruction, for later chunks the last n_overlap tokens
// of the previous one, then the chunk), gathering the attention those queries pay to the cached prompt with
// ScoreReduce::Max over every chunk; it removes the chunk's tokens from the cache after each chunk, and hands the
// scores to after_prefill. chunk == 0: no such pass.
struct KvReconstruction {
  int32_t chunk = 0;              // prompt tokens repeated per pass
  std::string first_instruction;  // text before the first chunk
  std::string next_instruction;   // text before every later chunk
  int32_t n_overlap = 0;          // tokens of the previous chunk repeated after next_instruction
};

// Where the keys of cached tokens sit for attention. Original: at the position each token had in the text, so a
// sequence may not outgrow the context the model was trained on. InCache: StreamingLLM's rule ("Efficient Streaming
// Language Models with Attention Sinks"): positions are ranks within the cache (the query after n cached tokens is
// at n), so a cache bounded below the trained context lets generation go on past it.
enum class KvPositions { Original, InCache };

// How strong a boundary of the text lies just before a token: none inside a word (a number read one digit a token,
// a word cut in pieces), between words, or between sentences and lines. The engine derives it from the tokenizer's
// spelling of the tokens (engine/text_breaks.h); a ranker that keeps spans of tokens (ChunkKV) cuts its spans there,
// so that a fact is kept or dropped whole.
enum class TextBreak : uint8_t { None = 0, Word = 1, Sentence = 2 };

class KvPolicy {
 public:
  virtual ~KvPolicy() = default;
  virtual std::string describe() const = 0;
  // The format new tokens are written in (f16 or f32).
  virtual KvFormat page_format() const = 0;
  // The format full pages are packed into; page_format() means never packed.
  virtual KvFormat sealed_format() const { return page_format(); }
  // Queries at positions >= this vote in the prefill scores (n_prompt: the prompt's length); INT_MAX: none.
  virtual int32_t prefill_score_from(int32_t n_prompt) const { return INT_MAX; }
  // Queries at positions >= this are gathered into the prefill's KvQueryStats; INT_MAX: none.
  virtual int32_t prefill_query_stats_from(int32_t n_prompt) const { return INT_MAX; }
  // The pass after prefill that scores the cache by reconstructing the prompt (KvReconstruction); chunk 0: none.
  // The scores handed to after_prefill are then that pass's, not the prompt's.
  virtual KvReconstruction reconstruction() const { return {}; }
  // The most recent tokens of every (layer, kv-head) that stay at full precision however the sealed format packs
  // (KIVI's residual window R); 0 when nothing is packed.
  virtual int32_t n_recent_full_precision() const { return 0; }
  // How the engine positions cached keys during decode (prompts always use original positions: they fit the context).
  virtual KvPositions positions() const { return KvPositions::Original; }
  // Forgets per-sequence state (accumulated scores, the text): called before every new prompt.
  virtual void reset() {}
  // Whether the policy cuts at the text's boundaries: then, where the engine has the tokenizer, on_text tells it the
  // boundary before every prompt token, before that token's hooks run.
  virtual bool wants_text_breaks() const { return false; }
  // breaks[i]: the boundary before the token at position first_pos + i.
  virtual void on_text(int32_t first_pos, std::span<const TextBreak> breaks) {}
  // Whether each decode step's attention is wanted.
  virtual bool wants_decode_scores() const { return false; }
  // Between prefill chunks, for prompts longer than memory (--kv-prefill-compress); scores as at prefill end,
  // for the queries of the chunks so far.
  virtual void after_prefill_chunk(KvSequence& seq, const KvScores& scores) {}
  // The most tokens the whole cache (every layer and kv-head together) holds right after the policy cuts a cache
  // of n_tokens per (layer, kv-head) (after a prefill chunk, at the prompt's end, after a decode step); -1: it cuts
  // nothing. With --kv-prefill-compress a prompt then never holds more than this plus a chunk per head, which is
  // what the server's admission counts (engine/scheduler.h).
  virtual int64_t max_tokens_after_cut(int64_t n_tokens) const { return -1; }
  // Once the whole prompt is in the cache.
  virtual void after_prefill(KvSequence& seq, const KvScores& scores) {}
  // After each generated token has been appended.
  virtual void after_decode_step(KvSequence& seq, const KvScores& scores) {}
  // Someone else removed these slots (sorted ascending) of a head that held n_before, in KvSequence::remove_slots
  // order (sliding-window expiry): per-slot state kept beside the store must follow.
  virtual void on_slots_removed(int32_t layer, int32_t kv_head, int32_t n_before, const std::vector<int32_t>& slots) {}
  // What each decode step reads of the cache (Quest's query-aware pages), passed to Forward::run during decode;
  // null: everything. Prefill always reads the whole cache.
  virtual KvReadFilter* read_filter() { return nullptr; }
  const KvReadFilter* read_filter() const { return const_cast<KvPolicy*>(this)->read_filter(); }
  // Whether the read filter holds tokens beside the store (ShadowKV): reads after the prompt's end then all go
  // through it, and its bytes count in the sequence's (KvBytes::beside_fast, beside_cold).
  bool holds_tokens_beside_store() const { return read_filter() != nullptr && read_filter()->holds_tokens(); }
  // Whether the store must keep per-page key summaries (KvGeometry::key_summaries) for the read filter.
  virtual bool wants_key_summaries() const { return false; }
  // Tokens per store page the policy asks for (Quest selects whole pages, so its page size is its granularity);
  // 0: the store's default.
  virtual int32_t page_tokens() const { return 0; }
  // Whether the cache always holds every token as it was written (nothing evicted, packed or selected): then a later
  // prompt that starts with the same tokens may reuse their K/V (the server's scheduler, engine/scheduler.h).
  virtual bool keeps_every_token() const { return false; }
  // Whether decode steps leave the cache as the store keeps it: nothing evicted, no choice of what a step reads, keys
  // at their original positions (a policy may still have selected at prefill, and pages may be packed to fewer
  // bits). A slot that attention masks out then changes nothing, so sliding-window expiry in decode steps may leave
  // it until its whole page can go (kv_expire_window).
  virtual bool passive_during_decode() const { return false; }
};

// Parses a --kv spec: components joined by '+', each "name" or "name:key=value,key=value". A bad spec gets an
// Error naming the bad part and listing what is valid. n_layer and n_head_kv size per-layer and per-head budgets.
std::unique_ptr<KvPolicy> make_kv_policy(const std::string& spec, int32_t n_layer, int32_t n_head_kv);

// What --help prints about the specs.
std::string kv_policy_help();

}  // namespace longctx::kv
