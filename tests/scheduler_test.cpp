// The continuous-batching scheduler (engine/scheduler.h) on SmolLM2:
//   - requests under different policies and sampling, more than may run at once, arriving together: each one's
//     tokens are exactly what `run` (Generator, alone in its own session) gives it, and decode steps did stack
//     several sequences;
//   - a long prompt's prefill lets the running requests step between its chunks;
//   - a pool too small for every running sequence: the newest is preempted and recomputed, every request finishes
//     with its own answer, and the pages go back to zero;
//   - cancellation, waiting and running, and a bad spec end the request alone.
// Tolerance: none; tokens compare exactly (batch-invariant steps; a recomputed full cache, written by prefill rather
// than decode steps, is compared on this greedy prompt, where the top two logits stay whole units apart).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "engine/generator.h"
#include "engine/scheduler.h"
#include "kv/policy.h"
#include "model/model.h"
#include "smollm2_suite.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

class SchedulerTest : public test::SmolLM2Suite {
 protected:
  static constexpr int32_t kCtx = 1024, kBatch = 64;

  struct Job {
    std::string kv;
    std::vector<int32_t> prompt;
    int32_t n_predict = 24;
    float temperature = 0;
    uint64_t seed = 0;
    bool prefill_compress = false;
  };

  // What `run` gives: the Generator in a session of its own.
  static std::vector<int32_t> alone(const Job& j) {
    auto policy = kv::make_kv_policy(j.kv, model_->config().n_layer, model_->config().n_head_kv);
    GenerateParams gp;
    gp.n_ctx = kCtx;
    gp.n_batch = kBatch;
    gp.n_predict = j.n_predict;
    gp.sampling.temperature = j.temperature;
    gp.sampling.seed = j.seed;
    gp.prefill_compress = j.prefill_compress;
    Generator gen(*model_, *tok_, *pool_, *policy, gp);
    return gen.generate(j.prompt, [](std::string_view) { return true; }, nullptr).tokens;
  }

  struct Result {
    RequestOutcome out;
    std::string text;
    int32_t n_done = 0;  // on_done calls
  };

  static ScheduledRequest request(const Job& j, Result& r) {
    ScheduledRequest q;
    q.prompt = j.prompt;
    q.kv = j.kv;
    q.n_predict = j.n_predict;
    q.sampling.temperature = j.temperature;
    q.sampling.seed = j.seed;
    q.prefill_compress = j.prefill_compress;
    q.on_text = [&r](std::string_view s) {
      r.text += s;
      return true;
    };
    q.on_done = [&r](const RequestOutcome& o) {
      r.out = o;
      ++r.n_done;
    };
    return q;
  }

  static SchedulerOptions options(int32_t n_seq_max) {
    SchedulerOptions so;
    so.session.n_ctx = kCtx;
    so.session.n_batch = kBatch;
    so.session.n_seq_max = n_seq_max;
    so.prefix_reuse = false;
    return so;
  }

};

TEST_F(SchedulerTest, ConcurrentRequestsGiveWhatEachGivesAlone) {
  const std::vector<Job> jobs = {
      {"full", kjv(0, 150)},
      {"snapkv:budget=64+kivi:bits=4", kjv(400, 220)},
      {"h2o:budget=96", kjv(900, 120)},
      {"streaming:budget=64,sink=4", kjv(1300, 180)},
      {"quest:budget=64,dense_layers=2", kjv(1700, 160)},
      {"full", kjv(2100, 90), 24, 0.8f, 7},  // sampled: its seeded draws are its own
  };
  Scheduler s(*model_, *tok_, *pool_, options(4));
  std::vector<Result> got(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) s.add(request(jobs[i], got[i]));
  int32_t widest = 0;
  while (s.step()) {
    for (int32_t n : s.decode_batch_sizes()) widest = std::max(widest, n);
    s.decode_batch_sizes().clear();
    EXPECT_LE(s.n_running(), 4);
  }
  EXPECT_EQ(widest, 4);  // four ran together; the other two waited for a place
  for (size_t i = 0; i < jobs.size(); ++i) {
    SCOPED_TRACE(jobs[i].kv);
    EXPECT_EQ(got[i].n_done, 1);
    EXPECT_EQ(got[i].out.error, "");
    EXPECT_EQ(got[i].out.tokens, alone(jobs[i]));
    EXPECT_FALSE(got[i].text.empty());
  }
  EXPECT_LT(got[1].out.kv_bytes.total(), got[1].out.kv_full_f16_bytes);  // the policies acted
  EXPECT_EQ(s.kv_pages().in_use, 0);
  EXPECT_EQ(s.session().pages().n_pages_in_use(), 0u);
}

// Sarathi-Serve's point: a long prompt arriving while another request decodes does not stall it for its whole
// prefill; the running request steps between the prompt's chunks.
TEST_F(SchedulerTest, RunningRequestsStepBetweenALongPromptsChunks) {
  Scheduler s(*model_, *tok_, *pool_, options(2));
  Result a, b;
  const Job ja{"full", kjv(0, 40), 40}, jb{"full", kjv(600, 6 * kBatch + 10), 4};  // b: 7 chunks
  s.add(request(ja, a));
  s.step();  // a is prefilled and steps once
  s.add(request(jb, b));
  s.decode_batch_sizes().clear();
  const size_t a_text_before = a.text.size();
  s.step();  // b's whole prefill
  // a stepped alone after each of b's first 6 chunks, then both stepped together.
  EXPECT_EQ(s.decode_batch_sizes(), (std::vector<int32_t>{1, 1, 1, 1, 1, 1, 2}));
  EXPECT_GT(a.text.size(), a_text_before);
  while (s.step()) {
  }
  EXPECT_EQ(a.out.tokens, alone(ja));
  EXPECT_EQ(b.out.tokens, alone(jb));
}

// A pool that holds fewer sequences than may run: admission waits for pages, and when the running sequences outgrow
// the pool the newest is preempted and recomputed. Every request ends with its own answer; nothing is aborted.
TEST_F(SchedulerTest, PreemptionRecomputesAndEveryRequestFinishes) {
  SchedulerOptions so = options(4);
  // Prompts of 20-35 tokens are admitted at 2 pages of 16 KiB per (layer, kv-head) (90 of them: 2.8 MiB) beside a
  // page of growth for each running one; three fit 10 MiB at admission and the fourth waits, but 200 answer tokens
  // take each to 4 pages: together they outgrow the pool, and the newest must give its pages back.
  so.session.kv_max_bytes = 10u << 20;
  Scheduler s(*model_, *tok_, *pool_, so);
  std::vector<Job> jobs;
  for (int32_t i = 0; i < 4; ++i) jobs.push_back({"full", kjv(300 * i, 20 + 5 * i), 200});
  std::vector<Result> got(jobs.size());
  for (size_t i = 0; i < jobs.size(); ++i) s.add(request(jobs[i], got[i]));
  while (s.step()) {
    s.decode_batch_sizes().clear();
  }
  int32_t preempted = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].n_done, 1);
    EXPECT_EQ(got[i].out.error, "");
    EXPECT_EQ(got[i].out.tokens, alone(jobs[i]));
    preempted += got[i].out.n_preempted;
  }
  EXPECT_GT(preempted, 0);
  EXPECT_EQ(s.session().pages().n_pages_in_use(), 0u);
  EXPECT_LE(s.session().pages().bytes_reserved_peak(), so.session.kv_max_bytes);
}

// --kv-prefill-compress: a prompt cut after every chunk never holds more than its policy keeps plus a chunk, and
// admission counts only that, so the same pool runs more such requests at once; each still gets what `run
// --kv-prefill-compress` gives it alone. A policy that cannot cut between chunks (KVzip) ends with an error.
TEST_F(SchedulerTest, PromptsCutPerChunkAreAdmittedByWhatTheyKeep) {
  auto most_running = [&](bool compress, std::vector<Job>* jobs_out, std::vector<Result>* got) {
    SchedulerOptions so = options(4);
    // A 520-token prompt at f16 is admitted at 10 pages of 16 KiB per (layer, kv-head), 14.1 MiB for SmolLM2's 90;
    // cut per chunk, at its budget and a chunk of 64 per head plus two pages: 5.6 MiB. Beside it, a step of every
    // running request (at most an f16 and a 4-bit page per head: 1.9 MiB) and what each holds (~1.5 MiB): 17 MiB
    // admit one at a time at f16 (14.1 + 1.9 + 1.9 + 1.5 > 17), three when cut per chunk.
    so.session.kv_max_bytes = 17u << 20;
    Scheduler s(*model_, *tok_, *pool_, so);
    for (int32_t i = 0; i < 4; ++i) {
      jobs_out->push_back({"snapkv:budget=64+kivi:bits=4", kjv(700 * i, 520), 40});
      jobs_out->back().prefill_compress = compress;
    }
    got->resize(jobs_out->size());
    for (size_t i = 0; i < jobs_out->size(); ++i) s.add(request((*jobs_out)[i], (*got)[i]));
    int32_t most = 0;
    while (s.step()) {
      most = std::max(most, s.n_running());
      s.decode_batch_sizes().clear();
    }
    EXPECT_EQ(s.session().pages().n_pages_in_use(), 0u);
    EXPECT_LE(s.session().pages().bytes_reserved_peak(), so.session.kv_max_bytes);
    return most;
  };
  std::vector<Job> plain_jobs, cut_jobs;
  std::vector<Result> plain, cut;
  const int32_t most_plain = most_running(false, &plain_jobs, &plain);
  const int32_t most_cut = most_running(true, &cut_jobs, &cut);
  EXPECT_EQ(most_plain, 1);
  EXPECT_GE(most_cut, 3);
  for (size_t i = 0; i < cut_jobs.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(cut[i].out.error, "");
    EXPECT_EQ(cut[i].out.n_preempted, 0);
    EXPECT_EQ(cut[i].out.tokens, alone(cut_jobs[i]));
    EXPECT_EQ(plain[i].out.tokens, alone(plain_jobs[i]));
  }
  Scheduler s(*model_, *tok_, *pool_, options(1));
  Result kvzip;
  Job j{"kvzip:budget=64", kjv(0, 100), 4};
  j.prefill_compress = true;
  s.add(request(j, kvzip));
  while (s.step()) {
  }
  EXPECT_NE(kvzip.out.error.find("cannot cut between prefill chunks"), std::string::npos) << kvzip.out.error;
  EXPECT_EQ(s.session().n_sequences(), 0);
}

TEST_F(SchedulerTest, CancellationAndBadRequestsEndOnlyThemselves) {
  Scheduler s(*model_, *tok_, *pool_, options(1));
  Result run, wait, bad, ok;
  bool stop_running = false, stop_waiting = true;
  ScheduledRequest q1 = request({"full", kjv(0, 60), 100}, run);
  q1.cancelled = [&] { return stop_running; };
  ScheduledRequest q2 = request({"full", kjv(100, 60), 10}, wait);
  q2.cancelled = [&] { return stop_waiting; };
  s.add(std::move(q1));
  s.add(std::move(q2));
  s.add(request({"snapkv:budget=-1", kjv(0, 20), 4}, bad));
  const Job good{"full", kjv(200, 50), 8};
  s.add(request(good, ok));
  s.step();
  s.step();
  EXPECT_EQ(wait.n_done, 1);  // cancelled while waiting
  EXPECT_EQ(wait.out.stop, StopReason::Cancelled);
  EXPECT_EQ(wait.out.n_generated, 0);
  stop_running = true;
  while (s.step()) {
  }
  EXPECT_EQ(run.out.stop, StopReason::Cancelled);
  EXPECT_LT(run.out.n_generated, 100);
  EXPECT_EQ(bad.n_done, 1);
  EXPECT_NE(bad.out.error.find("budget"), std::string::npos) << bad.out.error;
  EXPECT_EQ(ok.out.error, "");
  EXPECT_EQ(ok.out.tokens, alone(good));
  EXPECT_EQ(s.session().pages().n_pages_in_use(), 0u);
}

}  // namespace
}  // namespace longctx
