// `longctx calibrate-heads`, after "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming
// Heads" (the default method, measured forward-only) and "RazorAttention: Efficient KV Cache Compression Through
// Retrieval Heads" (--method razor).
#include "calibrate_heads_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "device_option.h"
#include "core/error.h"
#include "eval/duo_calibration.h"
#include "eval/eval_tasks.h"
#include "kv/duo_head_scores.h"
#include "kv/head_calibration.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "engine/session.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

CLI::App* add_calibrate_heads_subcommand(CLI::App& app, CalibrateHeadsOptions& o) {
  auto* c = app.add_subcommand(
      "calibrate-heads",
      "Find the retrieval heads and write the roles file for --kv heads:file=FILE. Retrieval heads keep the whole\n"
      "cache, the others sinks + a window. --method duo (the default; DuoAttention, forward-only): each kv-head alone\n"
      "made streaming on passkey prompts, ranked by how far the answer's logits move; n_layer x n_head_kv runs of the\n"
      "answer per prompt (minutes). --method razor (RazorAttention): echo and induction heads on a repeated random\n"
      "sequence (seconds).");
  c->add_option("-m,--model", o.model, "GGUF model file")->required();
  c->add_option("-o,--out", o.out, "Roles file to write (JSON)")->required();
  c->add_option("--method", o.method, "razor or duo")->capture_default_str()->check(CLI::IsMember({"razor", "duo"}));
  c->add_option("-l,--length", o.length,
                "razor: tokens in one copy of the random sequence (default 256; the input is two copies); "
                "duo: context tokens of each prompt (default 2048)")
      ->check(CLI::Range(2, 1 << 20));
  c->add_option("-s,--seed", o.seed, "Seed of the random tokens (razor) or of the prompts (duo)")->capture_default_str();
  c->add_option("--fraction", o.fraction, "Fraction of all (layer, kv-head) kept by induction score (razor) or duo score")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c->add_option("--count", o.count, "Number of heads kept by induction or duo score (instead of --fraction)")
      ->check(CLI::Range(0, 1 << 20));
  c->add_option("--echo-fraction", o.echo_fraction, "razor: fraction of all heads kept by echo score besides")
      ->capture_default_str()->check(CLI::Range(0.0, 1.0));
  c->add_option("--task", o.task, "duo: the prompts' task (passkey, needle, multikey, kvret)")->capture_default_str();
  c->add_option("--prompts", o.n_prompts, "duo: prompts, their facts at depths spread over [0.1, 0.8]")
      ->capture_default_str()->check(CLI::Range(1, 1 << 16));
  c->add_option("--sink", o.sink, "duo: sink tokens a measured streaming head keeps")->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  c->add_option("--window", o.window, "duo: recent tokens a measured streaming head keeps (whole pages)")
      ->capture_default_str()->check(CLI::Range(1, 1 << 30));
  c->add_option("--score", o.score, "duo: rank by kl (KL of the answer's logits) or answer (drop of its log-probability)")
      ->capture_default_str()->check(CLI::IsMember({"kl", "answer"}));
  c->add_option("--haystack", o.haystack, "duo with needle tasks: the text the facts hide in")->capture_default_str();
  c->add_option("-t,--threads", o.n_threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  add_device_option(c, o.device);
  return c;
}

kv::HeadCalibration calibrate_heads(const Model& model, ThreadPool& pool, Device device, int32_t length,
                                    uint64_t seed) {
  const ModelConfig& c = model.config();
  auto tok = Tokenizer::from_gguf(model.file());
  // Ordinary vocabulary only: the low ids of these vocabularies hold control and byte tokens, and the highest
  // ones rare pieces, either of which could make the model treat the sequence as something other than text.
  const int32_t lo = std::min(1000, c.n_vocab / 4), hi = std::min(c.n_vocab, 32000);
  const int32_t bos = tok->add_bos() ? tok->bos() : -1;
  const std::vector<int32_t> ids = kv::repeated_random_tokens(length, lo, hi, seed, bos);
  const int32_t n = static_cast<int32_t>(ids.size()), first_copy = bos >= 0 ? 1 : 0;
  if (n > c.n_ctx_train) fail("calibrate-heads: 2 x --length ({}) exceeds the model's context ({})", n, c.n_ctx_train);

  const int32_t n_batch = 256;
  SessionOptions so;
  so.n_ctx = n;
  so.n_batch = n_batch;
  so.device = device;
  so.kv_max_bytes = SessionOptions::kUnlimited;
  EngineSession session(model, pool, so);
  // f32 pages: the scores of the model itself, not of a compressed cache.
  const SequenceId seq = session.add_sequence("full:type=f32");
  std::vector<float> logits(static_cast<size_t>(c.n_vocab));

  // The first copy (and the second's first token, whose echo target is the first copy's first token) in chunks;
  // then every second-copy token on its own, so that the scores the forward pass gathers are that one query's
  // (they are summed over the queries of a call). Nothing expires: every key stays for the scores.
  const int32_t second = first_copy + length;
  PrefillOptions po;
  po.hooks = PolicyHooks::Off;
  po.expiry = WindowExpiry::Off;
  std::vector<float> unused;
  session.prefill(seq, std::span<const int32_t>(ids).first(static_cast<size_t>(second)), po, unused);
  kv::HeadCalibration cal(c.n_layer, c.n_head_kv, first_copy, length);
  kv::KvScores scores;
  const int32_t n_group = c.n_head / c.n_head_kv;
  for (int32_t p = second; p < n; ++p) {
    scores.reset(c.n_layer, c.n_head_kv, n, p + 1);
    scores.first_pos = p;
    session.extend(seq, &ids[static_cast<size_t>(p)], 1, {0}, logits.data(), &scores);
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t g = 0; g < c.n_head_kv; ++g)
        cal.add_query(l, g, p, scores.head(l, g), session.sequence(seq).head(l, g).positions, n_group);
  }
  return cal;
}

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("calibrate-heads: cannot read the haystack '{}' (scripts/setup.sh makes data/kjv.txt)", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int32_t heads_to_keep(const CalibrateHeadsOptions& o, int32_t n_heads) {
  return o.count >= 0 ? std::min(o.count, n_heads) : static_cast<int32_t>(std::lround(o.fraction * n_heads));
}

int calibrate_razor(const CalibrateHeadsOptions& o, const Model& model, ThreadPool& pool,
                    std::chrono::steady_clock::time_point t0) {
  const ModelConfig& c = model.config();
  const int32_t length = o.length > 0 ? o.length : 256;
  const kv::HeadCalibration cal = calibrate_heads(model, pool, pick_device(o.device), length, o.seed);
  const int32_t n_heads = c.n_layer * c.n_head_kv;
  const int32_t n_induction = heads_to_keep(o, n_heads);
  const int32_t n_echo = o.echo_fraction > 0
                             ? std::max(1, static_cast<int32_t>(std::lround(o.echo_fraction * n_heads))) : 0;
  const auto echo = cal.echo_scores(), induction = cal.induction_scores();
  const std::vector<int32_t> retrieval = kv::pick_retrieval_heads(echo, induction, n_induction, n_echo);

  std::ofstream out(o.out);
  if (!out) fail("calibrate-heads: cannot write '{}'", o.out);
  out << kv::retrieval_heads_json(cal, retrieval, o.model, length, o.seed);
  if (!out.flush()) fail("calibrate-heads: writing '{}' failed", o.out);

  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "calibrate-heads: {} tokens ({} x 2 random), {} layers x {} kv-heads, {:.1f}s\n",
             2 * length, length, c.n_layer, c.n_head_kv, s);
  fmt::print(stderr, "retrieval heads: {} of {} ({} by induction score, {} by echo score); wrote {}\n",
             retrieval.size(), n_heads, n_induction, n_echo, o.out);
  fmt::print(stderr, "{:>5} {:>4} {:>9} {:>9}\n", "layer", "head", "induction", "echo");
  for (int32_t i : retrieval)
    fmt::print(stderr, "{:>5} {:>4} {:>9.3f} {:>9.3f}\n", i / c.n_head_kv, i % c.n_head_kv,
               induction[static_cast<size_t>(i)], echo[static_cast<size_t>(i)]);
  return 0;
}

int calibrate_duo(const CalibrateHeadsOptions& o, const Model& model, ThreadPool& pool,
                  std::chrono::steady_clock::time_point t0) {
  const ModelConfig& c = model.config();
  eval::DuoCalibrationParams p;
  p.task = eval::parse_task(o.task);
  eval::check_duo_task(p.task);
  p.length = o.length > 0 ? o.length : 2048;
  p.n_prompts = o.n_prompts;
  p.seed = o.seed;
  p.sink = o.sink;
  p.window = o.window;
  p.device = pick_device(o.device);
  const kv::DuoScore score = kv::parse_duo_score(o.score);
  const std::vector<std::string> haystack =
      p.task == eval::Task::Passkey ? std::vector<std::string>{} : eval::split_sentences(read_file(o.haystack));
  auto tok = Tokenizer::from_gguf(model.file());
  const kv::DuoHeadScores scores = eval::duo_calibrate(model, *tok, pool, p, haystack, [&](int64_t done, int64_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t per_prompt = total / p.n_prompts;
    fmt::print(stderr, "\rcalibrate-heads (duo): prompt {}/{}, head {}/{}, {:.0f}s ",
               std::min<int64_t>(p.n_prompts, (done - 1) / per_prompt + 1), p.n_prompts,
               (done - 1) % per_prompt, per_prompt - 1, s);
    std::fflush(stderr);
  });
  fmt::print(stderr, "\n");
  const int32_t n_heads = c.n_layer * c.n_head_kv;
  const std::vector<double> ranked = scores.scores(score);
  const std::vector<int32_t> retrieval = kv::top_heads(ranked, heads_to_keep(o, n_heads));

  kv::DuoCalibrationInfo info;
  info.model = o.model;
  info.task = eval::task_name(p.task);
  info.score = score;
  info.length = p.length;
  info.n_prompts = p.n_prompts;
  info.sink = p.sink;
  info.window = p.window;
  info.seed = p.seed;
  std::ofstream out(o.out);
  if (!out) fail("calibrate-heads: cannot write '{}'", o.out);
  out << kv::duo_roles_json(scores, retrieval, info);
  if (!out.flush()) fail("calibrate-heads: writing '{}' failed", o.out);

  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr, "calibrate-heads (duo): {} {} prompts of {} tokens, {} layers x {} kv-heads streaming one at a "
             "time (sink {}, window {}), {:.1f}s\n", p.n_prompts, info.task, p.length, c.n_layer, c.n_head_kv,
             p.sink, p.window, s);
  fmt::print(stderr, "retrieval heads: {} of {} by {} score; wrote {}\n", retrieval.size(), n_heads,
             kv::duo_score_name(score), o.out);
  const auto kl = scores.kl(), drop = scores.answer_drop();
  fmt::print(stderr, "{:>5} {:>4} {:>10} {:>11}\n", "layer", "head", "kl", "answer drop");
  for (int32_t i : retrieval)
    fmt::print(stderr, "{:>5} {:>4} {:>10.5f} {:>11.4f}\n", i / c.n_head_kv, i % c.n_head_kv,
               kl[static_cast<size_t>(i)], drop[static_cast<size_t>(i)]);
  return 0;
}

}  // namespace

int calibrate_heads_command(const CalibrateHeadsOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (o.method != "razor" && o.method != "duo") fail("calibrate-heads: --method is razor or duo, not '{}'", o.method);
  auto model = Model::load(o.model);
  const int n_threads = o.n_threads > 0 ? o.n_threads : std::max(1u, std::thread::hardware_concurrency());
  ThreadPool pool(n_threads);
  return o.method == "duo" ? calibrate_duo(o, *model, pool, t0) : calibrate_razor(o, *model, pool, t0);
}

}  // namespace longctx
