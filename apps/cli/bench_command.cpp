#include "bench_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <thread>

#include "core/error.h"
#include "core/memory_bandwidth.h"
#include "core/synthetic_weights.h"
#include "core/thread_pool.h"
#include "engine/session.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/quest.h"
#include "kv/shadowkv.h"
#include "model/model.h"
#include "device_option.h"

namespace longctx {

CLI::App* add_bench_subcommand(CLI::App& app, BenchOptions& o) {
  auto* b = app.add_subcommand(
      "bench",
      "Measure prompt processing (pp) and generation (tg) speed at given context depths, like llama-bench.\n"
      "For each depth d: 'pp N' times prefilling N tokens on top of a cache already holding d tokens; 'tg N' times\n"
      "generating N tokens one forward at a time on top of d tokens. The token ids are fixed pseudo-random ids (no\n"
      "tokenizer, no sampling: the cost is the model's forward alone). Prints the median tokens/s over --reps runs,\n"
      "its spread, decode's achieved memory bandwidth against the machine's copy bandwidth (probed after each\n"
      "repetition), and the peak RSS.\n"
      "--synthetic SHAPE[:SEED] benchmarks random bf16 weights of a real model's shape instead of a file (llama3-8b:\n"
      "15 GiB of memory; tiny: for tests); the same seed gives the same weights as the CUDA backend's.\n"
      "Example: longctx bench -m model.gguf -p 512 -n 128 --depth 0,4096 --threads 2\n"
      "         longctx bench --synthetic llama3-8b:1 -p 64 -n 16 -r 2\n"
      "         longctx bench --synthetic llama3-8b:1 --device cuda -p 4096 -n 128 --depth 0,32768");
  b->add_option("-m,--model", o.model, "GGUF model file (or --synthetic)");
  b->add_option("--synthetic", o.synthetic,
                "Synthetic weights instead of -m: llama3-8b[:SEED] (Llama-3-8B's shapes, bf16, 15 GiB) or tiny[:SEED]");
  b->add_option("-p,--n-prompt", o.n_prompt, "Tokens of the pp test (0: skip it)")->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("-n,--n-gen", o.n_gen, "Tokens of the tg test (0: skip it)")->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  b->add_option("-d,--depth", o.depths, "Comma-separated context depths: tokens already in the cache before each test")
      ->capture_default_str();
  b->add_option("-t,--threads", o.n_threads, "Threads (default: all cores)")->check(CLI::Range(1, 1024));
  b->add_option("-r,--reps", o.n_reps, "Repetitions of every test; the median is reported")->capture_default_str()
      ->check(CLI::Range(1, 1000));
  b->add_option("-b,--batch", o.n_batch, "Most tokens per forward, in pp and when filling the depth")
      ->capture_default_str()->check(CLI::Range(1, 8192));
  b->add_option("--kv", o.kv, "KV cache policy. " + kv::kv_policy_help())->capture_default_str();
  b->add_option("-s,--seed", o.seed, "Seed of the token ids")->capture_default_str();
  b->add_flag("--json", o.json, "Print one JSON record per test on stdout instead of the table");
  add_device_option(b, o.device);
  b->add_option("--spec", o.spec,
                "Speculative decoding against plain decode, greedy, side by side at each depth (-m only): "
                "self[:gamma=N,draft=SPEC]");
  b->add_option("--file", o.file, "With --spec: fill each depth with this text's tokens, cycled (default: fixed ids)");
  return b;
}

std::vector<int32_t> parse_depth_list(const std::string& s) {
  const auto bad = [&](const std::string& entry) {
    fail("bad --depth list '{}': entry '{}' is not a whole number of tokens >= 0 (example: --depth 0,2048,8192)", s,
         entry);
  };
  std::vector<int32_t> depths;
  size_t start = 0;
  while (true) {
    const size_t end = std::min(s.find(',', start), s.size());
    const std::string entry = s.substr(start, end - start);
    if (entry.empty() || entry.size() > 10 || entry.find_first_not_of("0123456789") != std::string::npos) bad(entry);
    const long long v = std::stoll(entry);
    if (v > std::numeric_limits<int32_t>::max()) bad(entry);
    depths.push_back(static_cast<int32_t>(v));
    if (end == s.size()) break;
    start = end + 1;
  }
  return depths;
}

RepStats summarize_reps(const std::vector<double>& samples) {
  if (samples.empty()) fail("internal: no repetitions to summarize");
  RepStats r;
  r.n = static_cast<int32_t>(samples.size());
  std::vector<double> v = samples;
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  r.median = v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
  r.min = v.front();
  r.max = v.back();
  r.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - r.mean) * (x - r.mean);
    r.stddev = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return r;
}

int32_t bench_token_id(uint64_t seed, int64_t pos, int32_t n_vocab) {
  uint64_t z = seed + static_cast<uint64_t>(pos) * 0x9e3779b97f4a7c15ull;  // splitmix64, one step per position
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<int32_t>(z % static_cast<uint64_t>(n_vocab));
}

int64_t weight_bytes_per_token(const Model& model) {
  const ModelConfig& c = model.config();
  const auto matrix = [](const Weight& w) { return static_cast<int64_t>(ggml_row_bytes(w.type, w.n_in)) * w.n_out; };
  const auto vec = [](const std::vector<float>& v) { return static_cast<int64_t>(v.size() * sizeof(float)); };
  int64_t n = 0;
  for (int32_t il = 0; il < c.n_layer; ++il) {
    const LayerWeights& w = model.layer(il);
    n += matrix(w.wq) + matrix(w.wk) + matrix(w.wv) + matrix(w.wo) + matrix(w.w_gate) + matrix(w.w_up) +
         matrix(w.w_down);
    n += vec(w.attn_norm) + vec(w.ffn_norm) + vec(w.q_norm) + vec(w.k_norm) + vec(w.post_attn_norm) +
         vec(w.post_ffn_norm);
  }
  // The output head is read whole every step (tied or not); the embedding table only one row.
  n += matrix(model.output()) + vec(model.output_norm());
  n += static_cast<int64_t>(ggml_row_bytes(model.token_embd().type, model.token_embd().n_in));
  return n;
}

int64_t kv_bytes_read(const kv::KvSequence& seq, const kv::KvPagePool& pool, const ModelConfig& c, int32_t query_pos) {
  const kv::KvGeometry& geo = seq.geometry();
  int64_t n = 0;
  for (int32_t il = 0; il < geo.n_layer; ++il) {
    const bool local = c.sliding_window > 0 && il < static_cast<int32_t>(c.layer_is_local.size()) &&
                       c.layer_is_local[static_cast<size_t>(il)];
    for (int32_t g = 0; g < geo.n_head_kv; ++g) {
      const kv::KvHeadCache& h = seq.head(il, g);
      int32_t s = 0;
      for (const kv::KvPage& page : h.pages) {
        for (int32_t end = s + page.n_rows; s < end; ++s) {
          const int32_t p = h.positions[static_cast<size_t>(s)];
          // The attention kernel's visibility rule (attention.h): positions in (query_pos - window, query_pos].
          if (p > query_pos || (local && p <= query_pos - c.sliding_window)) continue;
          n += static_cast<int64_t>(pool.page_bytes(page.format) / static_cast<size_t>(geo.page_tokens));
        }
      }
    }
  }
  return n;
}

namespace {
int64_t quest_bytes_read(const kv::QuestReadFilter& quest, const kv::KvSequence& seq, int64_t dense_bytes) {
  // The rows its pages held, as a fraction of what a dense step reads (formats mixed alike in both), plus the key
  // summaries of every page it ranked on the layers past the dense ones (an f32 min and max per channel).
  if (quest.rows_held() == 0) return dense_bytes;
  const kv::KvGeometry& geo = seq.geometry();
  int64_t summaries = 0;
  for (int32_t il = quest.dense_layers(); il < geo.n_layer; ++il)
    for (int32_t g = 0; g < geo.n_head_kv; ++g)
      summaries += quest.ranked_pages(static_cast<int64_t>(seq.head(il, g).pages.size()), geo.page_tokens) * 2 *
                   geo.head_dim * static_cast<int64_t>(sizeof(float));
  return static_cast<int64_t>(static_cast<double>(dense_bytes) * static_cast<double>(quest.rows_read()) /
                              static_cast<double>(quest.rows_held())) + summaries;
}
}  // namespace

std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20) {
      out += fmt::format("\\u{:04x}", u);
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

int64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;  // "VmHWM:  123456 kB"
  return 0;
}

namespace {
// Resets the peak-RSS mark to the current RSS (Linux >= 4.0: "5" to clear_refs), so that the copy probe's buffers,
// freed again, do not count as the engine's peak. False where the system does not allow it.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}
}  // namespace

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024 && u < 3) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.{}f} {}", b, u == 0 ? 0 : 1, units[u]);
}

std::string file_name(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

enum class TestKind { Prompt, Generation };

struct CaseResult {
  TestKind kind = TestKind::Prompt;
  int32_t n_tokens = 0;
  int32_t depth = 0;
  std::vector<double> tokens_per_s;  // (n_reps)
  int64_t kv_bytes_per_token = 0;    // tg: mean over the generated tokens
  std::vector<double> copy_gbs;      // tg: the copy bandwidth probed right after each repetition (when allowed)
};

// A fingerprint of what the cache holds in its first n_keep[i] slots of every head: positions and page formats.
// Rewinding by dropping the slots appended since is exact only while this is unchanged, which holds for a policy
// that only appends (the full cache); one that evicts or repacks old pages is refilled from scratch instead.
uint64_t prefix_fingerprint(const kv::KvSequence& seq, const std::vector<int32_t>& n_keep) {
  const kv::KvGeometry& geo = seq.geometry();
  uint64_t h = 1469598103934665603ull;
  const auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  for (int32_t il = 0; il < geo.n_layer; ++il)
    for (int32_t g = 0; g < geo.n_head_kv; ++g) {
      const kv::KvHeadCache& hc = seq.head(il, g);
      const int32_t keep = n_keep[static_cast<size_t>(il * geo.n_head_kv + g)];
      if (hc.n_tokens() < keep) return 0;
      for (int32_t s = 0; s < keep; ++s) mix(static_cast<uint32_t>(hc.positions[static_cast<size_t>(s)]));
      for (int32_t p = 0, s0 = 0; s0 < keep; s0 += hc.pages[static_cast<size_t>(p++)].n_rows)
        mix(static_cast<uint64_t>(hc.pages[static_cast<size_t>(p)].format) + 7);
    }
  return h;
}

// One session of one sequence, reused by every test.
class BenchRunner {
 public:
  // n_ctx: the most tokens the cache will hold (depth plus the longest test).
  BenchRunner(const Model& model, ThreadPool& pool, Device device, kv::KvPolicy& policy, int32_t n_batch,
              int32_t n_ctx, uint64_t seed)
      : model_(model), seed_(seed), session_(model, pool, session_options(device, n_batch, n_ctx)),
        seq_(session_.add_sequence(policy)) {
    if (policy.reconstruction().chunk > 0)
      fail("bench does not run KVzip's reconstruction pass after prefill; measure kvzip with `longctx run` or `eval`");
    logits_.resize(static_cast<size_t>(model.config().n_vocab));
  }

  // Untimed: the cache holds exactly `depth` tokens at positions [0, depth) afterwards (before the policy acts).
  // With window expiry on, sliding-window layers free the tokens that left their window after every chunk, as
  // `run` does, so the depth is held in the memory a real run holds.
  void fill(int32_t depth) {
    session_.reset_sequence(seq_);  // no scores of the previous fill carry over
    prefill(depth, /*want_logits=*/false, WindowExpiry::On);
    const kv::KvGeometry& geo = sequence().geometry();
    depth_ = depth;
    n_keep_.assign(static_cast<size_t>(geo.n_layer) * geo.n_head_kv, 0);
    for (int32_t il = 0; il < geo.n_layer; ++il)
      for (int32_t g = 0; g < geo.n_head_kv; ++g)
        n_keep_[static_cast<size_t>(il * geo.n_head_kv + g)] = sequence().head(il, g).n_tokens();
    fingerprint_ = prefix_fingerprint(sequence(), n_keep_);
  }

  // Back to the state right after fill(depth), by dropping what a test appended (every slot at a position >= depth),
  // or by refilling when the policy changed the old part of the cache (prefix_fingerprint).
  void restore() {
    if (prefix_fingerprint(sequence(), n_keep_) != fingerprint_) {
      fill(depth_);
      return;
    }
    session_.truncate(seq_, depth_);
  }

  // pp: n tokens at positions [depth, depth + n) in chunks of n_batch, the last row's logits computed, with the
  // policy's prefill hooks as `run` calls them (part of what a prompt costs under a compressing policy). Window
  // expiry is off in the timed tests, so that restore() can rewind by dropping what they appended (they then hold at
  // most window + test tokens more on sliding-window layers). Returns seconds.
  double time_prompt(int32_t n) {
    const auto t0 = std::chrono::steady_clock::now();
    prefill(n, /*want_logits=*/true, WindowExpiry::Off);
    return seconds_since(t0);
  }

  // tg: n decode steps of one token each at positions [depth, depth + n), logits of each computed, with the
  // policy's per-step hook as `run` calls it; the ids are fixed (no sampling). Returns seconds.
  double time_generation(int32_t n) {
    const ModelConfig& c = model_.config();
    const auto t0 = std::chrono::steady_clock::now();
    for (int32_t i = 0; i < n; ++i) {
      const SequenceStep st{seq_, bench_token_id(seed_, session_.position(seq_), c.n_vocab)};
      session_.step({&st, 1}, logits_.data(), WindowExpiry::Off);
    }
    return seconds_since(t0);
  }

  const kv::KvSequence& sequence() const { return session_.sequence(seq_); }
  const kv::KvPagePool& pages() const { return session_.pages(); }

 private:
  static SessionOptions session_options(Device device, int32_t n_batch, int32_t n_ctx) {
    SessionOptions o;
    o.device = device;
    o.n_ctx = n_ctx;
    o.n_batch = n_batch;
    // No byte limit: the context check in bench_command bounds the tokens, and the pool allocates on demand.
    o.kv_max_bytes = SessionOptions::kUnlimited;
    return o;
  }

  // The next n fixed ids as one prompt on top of what the cache holds, with the policy's hooks.
  void prefill(int32_t n, bool want_logits, WindowExpiry expiry) {
    const int32_t first_pos = session_.position(seq_);
    ids_.resize(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i)
      ids_[static_cast<size_t>(i)] = bench_token_id(seed_, first_pos + i, model_.config().n_vocab);
    PrefillOptions po;
    if (want_logits && n > 0) po.logit_positions = {n - 1};
    po.expiry = expiry;
    session_.prefill(seq_, ids_, po, prefill_logits_);
  }

  const Model& model_;
  uint64_t seed_;
  EngineSession session_;
  SequenceId seq_;
  std::vector<int32_t> ids_;
  std::vector<float> logits_;          // (n_vocab) the last step's
  std::vector<float> prefill_logits_;  // (n_vocab) the last prompt row's
  int32_t depth_ = 0;
  std::vector<int32_t> n_keep_;  // (n_layer, n_head_kv) slots held right after fill
  uint64_t fingerprint_ = 0;
};

std::string test_name(const CaseResult& r) {
  return fmt::format("{}{}", r.kind == TestKind::Prompt ? "pp" : "tg", r.n_tokens);
}

}  // namespace

int bench_command(const BenchOptions& o) {
  const Device device = pick_device(o.device);
  if (o.model.empty() == o.synthetic.empty())
    fail("bench needs exactly one model: -m MODEL.gguf or --synthetic SHAPE[:SEED] (shapes: {}){}",
         synthetic_shape_names(), o.model.empty() ? "" : ", not both");
  ModelShape shape;
  uint64_t weight_seed = 0;
  std::string shape_error;
  if (!o.synthetic.empty() && !synthetic_shape(o.synthetic, &shape, &weight_seed, &shape_error))
    fail("--synthetic: {}", shape_error);
  const std::vector<int32_t> depths = parse_depth_list(o.depths);
  if (o.n_prompt == 0 && o.n_gen == 0) fail("nothing to measure: -p and -n are both 0");
  const int n_threads =
      o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(n_threads);
  std::unique_ptr<Model> model;
  if (o.synthetic.empty()) {
    model = Model::load(o.model);
  } else {
    const auto t_build = std::chrono::steady_clock::now();
    const double n_params = static_cast<double>(synthetic_n_params(shape));
    fmt::print(stderr, "bench: building synthetic {} (seed {}): {:.2f} {} parameters, {} of bf16 weights in memory\n",
               shape.name, weight_seed, n_params >= 1e9 ? n_params / 1e9 : n_params / 1e6, n_params >= 1e9 ? "G" : "M",
               human_bytes(2.0 * n_params));
    model = Model::synthetic(o.synthetic, &pool);
    fmt::print(stderr, "bench: built in {:.1f}s\n", seconds_since(t_build));
  }
  const ModelConfig& c = model->config();
  auto policy = kv::make_kv_policy(o.kv, c.n_layer, c.n_head_kv);
  const int32_t n_test_max = std::max(o.n_prompt, o.n_gen);
  const int32_t depth_max = *std::max_element(depths.begin(), depths.end());
  for (int32_t d : depths)
    if (static_cast<int64_t>(d) + n_test_max > c.n_ctx_train)
      fail("--depth {} plus {} test tokens needs a context of {}, beyond the model's {} tokens", d, n_test_max,
           static_cast<int64_t>(d) + n_test_max, c.n_ctx_train);

  const std::string model_name = o.synthetic.empty() ? file_name(o.model) : "synthetic " + o.synthetic;
  const int64_t weight_bytes = weight_bytes_per_token(*model);
  fmt::print(stderr, "bench: {} ({}, {} weights, {} read per decoded token), {} threads, kv {}, {} reps\n",
             model_name, arch_name(c.arch), human_bytes(static_cast<double>(model->weight_bytes())),
             human_bytes(static_cast<double>(weight_bytes)), n_threads, policy->describe(), o.n_reps);

  BenchRunner runner(*model, pool, device, *policy, o.n_batch, depth_max + n_test_max, o.seed);
  {
    // Warm-up, untimed: faults the weights' pages in and wakes the workers, as llama-bench does.
    runner.fill(0);
    runner.time_prompt(std::min(std::max(o.n_prompt, 1), std::min(o.n_batch, 32)));
    runner.restore();
    runner.time_generation(1);
  }

  // The copy bandwidth of a shared machine moves between runs by more than a decode rate does, so each tg
  // repetition is followed by a probe (best of 10) and "% of copy" is the median of the per-repetition ratios. The
  // probe's buffers must not count as the engine's peak RSS: the peak is sampled before each probe and reset after it;
  // where the mark cannot be reset, only one probe runs, at the end.
  const bool probe_each_rep = o.n_gen > 0 && reset_peak_rss();
  // The ceiling decode is held against: the host's copy bandwidth, or the GPU's where the model runs there.
  const std::unique_ptr<Backend> probe_backend = make_backend(device, pool);
  auto copy_probe = [&]() { return probe_backend->copy_bandwidth(); };
  int64_t rss = 0;
  std::vector<CaseResult> results;
  // Quest reads part of the cache each step: its row counts say how much.
  auto* quest = dynamic_cast<kv::QuestReadFilter*>(policy->read_filter());
  // ShadowKV reads what it holds beside the store (its own count) and the store's recent tokens.
  auto* shadow = dynamic_cast<kv::ShadowKvReadFilter*>(policy->read_filter());
  for (int32_t d : depths) {
    const auto t_fill = std::chrono::steady_clock::now();
    runner.fill(d);
    if (d > 0) fmt::print(stderr, "bench: depth {} filled in {:.1f}s (untimed)\n", d, seconds_since(t_fill));
    CaseResult pp{TestKind::Prompt, o.n_prompt, d, {}, 0, {}};
    CaseResult tg{TestKind::Generation, o.n_gen, d, {}, 0, {}};
    // Interleaved, pp then tg in every repetition, so drift from other load on the machine hits both alike.
    for (int32_t rep = 0; rep < o.n_reps; ++rep) {
      if (o.n_prompt > 0) {
        runner.restore();
        pp.tokens_per_s.push_back(o.n_prompt / runner.time_prompt(o.n_prompt));
      }
      if (o.n_gen > 0) {
        runner.restore();
        if (quest != nullptr) quest->reset_counts();
        if (shadow != nullptr) shadow->reset_counts();
        tg.tokens_per_s.push_back(o.n_gen / runner.time_generation(o.n_gen));
        if (probe_each_rep) {
          rss = std::max(rss, peak_rss_bytes());
          tg.copy_gbs.push_back(copy_probe().bytes_per_s / 1e9);
          reset_peak_rss();
        }
        if (rep == 0) {
          // The KV read grows linearly with the position (piecewise, with windows): the mean of the first and
          // last step's reads is the mean over the run.
          const int64_t first = kv_bytes_read(runner.sequence(), runner.pages(), c, d);
          const int64_t last = kv_bytes_read(runner.sequence(), runner.pages(), c, d + o.n_gen - 1);
          tg.kv_bytes_per_token = (first + last) / 2;
          if (quest != nullptr) tg.kv_bytes_per_token = quest_bytes_read(*quest, runner.sequence(), tg.kv_bytes_per_token);
          if (shadow != nullptr) tg.kv_bytes_per_token += shadow->bytes_read() / o.n_gen;
        }
      }
    }
    for (const CaseResult* r : {&pp, &tg}) {
      if (r->tokens_per_s.empty()) continue;
      const RepStats s = summarize_reps(r->tokens_per_s);
      fmt::print(stderr, "bench: {} @ d{}: {:.2f} tok/s (median of {}, stddev {:.2f})\n", test_name(*r), d, s.median,
                 s.n, s.stddev);
      results.push_back(*r);
    }
  }

  // Peak RSS before the bandwidth test, whose two large buffers are not the engine's.
  rss = std::max(rss, peak_rss_bytes());
  // What the KV page pool holds from the system after the last case, and the most it held (the deepest fill).
  const size_t kv_pool_bytes = runner.pages().bytes_reserved(), kv_pool_peak_bytes = runner.pages().bytes_reserved_peak();
  const CopyBandwidth bw = copy_probe();
  // A tg case's decode GB/s and its fraction of the copy bandwidth: the per-repetition ratios' median where each
  // repetition was probed, otherwise against the one probe at the end.
  struct DecodeRate {
    double gbs = 0, copy_gbs = 0, pct = 0;
  };
  auto decode_rate = [&](const CaseResult& r) {
    const double bytes = static_cast<double>(weight_bytes + r.kv_bytes_per_token);
    DecodeRate d;
    d.gbs = bytes * summarize_reps(r.tokens_per_s).median / 1e9;
    if (r.copy_gbs.size() == r.tokens_per_s.size() && !r.copy_gbs.empty()) {
      std::vector<double> pct;
      for (size_t i = 0; i < r.copy_gbs.size(); ++i)
        pct.push_back(100 * bytes * r.tokens_per_s[i] / 1e9 / r.copy_gbs[i]);
      d.pct = summarize_reps(pct).median;
      d.copy_gbs = summarize_reps(r.copy_gbs).median;
    } else {
      d.copy_gbs = bw.bytes_per_s / 1e9;
      d.pct = d.copy_gbs > 0 ? 100 * d.gbs / d.copy_gbs : 0.0;
    }
    return d;
  };

  const std::string kv_name = policy->describe();
  if (o.json) {
    for (const CaseResult& r : results) {
      const RepStats s = summarize_reps(r.tokens_per_s);
      std::string samples;
      for (double x : r.tokens_per_s) samples += fmt::format("{}{:.4f}", samples.empty() ? "" : ",", x);
      std::string rec = fmt::format(
          "{{\"test\":\"{}\",\"n_prompt\":{},\"n_gen\":{},\"depth\":{},\"tokens_per_s\":{:.4f},\"stddev\":{:.4f},"
          "\"min\":{:.4f},\"max\":{:.4f},\"samples\":[{}],\"reps\":{},\"threads\":{},\"batch\":{},\"model\":{},"
          "\"kv\":{},\"peak_rss_bytes\":{},\"kv_pool_bytes\":{},\"kv_pool_peak_bytes\":{}",
          test_name(r), r.kind == TestKind::Prompt ? r.n_tokens : 0, r.kind == TestKind::Generation ? r.n_tokens : 0,
          r.depth, s.median, s.stddev, s.min, s.max, samples, s.n, n_threads, o.n_batch, json_quote(model_name),
          json_quote(kv_name), rss, kv_pool_bytes, kv_pool_peak_bytes);
      if (r.kind == TestKind::Generation) {
        const DecodeRate d = decode_rate(r);
        std::string copies;
        for (double x : r.copy_gbs) copies += fmt::format("{}{:.3f}", copies.empty() ? "" : ",", x);
        rec += fmt::format(
            ",\"gb_per_s\":{:.3f},\"copy_gb_per_s\":{:.3f},\"pct_of_copy\":{:.1f},\"copy_samples\":[{}],"
            "\"weight_bytes_per_token\":{},\"kv_bytes_per_token\":{}",
            d.gbs, d.copy_gbs, d.pct, copies, weight_bytes, r.kv_bytes_per_token);
      }
      fmt::print("{}}}\n", rec);
    }
    std::fflush(stdout);
    return 0;
  }

  fmt::print("| model | threads | kv | test | depth | tok/s | stddev | min .. max | decode GB/s | % of copy |\n");
  fmt::print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (const CaseResult& r : results) {
    const RepStats s = summarize_reps(r.tokens_per_s);
    std::string gb = "", pct = "";
    if (r.kind == TestKind::Generation) {
      const DecodeRate d = decode_rate(r);
      gb = fmt::format("{:.2f}", d.gbs);
      pct = d.copy_gbs > 0 ? fmt::format("{:.0f}%", d.pct) : "";
    }
    fmt::print("| {} | {} | {} | {} | {} | {:.2f} | {:.2f} | {:.2f} .. {:.2f} | {} | {} |\n", model_name, n_threads,
               kv_name, test_name(r), r.depth, s.median, s.stddev, s.min, s.max, gb, pct);
  }
  fmt::print("\nmedian of {} reps. pp: {} tokens in forwards of up to {}, last row's logits; tg: one token per "
             "forward, fixed token ids (seed {}), logits computed, no sampling.\n",
             o.n_reps, o.n_prompt, o.n_batch, o.seed);
  fmt::print("decode GB/s = ({} of weights + KV read at that depth) per token x tok/s, against a copy bandwidth of "
             "{:.2f} GB/s\n(memcpy of 2 x {} {}, read + write bytes, best of {}). peak RSS: {}\n",
             human_bytes(static_cast<double>(weight_bytes)), bw.bytes_per_s / 1e9,
             human_bytes(static_cast<double>(bw.buffer_bytes)),
             bw.n_threads > 0 ? fmt::format("with {} threads", bw.n_threads) : std::string("on the GPU"), bw.n_reps,
             human_bytes(static_cast<double>(rss)));
  if (probe_each_rep)
    fmt::print("% of copy: the median over repetitions of decode GB/s against a copy probe (best of 10) taken right "
               "after each one.\n");
  return 0;
}

}  // namespace longctx
