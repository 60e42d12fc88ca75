#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace longctx {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The order of candidates: larger value first, ties to the lower id (argmax's order and llama.cpp's sort).
constexpr auto kBefore = [](const auto& a, const auto& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
};

// A double in [0, 1) from the top 53 bits: the same sequence on every standard library, unlike
// std::uniform_real_distribution.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

Sampler::Sampler(const SamplerParams& p) : params_(p), rng_(p.seed) {
  if (!(std::isfinite(p.temperature) && p.temperature >= 0.0f))
    fail("sampler: temperature {} must be a finite number >= 0 (0 = greedy)", p.temperature);
  if (p.top_k < 0) fail("sampler: top_k {} must be >= 0 (0 = off)", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("sampler: top_p {} must be in (0, 1] (1 = off)", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail("sampler: min_p {} must be in [0, 1] (0 = off)", p.min_p);
  if (!(std::isfinite(p.repeat_penalty) && p.repeat_penalty > 0.0f))
    fail("sampler: repeat_penalty {} must be a finite number > 0 (1 = off)", p.repeat_penalty);
  if (p.repeat_last_n < 0) fail("sampler: repeat_last_n {} must be >= 0 (0 = off)", p.repeat_last_n);
}

void Sampler::accept(int32_t token) {
  if (token < 0) fail("sampler: accepted token id {} is negative", token);
  if (params_.repeat_last_n == 0) return;
  recent_.push_back(token);
  if (recent_.size() > static_cast<size_t>(params_.repeat_last_n)) recent_.pop_front();
}

void Sampler::reset() {
  recent_.clear();
  rng_.seed(params_.seed);
}

double Sampler::filter(const float* logits, int32_t n_vocab, bool sorted) {
  if (logits == nullptr || n_vocab <= 0) fail("sampler: no logits to sample from (n_vocab {})", n_vocab);
  const size_t n = static_cast<size_t>(n_vocab);

  // The distinct recent tokens, sorted: each is penalized once however often it occurs.
  penalized_.clear();
  if (params_.repeat_penalty != 1.0f) {
    penalized_.assign(recent_.begin(), recent_.end());
    std::sort(penalized_.begin(), penalized_.end());
    penalized_.erase(std::unique(penalized_.begin(), penalized_.end()), penalized_.end());
    if (!penalized_.empty() && penalized_.back() >= n_vocab)
      fail("sampler: accepted token {} is outside the vocabulary of {} tokens", penalized_.back(), n_vocab);
  }
  auto penalize = [&](Candidate& c) {
    if (std::binary_search(penalized_.begin(), penalized_.end(), c.id))
      c.logit = c.logit > 0.0f ? c.logit / params_.repeat_penalty : c.logit * params_.repeat_penalty;
  };

  // Greedy is top-k with k = 1.
  const bool greedy = params_.temperature == 0.0f;
  const size_t k = greedy ? 1 : params_.top_k > 0 ? std::min(n, static_cast<size_t>(params_.top_k)) : n;
  const size_t n_pen = penalized_.size();
  bool bad = false;  // a NaN or +inf logit; tested once after the scan, which stays a straight loop
  if (k + n_pen <= n / 8) {
    // A small k: one pass over the logits with a heap of the k + n_pen largest raw values (the worst on top;
    // every id in it is lower than the scanned one, so a tie never displaces it). The true top k under the
    // penalty are among these and the penalized tokens: at most n_pen of the raw leaders can lose their place.
    const size_t h = k + n_pen;
    cand_.resize(h);
    for (size_t i = 0; i < h; ++i) {
      bad |= !(logits[i] < kInf);
      cand_[i] = {logits[i], static_cast<int32_t>(i)};
    }
    std::make_heap(cand_.begin(), cand_.end(), kBefore);
    float worst = cand_.front().logit;
    for (size_t i = h; i < n; ++i) {
      const float x = logits[i];
      bad |= !(x < kInf);
      if (x > worst) {
        std::pop_heap(cand_.begin(), cand_.end(), kBefore);
        cand_.back() = {x, static_cast<int32_t>(i)};
        std::push_heap(cand_.begin(), cand_.end(), kBefore);
        worst = cand_.front().logit;
      }
    }
    if (!bad) {
      for (auto& c : cand_) penalize(c);
      for (const int32_t t : penalized_) {
        const bool in = std::any_of(cand_.begin(), cand_.begin() + static_cast<ptrdiff_t>(h),
                                    [t](const Candidate& c) { return c.id == t; });
        if (!in) {
          cand_.push_back({logits[t], t});
          penalize(cand_.back());
        }
      }
    }
  } else {
    cand_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const float x = logits[i];
      bad |= !(x < kInf);
      cand_[i] = {x, static_cast<int32_t>(i)};
    }
    for (const int32_t t : penalized_) penalize(cand_[static_cast<size_t>(t)]);  // cand_[t] is token t
  }
  if (bad) {
    const auto it = std::find_if(logits, logits + n, [](float x) { return !(x < kInf); });
    fail("sampler: logit {} of token {} is not a number or +inf", *it, it - logits);
  }

  // Top-k (and greedy's argmax, ties to the lowest id): a selection, not a sort.
  if (cand_.size() > k) {
    std::nth_element(cand_.begin(), cand_.begin() + static_cast<ptrdiff_t>(k), cand_.end(), kBefore);
    cand_.resize(k);
  }
  if (greedy) {
    if (cand_[0].logit == -kInf) fail("sampler: every logit is -inf");
    cand_[0].logit = 1.0f;
    return 1.0;
  }

  // Temperature and softmax; from here on `logit` holds the probability.
  float max_l = -kInf;
  for (auto& c : cand_) {
    c.logit /= params_.temperature;
    max_l = std::max(max_l, c.logit);
  }
  if (max_l == -kInf) fail("sampler: every logit is -inf");
  double sum = 0.0;
  for (auto& c : cand_) {
    c.logit = std::exp(c.logit - max_l);
    sum += c.logit;
  }
  const double inv_sum = 1.0 / sum;
  for (auto& c : cand_) c.logit = static_cast<float>(c.logit * inv_sum);

  // Min-p before top-p: both keep a prefix of the sorted order and min-p's threshold is relative to p_max, which
  // top-p always keeps, so their intersection is the same either way; min-p first is one pass over an unsorted
  // array and usually leaves top-p little to sort. Tokens of probability 0 (logit -inf, or underflow) go too.
  const float p_max = static_cast<float>(inv_sum);  // the largest token has exp(0) = 1
  const float threshold = params_.min_p * p_max;
  auto end = std::remove_if(cand_.begin(), cand_.end(),
                            [&](const Candidate& c) { return c.logit <= 0.0f || c.logit < threshold; });
  cand_.erase(end, cand_.end());
  size_t m = cand_.size();

  // Top-p: sort only as much of the front as the cut needs, in chunks growing 4x; each chunk extends the sorted
  // prefix, by a heap select while it is small against the rest, else by nth_element and a sort of the chunk.
  bool is_sorted = false;
  if (params_.top_p < 1.0f) {
    const auto first = cand_.begin();
    size_t done = 0, chunk = 64;
    double cum = 0.0;
    while (done < m) {
      const size_t stop = std::min(m, done + chunk);
      if ((m - done) / 16 >= stop - done) {
        // A chunk much smaller than the rest: a heap select, one comparison for most elements.
        std::partial_sort(first + done, first + stop, first + m, kBefore);
      } else {
        if (stop < m) std::nth_element(first + done, first + stop, first + m, kBefore);
        std::sort(first + done, first + stop, kBefore);
      }
      for (size_t i = done; i < stop; ++i) {
        cum += cand_[i].logit;
        if (cum >= params_.top_p) {
          m = i + 1;
          break;
        }
      }
      done = stop;
      chunk *= 4;
    }
    cand_.resize(m);
    is_sorted = true;
  }
  if (sorted && !is_sorted) std::sort(cand_.begin(), cand_.end(), kBefore);

  double kept = 0.0;
  for (const auto& c : cand_) kept += c.logit;
  return kept;
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab) {
  const double total = filter(logits, n_vocab, false);
  if (params_.temperature == 0.0f) return cand_[0].id;
  // Inverse CDF over the kept candidates, without renormalizing them: u is scaled to their sum instead.
  const double u = uniform01(rng_) * total;
  double cum = 0.0;
  for (const auto& c : cand_) {
    cum += c.logit;
    if (u < cum) return c.id;
  }
  return cand_.back().id;  // u within rounding of the total
}

void Sampler::probabilities(const float* logits, int32_t n_vocab, std::vector<float>& probs) {
  const double total = filter(logits, n_vocab, false);
  probs.assign(static_cast<size_t>(n_vocab), 0.0f);
  for (const auto& c : cand_) probs[static_cast<size_t>(c.id)] = static_cast<float>(c.logit / total);
}

double Sampler::uniform() { return uniform01(rng_); }

int32_t sample_from(const float* probs, int32_t n, double u) {
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) total += probs[i];
  if (!(total > 0.0)) fail("internal: sampling from a distribution with no mass (n {})", n);
  const double target = u * total;
  double cum = 0.0;
  int32_t last = -1;
  for (int32_t i = 0; i < n; ++i) {
    if (probs[i] <= 0.0f) continue;
    cum += probs[i];
    last = i;
    if (target < cum) return i;
  }
  return last;  // u within rounding of the total
}

std::vector<std::pair<int32_t, float>> Sampler::candidates(const float* logits, int32_t n_vocab) {
  const double total = filter(logits, n_vocab, true);
  std::vector<std::pair<int32_t, float>> out;
  out.reserve(cand_.size());
  for (const auto& c : cand_) out.emplace_back(c.id, static_cast<float>(c.logit / total));
  return out;
}

}  // namespace longctx
