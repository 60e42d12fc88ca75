// The engine session (engine/session.h) on the tiny synthetic llama:
//   - sequences under different policies (prefill selection + KIVI packing, per-step eviction by decode scores,
//     Quest's read filter, ShadowKV's tokens held beside the store, the full cache), prefilled and then decoded step by step interleaved in one session,
//     give bit for bit the logits each gives alone in a session of its own;
//   - a step over several sequences at once gives what one step each gives;
//   - the full cache through the session equals the plain loop over Forward (chunked prefill, one token a step);
//   - a prefill on top of a cached prefix equals one prefill of the whole (bench's pp at a depth);
//   - extend + truncate leave the cache as it was (speculative decoding's rollback);
//   - remove_sequence returns the pool's pages to what it held before the sequence came;
//   - the rest of a prompt after the cut reads through a read filter that holds tokens (ShadowKV);
//   - bad input: past the context, an unknown sequence, a second page size, a sequence twice in one step.
// Tolerance: none; every comparison is exact (the session adds no arithmetic of its own).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/session.h"
#include "kv/policy.h"
#include "kv/shadowkv.h"
#include "model/forward.h"
#include "model/model.h"

namespace longctx {
namespace {

std::vector<int32_t> tokens(int32_t n, int32_t salt, int32_t n_vocab) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = (i * 37 + salt * 101 + 3) % n_vocab;
  return t;
}

SessionOptions options(int32_t n_batch = 64) {
  SessionOptions o;
  o.n_ctx = 1024;
  o.n_batch = n_batch;
  o.n_seq_max = 4;
  return o;
}

// A request: its policy, prompt and the tokens fed after it (teacher-forced, so that runs compare step for step).
struct Request {
  std::string kv;
  std::vector<int32_t> prompt;
  std::vector<int32_t> fed;
};

// Logits of the prompt's last token, then of every fed token: (1 + fed.size(), n_vocab).
std::vector<float> run_alone(const Model& m, ThreadPool& tp, const Request& r) {
  EngineSession s(m, tp, options());
  const SequenceId id = s.add_sequence(r.kv);
  PrefillOptions po;
  po.logit_positions = {static_cast<int32_t>(r.prompt.size()) - 1};
  std::vector<float> out, logits(static_cast<size_t>(m.config().n_vocab));
  s.prefill(id, r.prompt, po, out);
  for (int32_t t : r.fed) {
    const SequenceStep st{id, t};
    s.step({&st, 1}, logits.data());
    out.insert(out.end(), logits.begin(), logits.end());
  }
  return out;
}

class EngineSessionTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = Model::synthetic("tiny:5"); }
  std::unique_ptr<Model> model_;
  ThreadPool tp_{2};
};

TEST_F(EngineSessionTest, InterleavedSequencesGiveWhatEachGivesAlone) {
  const ModelConfig& c = model_->config();
  const std::vector<Request> reqs = {
      {"snapkv:budget=96,window=16+kivi:bits=4", tokens(300, 1, c.n_vocab), tokens(40, 2, c.n_vocab)},
      {"h2o:budget=80", tokens(200, 3, c.n_vocab), tokens(40, 4, c.n_vocab)},
      {"quest:budget=64,dense_layers=0", tokens(260, 5, c.n_vocab), tokens(40, 6, c.n_vocab)},
      {"full", tokens(130, 7, c.n_vocab), tokens(40, 8, c.n_vocab)},
      {"streaming:budget=64,sink=4", tokens(180, 11, c.n_vocab), tokens(40, 12, c.n_vocab)},
      {"shadowkv:budget=32,rank=16,outliers=2,recent=16", tokens(400, 13, c.n_vocab), tokens(40, 14, c.n_vocab)},
  };
  std::vector<std::vector<float>> alone;
  for (const Request& r : reqs) alone.push_back(run_alone(*model_, tp_, r));

  EngineSession s(*model_, tp_, options());
  std::vector<SequenceId> ids;
  std::vector<std::vector<float>> got(reqs.size());
  for (const Request& r : reqs) ids.push_back(s.add_sequence(r.kv));
  ASSERT_EQ(s.n_sequences(), 6);
  for (size_t i = 0; i < reqs.size(); ++i) {
    PrefillOptions po;
    po.logit_positions = {static_cast<int32_t>(reqs[i].prompt.size()) - 1};
    s.prefill(ids[i], reqs[i].prompt, po, got[i]);
    EXPECT_EQ(s.position(ids[i]), static_cast<int32_t>(reqs[i].prompt.size()));
  }
  // One sequence a step, round robin, then all in one step (one stacked forward): each sequence's stream is the
  // same either way.
  std::vector<float> logits(static_cast<size_t>(c.n_vocab) * reqs.size());
  for (size_t t = 0; t < 20; ++t)
    for (size_t i = 0; i < reqs.size(); ++i) {
      const SequenceStep st{ids[i], reqs[i].fed[t]};
      s.step({&st, 1}, logits.data());
      got[i].insert(got[i].end(), logits.begin(), logits.begin() + c.n_vocab);
    }
  for (size_t t = 20; t < 40; ++t) {
    std::vector<SequenceStep> steps;
    for (size_t i = reqs.size(); i-- > 0;) steps.push_back({ids[i], reqs[i].fed[t]});  // order of the list: any
    s.step(steps, logits.data());
    for (size_t j = 0; j < steps.size(); ++j) {
      const size_t i = reqs.size() - 1 - j;
      got[i].insert(got[i].end(), logits.begin() + j * c.n_vocab, logits.begin() + (j + 1) * c.n_vocab);
    }
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(got[i].size(), alone[i].size()) << reqs[i].kv;
    EXPECT_EQ(got[i], alone[i]) << reqs[i].kv << ": interleaved differs from alone";
  }
  // The policies really acted: the compressed caches hold less than the full one would.
  EXPECT_LT(s.sequence(ids[0]).n_tokens_max(), 300);
  EXPECT_LE(s.sequence(ids[1]).n_tokens_max(), 80);
  EXPECT_LT(s.bytes(ids[0]).total(), s.sequence(ids[0]).full_f16_bytes(340));
  // ShadowKV took the prompt out of the store (all but its last 16 + a part chunk, and the 40 fed) and holds it
  // beside: counted in the sequence's bytes, the values in the cold tier.
  EXPECT_LT(s.sequence(ids[5]).n_tokens_max(), 16 + 8 + 40 + 1);
  EXPECT_GT(s.bytes(ids[5]).beside_fast, 0u);
  EXPECT_GT(s.bytes(ids[5]).beside_cold, 0u);
  EXPECT_EQ(s.bytes(ids[5]).total(), s.sequence(ids[5]).bytes().total() + s.bytes(ids[5]).beside_fast);
}

// ShadowKV holds the compressed part of the prompt beside the store: the rest of the prompt (a question read after
// the cut, PrefillOptions::n_compressed) must read it through the filter, or it would see only the store's tokens.
TEST_F(EngineSessionTest, TokensReadAfterTheCutGoThroughAFilterThatHoldsTokens) {
  const ModelConfig& c = model_->config();
  const std::vector<int32_t> prompt = tokens(400, 21, c.n_vocab);
  for (const int32_t n_compressed : {0, 360}) {
    EngineSession s(*model_, tp_, options());
    const SequenceId id = s.add_sequence("shadowkv:budget=32,rank=16,outliers=2,recent=16");
    PrefillOptions po;
    po.logit_positions = {399};
    po.n_compressed = n_compressed;
    std::vector<float> out;
    s.prefill(id, prompt, po, out);
    const auto* f = dynamic_cast<const kv::ShadowKvReadFilter*>(s.policy(id).read_filter());
    ASSERT_NE(f, nullptr);
    ASSERT_NE(f->layer(0), nullptr);
    if (n_compressed == 0) {
      EXPECT_EQ(f->rows_held(), 0) << "prefill read through the filter with nothing after the cut";
    } else {
      EXPECT_EQ(f->layer(0)->n_shadow, (360 - 16) / 8 * 8);
      EXPECT_GT(f->rows_held(), 0) << "the 40 tokens after the cut did not read through the filter";
      EXPECT_LT(f->rows_read(), f->rows_held());
    }
  }
}

// More sequences in a step than one batch-invariant forward takes: with batch_invariant (the default) each still
// gets its bits alone; without it they go through one forward (the matmul's prefill path for 12 rows), and each
// sequence's logits stay within the matmul's rounding of its own. Tolerance of the second: 1e-3 of the logits'
// spread (the two matmul paths differ only in the order of f32 sums and the activations' 8/16-bit rounding).
TEST_F(EngineSessionTest, LargeStepsStayBatchInvariantUnlessAskedNotTo) {
  const ModelConfig& c = model_->config();
  const int32_t n_seq = 12, n_steps = 6;
  ASSERT_GT(n_seq, make_backend(Device::Cpu, tp_)->batch_invariant_rows());
  std::vector<Request> reqs;
  for (int32_t i = 0; i < n_seq; ++i)
    reqs.push_back({i % 3 == 0 ? "h2o:budget=48" : "full", tokens(40 + 7 * i, 20 + i, c.n_vocab),
                    tokens(n_steps, 40 + i, c.n_vocab)});
  std::vector<std::vector<float>> alone;
  for (const Request& r : reqs) alone.push_back(run_alone(*model_, tp_, r));
  for (bool invariant : {true, false}) {
    SessionOptions o = options();
    o.n_seq_max = n_seq;
    o.batch_invariant = invariant;
    EngineSession s(*model_, tp_, o);
    std::vector<SequenceId> ids;
    std::vector<std::vector<float>> got(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      ids.push_back(s.add_sequence(reqs[i].kv));
      PrefillOptions po;
      po.logit_positions = {static_cast<int32_t>(reqs[i].prompt.size()) - 1};
      s.prefill(ids[i], reqs[i].prompt, po, got[i]);
    }
    std::vector<float> logits(static_cast<size_t>(c.n_vocab) * reqs.size());
    for (int32_t t = 0; t < n_steps; ++t) {
      std::vector<SequenceStep> steps;
      for (size_t i = 0; i < reqs.size(); ++i) steps.push_back({ids[i], reqs[i].fed[static_cast<size_t>(t)]});
      s.step(steps, logits.data());
      for (size_t i = 0; i < reqs.size(); ++i)
        got[i].insert(got[i].end(), logits.begin() + i * c.n_vocab, logits.begin() + (i + 1) * c.n_vocab);
    }
    for (size_t i = 0; i < reqs.size(); ++i) {
      ASSERT_EQ(got[i].size(), alone[i].size());
      if (invariant) {
        EXPECT_EQ(got[i], alone[i]) << "sequence " << i;
        continue;
      }
      const auto [lo, hi] = std::minmax_element(alone[i].begin(), alone[i].end());
      float worst = 0;
      for (size_t j = 0; j < got[i].size(); ++j) worst = std::max(worst, std::fabs(got[i][j] - alone[i][j]));
      EXPECT_LE(worst, 1e-3f * (*hi - *lo)) << "sequence " << i;
    }
  }
}

TEST_F(EngineSessionTest, FullCacheEqualsThePlainForwardLoop) {
  const ModelConfig& c = model_->config();
  const std::vector<int32_t> prompt = tokens(150, 9, c.n_vocab), fed = tokens(10, 10, c.n_vocab);
  const int32_t n_batch = 64;
  // The reference: Forward directly, prefill in chunks of n_batch, then one token a step.
  std::vector<float> want;
  {
    kv::KvGeometry geo;
    geo.n_layer = c.n_layer;
    geo.n_head_kv = c.n_head_kv;
    geo.head_dim = c.head_dim;
    kv::KvPagePool pages(geo.page_tokens, geo.head_dim, size_t{1} << 30);
    kv::KvSequence seq(geo, pages);
    Forward fwd(*model_, tp_, n_batch);
    std::vector<float> logits(static_cast<size_t>(c.n_vocab));
    std::vector<int32_t> pos(static_cast<size_t>(n_batch));
    const int32_t n = static_cast<int32_t>(prompt.size());
    for (int32_t s0 = 0; s0 < n; s0 += n_batch) {
      const int32_t len = std::min(n_batch, n - s0);
      for (int32_t i = 0; i < len; ++i) pos[static_cast<size_t>(i)] = s0 + i;
      std::vector<int32_t> rows;
      if (s0 + len == n) rows.push_back(len - 1);
      fwd.run(seq, prompt.data() + s0, pos.data(), len, rows, logits.data());
    }
    want = logits;
    for (size_t i = 0; i < fed.size(); ++i) {
      const int32_t p = n + static_cast<int32_t>(i);
      fwd.run(seq, &fed[i], &p, 1, {0}, logits.data());
      want.insert(want.end(), logits.begin(), logits.end());
    }
  }
  EXPECT_EQ(run_alone(*model_, tp_, {"full", prompt, fed}), want);
}

TEST_F(EngineSessionTest, PrefillOnTopOfAPrefixEqualsOnePrefill) {
  const ModelConfig& c = model_->config();
  const std::vector<int32_t> prompt = tokens(200, 11, c.n_vocab);
  EngineSession s(*model_, tp_, options());
  const SequenceId a = s.add_sequence("full"), b = s.add_sequence("full");
  PrefillOptions whole;
  whole.logit_positions = {199, 150};
  std::vector<float> want, head, tail;
  s.prefill(a, prompt, whole, want);
  // 128 tokens (two whole chunks) then 72: chunk boundaries fall where the one prefill's do.
  PrefillOptions first;
  s.prefill(b, std::span<const int32_t>(prompt).first(128), first, head);
  EXPECT_TRUE(head.empty());
  PrefillOptions rest;
  rest.logit_positions = {199 - 128, 150 - 128};
  s.prefill(b, std::span<const int32_t>(prompt).subspan(128), rest, tail);
  EXPECT_EQ(tail, want);
  EXPECT_EQ(s.position(b), 200);
}

TEST_F(EngineSessionTest, ExtendThenTruncateRestoresTheCache) {
  const ModelConfig& c = model_->config();
  const std::vector<int32_t> prompt = tokens(100, 12, c.n_vocab), more = tokens(5, 13, c.n_vocab);
  EngineSession s(*model_, tp_, options());
  const SequenceId id = s.add_sequence("full");
  std::vector<float> logits;
  s.prefill(id, prompt, {}, logits);
  const kv::KvBytes before = s.bytes(id);
  std::vector<float> out(5 * static_cast<size_t>(c.n_vocab)), again(out.size());
  s.extend(id, more.data(), 5, {0, 1, 2, 3, 4}, out.data());
  EXPECT_EQ(s.position(id), 105);
  EXPECT_EQ(s.sequence(id).n_tokens_max(), 105);
  s.truncate(id, 100);
  EXPECT_EQ(s.position(id), 100);
  EXPECT_EQ(s.sequence(id).n_tokens_max(), 100);
  EXPECT_EQ(s.bytes(id).payload, before.payload);
  s.extend(id, more.data(), 5, {0, 1, 2, 3, 4}, again.data());
  EXPECT_EQ(again, out);
}

TEST_F(EngineSessionTest, RemoveSequenceReturnsThePagesToThePool) {
  const ModelConfig& c = model_->config();
  EngineSession s(*model_, tp_, options());
  const SequenceId keep = s.add_sequence("full");
  std::vector<float> logits;
  s.prefill(keep, tokens(100, 14, c.n_vocab), {}, logits);
  const size_t pages0 = s.pages().n_pages_in_use(), reserved0 = s.pages().bytes_reserved();
  ASSERT_GT(pages0, 0u);
  // Enough pages of two formats (f16 open, KIVI sealed) that the pool takes more chunks from the system.
  const SequenceId gone = s.add_sequence("kivi:bits=4");
  s.prefill(gone, tokens(900, 15, c.n_vocab), {}, logits);
  EXPECT_GT(s.pages().n_pages_in_use(), pages0);
  EXPECT_GT(s.pages().bytes_reserved(), reserved0);
  s.remove_sequence(gone);
  EXPECT_EQ(s.n_sequences(), 1);
  EXPECT_EQ(s.pages().n_pages_in_use(), pages0);
  EXPECT_EQ(s.pages().bytes_reserved(), reserved0);
  EXPECT_THROW(s.sequence(gone), Error);
  // The survivor is untouched and goes on.
  const SequenceStep st{keep, 5};
  std::vector<float> one(static_cast<size_t>(c.n_vocab));
  s.step({&st, 1}, one.data());
  EXPECT_EQ(s.position(keep), 101);
}

TEST_F(EngineSessionTest, BadInputIsAClearError) {
  const ModelConfig& c = model_->config();
  SessionOptions o = options();
  o.n_ctx = 100;
  EngineSession s(*model_, tp_, o);
  EXPECT_THROW(s.pages(), Error);  // no pool before a sequence
  const SequenceId id = s.add_sequence("full");
  std::vector<float> logits;
  try {
    s.prefill(id, tokens(101, 16, c.n_vocab), {}, logits);
    FAIL() << "a prompt past the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than the context of 100"), std::string::npos) << e.what();
  }
  s.prefill(id, tokens(60, 16, c.n_vocab), {}, logits);
  EXPECT_THROW(s.prefill(id, tokens(41, 17, c.n_vocab), {}, logits), Error);  // 60 cached + 41 > 100
  EXPECT_THROW(s.add_sequence("quest:budget=64,page=32"), Error);            // a second page size
  EXPECT_THROW(s.add_sequence("nonsense"), Error);
  const SequenceStep twice[2] = {{id, 1}, {id, 2}};
  std::vector<float> two(2 * static_cast<size_t>(c.n_vocab));
  EXPECT_THROW(s.step(twice, two.data()), Error);
  const SequenceStep unknown{42, 1};
  EXPECT_THROW(s.step({&unknown, 1}, two.data()), Error);
  EXPECT_THROW(EngineSession(*model_, tp_, [] { SessionOptions b; b.n_ctx = 0; return b; }()), Error);
}

}  // namespace
}  // namespace longctx
