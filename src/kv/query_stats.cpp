// KvQueryStats (policy.h): the running sums of the queries a forward pass saw, for policies that model the
// queries still to come from them (Expected Attention).
#include <algorithm>

#include "core/error.h"
#include "kv/policy.h"

namespace longctx::kv {

void KvQueryStats::reset(int32_t n_layer, int32_t n_heads, int32_t dim) {
  n_head = n_heads;
  head_dim = dim;
  layers.resize(static_cast<size_t>(n_layer));
  for (Layer& l : layers) {
    l.count = 0;
    l.sum.assign(static_cast<size_t>(n_heads) * dim, 0.0);
    l.outer.assign(static_cast<size_t>(n_heads) * dim * dim, 0.0);
  }
}

void KvQueryStats::add(ThreadPool& pool, int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok) {
  if (layer < 0 || layer >= static_cast<int32_t>(layers.size()))
    fail("internal: query statistics for layer {} of {}", layer, layers.size());
  Layer& l = layers[static_cast<size_t>(layer)];
  int32_t first_row = 0;
  while (first_row < n_tok && q_pos[first_row] < first_pos) ++first_row;
  if (first_row >= n_tok) return;
  const int32_t D = head_dim;
  // The chunk's outer products in f32 (a few hundred rows: a vectorised inner loop, error ~1e-7 of the sum), each
  // head in its own thread, then added into the double totals.
  pool.run(n_head, [&](int64_t h) {
    std::vector<float> outer(static_cast<size_t>(D) * D, 0.0f);
    double* sum = l.sum.data() + static_cast<size_t>(h) * D;
    for (int32_t t = first_row; t < n_tok; ++t) {
      const float* x = q + (static_cast<size_t>(t) * n_head + static_cast<size_t>(h)) * D;
      for (int32_t i = 0; i < D; ++i) {
        sum[i] += x[i];
        float* row = outer.data() + static_cast<size_t>(i) * D;
        const float xi = x[i];
        for (int32_t j = 0; j < D; ++j) row[j] += xi * x[j];
      }
    }
    double* dst = l.outer.data() + static_cast<size_t>(h) * D * D;
    for (size_t i = 0; i < outer.size(); ++i) dst[i] += outer[i];
  });
  l.count += n_tok - first_row;
}

}  // namespace longctx::kv
