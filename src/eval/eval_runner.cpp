#include "eval/eval_runner.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "engine/generator.h"
#include "engine/speculative.h"
#include "kv/policy.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace longctx::eval {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail("cannot read the haystack '{}'{}", path,
         path == "data/kjv.txt" ? " (scripts/setup.sh makes it; or give --haystack FILE)" : "");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Total work is counted in context tokens, each (case, policy) run weighing its length: a rough but steady
// estimate, since prefill dominates and every policy prefills the same prompt.
class Progress {
 public:
  Progress(ProgressMode mode, int64_t n_work) : mode_(mode), n_work_(n_work), t0_(Clock::now()) {}
  void update(int64_t done, int32_t run, int32_t n_runs, const std::string& what) {
    if (mode_ == ProgressMode::Off) return;
    const double s = seconds_since(t0_);
    const int width = 24;
    const int fill = n_work_ > 0 ? static_cast<int>(static_cast<double>(done) / n_work_ * width) : width;
    std::string eta = "?";
    if (done > 0) {
      const double left = s / static_cast<double>(done) * static_cast<double>(n_work_ - done);
      eta = left >= 90 ? fmt::format("{:.1f} min", left / 60) : fmt::format("{:.0f}s", left);
    }
    fmt::print(stderr, "\reval [{}{}] {}/{} {:<44.44} {:.0f}s, {} left ", std::string(std::min(fill, width), '#'),
               std::string(width - std::min(fill, width), '.'), run, n_runs, what, s, eta);
    std::fflush(stderr);
  }
  void finish() {
    if (mode_ != ProgressMode::Off) fmt::print(stderr, "\n");
  }

 private:
  ProgressMode mode_;
  int64_t n_work_;
  Clock::time_point t0_;
};

struct Prompt {
  std::vector<int32_t> tokens;
  std::vector<int32_t> continuation;  // ppl only
  int32_t n_compressed = 0;           // question_after_compress: the tokens before the question; 0: all
};

// A case and its prompt, built once and shared by every policy.
struct Built {
  Case c;
  Prompt p;
};

// What every line of the prompts file shares: how the engine decodes and scores an answer.
struct PromptsMeta {
  std::string model, prompt_style;
  int32_t n_predict = 0;
  bool question_after_compress = false;
  std::vector<std::string> stop;  // the answer ends before any of these strings (completion prompts: "\n")
  std::vector<int32_t> eog_ids;   // greedy decode ends, without the token, at any of these ids
};

// One JSON object per line, one line per case (ppl cases too, with their scored continuation), in the order the
// cases run. `tokens` are the ids the engine prefills, chat template rendered and bos added as the engine does.
void write_prompts(const std::string& path, const PromptsMeta& m, const std::vector<Built>& built) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) fail("cannot write the prompts file '{}'", path);
  for (const Built& b : built) {
    nlohmann::json j;
    j["task"] = task_name(b.c.task);
    j["length"] = b.c.length;
    j["depth"] = b.c.depth;
    j["depth_placed"] = b.c.depth_placed;
    j["seed"] = b.c.seed;
    j["model"] = m.model;
    j["prompt_style"] = m.prompt_style;
    j["n_tokens"] = b.p.tokens.size();
    j["tokens"] = b.p.tokens;
    j["question_after_compress"] = m.question_after_compress;
    // The leading tokens compressed before the rest is read; 0: the whole prompt is prefilled, then compressed.
    j["n_compressed"] = b.p.n_compressed;
    if (b.c.task == Task::Perplexity) {
      j["continuation"] = b.p.continuation;
      j["expected"] = nullptr;
      j["n_predict"] = 0;
    } else {
      j["expected"] = b.c.expected;
      j["n_predict"] = m.n_predict;
      j["stop"] = m.stop;
      j["eog_ids"] = m.eog_ids;
      j["score"] = "every expected string occurs in the answer's UTF-8 text with no ASCII letter or digit "
                   "right before or after it";
    }
    out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  if (!out) fail("cannot write the prompts file '{}'", path);
}

struct CaseResult {
  std::string policy, policy_resolved;
  Task task;
  int32_t length;
  double depth, depth_placed;
  uint64_t seed;
  std::vector<std::string> expected;
  std::string got;
  bool correct = false;
  int32_t n_prompt = 0, n_generated = 0;
  size_t kv_bytes = 0, kv_full_f16_bytes = 0;
  size_t kv_cold_bytes = 0;  // held in the cold tier (ShadowKV's values), beside kv_bytes
  size_t kv_pool_bytes = 0, kv_pool_peak_bytes = 0;  // what the page allocator held at the end and at most
  double kv_bytes_per_token = 0;
  double prefill_s = 0, decode_s = 0;
  double nll_sum = 0;
  int32_t n_scored = 0;
  bool speculative = false;
  SpecStats spec;  // with --spec: the answer's speculative steps
};

nlohmann::json to_json(const CaseResult& r) {
  nlohmann::json j;
  j["policy"] = r.policy;
  j["policy_resolved"] = r.policy_resolved;
  j["task"] = task_name(r.task);
  j["length"] = r.length;
  j["depth"] = r.depth;
  j["depth_placed"] = r.depth_placed;
  j["seed"] = r.seed;
  j["n_prompt"] = r.n_prompt;
  j["n_generated"] = r.n_generated;
  j["kv_bytes"] = r.kv_bytes;
  j["kv_full_f16_bytes"] = r.kv_full_f16_bytes;
  if (r.kv_cold_bytes > 0) j["kv_cold_bytes"] = r.kv_cold_bytes;
  j["kv_bytes_per_token"] = r.kv_bytes_per_token;
  j["kv_pool_bytes"] = r.kv_pool_bytes;
  j["kv_pool_peak_bytes"] = r.kv_pool_peak_bytes;
  j["prefill_seconds"] = r.prefill_s;
  j["decode_seconds"] = r.decode_s;
  if (r.task == Task::Perplexity) {
    j["nll_sum"] = r.nll_sum;
    j["n_scored"] = r.n_scored;
    j["perplexity"] = r.n_scored > 0 ? std::exp(r.nll_sum / r.n_scored) : 0.0;
    j["expected"] = nullptr;
    j["got"] = nullptr;
    j["correct"] = nullptr;
  } else {
    j["expected"] = r.expected;
    j["got"] = r.got;
    j["correct"] = r.correct;
    if (r.speculative) {
      j["spec_steps"] = r.spec.n_steps;
      j["spec_drafted"] = r.spec.n_drafted;
      j["spec_accepted"] = r.spec.n_accepted;
      j["spec_tokens_per_step"] = r.spec.tokens_per_step();
      j["spec_draft_seconds"] = r.spec.draft_seconds;
      j["spec_verify_seconds"] = r.spec.verify_seconds;
    }
  }
  return j;
}

std::vector<PolicySummary> summarize(const std::vector<CaseResult>& rs, const std::vector<std::string>& policies,
                                     const std::vector<Task>& tasks, int32_t only_length) {
  std::vector<PolicySummary> out;
  for (const std::string& p : policies) {
    PolicySummary s;
    s.policy = p;
    double bpt = 0, nll = 0, dec_s = 0;
    int64_t n = 0, n_scored = 0, n_gen = 0;
    std::map<Task, std::pair<int, int>> acc;
    for (const CaseResult& r : rs) {
      if (r.policy != p || (only_length > 0 && r.length != only_length)) continue;
      bpt += r.kv_bytes_per_token;
      s.kv_pool_peak_bytes = std::max(s.kv_pool_peak_bytes, r.kv_pool_peak_bytes);
      ++n;
      dec_s += r.decode_s;
      if (r.task == Task::Perplexity) {
        nll += r.nll_sum;
        n_scored += r.n_scored;
        n_gen += std::max(0, r.n_scored - 1);
      } else {
        auto& a = acc[r.task];
        a.first += r.correct;
        a.second += 1;
        n_gen += std::max(0, r.n_generated - 1);  // the first token comes from prefill's logits
      }
    }
    if (n == 0) continue;
    s.kv_bytes_per_token = bpt / n;
    for (Task t : tasks)
      if (t != Task::Perplexity && acc.count(t))
        s.accuracy.emplace_back(task_name(t), static_cast<double>(acc[t].first) / acc[t].second);
    s.perplexity = n_scored > 0 ? std::exp(nll / n_scored) : 0;
    s.decode_tok_s = dec_s > 0 ? n_gen / dec_s : 0;
    out.push_back(std::move(s));
  }
  return out;
}

std::string table_of(const std::vector<PolicySummary>& ss, const std::vector<Task>& tasks) {
  std::string t = "| policy | KV bytes/token | KV pool peak |";
  std::string rule = "|---|---:|---:|";
  for (Task k : tasks) {
    t += k == Task::Perplexity ? " perplexity |" : fmt::format(" {} acc |", task_name(k));
    rule += "---:|";
  }
  t += " decode tok/s |\n" + rule + "---:|\n";
  for (const PolicySummary& s : ss) {
    t += fmt::format("| {} | {:.0f} | {:.1f} MiB |", s.policy, s.kv_bytes_per_token, s.kv_pool_peak_bytes / 1048576.0);
    for (Task k : tasks) {
      if (k == Task::Perplexity) {
        t += s.perplexity > 0 ? fmt::format(" {:.2f} |", s.perplexity) : " - |";
        continue;
      }
      auto it = std::find_if(s.accuracy.begin(), s.accuracy.end(), [&](const auto& a) { return a.first == task_name(k); });
      t += it == s.accuracy.end() ? " - |" : fmt::format(" {:.2f} |", it->second);
    }
    t += fmt::format(" {:.1f} |\n", s.decode_tok_s);
  }
  return t;
}

void write_results(const std::string& path, const nlohmann::json& meta, const std::vector<CaseResult>& rs,
                   const std::vector<PolicySummary>& summary) {
  nlohmann::json j = meta;
  j["cases"] = nlohmann::json::array();
  for (const CaseResult& r : rs) j["cases"].push_back(to_json(r));
  j["summary"] = nlohmann::json::array();
  for (const PolicySummary& s : summary) {
    nlohmann::json e;
    e["policy"] = s.policy;
    e["kv_bytes_per_token"] = s.kv_bytes_per_token;
    e["kv_pool_peak_bytes"] = s.kv_pool_peak_bytes;
    for (const auto& [task, a] : s.accuracy) e["accuracy"][task] = a;
    e["perplexity"] = s.perplexity > 0 ? nlohmann::json(s.perplexity) : nlohmann::json(nullptr);
    e["decode_tok_s"] = s.decode_tok_s;
    j["summary"].push_back(e);
  }
  // Written whole after every case, through a rename, so a long run killed midway leaves a valid file.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) fail("cannot write the results file '{}'", tmp);
    // An answer cut off inside a UTF-8 character holds its first bytes: they are written as U+FFFD.
    out << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    if (!out) fail("cannot write the results file '{}'", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("cannot write the results file '{}': {}", path, ec.message());
}

}  // namespace

EvalReport run_eval(const EvalOptions& o) {
  // ---- every check before any work ----
  if (o.out.empty()) fail("give the results file with -o FILE");
  const std::vector<Task> tasks = parse_task_list(o.tasks);
  const std::vector<int32_t> lengths = parse_length_list(o.lengths);
  const std::vector<double> depths = parse_depth_list(o.depths);
  if (o.kv_specs.empty()) fail("give at least one --kv SPEC");
  if (o.n_seeds < 1) fail("--seeds must be at least 1");
  {
    // Opening for append creates the file if need be and keeps what is there: only a path that cannot be written
    // fails here. The directory must also take the temporary file beside it.
    std::ofstream probe(o.out, std::ios::app);
    if (!probe) fail("cannot write the results file '{}'", o.out);
    std::ofstream probe_tmp(o.out + ".tmp", std::ios::app);
    if (!probe_tmp) fail("cannot write beside the results file '{}'", o.out);
    probe_tmp.close();
    std::filesystem::remove(o.out + ".tmp");
    if (!o.prompts_out.empty()) {
      std::ofstream probe_prompts(o.prompts_out, std::ios::app);
      if (!probe_prompts) fail("cannot write the prompts file '{}'", o.prompts_out);
    }
  }
  const std::vector<std::string> haystack = [&] {
    const std::string text = read_text(o.haystack);
    bool blank = std::all_of(text.begin(), text.end(), [](char ch) { return std::isspace(static_cast<unsigned char>(ch)) != 0; });
    if (blank) fail("the haystack '{}' is empty", o.haystack);
    return split_sentences(text);
  }();

  auto model = Model::load(o.model);
  auto tok = Tokenizer::from_gguf(model->file());
  const ModelConfig& mc = model->config();
  for (int32_t len : lengths) {
    if (len > mc.n_ctx_train)
      fail("length {} is beyond the model's context of {} tokens", len, mc.n_ctx_train);
    const bool asks = std::any_of(tasks.begin(), tasks.end(), [](Task t) { return t != Task::Perplexity; });
    const bool scores = std::find(tasks.begin(), tasks.end(), Task::Perplexity) != tasks.end();
    if (asks && len < o.n_predict + 128) fail("length {} is too short for a question and a {}-token answer", len, o.n_predict);
    if (scores && len < o.n_score + 16) fail("length {} is too short to score {} tokens after a prefix (--ppl-tokens)", len, o.n_score);
  }
  for (const std::string& spec : o.kv_specs)
    for (int32_t len : lengths) {
      const auto policy = kv::make_kv_policy(resolve_budget(spec, len), mc.n_layer, mc.n_head_kv);
      if (o.prefill_compress) check_policy_compresses_chunks(*policy);
    }
  const SpecParams spec_params = o.spec.empty() ? SpecParams{} : parse_spec(o.spec);
  if (!o.spec.empty())
    for (const std::string& spec : o.kv_specs) (void)make_verifier_policy(spec, mc.n_layer, mc.n_head_kv);

  const bool chat = o.style == PromptStyle::Chat ||
                    (o.style == PromptStyle::Auto && model->file().has("tokenizer.chat_template"));
  const ChatTemplate chat_tpl = chat ? chat_template_for(model->file()) : ChatTemplate{};
  const TokenCounter count = [&](std::string_view s) {
    return static_cast<int32_t>(tok->encode(s, /*add_bos=*/false, /*parse_special=*/false).size());
  };
  auto wrap = [&](const Case& c) {
    if (!chat) return c.context + "\n\nQuestion: " + c.question + "\nAnswer: " + c.answer_prefix;
    std::vector<ChatMessage> msgs{{"user", c.context + "\n\n" + c.question}};
    return apply_chat_template(chat_tpl, msgs, true) + c.answer_prefix;
  };

  // ---- the cases, built once and shared by every policy ----
  std::vector<Built> built;
  for (int32_t len : lengths)
    for (Task t : tasks)
      for (double d : (t == Task::Perplexity ? std::vector<double>{0} : depths))
        for (int32_t s = 0; s < o.n_seeds; ++s) {
          const uint64_t seed = o.seed + static_cast<uint64_t>(s);
          CaseParams cp;
          Built b;
          if (t == Task::Perplexity) {
            // Slack of 10% in sentences, then cut exactly in tokens.
            cp.n_context_tokens = len - o.n_score + len / 10 + 64;
            cp.n_score_tokens = o.n_score;
            b.c = make_case(t, len, d, seed, haystack, count, cp);
            std::vector<int32_t> ids = tok->encode(b.c.context, tok->add_bos(), false);
            if (static_cast<int32_t>(ids.size()) < len)
              fail("the haystack '{}' is too short for a ppl case of {} tokens", o.haystack, len);
            const size_t n_prefix = static_cast<size_t>(len - o.n_score);
            b.p.tokens.assign(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n_prefix));
            b.p.continuation.assign(ids.begin() + static_cast<std::ptrdiff_t>(n_prefix), ids.begin() + len);
          } else {
            // The wrapping's cost is measured on a first build, then the context is resized until prompt and
            // answer fit in the length (the per-sentence count differs slightly from the whole text's): the
            // largest build that fits is kept; too long shrinks by the excess, too short grows by half the gap,
            // so the search closes in from both sides instead of jumping over the target.
            int32_t budget = len - o.n_predict - 96;
            bool fits = false;
            Built best;
            for (int iter = 0; iter < 12; ++iter) {
              cp.n_context_tokens = budget;
              b.c = make_case(t, len, d, seed, haystack, count, cp);
              const std::string text = wrap(b.c);
              if (o.question_after_compress) {
                // Split where the question starts: what comes before it is compressed before it is read.
                const size_t at = text.rfind(b.c.question);
                if (at == std::string::npos) fail("internal: the question is not in the {} prompt", task_name(t));
                b.p.tokens = tok->encode(text.substr(0, at), tok->add_bos(), /*parse_special=*/chat);
                b.p.n_compressed = static_cast<int32_t>(b.p.tokens.size());
                const std::vector<int32_t> rest = tok->encode(text.substr(at), false, /*parse_special=*/chat);
                b.p.tokens.insert(b.p.tokens.end(), rest.begin(), rest.end());
              } else {
                b.p.tokens = tok->encode(text, tok->add_bos(), /*parse_special=*/chat);
              }
              const int32_t excess = static_cast<int32_t>(b.p.tokens.size()) + o.n_predict - len;
              if (excess <= 0) {
                if (!fits || b.p.tokens.size() > best.p.tokens.size()) best = b;
                fits = true;
                if (excess > -16) break;
                budget += std::max(1, -excess / 2);
              } else {
                budget -= excess + 4;
              }
            }
            if (!fits) fail("could not fit a {} case in {} tokens", task_name(t), len);
            b = std::move(best);
          }
          built.push_back(std::move(b));
        }

  // A base model runs on past its answer; a chat one ends its turn.
  const std::vector<std::string> stop = chat ? std::vector<std::string>{} : std::vector<std::string>{"\n"};
  if (!o.prompts_out.empty()) {
    PromptsMeta pm;
    pm.model = o.model;
    pm.prompt_style = chat ? "chat" : "completion";
    pm.n_predict = o.n_predict;
    pm.question_after_compress = o.question_after_compress;
    pm.stop = stop;
    for (int32_t id = 0; id < tok->n_vocab(); ++id)
      if (tok->is_eog(id)) pm.eog_ids.push_back(id);
    write_prompts(o.prompts_out, pm, built);
  }

  const int32_t n_threads = o.n_threads > 0 ? o.n_threads : static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(n_threads);
  nlohmann::json meta;
  meta["model"] = o.model;
  meta["model_name"] = model->file().get_string_opt("general.name").value_or("");
  meta["n_ctx_train"] = mc.n_ctx_train;
  meta["prompt_style"] = chat ? "chat" : "completion";
  meta["tasks"] = nlohmann::json::array();
  for (Task t : tasks) meta["tasks"].push_back(task_name(t));
  meta["policies"] = o.kv_specs;
  meta["lengths"] = lengths;
  meta["depths"] = depths;
  meta["seed"] = o.seed;
  meta["n_seeds"] = o.n_seeds;
  meta["haystack"] = o.haystack;
  meta["n_predict"] = o.n_predict;
  meta["n_score"] = o.n_score;
  meta["n_threads"] = n_threads;
  meta["question_after_compress"] = o.question_after_compress;
  meta["prefill_compress"] = o.prefill_compress;
  meta["spec"] = o.spec;

  const int32_t n_runs = static_cast<int32_t>(built.size() * o.kv_specs.size());
  int64_t n_work = 0;
  for (const Built& b : built) n_work += static_cast<int64_t>(b.c.length) * static_cast<int64_t>(o.kv_specs.size());
  Progress progress(o.progress, n_work);
  std::vector<CaseResult> results;
  int64_t done = 0;
  int32_t run = 0;
  for (const Built& b : built) {
    for (const std::string& spec : o.kv_specs) {
      ++run;
      CaseResult r;
      r.policy = spec;
      r.policy_resolved = resolve_budget(spec, b.c.length);
      r.task = b.c.task;
      r.length = b.c.length;
      r.depth = b.c.depth;
      r.depth_placed = b.c.depth_placed;
      r.seed = b.c.seed;
      r.expected = b.c.expected;
      const std::string what = fmt::format("{} {} d={:.2f} {}", task_name(b.c.task), b.c.length, b.c.depth, spec);
      progress.update(done, run, n_runs, what);
      auto policy = kv::make_kv_policy(r.policy_resolved, mc.n_layer, mc.n_head_kv);
      GenerateParams gp;
      gp.n_predict = o.n_predict;
      gp.n_batch = o.n_batch;
      gp.device = o.device;
      gp.n_ctx = std::min(mc.n_ctx_train,
                          std::max(b.c.length, static_cast<int32_t>(b.p.tokens.size() + b.p.continuation.size()) + o.n_predict));
      gp.sampling.temperature = 0;  // greedy: the answer is a function of the prompt and the policy
      gp.prefill_compress = o.prefill_compress;
      gp.stop = stop;
      Generator gen(*model, *tok, pool, *policy, gp);
      const int32_t n_prompt = static_cast<int32_t>(b.p.tokens.size());
      const int64_t done0 = done;
      ProgressFn on_progress = [&](int32_t d, int32_t total) {
        progress.update(done0 + static_cast<int64_t>(b.c.length) * d / std::max(1, total), run, n_runs, what);
      };
      if (b.c.task == Task::Perplexity) {
        ScoreStats st = gen.score_continuation(b.p.tokens, b.p.continuation, on_progress);
        r.n_prompt = n_prompt;
        r.nll_sum = st.nll_sum;
        r.n_scored = st.n_scored;
        r.prefill_s = st.prefill_seconds;
        r.decode_s = st.decode_seconds;
        r.kv_bytes = st.kv_bytes.total();
        r.kv_cold_bytes = st.kv_bytes.beside_cold;
        r.kv_full_f16_bytes = st.kv_full_f16_bytes;
        r.kv_pool_bytes = st.kv_pool_bytes;
        r.kv_pool_peak_bytes = st.kv_pool_peak_bytes;
        r.kv_bytes_per_token = static_cast<double>(r.kv_bytes) / std::max(1, n_prompt + st.n_scored - 1);
      } else {
        std::string answer;
        const TextFn collect = [&](std::string_view s) {
          answer += s;
          return true;
        };
        GenerateStats st;
        if (o.spec.empty()) {
          st = gen.generate(b.p.tokens, collect, on_progress, b.p.n_compressed);
        } else {  // the full cache (--spec refuses compression): nothing is compressed before the question
          SpeculativeGenerator sg(*model, pool, gp, spec_params);
          st = sg.generate(b.p.tokens, *tok, collect, on_progress);
          r.speculative = true;
          r.spec = sg.spec_stats();
        }
        r.got = answer;
        r.correct = score_answer(b.c.expected, answer);
        r.n_prompt = st.n_prompt;
        r.n_generated = st.n_generated;
        r.prefill_s = st.prefill_seconds;
        r.decode_s = st.decode_seconds;
        r.kv_bytes = st.kv_bytes.total();
        r.kv_cold_bytes = st.kv_bytes.beside_cold;
        r.kv_full_f16_bytes = st.kv_full_f16_bytes;
        r.kv_pool_bytes = st.kv_pool_bytes;
        r.kv_pool_peak_bytes = st.kv_pool_peak_bytes;
        r.kv_bytes_per_token = static_cast<double>(r.kv_bytes) / std::max(1, st.n_prompt + std::max(0, st.n_generated - 1));
      }
      results.push_back(std::move(r));
      done += b.c.length;
      write_results(o.out, meta, results, summarize(results, o.kv_specs, tasks, 0));
    }
  }
  progress.update(done, run, n_runs, "done");
  progress.finish();

  EvalReport rep;
  rep.n_cases = n_runs;
  rep.summary = summarize(results, o.kv_specs, tasks, 0);
  rep.table = table_of(rep.summary, tasks);
  if (lengths.size() > 1)
    for (int32_t len : lengths)
      rep.table += fmt::format("\nlength {}:\n\n{}", len, table_of(summarize(results, o.kv_specs, tasks, len), tasks));
  return rep;
}

}  // namespace longctx::eval
