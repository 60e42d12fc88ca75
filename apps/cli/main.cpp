// longctx: the command-line front end. Subcommands: run (answer over a long document), info (what a GGUF holds),
// bench (speed, like llama-bench; bench_command.h), eval (quality against KV memory; eval_command.h).
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "bench_command.h"
#include "calibrate_heads_command.h"
#include "device_option.h"
#include "eval_command.h"
#include "stream_ppl_command.h"
#include "plan_command.h"
#include "serve_command.h"
#include "core/error.h"
#include "engine/generator.h"
#include "engine/speculative.h"
#include "kv/policy.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read '{}'", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024 && u < 3) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.{}f} {}", b, u == 0 ? 0 : 2, units[u]);
}

// A progress bar on stderr, drawn only when stderr is a terminal or when the work is long enough to matter.
class ProgressBar {
 public:
  explicit ProgressBar(const char* label) : label_(label), t0_(std::chrono::steady_clock::now()) {}
  void update(int32_t done, int32_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const int width = 30;
    const int fill = total > 0 ? static_cast<int>(static_cast<double>(done) / total * width) : width;
    const double rate = s > 0 ? done / s : 0;
    const double eta = rate > 0 ? (total - done) / rate : 0;
    fmt::print(stderr, "\r{} [{}{}] {}/{} tokens, {:.0f} tok/s, {:.0f}s left ", label_, std::string(fill, '#'),
               std::string(width - fill, '.'), done, total, rate, eta);
    if (done >= total) fmt::print(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  const char* label_;
  std::chrono::steady_clock::time_point t0_;
};

struct RunOptions {
  std::string model;
  std::string prompt;
  std::string file;
  bool chat = false;
  std::string system;
  int32_t n_predict = 256;
  int32_t n_ctx = 0;
  int32_t n_batch = 256;
  int32_t threads = 0;
  float temp = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  uint64_t seed = 0;
  std::string kv = "full";
  std::string spec;  // --spec self[:...]; empty: plain decode
  std::vector<std::string> stop;
  bool quiet = false;
  bool ignore_eos = false;
  bool prefill_compress = false;
  std::string device = "auto";
};

int run_command(const RunOptions& o) {
  if (o.prompt.empty() && o.file.empty()) fail("give a prompt with -p, or a document with --file (and a question with -p)");
  const int n_threads = o.threads > 0 ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  auto t_load = std::chrono::steady_clock::now();
  auto model = Model::load(o.model);
  auto tok = Tokenizer::from_gguf(model->file());
  const ModelConfig& c = model->config();
  const SpecParams spec = o.spec.empty() ? SpecParams{} : parse_spec(o.spec);
  auto policy = o.spec.empty() ? kv::make_kv_policy(o.kv, c.n_layer, c.n_head_kv)
                               : make_verifier_policy(o.kv, c.n_layer, c.n_head_kv, spec.draft);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  std::string user_text = o.prompt;
  if (!o.file.empty()) {
    const std::string doc = read_text_file(o.file);
    user_text = o.prompt.empty() ? doc : doc + "\n\n" + o.prompt;
  }
  std::string text = user_text;
  if (o.chat) {
    std::vector<ChatMessage> msgs;
    if (!o.system.empty()) msgs.push_back({"system", o.system});
    msgs.push_back({"user", user_text});
    text = apply_chat_template(chat_template_for(model->file()), msgs, true);
  }
  const std::vector<int32_t> prompt = tok->encode(text, tok->add_bos(), /*parse_special=*/o.chat);

  GenerateParams gp;
  gp.n_predict = o.n_predict;
  gp.n_ctx = o.n_ctx > 0 ? o.n_ctx : c.n_ctx_train;
  gp.n_batch = o.n_batch;
  gp.stop = o.stop;
  gp.ignore_eog = o.ignore_eos;
  gp.prefill_compress = o.prefill_compress;
  gp.device = pick_device(o.device);
  gp.sampling.temperature = o.temp;
  gp.sampling.top_k = o.top_k;
  gp.sampling.top_p = o.top_p;
  gp.sampling.min_p = o.min_p;
  gp.sampling.repeat_penalty = o.repeat_penalty;
  gp.sampling.seed = o.seed;

  if (static_cast<int64_t>(prompt.size()) > gp.n_ctx)
    fail("the prompt has {} tokens, more than the context of {} (--ctx); raise --ctx or shorten the prompt",
         prompt.size(), gp.n_ctx);
  if (!o.quiet)
    fmt::print(stderr, "longctx: {} ({}, {} layers, {} weights) loaded in {:.2f}s; prompt {} tokens, ctx {}, {} threads, kv {}\n",
               o.model, arch_name(c.arch), c.n_layer, human_bytes(static_cast<double>(model->weight_bytes())), load_s,
               prompt.size(), gp.n_ctx, n_threads, policy->describe());

  // Past the context only positions within the cache are defined (StreamingLLM); said before the work, not after.
  const bool past_ctx = static_cast<int64_t>(prompt.size()) + o.n_predict > gp.n_ctx;
  if (!o.quiet && past_ctx) {
    if (policy->positions() == kv::KvPositions::InCache)
      fmt::print(stderr, "longctx: -n {} goes past the context of {}: positions within the cache (StreamingLLM) carry "
                         "generation on with the cache at its budget\n", o.n_predict, gp.n_ctx);
    else
      fmt::print(stderr, "longctx: prompt {} + -n {} is more than the context of {} (--ctx): generation stops there; "
                         "only --kv streaming, whose positions are within the cache, goes past it\n",
                 prompt.size(), o.n_predict, gp.n_ctx);
  }

  ThreadPool pool(n_threads);
  std::unique_ptr<Generator> plain;
  std::unique_ptr<SpeculativeGenerator> specgen;
  if (o.spec.empty()) {
    plain = std::make_unique<Generator>(*model, *tok, pool, *policy, gp);
  } else {
    specgen = std::make_unique<SpeculativeGenerator>(*model, pool, gp, spec);
    if (!o.quiet)
      fmt::print(stderr, "longctx: speculative decoding, gamma {}, the draft reading {}\n", spec.gamma,
                 specgen->draft_view().describe());
  }
  // The bar is worth drawing only for prompts that take a while.
  ProgressBar bar("prefill");
  const bool show_bar = !o.quiet && prompt.size() > 2 * static_cast<size_t>(gp.n_batch);
  const TextFn print_text = [](std::string_view s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  const ProgressFn progress =
      show_bar ? ProgressFn([&](int32_t d, int32_t t) { bar.update(d, t); }) : ProgressFn();
  GenerateStats st = plain ? plain->generate(prompt, print_text, progress)
                           : specgen->generate(prompt, *tok, print_text, progress);
  kv::KvSequence& seq = plain ? plain->sequence() : specgen->sequence();
  std::fputc('\n', stdout);
  std::fflush(stdout);

  if (!o.quiet) {
    const double pp = st.prefill_seconds > 0 ? st.n_prompt / st.prefill_seconds : 0;
    const double tg = st.decode_seconds > 0 ? st.n_generated / st.decode_seconds : 0;
    fmt::print(stderr, "\nstopped: {}{}\n", stop_reason_name(st.stop_reason),
               st.stop_reason != StopReason::ContextFull ? std::string()
               : policy->positions() == kv::KvPositions::Original
                   ? fmt::format(" at {} tokens; only --kv streaming goes past it", gp.n_ctx)
                   : fmt::format(": the cache filled all {} positions; give streaming a budget below --ctx", gp.n_ctx));
    fmt::print(stderr, "prefill: {} tokens in {:.2f}s ({:.1f} tok/s)\n", st.n_prompt, st.prefill_seconds, pp);
    fmt::print(stderr, "decode:  {} tokens in {:.2f}s ({:.1f} tok/s)\n", st.n_generated, st.decode_seconds, tg);
    const double ratio = st.kv_bytes.total() > 0 ? static_cast<double>(st.kv_full_f16_bytes) / st.kv_bytes.total() : 0;
    // Quest's per-page key summaries, where kept, are bytes the sequence holds too.
    std::string summaries = st.kv_bytes.summaries == 0 ? std::string() :
        fmt::format(" + {} key summaries", human_bytes(static_cast<double>(st.kv_bytes.summaries)));
    // ShadowKV's factors, landmarks and exact chunks; its values sit in the cold tier, not counted in what is held.
    if (st.kv_bytes.beside_fast + st.kv_bytes.beside_cold > 0)
      summaries += fmt::format(" + {} beside the store, and {} in the cold tier",
                               human_bytes(static_cast<double>(st.kv_bytes.beside_fast)),
                               human_bytes(static_cast<double>(st.kv_bytes.beside_cold)));
    fmt::print(stderr, "kv:      {} held ({} pages + {} metadata{}) for {} tokens{}; full f16 cache: {} ({:.2f}x)\n",
               human_bytes(static_cast<double>(st.kv_bytes.total())), human_bytes(static_cast<double>(st.kv_bytes.payload)),
               human_bytes(static_cast<double>(st.kv_bytes.metadata)), summaries, seq.n_tokens_max(),
               st.kv_bytes.beside_fast > 0 ? " in the store" : "",
               human_bytes(static_cast<double>(st.kv_full_f16_bytes)), ratio);
    // What the page allocator holds from the system (freed pages go back at once), at the end and at its peak
    // (the whole prompt at f16 before the policy cuts it, unless --kv-prefill-compress), and the process's peak.
    fmt::print(stderr, "kv pool: {} held now, {} at peak (sequence peak {}); process peak RSS {}\n",
               human_bytes(static_cast<double>(st.kv_pool_bytes)), human_bytes(static_cast<double>(st.kv_pool_peak_bytes)),
               human_bytes(static_cast<double>(st.kv_peak_bytes)), human_bytes(static_cast<double>(peak_rss_bytes())));
    if (specgen) {
      const SpecStats& ss = specgen->spec_stats();
      const double busy = ss.draft_seconds + ss.verify_seconds;
      fmt::print(stderr,
                 "spec:    {} verify steps, {:.2f} tokens per step, {} of {} drafts accepted ({:.1f}%); draft {:.0f}% "
                 "/ verify {:.0f}% of decode time; the draft read {:.1f}% of the cache\n",
                 ss.n_steps, ss.tokens_per_step(), ss.n_accepted, ss.n_drafted, 100 * ss.acceptance_rate(),
                 busy > 0 ? 100 * ss.draft_seconds / busy : 0.0, busy > 0 ? 100 * ss.verify_seconds / busy : 0.0,
                 100 * ss.draft_read_fraction);
    }
    fmt::print(stderr, "logits hash: {}\n", st.logits_hash);
  }
  return 0;
}

int info_command(const std::string& path, bool all_metadata) {
  auto model = Model::load(path);
  const gguf::File& f = model->file();
  const ModelConfig& c = model->config();
  fmt::print("file:          {} (GGUF v{}, {}, {} tensors, {} metadata keys)\n", path, f.version(),
             human_bytes(static_cast<double>(f.file_size())), f.tensors().size(), f.metadata().size());
  if (auto name = f.get_string_opt("general.name")) fmt::print("name:          {}\n", *name);
  fmt::print("architecture:  {}\n", arch_name(c.arch));
  fmt::print("layers:        {}\nembedding:     {}\nffn:           {}\n", c.n_layer, c.n_embd, c.n_ff);
  fmt::print("heads:         {} query, {} kv, head dim {}\n", c.n_head, c.n_head_kv, c.head_dim);
  fmt::print("vocab:         {}\ncontext:       {} (trained)\n", c.n_vocab, c.n_ctx_train);
  fmt::print("rope:          base {:g}{}, {} dims, {} order\n", c.rope_base,
             c.sliding_window ? fmt::format(" (local {:g})", c.rope_base_local) : "", c.n_rot,
             c.rope_order == RopeOrder::Adjacent ? "adjacent-pair" : "half-split (neox)");
  if (c.sliding_window) {
    int n_local = 0;
    for (bool b : c.layer_is_local) n_local += b;
    fmt::print("sliding window: {} tokens on {} of {} layers\n", c.sliding_window, n_local, c.n_layer);
  }
  fmt::print("rms eps:       {:g}\n", c.rms_eps);
  fmt::print("tokenizer:     {} (pre: {}), bos {}, eos {}\n", f.get_string_opt("tokenizer.ggml.model").value_or("?"),
             f.get_string_opt("tokenizer.ggml.pre").value_or("-"), f.get_int_opt("tokenizer.ggml.bos_token_id").value_or(-1),
             f.get_int_opt("tokenizer.ggml.eos_token_id").value_or(-1));
  fmt::print("kv per token:  {} (full f16 cache)\n",
             human_bytes(2.0 * 2 * c.n_layer * c.n_head_kv * c.head_dim));

  std::map<std::string, std::pair<int, size_t>> by_type;
  for (const auto& t : f.tensors()) {
    auto& e = by_type[std::string(ggml_traits(t.type).name)];
    e.first++;
    e.second += t.n_bytes;
  }
  fmt::print("\n{:<8} {:>8} {:>12}\n", "type", "tensors", "bytes");
  for (const auto& [name, e] : by_type)
    fmt::print("{:<8} {:>8} {:>12}\n", name, e.first, human_bytes(static_cast<double>(e.second)));
  if (all_metadata) {
    fmt::print("\n");
    for (const auto& [k, v] : f.metadata()) fmt::print("{} = {}\n", k, gguf::value_to_string(v));
    fmt::print("\n{:<40} {:<6} {}\n", "tensor", "type", "shape");
    for (const auto& t : f.tensors()) {
      std::string shape;
      for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? " x " : "") + std::to_string(t.shape[i]);
      fmt::print("{:<40} {:<6} {}\n", t.name, ggml_traits(t.type).name, shape);
    }
  }
  return 0;
}

}  // namespace
}  // namespace longctx

int main(int argc, char** argv) {
  using namespace longctx;
  CLI::App app{"longctx: long-context LLM inference with a compressible KV cache.\n"
               "Example: longctx run -m model.gguf --file book.txt -p \"Who is the mother of Samuel?\" --chat --temp 0"};
  app.require_subcommand(1);

  RunOptions ro;
  auto* run = app.add_subcommand("run", "Prefill a prompt or document, then generate an answer; prints what it cost");
  run->add_option("-m,--model", ro.model, "GGUF model file")->required();
  run->add_option("-p,--prompt", ro.prompt, "Prompt text, or the question when --file is given");
  run->add_option("-f,--file", ro.file, "A document to read before the question (its text, then a blank line, then -p)");
  run->add_flag("--chat", ro.chat, "Wrap the prompt in the model's chat template (use with instruct models)");
  run->add_option("--system", ro.system, "System message for --chat");
  run->add_option("-n,--n-predict", ro.n_predict, "Most tokens to generate")->capture_default_str()->check(CLI::Range(0, 1 << 24));
  run->add_option("-c,--ctx", ro.n_ctx, "Context length: prompt plus answer (default: the model's trained context)")
      ->check(CLI::Range(1, 1 << 24));
  run->add_option("-b,--batch", ro.n_batch, "Prompt tokens per prefill chunk")->capture_default_str()->check(CLI::Range(1, 8192));
  run->add_option("-t,--threads", ro.threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  add_device_option(run, ro.device);
  run->add_option("--temp", ro.temp, "Sampling temperature; 0 is greedy")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  run->add_option("--top-k", ro.top_k, "Keep the k most likely tokens; 0 is off")->capture_default_str()->check(CLI::Range(0, 1 << 30));
  run->add_option("--top-p", ro.top_p, "Nucleus sampling mass; 1 is off")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  run->add_option("--min-p", ro.min_p, "Drop tokens below min-p times the top probability; 0 is off")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  run->add_option("--repeat-penalty", ro.repeat_penalty, "Penalty for the last 64 tokens; 1 is off")->capture_default_str()->check(CLI::Range(0.0f, 10.0f));
  run->add_option("-s,--seed", ro.seed, "Sampling seed")->capture_default_str();
  run->add_option("--kv", ro.kv, "KV cache policy. " + kv::kv_policy_help())->capture_default_str();
  run->add_option("--spec", ro.spec, "Speculative decoding, lossless (--kv must be the full cache): " + spec_help());
  run->add_flag("--kv-prefill-compress", ro.prefill_compress,
                "Apply the KV policy after every prefill chunk, so a prompt longer than memory is read within the "
                "budget. Costs quality: tokens are evicted before the end of the prompt (the question) is seen");
  run->add_option("--stop", ro.stop, "Stop before this string (repeatable)");
  run->add_flag("--ignore-eos", ro.ignore_eos, "Generate all -n tokens even past end-of-text (for benchmarks)");
  run->add_flag("-q,--quiet", ro.quiet, "Print only the generated text");

  std::string info_path;
  bool info_all = false;
  auto* info = app.add_subcommand("info", "Print a GGUF model's architecture, hyper-parameters, tokenizer and tensor types");
  info->add_option("model", info_path, "GGUF model file")->required();
  info->add_flag("-a,--all", info_all, "Also list every metadata key and tensor");

  BenchOptions bench_options;
  auto* bench = add_bench_subcommand(app, bench_options);

  CalibrateHeadsOptions calibrate_options;
  auto* calibrate = add_calibrate_heads_subcommand(app, calibrate_options);

  eval::EvalOptions eval_options;
  std::string eval_device = "auto";
  auto* eval = add_eval_subcommand(app, eval_options, eval_device);

  eval::StreamPplOptions stream_ppl_options;
  auto* stream_ppl = add_stream_ppl_subcommand(app, stream_ppl_options);
  PlanCommandOptions plan_options;
  auto* plan = add_plan_subcommand(app, plan_options);

  ServeOptions serve_options;
  auto* serve = add_serve_subcommand(app, serve_options);

  CLI11_PARSE(app, argc, argv);
  try {
    if (run->parsed()) return run_command(ro);
    if (info->parsed()) return info_command(info_path, info_all);
    if (bench->parsed()) return bench_options.spec.empty() ? bench_command(bench_options) : bench_spec_command(bench_options);
    if (calibrate->parsed()) return calibrate_heads_command(calibrate_options);
    if (eval->parsed()) return eval_command(eval_options, eval_device);
    if (stream_ppl->parsed()) return stream_ppl_command(stream_ppl_options);
    if (plan->parsed()) return plan_command(plan_options);
    if (serve->parsed()) return serve_command(serve_options);
  } catch (const Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory\n");
    return 1;
  }
  return 0;
}
