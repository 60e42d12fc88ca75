#include "kv/token_ranker.h"

#include <algorithm>
#include <numeric>

namespace longctx::kv {

std::vector<int32_t> slots_by_position(const std::vector<int32_t>& positions) {
  std::vector<int32_t> slots(positions.size());
  std::iota(slots.begin(), slots.end(), 0);
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
  std::vector<int32_t> c(candidates);
  count = std::min<int32_t>(count, static_cast<int32_t>(c.size()));
  if (count <= 0) return {};
  auto better = [&](int32_t a, int32_t b) {
    return score[a] != score[b] ? score[a] > score[b] : positions[a] < positions[b];
  };
  std::nth_element(c.begin(), c.begin() + (count - 1), c.end(), better);
  c.resize(static_cast<size_t>(count));
  std::sort(c.begin(), c.end());
  return c;
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
