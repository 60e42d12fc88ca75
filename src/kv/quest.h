// Quest ("Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference"): at each decode step, a query needs
// only the few pages that hold its largest attention scores. The store keeps, per page, the element-wise min and max
// of its keys (KvHeadCache::key_summary); for a query q, sum_i max(q_i * max_i, q_i * min_i) is an upper bound of
// q.k for every key of the page, and the pages with the highest bounds, a token budget's worth, are read whole
// (values beside their keys), the rest skipped. Memory is unchanged; a decode step reads less of the cache.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "kv/read_filter.h"

namespace longctx::kv {

// The upper bound of q.k over a page's keys, from its summary (2, d): min then max. f32, in eight partial sums.
float quest_page_bound(const float* q, const float* summary, int32_t d);

// The pages (ascending) a kv-head reads for the query heads q (n_q, d, rows q_stride floats apart): the n_recent
// newest pages always (at least the newest, at most n_read), and the n_read - n_recent others whose bound, the
// largest over the query heads, is highest (ties: the older page). All pages when there are no more than n_read.
// head.key_summary must be set. scores: scratch.
void quest_select_pages(const KvHeadView& head, const float* q, int32_t n_q, int64_t q_stride, int32_t d,
                        int32_t n_read, std::vector<int32_t>& pages, std::vector<float>& scores, int32_t n_recent = 1);

// The read filter of a Quest policy: each decode step, every (layer >= dense_layers, kv-head) reads the pages
// quest_select_pages chooses for that step's query (for a chunk of several queries, the union of their choices).
class QuestReadFilter final : public KvReadFilter {
 public:
  // budget: tokens read per (layer, kv-head), in whole pages (budget / page_tokens of them, at least one);
  // dense_layers: the first layers read everything (the paper keeps its first two layers dense); recent: the pages
  // holding that many of the newest tokens are always among those read (0: the newest page alone).
  QuestReadFilter(int32_t budget, int32_t dense_layers, int32_t recent = 0);
  void narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) override;

  int32_t budget() const { return budget_; }
  int32_t dense_layers() const { return dense_layers_; }
  // Pages of page_tokens always read (the newest among them) and pages read in all, per narrowed (layer, kv-head).
  int32_t recent_pages(int32_t page_tokens) const {
    return std::clamp((recent_ + page_tokens - 1) / page_tokens, 1, read_pages(page_tokens));
  }
  int32_t read_pages(int32_t page_tokens) const { return std::max(1, budget_ / page_tokens); }
  // Pages whose summary a narrowed head of n_pages ranks (quest_select_pages): none when it reads them all, else
  // all but the recent ones.
  int64_t ranked_pages(int64_t n_pages, int32_t page_tokens) const {
    return n_pages > read_pages(page_tokens) ? n_pages - recent_pages(page_tokens) : 0;
  }
  // Rows attention read against rows the views held, summed over every narrow() call since the last reset: the
  // fraction of the cache a step reads.
  int64_t rows_read() const { return rows_read_; }
  int64_t rows_held() const { return rows_held_; }
  void reset_counts() { rows_read_ = rows_held_ = 0; }

 private:
  int32_t budget_, dense_layers_, recent_;
  int64_t rows_read_ = 0, rows_held_ = 0;
  std::vector<std::vector<int32_t>> positions_;  // (n_head_kv) the narrowed views' positions (outlive the view)
  std::vector<int32_t> pages_, union_;
  std::vector<uint8_t> chosen_;
  std::vector<float> scores_;
};

}  // namespace longctx::kv
