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

}  // namespace longctx::kv
