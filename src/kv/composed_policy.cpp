#include "kv/composed_policy.h"

#include <algorithm>
#include <unordered_map>

#include "core/error.h"

namespace longctx::kv {

void KvScores::reset(int32_t n_layer, int32_t n_head_kv, int32_t n_stride, int32_t n_slots) {
  if (stride != n_stride || layers.size() != static_cast<size_t>(n_layer)) {
    stride = n_stride;
    layers.assign(static_cast<size_t>(n_layer), std::vector<float>(static_cast<size_t>(n_head_kv) * n_stride, 0.0f));
    return;
  }
  for (auto& l : layers)
    for (int32_t g = 0; g < n_head_kv; ++g)
      std::fill_n(l.begin() + static_cast<ptrdiff_t>(g) * stride, std::min(n_slots, stride), 0.0f);
}

ComposedPolicy::ComposedPolicy(std::vector<std::unique_ptr<TokenRanker>> rankers, std::vector<HeadPlan> plans,
                               int32_t n_head_kv, KvFormat open, KvFormat sealed, int32_t n_recent_full_precision,
                               std::string description, std::unique_ptr<LayerBudgetShare> share)
    : rankers_(std::move(rankers)),
      plans_(std::move(plans)),
      share_(std::move(share)),
      n_head_kv_(n_head_kv),
      open_(open),
      sealed_(sealed),
      n_recent_full_precision_(n_recent_full_precision),
      description_(std::move(description)),
      accumulated_(plans_.size()),
      compensation_(plans_.size()) {
  for (const auto& r : rankers_) r->read_text_breaks_from(&text_breaks_);
}

int64_t ComposedPolicy::max_tokens_after_cut(int64_t n_tokens) const {
  if (rankers_.empty()) return -1;
  // A cut head holds at most its budget, plus its compensation token, and never more than it held. The budgets a
  // share hands out (AdaKV's within a layer, KVzip's over every head) sum to at most the plans', so the cut heads
  // together hold at most the smaller of the plans' budgets and what they held.
  int64_t whole = 0, cut = 0, budgets = 0, compensation = 0;
  for (const HeadPlan& p : plans_) {
    if (p.ranker == nullptr || p.budget == kKeepAll) {
      whole += n_tokens;
      continue;
    }
    cut += n_tokens;
    budgets += p.budget;
    compensation += p.dropped == KvDropped::Compensated;
  }
  return whole + std::min(cut, budgets) + compensation;
}

int32_t ComposedPolicy::prefill_score_from(int32_t n_prompt) const {
  int32_t from = INT_MAX;
  for (const auto& r : rankers_) from = std::min(from, r->prefill_score_from(n_prompt));
  return from;
}

int32_t ComposedPolicy::prefill_query_stats_from(int32_t n_prompt) const {
  int32_t from = INT_MAX;
  for (const auto& r : rankers_) from = std::min(from, r->prefill_query_stats_from(n_prompt));
  if (read_filter_) from = std::min(from, read_filter_->prefill_query_stats_from(n_prompt));
  return from;
}

KvReconstruction ComposedPolicy::reconstruction() const {
  for (const auto& r : rankers_)
    if (KvReconstruction rec = r->reconstruction(); rec.chunk > 0) return rec;
  return {};
}

int32_t ComposedPolicy::n_recent_full_precision() const {
  return kv_format_is_packed(sealed_) ? n_recent_full_precision_ : 0;
}

void ComposedPolicy::reset() {
  for (auto& acc : accumulated_) acc.clear();
  for (auto& c : compensation_) c = Compensation{};
  text_breaks_.clear();
  if (read_filter_) read_filter_->reset();
}

bool ComposedPolicy::wants_text_breaks() const {
  return std::any_of(rankers_.begin(), rankers_.end(), [](const auto& r) { return r->wants_text_breaks(); });
}

void ComposedPolicy::on_text(int32_t first_pos, std::span<const TextBreak> breaks) {
  const size_t end = static_cast<size_t>(first_pos) + breaks.size();
  if (text_breaks_.size() < end) text_breaks_.resize(end, TextBreak::None);
  std::copy(breaks.begin(), breaks.end(), text_breaks_.begin() + first_pos);
}

bool ComposedPolicy::wants_decode_scores() const {
  return std::any_of(rankers_.begin(), rankers_.end(), [](const auto& r) { return r->wants_decode_scores(); });
}

bool ComposedPolicy::passive_during_decode() const {
  return !read_filter_ && !wants_decode_scores() && positions() == KvPositions::Original &&
         std::none_of(rankers_.begin(), rankers_.end(), [](const auto& r) { return r->evicts_during_decode(); });
}

// In-cache positions only when every head's ranker gives them: a head that keeps everything (a retrieval head, the
// full cache) would need original positions past the trained context.
KvPositions ComposedPolicy::positions() const {
  const bool all = std::all_of(plans_.begin(), plans_.end(), [](const HeadPlan& p) {
    return p.ranker != nullptr && p.ranker->positions() == KvPositions::InCache;
  });
  return all ? KvPositions::InCache : KvPositions::Original;
}

std::vector<std::vector<float>> ComposedPolicy::layer_scores(const KvSequence& seq, const KvScores& scores,
                                                             int32_t layer, const TokenRanker* ranker) const {
  std::vector<int32_t> heads;
  for (int32_t g = 0; g < n_head_kv_; ++g)
    if (plans_[index(layer, g)].ranker == ranker) heads.push_back(g);
  std::vector<std::vector<float>> out(static_cast<size_t>(n_head_kv_));
  if (heads.empty()) return out;
  // The usual case (a layer-scope ranker keeps the same tokens in every head, as TOVA does): the heads hold the same
  // positions in the same slots, and the sum is taken slot by slot, in the same order as by position below.
  const std::vector<int32_t>& pos0 = seq.head(layer, heads[0]).positions;
  if (std::all_of(heads.begin(), heads.end(), [&](int32_t g) { return seq.head(layer, g).positions == pos0; })) {
    std::vector<float> sum(pos0.size(), 0.0f);
    for (int32_t g : heads) {
      const float* s = scores.head(layer, g);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += s[i];
    }
    for (int32_t g : heads) out[static_cast<size_t>(g)] = sum;
    return out;
  }
  // Heads may hold their tokens in different slot orders, so the sum is taken per position. A head that does not
  // hold a token paid it no attention.
  std::unordered_map<int32_t, float> by_position;
  for (int32_t g : heads) {
    const KvHeadCache& h = seq.head(layer, g);
    const float* s = scores.head(layer, g);
    for (int32_t i = 0; i < h.n_tokens(); ++i) by_position[h.positions[static_cast<size_t>(i)]] += s[i];
  }
  for (int32_t g : heads) {
    const KvHeadCache& h = seq.head(layer, g);
    auto& o = out[static_cast<size_t>(g)];
    o.resize(static_cast<size_t>(h.n_tokens()));
    for (int32_t i = 0; i < h.n_tokens(); ++i) o[static_cast<size_t>(i)] = by_position[h.positions[static_cast<size_t>(i)]];
  }
  return out;
}

std::vector<int32_t> ComposedPolicy::layer_budgets(const KvSequence& seq, const KvScores& scores, int32_t layer) const {
  std::vector<int32_t> budgets(static_cast<size_t>(n_head_kv_));
  for (int32_t g = 0; g < n_head_kv_; ++g) budgets[static_cast<size_t>(g)] = plans_[index(layer, g)].budget;
  if (share_ == nullptr || !scores.wanted()) return budgets;
  std::vector<int32_t> heads, plan_budgets;
  std::vector<std::vector<float>> head_scores;
  std::vector<std::vector<int32_t>> head_positions;
  for (int32_t g = 0; g < n_head_kv_; ++g) {
    const HeadPlan& plan = plans_[index(layer, g)];
    if (plan.ranker != share_->ranker() || plan.budget == kKeepAll || plan.dropped != KvDropped::Forgotten) continue;
    const KvHeadCache& h = seq.head(layer, g);
    heads.push_back(g);
    plan_budgets.push_back(plan.budget);
    head_positions.push_back(h.positions);
    head_scores.push_back(plan.ranker->selection_scores(h.positions, scores.head(layer, g)));
  }
  if (heads.empty()) return budgets;
  const std::vector<int32_t> shared = share_->share(head_scores, head_positions, plan_budgets);
  for (size_t i = 0; i < heads.size(); ++i) budgets[static_cast<size_t>(heads[i])] = shared[i];
  return budgets;
}

void ComposedPolicy::compress(KvSequence& seq, const KvScores& scores, Step step) {
  const int32_t n_layer = static_cast<int32_t>(plans_.size()) / n_head_kv_;
  // Budgets a ranker shares over all the heads it manages (KVzip's non-uniform heads), at prefill end: the sum of
  // their plans' budgets, divided by the ranker from every head's scores. -1: the plan's own.
  std::vector<int32_t> shared_budget(plans_.size(), -1);
  if (step == Step::PrefillEnd && scores.wanted())
    for (const auto& r : rankers_) {
      if (!r->shares_budget()) continue;
      std::vector<size_t> heads;
      std::vector<const std::vector<int32_t>*> positions;
      std::vector<const float*> head_scores;
      int64_t total = 0;
      for (int32_t l = 0; l < n_layer; ++l)
        for (int32_t g = 0; g < n_head_kv_; ++g) {
          const HeadPlan& plan = plans_[index(l, g)];
          if (plan.ranker != r.get() || plan.budget == kKeepAll || plan.dropped != KvDropped::Forgotten) continue;
          heads.push_back(index(l, g));
          positions.push_back(&seq.head(l, g).positions);
          head_scores.push_back(scores.head(l, g));
          total += plan.budget;
        }
      const std::vector<int32_t> budgets = r->share_budget(positions, head_scores, total);
      if (budgets.size() != heads.size()) fail("internal: {} shared a budget over {} of {} heads", r->describe(), budgets.size(), heads.size());
      for (size_t i = 0; i < heads.size(); ++i) shared_budget[heads[i]] = budgets[i];
    }
  for (int32_t l = 0; l < n_layer; ++l) {
    // Decode steps never re-share: the rankers a share governs cut once, at prefill end (or per prefill chunk).
    const std::vector<int32_t> budgets = layer_budgets(seq, step == Step::Decode ? KvScores{} : scores, l);
    // Layer-scope scores are summed before any head of the layer is cut, so every head ranks the same attention.
    std::vector<std::pair<const TokenRanker*, std::vector<std::vector<float>>>> shared;
    if (scores.wanted())
      for (int32_t g = 0; g < n_head_kv_; ++g) {
        const TokenRanker* r = plans_[index(l, g)].ranker;
        if (r == nullptr || r->score_scope() != KvScoreScope::Layer) continue;
        if (std::none_of(shared.begin(), shared.end(), [&](const auto& s) { return s.first == r; }))
          shared.emplace_back(r, layer_scores(seq, scores, l, r));
      }
    // A layer-scope ranker ranks the same sum in every head that holds the same positions: it selects once for them
    // (TOVA's heads always hold the same tokens, and a decode step would otherwise rank the layer once per head).
    struct LayerPick {
      const TokenRanker* ranker = nullptr;
      int32_t budget = 0;
      std::vector<int32_t> positions, keep;
    } pick;
    for (int32_t g = 0; g < n_head_kv_; ++g) {
      const HeadPlan& plan = plans_[index(l, g)];
      if (plan.ranker == nullptr) continue;
      const KvHeadCache& h = seq.head(l, g);
      const int32_t n = h.n_tokens();
      std::vector<float>& acc = accumulated_[index(l, g)];
      const bool accumulate = plan.ranker->accumulates_scores();
      if (accumulate && scores.wanted()) {
        acc.resize(static_cast<size_t>(n), 0.0f);  // new slots start at zero
        const float* s = scores.head(l, g);
        for (int32_t i = 0; i < n; ++i) acc[static_cast<size_t>(i)] += s[i];
      }
      const int32_t budget = shared_budget[index(l, g)] >= 0 ? shared_budget[index(l, g)] : budgets[static_cast<size_t>(g)];
      if (budget == kKeepAll) continue;
      const int32_t comp = plan.dropped == KvDropped::Compensated ? find_compensation(seq, l, g) : -1;
      if (n - (comp >= 0) <= budget) continue;
      if (step == Step::Decode && !plan.ranker->evicts_during_decode()) continue;

      const float* s = nullptr;
      bool layer_sum = false;
      std::vector<float> own;  // the ranker's own scores of the head's tokens
      if (plan.ranker->score_from_cache(seq, l, g, scores, own)) {
        if (static_cast<int32_t>(own.size()) != n)
          fail("internal: {} scored {} of {} slots", plan.ranker->describe(), own.size(), n);
        s = own.data();
      } else if (accumulate) {
        s = acc.data();
      } else if (scores.wanted() && plan.ranker->score_scope() == KvScoreScope::Layer) {
        for (const auto& [r, per_head] : shared)
          if (r == plan.ranker) s = per_head[static_cast<size_t>(g)].data();
        layer_sum = true;
      } else if (scores.wanted()) {
        s = scores.head(l, g);
      }
      if (s == nullptr && plan.ranker->prefill_score_from(n) != INT_MAX)
        fail("internal: {} needs attention scores that were not gathered", plan.ranker->describe());

      std::vector<int32_t> keep;
      if (comp < 0 && layer_sum && pick.ranker == plan.ranker && pick.budget == budget && pick.positions == h.positions) {
        keep = pick.keep;
      } else if (comp < 0) {
        keep = plan.ranker->select(h.positions, s, budget);
        if (layer_sum) pick = {plan.ranker, budget, h.positions, keep};
      } else {
        // The compensation token is not a token of the text: it is neither ranked nor counted in the budget.
        std::vector<int32_t> positions(h.positions);
        positions.erase(positions.begin() + comp);
        std::vector<float> real_scores;
        if (s != nullptr) {
          real_scores.assign(s, s + n);
          real_scores.erase(real_scores.begin() + comp);
        }
        keep = plan.ranker->select(positions, s != nullptr ? real_scores.data() : nullptr, budget);
        for (int32_t& k : keep)
          if (k >= comp) ++k;
        keep.insert(std::upper_bound(keep.begin(), keep.end(), comp), comp);
      }
      const std::vector<int32_t> drop = complement_slots(keep, n);
      if (drop.empty()) continue;
      if (plan.dropped == KvDropped::Compensated) {
        fold_into_compensation(seq, l, g, drop);
        std::vector<int32_t> gone(drop);
        if (comp >= 0) gone.insert(std::upper_bound(gone.begin(), gone.end(), comp), comp);
        seq.remove_slots(l, g, gone);
        if (accumulate) erase_slots(acc, gone);
        place_compensation(seq, l, g);
      } else {
        seq.remove_slots(l, g, drop);
        if (accumulate) erase_slots(acc, drop);
      }
    }
  }
}

int32_t ComposedPolicy::find_compensation(const KvSequence& seq, int32_t layer, int32_t kv_head) {
  Compensation& c = compensation_[index(layer, kv_head)];
  if (c.position < 0) return -1;
  const std::vector<int32_t>& pos = seq.head(layer, kv_head).positions;
  for (size_t i = pos.size(); i-- > 0;)  // it is placed last and stays near the end
    if (pos[i] == c.position) return static_cast<int32_t>(i);
  c = Compensation{};
  return -1;
}

void ComposedPolicy::fold_into_compensation(const KvSequence& seq, int32_t layer, int32_t kv_head,
                                            const std::vector<int32_t>& drop) {
  Compensation& c = compensation_[index(layer, kv_head)];
  const int32_t d = seq.geometry().head_dim;
  c.k_sum.resize(static_cast<size_t>(d), 0.0);
  c.v_sum.resize(static_cast<size_t>(d), 0.0);
  std::vector<float> k(static_cast<size_t>(d)), v(static_cast<size_t>(d));
  const std::vector<int32_t>& pos = seq.head(layer, kv_head).positions;
  for (int32_t slot : drop) {
    seq.read_keys(layer, kv_head, slot, 1, k.data());
    seq.read_values(layer, kv_head, slot, 1, v.data());
    for (int32_t i = 0; i < d; ++i) {
      c.k_sum[static_cast<size_t>(i)] += k[static_cast<size_t>(i)];
      c.v_sum[static_cast<size_t>(i)] += v[static_cast<size_t>(i)];
    }
    // The token stands where its newest constituent stood: a sliding window then expires it when it would
    // have expired that token, and no kept token of the head holds that position.
    c.position = std::max(c.position, pos[static_cast<size_t>(slot)]);
  }
  c.n_dropped += static_cast<int64_t>(drop.size());
}

void ComposedPolicy::place_compensation(KvSequence& seq, int32_t layer, int32_t kv_head) {
  const Compensation& c = compensation_[index(layer, kv_head)];
  const KvGeometry& geo = seq.geometry();
  const int32_t d = geo.head_dim;
  std::vector<float> k(static_cast<size_t>(d)), v(k.size());
  for (int32_t i = 0; i < d; ++i) {
    k[static_cast<size_t>(i)] = static_cast<float>(c.k_sum[static_cast<size_t>(i)] / c.n_dropped);
    v[static_cast<size_t>(i)] = static_cast<float>(c.v_sum[static_cast<size_t>(i)] / c.n_dropped);
  }
  seq.append_head(layer, kv_head, k.data(), v.data(), c.position);
}

void ComposedPolicy::after_prefill_chunk(KvSequence& seq, const KvScores& scores) {
  compress(seq, scores, Step::PrefillChunk);
}
void ComposedPolicy::after_prefill(KvSequence& seq, const KvScores& scores) {
  compress(seq, scores, Step::PrefillEnd);
  if (read_filter_) read_filter_->after_prefill(seq, scores);
}
void ComposedPolicy::after_decode_step(KvSequence& seq, const KvScores& scores) { compress(seq, scores, Step::Decode); }

void ComposedPolicy::on_slots_removed(int32_t layer, int32_t kv_head, int32_t n_before,
                                      const std::vector<int32_t>& slots) {
  std::vector<float>& acc = accumulated_[index(layer, kv_head)];
  if (acc.empty()) return;  // nothing accumulated for this head
  acc.resize(static_cast<size_t>(n_before), 0.0f);  // slots appended since the last scores start at zero
  erase_slots(acc, slots);
}

}  // namespace longctx::kv
