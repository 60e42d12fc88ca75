// StreamingLLM past the context on the real models, at twice and three times a small --ctx: the streaming cache
// keeps reading and generating with its memory flat and its perplexity in line with the full cache's, while the
// full cache stops cleanly at the context ("context full") or refuses to score past it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/error.h"
#include "engine/generator.h"
#include "eval/stream_ppl.h"
#include "kv/policy.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
};

Loaded load(const std::string& path) {
  Loaded l;
  l.model = Model::load(path);
  l.tok = Tokenizer::from_gguf(l.model->file());
  return l;
}

// The first n tokens of the KJV.
std::vector<int32_t> kjv_tokens(const Tokenizer& tok, int32_t n) {
  const std::string path = std::string(LONGCTX_SOURCE_DIR) + "/data/kjv.txt";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path << " is missing: run scripts/setup.sh (README) first";
  std::string text(static_cast<size_t>(n) * 8, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  std::vector<int32_t> ids = tok.encode(text, tok.add_bos(), false);
  EXPECT_GE(static_cast<int32_t>(ids.size()), n);
  ids.resize(static_cast<size_t>(n));
  return ids;
}

// SmolLM2 at --ctx 256 reads 512 KJV tokens under streaming:budget=128,sink=4: every token is scored, the KV
// bytes are the same at every window's end once the cache is at its budget, and the perplexity of each window past
// the context stays near what the full cache reaches inside it. The full cache stops at 256.
TEST(StreamingModel, ScoresTwiceTheContextWithFlatMemory) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const Loaded m = load(test::smollm2_path());
  ThreadPool pool(2);
  const int32_t n_ctx = 256, n_prefix = 32, window = 128;
  const std::vector<int32_t> tokens = kjv_tokens(*m.tok, 2 * n_ctx);

  const eval::StreamRun s = eval::stream_perplexity(*m.model, *m.tok, pool, tokens, n_prefix,
                                                    "streaming:budget=128,sink=4", n_ctx, window);
  const eval::StreamRun f = eval::stream_perplexity(*m.model, *m.tok, pool, tokens, n_prefix, "full", n_ctx, window);
  EXPECT_EQ(s.end, eval::StreamEnd::Done);
  EXPECT_EQ(s.n_scored, 2 * n_ctx - n_prefix);
  EXPECT_EQ(f.end, eval::StreamEnd::ContextFull);
  EXPECT_EQ(f.n_scored, n_ctx - n_prefix);
  ASSERT_EQ(s.windows.size(), 4u);
  ASSERT_EQ(f.windows.size(), 2u);
  const double full_ppl = std::exp(f.nll_sum / f.n_scored);
  for (const eval::StreamWindow& w : s.windows) {
    std::printf("  streaming %d-%d: ppl %.3f, kv %zu bytes, %d cached\n", w.first, w.end, w.perplexity(), w.kv_bytes,
                w.n_cached);
    ASSERT_TRUE(std::isfinite(w.perplexity()));
    // Sane: within twice what the full cache reads on the start of Genesis (about 3.3). Exactness of the positions
    // is streaming_test's job; this is the engine end to end past --ctx.
    EXPECT_LT(w.perplexity(), 2.0 * full_ppl);
    EXPECT_GT(w.perplexity(), 1.0);
    EXPECT_LE(w.n_cached, 128);
  }
  for (const eval::StreamWindow& w : f.windows)
    std::printf("  full %d-%d: ppl %.3f, kv %zu bytes\n", w.first, w.end, w.perplexity(), w.kv_bytes);
  // Flat: from the first window after the cache reached its budget, the same bytes, however far the stream goes.
  for (size_t i = 2; i < s.windows.size(); ++i) {
    EXPECT_EQ(s.windows[i].kv_bytes, s.windows[1].kv_bytes) << i;
    EXPECT_EQ(s.windows[i].kv_pool_bytes, s.windows[1].kv_pool_bytes) << i;
  }
  EXPECT_LT(s.windows.back().kv_bytes, f.windows.back().kv_bytes);

  // The batched reference of stream-ppl, given all the context there is, reads exactly what the full cache read
  // token by token (teacher forcing: the same logits up to f32 summation order).
  const eval::StreamRun r = eval::windowed_full_reference(*m.model, pool, tokens, n_prefix, n_ctx, window, window);
  for (size_t i = 0; i < f.windows.size(); ++i)
    EXPECT_NEAR(r.windows[i].perplexity(), f.windows[i].perplexity(), 1e-3 * f.windows[i].perplexity()) << i;

  // Scoring past the context outright is refused for the full cache, with the reason.
  auto full = kv::make_kv_policy("full", m.model->config().n_layer, m.model->config().n_head_kv);
  GenerateParams gp;
  gp.n_ctx = n_ctx;
  Generator gen(*m.model, *m.tok, pool, *full, gp);
  const std::vector<int32_t> prefix(tokens.begin(), tokens.begin() + n_prefix), rest(tokens.begin() + n_prefix, tokens.end());
  try {
    gen.score_continuation(prefix, rest, nullptr);
    ADD_FAILURE() << "the full cache scored past its context";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than the context of 256"), std::string::npos) << e.what();
  }
}

GenerateStats generate(const Loaded& m, ThreadPool& pool, const std::string& spec, int32_t n_ctx, int32_t n_predict,
                       int32_t* n_cached_max = nullptr,
                       const std::function<void(const kv::KvSequence&)>& inspect = nullptr) {
  auto policy = kv::make_kv_policy(spec, m.model->config().n_layer, m.model->config().n_head_kv);
  GenerateParams gp;
  gp.n_ctx = n_ctx;
  gp.n_predict = n_predict;
  gp.ignore_eog = true;
  gp.sampling.temperature = 0;
  Generator gen(*m.model, *m.tok, pool, *policy, gp);
  const std::vector<int32_t> prompt = m.tok->encode("In the beginning God created", m.tok->add_bos(), false);
  GenerateStats st = gen.generate(prompt, [](std::string_view) { return true; }, nullptr);
  if (n_cached_max) *n_cached_max = gen.sequence().n_tokens_max();
  if (inspect) inspect(gen.sequence());
  return st;
}

// `run -n` past --ctx: streaming generates all of it within its budget; the full cache and a streaming budget that
// fills the context stop with "context full".
TEST(StreamingModel, GeneratesThreeTimesTheContext) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const Loaded m = load(test::smollm2_path());
  ThreadPool pool(2);
  const int32_t n_ctx = 128;
  int32_t n_cached = 0;
  const GenerateStats s = generate(m, pool, "streaming:budget=64,sink=4", n_ctx, 3 * n_ctx, &n_cached);
  EXPECT_EQ(s.stop_reason, StopReason::Length);
  EXPECT_EQ(s.n_generated, 3 * n_ctx);
  EXPECT_LE(n_cached, 64);
  // The peak is the budget plus the token just appended, which opens one more page per head when the budget is a
  // whole number of pages (64 here): at most twice the resting size, and far below what the tokens seen need.
  EXPECT_LE(s.kv_peak_bytes, 2 * s.kv_bytes.total());
  EXPECT_LT(s.kv_peak_bytes, s.kv_full_f16_bytes / 2);

  const GenerateStats f = generate(m, pool, "full", n_ctx, 3 * n_ctx);
  EXPECT_EQ(f.stop_reason, StopReason::ContextFull);
  EXPECT_EQ(f.n_prompt + f.n_generated - 1, n_ctx);  // the last token sampled is not run: it has no position left

  // A budget above the context lets the cache fill it: in-cache positions then have nowhere to go either.
  const GenerateStats b = generate(m, pool, "streaming:budget=200,sink=4", n_ctx, 3 * n_ctx, &n_cached);
  EXPECT_EQ(b.stop_reason, StopReason::ContextFull);
  EXPECT_EQ(n_cached, n_ctx);
}

// Gemma 3's sliding-window layers (window 512) expire keys by original position beside the streaming eviction: past
// position 516 their sinks are gone and they hold a plain window, while the global layers keep sinks and move them.
// Generation goes past the context all the same.
TEST(StreamingModel, GemmaGeneratesPastTheContext) {
  LONGCTX_REQUIRE_MODEL(test::gemma3_path());
  const Loaded m = load(test::gemma3_path());
  const ModelConfig& c = m.model->config();
  ThreadPool pool(2);
  int32_t n_cached = 0;
  const GenerateStats s = generate(m, pool, "streaming:budget=128,sink=4", 256, 544, &n_cached,
                                   [&](const kv::KvSequence& seq) {
                                     for (int32_t l = 0; l < c.n_layer; ++l) {
                                       const auto& p = seq.head(l, 0).positions;
                                       const int32_t oldest = *std::min_element(p.begin(), p.end());
                                       if (c.layer_is_local[static_cast<size_t>(l)])
                                         EXPECT_GT(oldest, 3) << "local layer " << l << " still holds a sink";
                                       else
                                         EXPECT_EQ(oldest, 0) << "global layer " << l << " lost its sinks";
                                     }
                                   });
  EXPECT_EQ(s.stop_reason, StopReason::Length);
  EXPECT_EQ(s.n_generated, 544);
  EXPECT_LE(n_cached, 128);
  EXPECT_EQ(generate(m, pool, "full", 256, 544).stop_reason, StopReason::ContextFull);
}

}  // namespace
}  // namespace longctx
