#include "eval/stream_ppl.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "engine/generator.h"
#include "engine/session.h"

namespace longctx::eval {

double StreamWindow::perplexity() const { return n_scored > 0 ? std::exp(nll_sum / n_scored) : 0.0; }

size_t process_rss_bytes() {
  std::ifstream in("/proc/self/statm");
  size_t total = 0, resident = 0;
  if (!(in >> total >> resident)) return 0;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

StreamRun stream_perplexity(const Model& model, const Tokenizer& tok, ThreadPool& pool,
                            const std::vector<int32_t>& tokens, int32_t n_prefix, const std::string& spec,
                            int32_t n_ctx, int32_t window,
                            const std::function<void(const StreamRun&, const StreamWindow&)>& on_window) {
  const ModelConfig& c = model.config();
  if (window < 1) fail("the window must hold at least one token");
  if (n_prefix < 1) fail("the prefix must hold at least one token");
  if (static_cast<int32_t>(tokens.size()) <= n_prefix)
    fail("the stream of {} tokens has nothing after its {}-token prefix", tokens.size(), n_prefix);
  auto policy = kv::make_kv_policy(spec, c.n_layer, c.n_head_kv);
  StreamRun run;
  run.policy = spec;
  run.describe = policy->describe();
  run.positions = policy->positions();

  const std::vector<int32_t> prefix(tokens.begin(), tokens.begin() + n_prefix);
  std::vector<int32_t> continuation(tokens.begin() + n_prefix, tokens.end());
  // Original positions end at the context: score what fits and say so, the way `run` stops with "context full".
  if (run.positions == kv::KvPositions::Original && static_cast<int64_t>(tokens.size()) > n_ctx) {
    if (n_prefix >= n_ctx) fail("the {}-token prefix does not fit the context of {}", n_prefix, n_ctx);
    continuation.resize(static_cast<size_t>(n_ctx - n_prefix));
    run.end = StreamEnd::ContextFull;
  }

  GenerateParams gp;
  gp.n_ctx = n_ctx;
  gp.n_batch = std::min(256, n_prefix);
  Generator gen(model, tok, pool, *policy, gp);
  StreamWindow w;
  const auto t0 = std::chrono::steady_clock::now();
  const auto close = [&](const ScoreStep& s, int32_t end) {
    w.end = end;
    w.kv_bytes = s.kv_bytes.total();
    w.kv_pool_bytes = s.kv_pool_bytes;
    w.rss_bytes = process_rss_bytes();
    w.n_cached = s.n_cached;
    run.windows.push_back(w);
    if (on_window) on_window(run, w);
    w = StreamWindow{};
    w.first = end;
  };
  // Windows are cut on the positions of the text: token i of the continuation sits at n_prefix + i.
  w.first = n_prefix;
  const int32_t n_cont = static_cast<int32_t>(continuation.size());
  const ScoreStats st = gen.score_continuation(prefix, continuation, nullptr, [&](const ScoreStep& s) {
    const int32_t pos = n_prefix + s.index;
    w.nll_sum += s.nll;
    ++w.n_scored;
    if ((pos + 1) % window == 0 || s.index + 1 == n_cont) close(s, pos + 1);
  });
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run.n_scored = st.n_scored;
  run.nll_sum = st.nll_sum;
  return run;
}

StreamRun windowed_full_reference(const Model& model, ThreadPool& pool, const std::vector<int32_t>& tokens,
                                  int32_t n_prefix, int32_t n_ctx, int32_t window, int32_t n_context,
                                  const std::function<void(const StreamRun&, const StreamWindow&)>& on_window) {
  const ModelConfig& c = model.config();
  if (n_context < 1) fail("the reference needs at least one token of context before each window");
  if (n_context + window > n_ctx)
    fail("the reference's {} tokens of context plus a window of {} exceed the context of {}", n_context, window, n_ctx);
  auto policy = kv::make_kv_policy("full", c.n_layer, c.n_head_kv);
  StreamRun run;
  run.policy = fmt::format("full, afresh per window ({} before)", n_context);
  run.describe = policy->describe();
  const int32_t n_batch = 256;
  SessionOptions so;
  so.n_ctx = n_context + window;
  so.n_batch = n_batch;
  so.kv_max_bytes = SessionOptions::kUnlimited;
  EngineSession session(model, pool, so);
  const SequenceId seq = session.add_sequence(*policy);
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t n = static_cast<int32_t>(tokens.size());
  for (int32_t first = n_prefix; first < n;) {
    const int32_t end = std::min(n, (first / window + 1) * window);
    const int32_t start = std::max(0, first - n_context);
    StreamWindow w;
    w.first = first;
    w.end = end;
    session.reset_sequence(seq);  // positions from 0 at `start`
    // In chunks of n_batch, so that only one chunk's logits are held: the row of token t - 1 predicts token t, for t
    // in [first, end). The full cache's window expiry runs after each chunk, as in `run`.
    for (int32_t at = start; at < end; at += n_batch) {
      const int32_t len = std::min(n_batch, end - at);
      PrefillOptions po;
      po.hooks = PolicyHooks::Off;
      for (int32_t i = 0; i < len; ++i)
        if (at + i + 1 >= first && at + i + 1 < end) po.logit_positions.push_back(i);
      session.prefill(seq, std::span<const int32_t>(tokens.data() + at, static_cast<size_t>(len)), po, logits);
      for (size_t r = 0; r < po.logit_positions.size(); ++r) {
        const float* l = logits.data() + r * static_cast<size_t>(c.n_vocab);
        const float mx = *std::max_element(l, l + c.n_vocab);
        double z = 0;
        for (int32_t v = 0; v < c.n_vocab; ++v) z += std::exp(static_cast<double>(l[v] - mx));
        const int32_t next = tokens[static_cast<size_t>(at + po.logit_positions[r] + 1)];
        w.nll_sum += std::log(z) - static_cast<double>(l[next] - mx);
        ++w.n_scored;
      }
    }
    w.kv_bytes = session.bytes(seq).total();
    w.kv_pool_bytes = session.pages().bytes_reserved();
    w.rss_bytes = process_rss_bytes();
    w.n_cached = session.sequence(seq).n_tokens_max();
    run.windows.push_back(w);
    run.n_scored += w.n_scored;
    run.nll_sum += w.nll_sum;
    if (on_window) on_window(run, w);
    first = end;
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return run;
}

namespace {

std::string human_mib(size_t b) { return fmt::format("{:.2f}", static_cast<double>(b) / (1024.0 * 1024.0)); }

std::string tables(const std::vector<StreamRun>& runs, int32_t n_ctx) {
  // Rows: the windows of the longest run; a run that stopped shows where.
  const StreamRun* longest = &runs.front();
  for (const StreamRun& r : runs)
    if (r.windows.size() > longest->windows.size()) longest = &r;
  std::string t = "perplexity per window of positions:\n\n| positions |";
  std::string rule = "|---|";
  for (const StreamRun& r : runs) {
    t += fmt::format(" {} |", r.policy);
    rule += "---:|";
  }
  t += "\n" + rule + "\n";
  for (size_t i = 0; i < longest->windows.size(); ++i) {
    const StreamWindow& lw = longest->windows[i];
    t += fmt::format("| {}-{} |", lw.first, lw.end);
    for (const StreamRun& r : runs) {
      if (i < r.windows.size() && r.windows[i].end == lw.end)
        t += fmt::format(" {:.2f} |", r.windows[i].perplexity());
      else if (i < r.windows.size())
        t += fmt::format(" {:.2f} (to {}) |", r.windows[i].perplexity(), r.windows[i].end);
      else if (i == r.windows.size() && r.end == StreamEnd::ContextFull)
        t += fmt::format(" stopped: context full at {} |", n_ctx);
      else
        t += " - |";
    }
    t += "\n";
  }
  t += "| all scored |";
  for (const StreamRun& r : runs)
    t += fmt::format(" {:.2f} ({} tokens) |", r.n_scored > 0 ? std::exp(r.nll_sum / r.n_scored) : 0.0, r.n_scored);
  t += "\n\nmemory at each window's end (MiB): KV held by the sequence / page pool reserved / process RSS; tokens "
       "cached per head:\n\n| position |";
  for (const StreamRun& r : runs) t += fmt::format(" {} |", r.policy);
  t += "\n" + rule + "\n";
  for (size_t i = 0; i < longest->windows.size(); ++i) {
    t += fmt::format("| {} |", longest->windows[i].end);
    for (const StreamRun& r : runs) {
      if (i < r.windows.size()) {
        const StreamWindow& w = r.windows[i];
        t += fmt::format(" {} / {} / {}; {} |", human_mib(w.kv_bytes), human_mib(w.kv_pool_bytes),
                         human_mib(w.rss_bytes), w.n_cached);
      } else {
        t += " - |";
      }
    }
    t += "\n";
  }
  return t;
}

nlohmann::json to_json(const StreamRun& r) {
  nlohmann::json j;
  j["policy"] = r.policy;
  j["describe"] = r.describe;
  j["positions"] = r.positions == kv::KvPositions::InCache ? "in-cache" : "original";
  j["end"] = r.end == StreamEnd::Done ? "done" : "context full";
  j["n_scored"] = r.n_scored;
  j["perplexity"] = r.n_scored > 0 ? std::exp(r.nll_sum / r.n_scored) : 0.0;
  j["seconds"] = r.seconds;
  j["windows"] = nlohmann::json::array();
  for (const StreamWindow& w : r.windows)
    j["windows"].push_back({{"first", w.first},
                            {"end", w.end},
                            {"n_scored", w.n_scored},
                            {"perplexity", w.perplexity()},
                            {"kv_bytes", w.kv_bytes},
                            {"kv_pool_bytes", w.kv_pool_bytes},
                            {"rss_bytes", w.rss_bytes},
                            {"n_cached", w.n_cached}});
  return j;
}

}  // namespace

std::string run_stream_ppl(const StreamPplOptions& o) {
  if (o.kv_specs.empty()) fail("give at least one --kv SPEC");
  if (o.n_prefix < 1 || o.n_tokens <= o.n_prefix)
    fail("--tokens ({}) must exceed --prefix ({}), which must be at least 1", o.n_tokens, o.n_prefix);
  auto model = Model::load(o.model);
  auto tok = Tokenizer::from_gguf(model->file());
  const ModelConfig& mc = model->config();
  const int32_t n_ctx = o.n_ctx > 0 ? o.n_ctx : mc.n_ctx_train;
  for (const std::string& spec : o.kv_specs) (void)kv::make_kv_policy(spec, mc.n_layer, mc.n_head_kv);
  if (o.n_prefix >= n_ctx) fail("the {}-token prefix does not fit the context of {}", o.n_prefix, n_ctx);
  if (o.n_reference_context > 0 && o.n_reference_context + o.window > n_ctx)
    fail("--reference-context {} plus --window {} exceed the context of {}", o.n_reference_context, o.window, n_ctx);

  // The text's start, cut to exactly n_tokens; read in growing pieces, since a book is far longer than needed.
  std::ifstream in(o.text, std::ios::binary);
  if (!in)
    fail("cannot read the text '{}'{}", o.text,
         o.text == "data/kjv.txt" ? " (scripts/setup.sh makes it; or give --text FILE)" : "");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<int32_t> tokens;
  for (size_t n_bytes = static_cast<size_t>(o.n_tokens) * 6;; n_bytes *= 2) {
    tokens = tok->encode(std::string_view(text).substr(0, std::min(n_bytes, text.size())), tok->add_bos(), false);
    if (static_cast<int32_t>(tokens.size()) >= o.n_tokens) break;
    if (n_bytes >= text.size()) fail("the text '{}' holds {} tokens, fewer than --tokens {}", o.text, tokens.size(), o.n_tokens);
  }
  tokens.resize(static_cast<size_t>(o.n_tokens));

  const int32_t n_threads = o.n_threads > 0 ? o.n_threads : static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(n_threads);
  std::vector<StreamRun> runs;
  nlohmann::json j;
  j["model"] = o.model;
  j["text"] = o.text;
  j["n_tokens"] = o.n_tokens;
  j["n_prefix"] = o.n_prefix;
  j["window"] = o.window;
  j["n_ctx"] = n_ctx;
  j["n_ctx_train"] = mc.n_ctx_train;
  j["n_threads"] = n_threads;
  const auto print_window = [](const StreamRun&, const StreamWindow& w) {
    fmt::print(stderr, "  {}-{}: ppl {:.3f}, kv {} MiB, pool {} MiB, rss {} MiB\n", w.first, w.end, w.perplexity(),
               human_mib(w.kv_bytes), human_mib(w.kv_pool_bytes), human_mib(w.rss_bytes));
  };
  const auto record = [&] {
    if (o.out.empty()) return;
    j["runs"].push_back(to_json(runs.back()));
    std::ofstream out(o.out, std::ios::trunc);
    if (!(out << j.dump(1) << "\n")) fail("cannot write '{}'", o.out);
  };
  for (const std::string& spec : o.kv_specs) {
    fmt::print(stderr, "stream-ppl: {} over {} tokens, ctx {}\n", spec, o.n_tokens, n_ctx);
    runs.push_back(stream_perplexity(*model, *tok, pool, tokens, o.n_prefix, spec, n_ctx, o.window, print_window));
    if (runs.back().end == StreamEnd::ContextFull)
      fmt::print(stderr, "  stopped: context full at {} (--ctx); only positions within the cache go past it\n", n_ctx);
    record();
  }
  if (o.n_reference_context > 0) {
    fmt::print(stderr, "stream-ppl: the full cache afresh per window, {} tokens before each\n", o.n_reference_context);
    runs.push_back(windowed_full_reference(*model, pool, tokens, o.n_prefix, n_ctx, o.window, o.n_reference_context,
                                           print_window));
    record();
  }
  return tables(runs, n_ctx);
}

}  // namespace longctx::eval
