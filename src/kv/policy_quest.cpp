// Quest ("Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference") as a --kv read policy: keeps the
// store's per-page key min/max and, each decode step, reads only the pages whose upper bound of q.k is highest
// (quest.h). It composes with a token policy (Quest reads a subset of what the token policy kept) and with KIVI
// (summaries are taken from the exact keys before a page is packed). Prefill reads everything.
//
// Pages are the store's, 64 tokens unless page=16 or 32 asks the store for smaller ones (the paper uses 16: a
// smaller page's min/max bound is tighter, at four times the summaries): a budget of B tokens reads B / page pages
// per (layer, kv-head), the newest (still filling) page always among them (with recent=N, the pages of the
// newest N tokens: continuing text leans on them whatever their bounds). GQA: the query heads of a kv-head share
// its pages, ranked by the largest of their bounds, not the sum: a page one head needs (a retrieval head finding a
// needle) must not be outvoted by heads that spread their attention elsewhere, and the max is still an upper bound
// of the score any of the heads could give the page. The first layers stay dense, as in the paper (their attention is
// spread, and the bound ranks poorly there).
#include "kv/quest.h"

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "kv/policy_registry.h"

namespace longctx::kv {

namespace {
constexpr int32_t kDefaultBudget = 1024, kDefaultDenseLayers = 2, kDefaultPage = 64;
}  // namespace

float quest_page_bound(const float* q, const float* summary, int32_t d) {
  const float* mn = summary;
  const float* mx = summary + d;
  // Eight independent partial sums: one dependent chain of d adds would cost more than the rest of the selection,
  // which runs on the forward's thread while the pool waits.
  constexpr int32_t kLanes = 8;
  float acc[kLanes] = {};
  int32_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    for (int32_t j = 0; j < kLanes; ++j) acc[j] += std::max(q[i + j] * mx[i + j], q[i + j] * mn[i + j]);
  float s = 0;
  for (int32_t j = 0; j < kLanes; ++j) s += acc[j];
  for (; i < d; ++i) s += std::max(q[i] * mx[i], q[i] * mn[i]);
  return s;
}

void quest_select_pages(const KvHeadView& head, const float* q, int32_t n_q, int64_t q_stride, int32_t d,
                        int32_t n_read, std::vector<int32_t>& pages, std::vector<float>& scores, int32_t n_recent) {
  const int32_t P = head.n_pages();
  pages.clear();
  if (P <= n_read) {
    for (int32_t p = 0; p < P; ++p) pages.push_back(p);
    return;
  }
  if (head.key_summary == nullptr) fail("internal: quest reads a cache that keeps no key summaries");
  if (n_read < 1) fail("internal: quest reads {} pages", n_read);
  // The newest pages are always read; the others compete for the rest of the budget.
  const int32_t recent = std::clamp(n_recent, 1, n_read), n_ranked = P - recent;
  scores.assign(static_cast<size_t>(n_ranked), -std::numeric_limits<float>::infinity());
  for (int32_t p = 0; p < n_ranked; ++p) {
    const float* summary = head.key_summary + static_cast<size_t>(p) * 2 * d;
    float& s = scores[static_cast<size_t>(p)];
    for (int32_t h = 0; h < n_q; ++h) s = std::max(s, quest_page_bound(q + h * q_stride, summary, d));
  }
  for (int32_t p = 0; p < n_ranked; ++p) pages.push_back(p);
  auto higher = [&](int32_t a, int32_t b) {
    const float sa = scores[static_cast<size_t>(a)], sb = scores[static_cast<size_t>(b)];
    return sa > sb || (sa == sb && a < b);
  };
  const auto keep = static_cast<std::ptrdiff_t>(n_read - recent);
  std::nth_element(pages.begin(), pages.begin() + keep, pages.end(), higher);
  pages.resize(static_cast<size_t>(keep));
  std::sort(pages.begin(), pages.end());
  for (int32_t p = n_ranked; p < P; ++p) pages.push_back(p);
}

QuestReadFilter::QuestReadFilter(int32_t budget, int32_t dense_layers, int32_t recent)
    : budget_(budget), dense_layers_(dense_layers), recent_(recent) {
  if (budget < 1) fail("quest: budget must be at least 1 token, not {}", budget);
  if (dense_layers < 0) fail("quest: dense_layers must be >= 0, not {}", dense_layers);
  if (recent < 0 || recent > budget) fail("quest: recent must be in [0, budget = {}], not {}", budget, recent);
}

void QuestReadFilter::narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok,
                             KvLayerView& view) {
  (void)q_pos;  // every page the forward appended to is before or at the chunk's queries; causality is the kernel's
  const auto n_head_kv = static_cast<int32_t>(view.heads.size());
  const int32_t d = view.head_dim;
  for (const KvHeadView& hv : view.heads) rows_held_ += hv.n_tokens;
  if (layer < dense_layers_) {
    for (const KvHeadView& hv : view.heads) rows_read_ += hv.n_tokens;
    return;
  }
  if (view.n_head <= 0 || n_head_kv <= 0 || view.n_head % n_head_kv != 0)
    fail("internal: quest needs the query head count ({}) of a view of {} kv-heads", view.n_head, n_head_kv);
  const int32_t group = view.n_head / n_head_kv;
  const int32_t n_read = read_pages(view.page_tokens), n_recent = recent_pages(view.page_tokens);
  positions_.resize(static_cast<size_t>(n_head_kv));
  for (int32_t g = 0; g < n_head_kv; ++g) {
    KvHeadView& hv = view.heads[static_cast<size_t>(g)];
    if (hv.n_pages() <= n_read) {
      rows_read_ += hv.n_tokens;
      continue;
    }
    const int64_t q_stride = d;  // the heads of one token are consecutive rows of d
    if (n_tok == 1) {
      quest_select_pages(hv, q + static_cast<int64_t>(g) * group * d, group, q_stride, d, n_read, union_, scores_,
                         n_recent);
    } else {
      // Each query reads its own pages; the chunk reads their union.
      chosen_.assign(static_cast<size_t>(hv.n_pages()), 0);
      for (int32_t t = 0; t < n_tok; ++t) {
        const float* qt = q + (static_cast<int64_t>(t) * view.n_head + static_cast<int64_t>(g) * group) * d;
        quest_select_pages(hv, qt, group, q_stride, d, n_read, pages_, scores_, n_recent);
        for (int32_t p : pages_) chosen_[static_cast<size_t>(p)] = 1;
      }
      union_.clear();
      for (int32_t p = 0; p < hv.n_pages(); ++p)
        if (chosen_[static_cast<size_t>(p)]) union_.push_back(p);
    }
    hv = keep_pages(hv, union_, positions_[static_cast<size_t>(g)]);
    rows_read_ += hv.n_tokens;
  }
}

KvComponent kv_component_quest() {
  return {"quest",
          KvComponentKind::ReadPolicy,
          "Quest (\"Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference\"): each decode step reads "
          "only the pages whose key min/max bound the query's scores highest",
          {{"budget", std::to_string(kDefaultBudget), "tokens read per (layer, kv-head) each decode step, in whole pages"},
           {"dense_layers", std::to_string(kDefaultDenseLayers), "first layers that read the whole cache"},
           {"page", std::to_string(kDefaultPage), "tokens per store page, the selection's granularity (16, 32 or 64; "
            "the paper uses 16)"},
           {"recent", "0", "the pages holding this many of the newest tokens are always read, within the budget (0: "
            "the newest page alone)"}},
          [](const SpecArgs& args, KvPolicyDraft& d) {
            const int32_t budget = args.get_int("budget", kDefaultBudget, 1, 1 << 30);
            const int32_t dense = args.get_int("dense_layers", kDefaultDenseLayers, 0, 1 << 20);
            const int32_t page = args.get_int("page", kDefaultPage, 16, 64);
            if (page != 16 && page != 32 && page != 64) fail("quest: page must be 16, 32 or 64, not {}", page);
            const int32_t recent = args.get_int("recent", 0, 0, 1 << 30);
            d.page_tokens = page;
            d.read_filter = std::make_unique<QuestReadFilter>(budget, dense, recent);
            d.key_summaries = true;
            d.read = "quest(budget=" + std::to_string(budget) + ", dense_layers=" + std::to_string(dense) +
                     (page == kDefaultPage ? std::string() : ", page=" + std::to_string(page)) +
                     (recent == 0 ? std::string() : ", recent=" + std::to_string(recent)) + ")";
          }};
}

}  // namespace longctx::kv
