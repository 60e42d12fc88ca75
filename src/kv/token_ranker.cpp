#include "kv/token_ranker.h"

#include <algorithm>
#include <numeric>

namespace longctx::kv {
namespace {

// Up to this many dropped candidates, top_slots finds the dropped ones in one pass instead of partitioning.
constexpr size_t kFewDrops = 8;

}  // namespace

std::vector<int32_t> slots_by_position(const std::vector<int32_t>& positions) {
  std::vector<int32_t> slots(positions.size());
  std::iota(slots.begin(), slots.end(), 0);
  // A head's slots are usually in position order already (appends go last; removals keep the order).
  if (!std::is_sorted(positions.begin(), positions.end()))
    std::sort(slots.begin(), slots.end(), [&](int32_t a, int32_t b) { return positions[a] < positions[b]; });
  return slots;
}

std::vector<float> pool_along_positions(const std::vector<int32_t>& order, int32_t n_rest, const float* scores,
                                        int32_t kernel, KvPooling pooling) {
  std::vector<float> pooled(order.size(), 0.0f);
  const int32_t half = kernel / 2;
  for (int32_t i = 0; i < n_rest; ++i) {
    float acc = pooling == KvPooling::Max ? scores[order[i]] : 0.0f;
    int32_t count = 0;
    for (int32_t j = std::max(0, i - half); j <= std::min(n_rest - 1, i + half); ++j) {
      acc = pooling == KvPooling::Max ? std::max(acc, scores[order[j]]) : acc + scores[order[j]];
      ++count;
    }
    pooled[static_cast<size_t>(order[i])] = pooling == KvPooling::Max ? acc : acc / count;
  }
  return pooled;
}

std::vector<int32_t> top_slots(const std::vector<int32_t>& candidates, const std::vector<float>& score, int32_t count,
                               const std::vector<int32_t>& positions) {
  count = std::min<int32_t>(count, static_cast<int32_t>(candidates.size()));
  if (count <= 0) return {};
  auto better = [&](int32_t a, int32_t b) {
    return score[a] != score[b] ? score[a] > score[b] : positions[a] < positions[b];
  };
  // `better` is a strict total order (a head's positions are unique), so the kept set is the same either way.
  const size_t n_drop = candidates.size() - static_cast<size_t>(count);
  if (n_drop > kFewDrops) {
    std::vector<int32_t> c(candidates);
    std::nth_element(c.begin(), c.begin() + (count - 1), c.end(), better);
    c.resize(static_cast<size_t>(count));
    std::sort(c.begin(), c.end());
    return c;
  }
  // A decode step's eviction drops one or two of a thousand: one pass keeps the worst few seen (insertion-sorted,
  // worst last), and the rest are the candidates in their order, with no partition and no sort of the kept.
  std::vector<int32_t> worst;
  worst.reserve(n_drop + 1);
  for (int32_t c : candidates) {
    if (worst.size() == n_drop && (n_drop == 0 || !better(worst.front(), c))) continue;
    auto at = std::upper_bound(worst.begin(), worst.end(), c, better);
    worst.insert(at, c);
    if (worst.size() > n_drop) worst.erase(worst.begin());
  }
  std::sort(worst.begin(), worst.end());
  std::vector<int32_t> kept;
  kept.reserve(static_cast<size_t>(count));
  for (int32_t c : candidates)
    if (!std::binary_search(worst.begin(), worst.end(), c)) kept.push_back(c);
  if (!std::is_sorted(kept.begin(), kept.end())) std::sort(kept.begin(), kept.end());
  return kept;
}

std::vector<int32_t> sinks_and_top_slots(const std::vector<int32_t>& positions, const float* scores, int32_t budget,
                                         int32_t n_sink) {
  const std::vector<int32_t> order = slots_by_position(positions);
  const int32_t n = static_cast<int32_t>(order.size());
  const int32_t n_kept_sinks = std::min({n_sink, n, budget});
  std::vector<int32_t> keep(order.begin(), order.begin() + n_kept_sinks);
  const std::vector<int32_t> rest(order.begin() + n_kept_sinks, order.end());
  const std::vector<float> score(scores, scores + n);
  const auto top = top_slots(rest, score, budget - n_kept_sinks, positions);
  keep.insert(keep.end(), top.begin(), top.end());
  std::sort(keep.begin(), keep.end());
  return keep;
}

}  // namespace longctx::kv
