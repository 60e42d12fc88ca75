#include "token_logprobs.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace longctx::server {

StepLogprobs token_logprobs(const float* logits, int32_t n_vocab, int32_t id, int32_t k) {
  if (n_vocab <= 0 || id < 0 || id >= n_vocab || k < 0 || k > n_vocab)
    fail("token_logprobs: token {} or k {} outside a vocabulary of {}", id, k, n_vocab);
  const float mx = *std::max_element(logits, logits + n_vocab);
  double z = 0;
  for (int32_t i = 0; i < n_vocab; ++i) z += std::exp(static_cast<double>(logits[i]) - mx);
  const double log_z = mx + std::log(z);
  StepLogprobs out;
  out.logprob = static_cast<float>(logits[id] - log_z);
  if (k > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(n_vocab));
    for (int32_t i = 0; i < n_vocab; ++i) ids[static_cast<size_t>(i)] = i;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
    });
    for (int32_t j = 0; j < k; ++j)
      out.top.emplace_back(ids[static_cast<size_t>(j)], static_cast<float>(logits[ids[static_cast<size_t>(j)]] - log_z));
  }
  return out;
}

}  // namespace longctx::server
