// Prefix reuse in the scheduler (engine/scheduler.h) on SmolLM2: a request whose prompt shares a prefix with a
// cached one (a finished request's sequence, or a prompt's prefix kept as its prefill passed it) runs only the tokens
// past it, under any policy up to where that policy acts, and its logits are a fresh generator's (what `run` does)
// within the rounding of K/V written by another path (the decode step's, or an earlier chunk split); with reuse off,
// nothing is reused. LONGCTX_TEST_DEVICE=cuda runs it all on the GPU (scripts/cuda_device_real.sh PREFIX=1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/generator.h"
#include "engine/scheduler.h"
#include "engine/session.h"
#include "kv/policy.h"
#include "model/model.h"
#include "smollm2_suite.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

// Logits of the reused run against a fresh run: the same tokens in the cache, written by other matmul shapes
// (prefill chunks of another split, single-token decode steps), so f16 K/V may round apart by one unit. Measured on
// the CPU: at most 0.018 over these cases (SmolLM2's logits span tens of units); on the GPU (H100), whose tensor-core
// prefill and GEMV decode round activations differently (cuda_forward_test: ~0.01 of the logit spread against the
// CPU), at most 0.49 (kivi:bits=4 over a shared prefix; 0.39 with the full cache). A changed token moves them by
// whole units.
float logit_tol(Device d) { return d == Device::Cpu ? 0.05f : 0.6f; }

struct GenRun {
  RequestOutcome stats;
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // per generated token, the logits it was drawn from
};

class PrefixReuse : public test::SmolLM2Suite {
 protected:
  static GenerateParams params() {
    GenerateParams gp;
    gp.n_ctx = 1024;
    gp.n_batch = 64;
    gp.n_predict = 6;
    gp.ignore_eog = true;
    gp.sampling.temperature = 0;
    return gp;
  }

  static std::unique_ptr<Scheduler> scheduler(bool reuse) {
    SchedulerOptions so;
    so.session.n_ctx = params().n_ctx;
    so.session.n_batch = params().n_batch;
    so.session.n_seq_max = 2;
    so.session.device = device();
    so.prefix_reuse = reuse;
    return std::make_unique<Scheduler>(*model_, *tok_, *pool_, so);
  }

  // A request under the sampling of params() whose tokens, logits and outcome go to out.
  static ScheduledRequest request(const std::vector<int32_t>& prompt, const std::string& spec, GenRun& out) {
    const int64_t n_vocab = model_->config().n_vocab;
    ScheduledRequest q;
    q.prompt = prompt;
    q.kv = spec;
    q.n_predict = params().n_predict;
    q.ignore_eog = true;
    q.sampling = params().sampling;
    q.on_token = [&out, n_vocab](int32_t id, const float* logits) {
      out.tokens.push_back(id);
      out.logits.emplace_back(logits, logits + n_vocab);
      return true;
    };
    q.on_done = [&out](const RequestOutcome& o) { out.stats = o; };
    return q;
  }

  // One request alone through the scheduler.
  static GenRun generate(Scheduler& s, const std::vector<int32_t>& prompt, const std::string& spec = "full") {
    GenRun r;
    s.add(request(prompt, spec, r));
    while (s.step()) {
    }
    EXPECT_EQ(r.stats.error, "");
    return r;
  }

  // What a generator that never saw another prompt gives.
  static GenRun fresh(const std::vector<int32_t>& prompt, const std::string& spec = "full") {
    GenRun r;
    const int64_t n_vocab = model_->config().n_vocab;
    auto policy = kv::make_kv_policy(spec, model_->config().n_layer, model_->config().n_head_kv);
    GenerateParams gp = params();
    gp.device = device();
    gp.on_token = [&](int32_t id, const float* logits) {
      r.tokens.push_back(id);
      r.logits.emplace_back(logits, logits + n_vocab);
      return true;
    };
    Generator gen(*model_, *tok_, *pool_, *policy, gp);
    gen.generate(prompt, [](std::string_view) { return true; }, nullptr);
    return r;
  }

  // The reused run's tokens are the fresh run's and so are its logits within logit_tol, up to the first token whose
  // top two logits of the fresh run are closer than twice the tolerance (a near-tie may go either way).
  static void expect_same(const GenRun& reused, const GenRun& want) {
    ASSERT_EQ(reused.tokens.size(), want.tokens.size());
    const float tol = logit_tol(device());
    for (size_t t = 0; t < want.tokens.size(); ++t) {
      float max_diff = 0;
      for (size_t v = 0; v < want.logits[t].size(); ++v)
        max_diff = std::max(max_diff, std::fabs(reused.logits[t][v] - want.logits[t][v]));
      EXPECT_LE(max_diff, tol) << "token " << t;
      std::vector<float> top = want.logits[t];
      std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
      if (top[0] - top[1] < 2 * tol) return;
      ASSERT_EQ(reused.tokens[t], want.tokens[t]) << "token " << t;
    }
  }

  static std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

};

// A second question over the same document: the document's 300 tokens are reused (the first prompt went on past
// them), the question's 40 run; the answer is a fresh run's.
TEST_F(PrefixReuse, SecondQuestionOverADocument) {
  const std::vector<int32_t> doc = kjv(0, 300);
  const std::vector<int32_t> a = concat(doc, kjv(1000, 50)), b = concat(doc, kjv(2000, 40));
  ASSERT_NE(a[300], b[300]);
  auto s = scheduler(true);
  const GenRun first = generate(*s, a);
  EXPECT_EQ(first.stats.n_reused, 0);
  expect_same(first, fresh(a));
  const GenRun second = generate(*s, b);
  EXPECT_EQ(second.stats.n_reused, 300);
  EXPECT_EQ(second.stats.n_prompt, 340);
  expect_same(second, fresh(b));
  // The cache holds the second prompt and its answer now: the same prompt again reuses all but its last token.
  const GenRun again = generate(*s, b);
  EXPECT_EQ(again.stats.n_reused, 339);
  expect_same(again, fresh(b));
  EXPECT_GT(s->kv_pages().cached, 0);
  EXPECT_EQ(s->kv_pages().in_use, 0);
}

// A chat's next turn re-sends the conversation: the previous prompt and the answer tokens that ran through the
// model are reused (the K/V of the answer written by the decode step), only the new turn runs.
TEST_F(PrefixReuse, NextTurnReusesTheAnswer) {
  const std::vector<int32_t> a = kjv(0, 200);
  auto s = scheduler(true);
  const GenRun first = generate(*s, a);
  const std::vector<int32_t> b = concat(concat(a, first.tokens), kjv(500, 30));
  const GenRun second = generate(*s, b);
  // Every answer token but the last was run by a decode step; the last was only sampled.
  EXPECT_EQ(second.stats.n_reused, 200 + static_cast<int32_t>(first.tokens.size()) - 1);
  expect_same(second, fresh(b));
}

// Two documents in turn: each request finds its own document's cache (the scheduler keeps as many as may run).
TEST_F(PrefixReuse, AlternatingDocumentsEachFindTheirCache) {
  const std::vector<int32_t> d1 = kjv(0, 250), d2 = kjv(3000, 250);
  auto s = scheduler(true);
  generate(*s, concat(d1, kjv(1000, 20)));
  generate(*s, concat(d2, kjv(1000, 20)));
  const GenRun again1 = generate(*s, concat(d1, kjv(2000, 20)));
  const GenRun again2 = generate(*s, concat(d2, kjv(2000, 20)));
  EXPECT_EQ(again1.stats.n_reused, 250);
  EXPECT_EQ(again2.stats.n_reused, 250);
  expect_same(again2, fresh(concat(d2, kjv(2000, 20))));
}

// Reuse together with compression: a request under a compressing policy takes the document from the cache up to
// where its policy starts to act (SnapKV's observation window; KIVI and StreamingLLM act only at the prompt's end),
// compresses the whole prompt as a fresh run does, and leaves the shared prefix full for the next request. H2O
// scores every prompt query, so nothing of its prompt can come from a cache.
TEST_F(PrefixReuse, CompressingPoliciesShareTheDocumentAndCompressTheirOwnCopy) {
  const std::vector<int32_t> doc = kjv(0, 300);
  const std::vector<int32_t> a = concat(doc, kjv(1000, 50)), b = concat(doc, kjv(2000, 40));
  struct Case {
    const char* spec;
    int32_t cached_by_a;  // the prefix of a kept as its prefill passed it: whole chunks of 64 before the policy acts
    int32_t reused_by_b;
  };
  for (const Case& c : {Case{"snapkv:budget=128,window=32", 256, 256}, Case{"kivi:bits=4", 320, 300},
                        Case{"streaming:budget=128", 320, 300}, Case{"h2o:budget=128", 0, 0}}) {
    SCOPED_TRACE(c.spec);
    try {
      check_policy_runs_on(device(), *kv::make_kv_policy(c.spec, model_->config().n_layer, model_->config().n_head_kv));
    } catch (const Error&) {
      continue;  // StreamingLLM's in-cache positions on the GPU (the server refuses it there)
    }
    auto s = scheduler(true);
    const GenRun first = generate(*s, a, c.spec);
    EXPECT_EQ(first.stats.n_reused, 0);
    EXPECT_EQ(s->kv_pages().in_use, 0);
    // The cached prefix holds every token of it in full-format pages: 5 per (layer, kv-head) for 320 tokens.
    const int32_t heads = model_->config().n_layer * model_->config().n_head_kv;
    EXPECT_EQ(s->kv_pages().cached, int64_t{(c.cached_by_a + 63) / 64} * heads);
    const GenRun second = generate(*s, b, c.spec);
    EXPECT_EQ(second.stats.n_reused, c.reused_by_b);
    expect_same(second, fresh(b, c.spec));
    // The second request compressed its own copy: the cache still holds the prefix in full.
    EXPECT_GE(s->kv_pages().cached, int64_t{(c.cached_by_a + 63) / 64} * heads);
    EXPECT_EQ(s->kv_pages().in_use, 0);
  }
  auto off = scheduler(false);
  generate(*off, a);
  EXPECT_EQ(generate(*off, a).stats.n_reused, 0);
  EXPECT_EQ(off->kv_pages().cached, 0);
}

// Two requests over one document at once: the second shares the first's prefix while the first still runs, the
// pool counts the shared pages once, and both answers are their fresh runs'.
TEST_F(PrefixReuse, ConcurrentRequestsShareTheDocumentsPages) {
  const std::vector<int32_t> doc = kjv(0, 300);
  const std::vector<int32_t> a = concat(doc, kjv(1000, 50)), b = concat(doc, kjv(2000, 40));
  auto s = scheduler(true);
  GenRun ra, rb;
  int64_t in_use = 0, cached = 0, pool_pages = 0;
  s->add(request(a, "full", ra));
  s->add(request(b, "snapkv:budget=128,window=32", rb));
  while (s->step()) {
    if (s->n_running() == 2 && pool_pages == 0) {
      in_use = s->kv_pages().in_use;
      cached = s->kv_pages().cached;
      pool_pages = static_cast<int64_t>(s->session().pages().n_pages_in_use());
    }
  }
  EXPECT_EQ(ra.stats.error, "");
  EXPECT_EQ(rb.stats.error, "");
  EXPECT_EQ(ra.stats.n_reused, 0);
  EXPECT_EQ(rb.stats.n_reused, 300);
  // Both running: a's 350 tokens (6 pages a head, 5 of them the cache's first 320 tokens too) and b's compressed
  // copy (128 tokens and its answer: at most 3 pages a head). Apart, a and the cache alone would take 11.
  const int64_t heads = model_->config().n_layer * model_->config().n_head_kv;
  EXPECT_EQ(in_use + cached, pool_pages);
  EXPECT_EQ(cached, 0) << "every page the cache holds, a holds too";
  EXPECT_LE(pool_pages, 9 * heads);
  expect_same(ra, fresh(a));
  expect_same(rb, fresh(b, "snapkv:budget=128,window=32"));
  EXPECT_EQ(s->kv_pages().in_use, 0);
}

}  // namespace
}  // namespace longctx
