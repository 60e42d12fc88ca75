// Token sampling from one row of logits: repetition penalty, then greedy (temperature 0) or top-k, temperature,
// softmax, top-p, min-p, renormalize and a seeded draw. The filters follow llama.cpp's samplers of the same names.
#pragma once
#include <cstdint>
#include <deque>
#include <random>
#include <utility>
#include <vector>

namespace longctx {

struct SamplerParams {
  float temperature = 0.8f;     // 0 = greedy (argmax, ties to the lowest id)
  int32_t top_k = 40;           // 0 = off; keeps the k largest logits (ties to the lowest ids)
  float top_p = 0.95f;          // 1 = off; keeps the smallest prefix, by probability, whose sum reaches top_p
  float min_p = 0.05f;          // 0 = off; keeps tokens with p >= min_p * p_max
  float repeat_penalty = 1.0f;  // 1 = off; CTRL style (Keskar et al. 2019, as in llama.cpp): a logit l of a
                                // token among the last repeat_last_n accepted becomes l > 0 ? l / pen : l * pen,
                                // once however often the token occurs
  int32_t repeat_last_n = 64;   // 0 = no penalty
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Throws Error on a parameter out of range (negative temperature, top_p outside (0, 1], ...).
  explicit Sampler(const SamplerParams& p);

  // Draws one token id from logits (n_vocab); the logits are not modified. Deterministic for a seed and the
  // sequence of calls. Throws Error on NaN or +inf logits, all logits -inf, or an accepted token >= n_vocab.
  int32_t sample(const float* logits, int32_t n_vocab);

  // Remembers a token (the prompt's and the generated ones) for the repetition penalty.
  void accept(int32_t token);

  // Forgets the accepted tokens and restarts the random sequence from the seed.
  void reset();

  // The distribution sample() draws from, for tests and for reporting: (token, probability) pairs after every
  // filter, renormalized to sum to 1, by descending probability (ties by ascending id). Tokens of probability 0
  // are left out. With temperature 0 it is the argmax alone. Draws nothing: the random state is unchanged.
  std::vector<std::pair<int32_t, float>> candidates(const float* logits, int32_t n_vocab);

  // The same distribution, dense: probs (n_vocab), zero for every filtered-out token, summing to 1 (the p and q of
  // speculative sampling). Draws nothing. Greedy gives a one-hot vector at the argmax.
  void probabilities(const float* logits, int32_t n_vocab, std::vector<float>& probs);

  // One uniform draw in [0, 1) from the sampler's random sequence (53 bits, the same on every standard library).
  double uniform();

  const SamplerParams& params() const { return params_; }

 private:
  struct Candidate {
    float logit;  // after the penalty and the temperature; then the probability
    int32_t id;
  };

  // Runs every filter over logits (n_vocab) into cand_; returns the sum of the kept probabilities (not yet
  // renormalized). cand_ is sorted by descending probability only where `sorted` is requested or top-p ran.
  double filter(const float* logits, int32_t n_vocab, bool sorted);

  SamplerParams params_;
  std::mt19937_64 rng_;
  std::deque<int32_t> recent_;     // (<= repeat_last_n) the last accepted tokens, oldest first
  std::vector<Candidate> cand_;    // (n_vocab) scratch, reused between calls
  std::vector<int32_t> penalized_;  // scratch: the distinct tokens of recent_
};

// Inverse CDF: the first token whose cumulative probability exceeds u * sum(probs). probs (n) >= 0, not all zero;
// u in [0, 1). Used on distributions that are not renormalized (speculative sampling's residual).
int32_t sample_from(const float* probs, int32_t n, double u);

}  // namespace longctx
