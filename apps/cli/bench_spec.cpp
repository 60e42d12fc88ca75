// `longctx bench --spec`: plain full-cache greedy decode against lossless self-speculation (speculative.h) at each
// depth, side by side and interleaved (plain, then speculative, in every repetition, on one prefilled cache), so
// drift on a shared machine hits both alike. Both generate -n tokens greedily from the same context
// (SpeculativeGenerator::decode, plain: one token per forward over the full cache, as Generator decodes; that the
// two loops give the same tokens is speculative_model_test's); their tokens must be identical, and the run says so.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "bench_command.h"
#include "device_option.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/generator.h"
#include "engine/speculative.h"
#include "kv/policy.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

int bench_spec_command(const BenchOptions& o) {
  if (o.model.empty() || !o.synthetic.empty())
    fail("bench --spec needs a model file (-m): speculative decoding generates real tokens through the tokenizer's "
         "end-of-text rules, which --synthetic weights lack");
  if (o.n_gen <= 1) fail("bench --spec times generation: give -n of at least 2");
  const SpecParams spec = parse_spec(o.spec);
  const std::vector<int32_t> depths = parse_depth_list(o.depths);
  const int n_threads =
      o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(n_threads);
  auto model = Model::load(o.model);
  auto tok = Tokenizer::from_gguf(model->file());
  const ModelConfig& c = model->config();
  auto verifier = make_verifier_policy(o.kv, c.n_layer, c.n_head_kv, spec.draft);

  // The context: the text of --file, cycled to the depth, or bench's fixed ids.
  std::vector<int32_t> text;
  if (!o.file.empty()) {
    std::ifstream in(o.file, std::ios::binary);
    if (!in) fail("cannot read --file '{}'", o.file);
    std::stringstream ss;
    ss << in.rdbuf();
    text = tok->encode(ss.str(), /*add_bos=*/false, /*parse_special=*/false);
    if (text.empty()) fail("--file '{}' holds no tokens", o.file);
  }
  auto context = [&](int32_t depth) {
    std::vector<int32_t> p;
    if (tok->add_bos()) p.push_back(tok->bos());
    for (int64_t i = 0; static_cast<int32_t>(p.size()) < depth; ++i)
      p.push_back(text.empty() ? bench_token_id(o.seed, i, c.n_vocab) : text[static_cast<size_t>(i) % text.size()]);
    return p;
  };
  for (int32_t d : depths) {
    if (d < 1) fail("bench --spec: --depth {} leaves no context to continue; give depths >= 1", d);
    if (static_cast<int64_t>(d) + o.n_gen > c.n_ctx_train)
      fail("--depth {} plus {} generated tokens is beyond the model's context of {}", d, o.n_gen, c.n_ctx_train);
  }

  fmt::print(stderr, "bench --spec: {}, {} threads, verifier {}, gamma {}, draft {}, {} reps, context {}\n", o.model,
             n_threads, verifier->describe(), spec.gamma, spec.draft, o.n_reps,
             o.file.empty() ? "fixed ids" : "--file " + o.file);
  fmt::print("| depth | plain tok/s | spec tok/s | speed-up (median, min .. max) | acceptance | tokens/step | draft "
             "share | draft reads | identical |\n");
  fmt::print("|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  const Device device = pick_device(o.device);
  for (int32_t d : depths) {
    const std::vector<int32_t> prompt = context(d);
    GenerateParams gp;
    gp.n_predict = o.n_gen;
    gp.n_ctx = d + o.n_gen;
    gp.n_batch = o.n_batch;
    gp.device = device;
    gp.ignore_eog = true;  // -n tokens in both, whatever they are
    gp.sampling.temperature = 0;
    // One prefill (untimed) serves every repetition of both: each decode starts by cutting the cache back to the
    // prompt, so plain and speculative decode alternate seconds apart on the same cache. A model with
    // sliding-window layers drops their expired tokens as it decodes, so there every decode prefills again.
    SpeculativeGenerator sg(*model, pool, gp, spec);
    std::vector<float> logits;
    const bool refill = c.sliding_window > 0;
    auto fill = [&] {
      const auto t_fill = std::chrono::steady_clock::now();
      sg.prefill(prompt, {}, logits);
      fmt::print(stderr, "bench --spec: depth {} prefilled in {:.1f}s (untimed)\n", d, seconds_since(t_fill));
    };
    fill();
    const TokenFn all = [](int32_t, StopReason*) { return true; };
    std::vector<double> plain_tps, spec_tps, ratio;
    SpecStats sum;
    bool identical = true;
    for (int32_t rep = 0; rep < o.n_reps; ++rep) {
      if (refill && rep > 0) fill();
      const GenerateStats a = sg.decode(prompt, logits, all, SpeculativeGenerator::DecodeMode::Plain);
      if (refill) fill();
      const GenerateStats b = sg.decode(prompt, logits, all, SpeculativeGenerator::DecodeMode::Speculative);
      identical = identical && a.tokens == b.tokens;
      plain_tps.push_back(a.n_generated / a.decode_seconds);
      spec_tps.push_back(b.n_generated / b.decode_seconds);
      ratio.push_back(spec_tps.back() / plain_tps.back());
      const SpecStats& s = sg.spec_stats();
      sum.n_steps += s.n_steps;
      sum.n_drafted += s.n_drafted;
      sum.n_accepted += s.n_accepted;
      sum.n_emitted += s.n_emitted;
      sum.draft_seconds += s.draft_seconds;
      sum.verify_seconds += s.verify_seconds;
      sum.draft_read_fraction += s.draft_read_fraction / o.n_reps;
      fmt::print(stderr, "bench --spec: d{} rep {}: plain {:.2f} tok/s, spec {:.2f} tok/s ({:.2f}x), {} tokens {}\n", d,
                 rep + 1, plain_tps.back(), spec_tps.back(), ratio.back(), b.n_generated,
                 a.tokens == b.tokens ? "identical" : "DIFFERENT");
    }
    const RepStats p = summarize_reps(plain_tps), s = summarize_reps(spec_tps), r = summarize_reps(ratio);
    const double busy = sum.draft_seconds + sum.verify_seconds;
    fmt::print("| {} | {:.2f} | {:.2f} | {:.2f}x ({:.2f} .. {:.2f}) | {:.1f}% | {:.2f} | {:.0f}% | {:.1f}% | {} |\n", d,
               p.median, s.median, r.median, r.min, r.max, 100 * sum.acceptance_rate(), sum.tokens_per_step(),
               busy > 0 ? 100 * sum.draft_seconds / busy : 0.0, 100 * sum.draft_read_fraction,
               identical ? "yes" : "NO");
  }
  fmt::print("\ngreedy, -n {} tokens after the context, {} reps interleaved (plain then speculative); speed-up: the "
             "median of the per-repetition ratios (plain and speculative alternate on one prefill; a model with sliding-window layers prefills before each). acceptance: accepted / drafted; tokens/step: tokens per verify "
             "forward; draft share: of the time in draft and verify; draft reads: tokens the draft's attention read "
             "over what the full cache held.\n",
             o.n_gen, o.n_reps);
  return 0;
}

}  // namespace longctx
