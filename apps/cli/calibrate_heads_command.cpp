// `longctx calibrate-heads`, after "RazorAttention: Efficient KV Cache Compression Through Retrieval Heads".
#include "calibrate_heads_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <thread>

#include "core/error.h"
#include "kv/head_calibration.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "model/forward.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

CLI::App* add_calibrate_heads_subcommand(CLI::App& app, CalibrateHeadsOptions& o) {
  auto* c = app.add_subcommand(
      "calibrate-heads",
      "Find the retrieval heads (RazorAttention: echo and induction heads on a repeated random sequence) and write\n"
      "the roles file for --kv heads:file=FILE. Retrieval heads keep the whole cache, the others sinks + a window.");
  c->add_option("-m,--model", o.model, "GGUF model file")->required();
  c->add_option("-o,--out", o.out, "Roles file to write (JSON)")->required();
  c->add_option("-l,--length", o.length, "Tokens in one copy of the random sequence (the input is two copies)")
      ->capture_default_str()->check(CLI::Range(2, 1 << 20));
  c->add_option("-s,--seed", o.seed, "Seed of the random tokens")->capture_default_str();
  c->add_option("--fraction", o.fraction, "Fraction of all (layer, kv-head) kept by induction score")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c->add_option("--count", o.count, "Number of heads kept by induction score (instead of --fraction)")
      ->check(CLI::Range(0, 1 << 20));
  c->add_option("--echo-fraction", o.echo_fraction, "Fraction of all heads kept by echo score besides")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c->add_option("-t,--threads", o.n_threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  return c;
}

kv::HeadCalibration calibrate_heads(const Model& model, ThreadPool& pool, int32_t length, uint64_t seed) {
  const ModelConfig& c = model.config();
  auto tok = Tokenizer::from_gguf(model.file());
  // Ordinary vocabulary only: the low ids of these vocabularies hold control and byte tokens, and the highest
  // ones rare pieces, either of which could make the model treat the sequence as something other than text.
  const int32_t lo = std::min(1000, c.n_vocab / 4), hi = std::min(c.n_vocab, 32000);
  const int32_t bos = tok->add_bos() ? tok->bos() : -1;
  const std::vector<int32_t> ids = kv::repeated_random_tokens(length, lo, hi, seed, bos);
  const int32_t n = static_cast<int32_t>(ids.size()), first_copy = bos >= 0 ? 1 : 0;
  if (n > c.n_ctx_train) fail("calibrate-heads: 2 x --length ({}) exceeds the model's context ({})", n, c.n_ctx_train);

  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  geo.format = geo.sealed_format = KvFormat::F32;  // the scores of the model itself, not of a compressed cache
  kv::KvPagePool pages(geo.page_tokens, geo.head_dim, std::numeric_limits<size_t>::max() / 4);
  kv::KvSequence seq(geo, pages);
  const int32_t n_batch = 256;
  Forward forward(model, pool, n_batch);
  std::vector<float> logits(static_cast<size_t>(c.n_vocab));
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = i;

  // The first copy (and the second's first token, whose echo target is the first copy's first token) in chunks;
  // then every second-copy token on its own, so that the scores the forward pass gathers are that one query's
  // (they are summed over the queries of a call).
  const int32_t second = first_copy + length;
  for (int32_t start = 0; start < second; start += n_batch) {
    const int32_t len = std::min(n_batch, second - start);
    forward.run(seq, ids.data() + start, positions.data() + start, len, {len - 1}, logits.data(), nullptr);
  }
  kv::HeadCalibration cal(c.n_layer, c.n_head_kv, first_copy, length);
  kv::KvScores scores;
  const int32_t n_group = c.n_head / c.n_head_kv;
  for (int32_t p = second; p < n; ++p) {
    scores.reset(c.n_layer, c.n_head_kv, n, p + 1);
    scores.first_pos = p;
    forward.run(seq, &ids[static_cast<size_t>(p)], &positions[static_cast<size_t>(p)], 1, {0}, logits.data(), &scores);
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t g = 0; g < c.n_head_kv; ++g)
        cal.add_query(l, g, p, scores.head(l, g), seq.head(l, g).positions, n_group);
  }
  return cal;
}

int calibrate_heads_command(const CalibrateHeadsOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto model = Model::load(o.model);
  const ModelConfig& c = model->config();
  const int n_threads = o.n_threads > 0 ? o.n_threads : std::max(1u, std::thread::hardware_concurrency());
  ThreadPool pool(n_threads);
  const kv::HeadCalibration cal = calibrate_heads(*model, pool, o.length, o.seed);
  const int32_t n_heads = c.n_layer * c.n_head_kv;
  const int32_t n_induction = o.count >= 0 ? std::min(o.count, n_heads)
                                           : static_cast<int32_t>(std::lround(o.fraction * n_heads));
  const int32_t n_echo = o.echo_fraction > 0
                             ? std::max(1, static_cast<int32_t>(std::lround(o.echo_fraction * n_heads))) : 0;
  const auto echo = cal.echo_scores(), induction = cal.induction_scores();
  const std::vector<int32_t> retrieval = kv::pick_retrieval_heads(echo, induction, n_induction, n_echo);

  std::ofstream out(o.out);
  if (!out) fail("calibrate-heads: cannot write '{}'", o.out);
  out << kv::retrieval_heads_json(cal, retrieval, o.model, o.length, o.seed);
  if (!out.flush()) fail("calibrate-heads: writing '{}' failed", o.out);

  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "calibrate-heads: {} tokens ({} x 2 random), {} layers x {} kv-heads, {:.1f}s\n",
             2 * o.length, o.length, c.n_layer, c.n_head_kv, s);
  fmt::print(stderr, "retrieval heads: {} of {} ({} by induction score, {} by echo score); wrote {}\n",
             retrieval.size(), n_heads, n_induction, n_echo, o.out);
  fmt::print(stderr, "{:>5} {:>4} {:>9} {:>9}\n", "layer", "head", "induction", "echo");
  for (int32_t i : retrieval)
    fmt::print(stderr, "{:>5} {:>4} {:>9.3f} {:>9.3f}\n", i / c.n_head_kv, i % c.n_head_kv,
               induction[static_cast<size_t>(i)], echo[static_cast<size_t>(i)]);
  return 0;
}

}  // namespace longctx
