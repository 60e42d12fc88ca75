// Log-probabilities of a generated token and of the most likely alternatives at its step, as OpenAI's logprobs
// report them: log-softmax of the model's raw logits (before temperature and the sampling filters, so the figures
// describe the model, not the sampler's draw).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

namespace longctx::server {

struct StepLogprobs {
  float logprob = 0;                            // of the chosen token
  std::vector<std::pair<int32_t, float>> top;   // (k) (token, logprob) by descending logprob, ties by ascending id
};

// logits (n_vocab), finite; id in [0, n_vocab); k in [0, n_vocab]. The sum is taken in double.
StepLogprobs token_logprobs(const float* logits, int32_t n_vocab, int32_t id, int32_t k);

}  // namespace longctx::server
