#include "plan_command.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kv/policy.h"
#include "model/model.h"
#include "plan/cost_model.h"
#include "plan/kernel_rates_json.h"
#include "plan/probe.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

CLI::App* add_plan_subcommand(CLI::App& app, PlanCommandOptions& o) {
  auto* p = app.add_subcommand(
      "plan",
      "The cost model of long-context serving: per KV policy and context, the KV bytes per token and per sequence\n"
      "(the store's own page accounting), the users that fit in memory, prefill time (compute-bound, with the\n"
      "attention's quadratic part; KVzip's reconstruction pass included), time to first token, decode time per\n"
      "token (bandwidth-bound: weights plus the KV the policy leaves, or the part of it a read policy such as Quest\n"
      "reads, with its key summaries) and tokens/s per user and in all, with the roofline assumptions used. With\n"
      "--spec self, lossless self-speculation's tokens per verify step, draft and verify times and speed-up for the\n"
      "full-cache rows.\n"
      "Example: longctx plan -m model.gguf --ctx 4k,16k --kv full --kv snapkv:budget=1024+kivi:bits=2\n"
      "         longctx plan --shape llama3.1-8b --device h200 --ctx 4k,32k,128k --kv full --kv tiny\n"
      "         longctx plan --shape yi-34b --device a100 --peak --ctx 4000,50000 (\"Challenges in Deploying\n"
      "         Long-Context Transformers\": its 34B model at 50K on an A100)\n"
      "         longctx plan -m model.gguf --ctx 8k --kv full --spec self:gamma=4,draft=streaming:budget=256,sink=4,accept=0.9");
  p->add_option("-m,--model", o.model, "GGUF model file (or --shape)");
  p->add_option("--shape", o.shape, "A named model shape instead of a file: " + plan::plan_shape_names());
  p->add_option("--weights", o.weights, "Weight format of --shape (a GGUF type: bf16, f16, q8_0, q4_k, ...)")
      ->capture_default_str();
  p->add_option("--device", o.device,
                "Machine: " + plan::device_names() +
                    "; NAME:bw=GB/s,tflops=T,mem=GiB,link=GB/s,f_weights=F,f_kv=F,f_matmul=F,f_attention=F "
                    "overrides fields")
      ->capture_default_str();
  p->add_flag("--measure", o.measure, "Probe this machine's CPU kernels for the rates (with --device cpu; seconds)");
  p->add_option("--rates", o.rates,
                "With --device cpu: the CPU's rates from a JSON of probes instead of the committed ones (the kernel "
                "rates object, or a file of per-model probes such as tests/golden/plan/cpu_measured.json, whose "
                "entry for -m's file name is taken)");
  p->add_option("-t,--threads", o.n_threads, "Threads of the --measure probes (default: all cores)")
      ->check(CLI::Range(1, 1024));
  p->add_option("-c,--ctx", o.contexts, "Comma-separated context lengths (tokens; 32k = 32768)")->capture_default_str();
  p->add_option("--kv", o.kv_specs, "KV policy, repeatable (default: full). " + kv::kv_policy_help());
  p->add_option("--concurrency", o.concurrency, "Sequences served at once (default: as many as fit)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  p->add_option("--memory", o.memory_gib, "Memory for weights, KV and scratch, GiB (default: the device's)")
      ->check(CLI::Range(0.001, 1e9));
  p->add_flag("--peak", o.peak, "Every rate at 100% of the device's figures (the paper's theoretical peak)");
  p->add_option("--spec", o.spec,
                "Lossless self-speculation for the full-cache rows: self[:gamma=N,draft=SPEC][,accept=A], as run's "
                "--spec (gamma drafts per verify step, default 4; the draft's token policy, default "
                "streaming:budget=512,sink=4) plus the acceptance per drafted token the model assumes (default " +
                    fmt::format("{}", plan::SpecPlan::kDefaultAccept) + ")");
  p->add_flag("--json", o.json, "Print one JSON object instead of the table");
  return p;
}

std::vector<int64_t> parse_context_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (true) {
    const size_t end = std::min(s.find(',', start), s.size());
    std::string e = s.substr(start, end - start);
    int64_t scale = 1;
    if (!e.empty() && (e.back() == 'k' || e.back() == 'K')) {
      scale = 1024;
      e.pop_back();
    }
    if (e.empty() || e.size() > 9 || e.find_first_not_of("0123456789") != std::string::npos || std::stoll(e) == 0)
      fail("bad --ctx list '{}': entry '{}' is not a positive number of tokens (example: --ctx 4096,32k)", s,
           s.substr(start, end - start));
    out.push_back(std::stoll(e) * scale);
    if (end == s.size()) break;
    start = end + 1;
  }
  return out;
}

namespace {

std::string bytes_str(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fmt::format("{:.{}f} {}", b, u == 0 ? 0 : 2, units[u]);
}

std::string time_str(double s) {
  if (s >= 1) return fmt::format("{:.2f} s", s);
  if (s >= 1e-3) return fmt::format("{:.2f} ms", s * 1e3);
  return fmt::format("{:.1f} us", s * 1e6);
}

nlohmann::json row_json(const plan::PlanRow& r) {
  nlohmann::json j = {{"kv", r.kv_spec},
          {"kv_describe", r.kv_describe},
          {"ctx", r.n_ctx},
          {"kv_bytes_per_seq", r.kv.bytes()},
          {"kv_payload_bytes", r.kv.payload_bytes},
          {"kv_metadata_bytes", r.kv.metadata_bytes},
          {"kv_bytes_per_token", static_cast<double>(r.kv.bytes()) / static_cast<double>(r.n_ctx)},
          {"kv_full_f16_bytes", r.kv_full_f16_bytes},
          {"kv_read_bytes_per_step", r.kv.read_bytes},
          {"kv_read_dense_bytes_per_step", r.kv.read_bytes_dense},
          {"kv_read_summary_bytes_per_step", r.kv.read_bytes_summaries},
          {"kv_summary_bytes", r.kv.summary_bytes},
          {"kv_slots", r.kv.n_slots},
          {"scratch_bytes_per_seq", r.scratch_bytes},
          {"memory_bytes", r.memory_bytes},
          {"memory_needed_bytes", r.memory_needed},
          {"concurrency_fit", r.n_fit},
          {"concurrency", r.n_seq},
          {"fits", r.fits},
          {"prefill_s", r.prefill.seconds},
          {"prefill_matmul_s", r.prefill.matmul_s},
          {"prefill_attention_s", r.prefill.attention_s},
          {"prefill_other_s", r.prefill.other_s},
          {"prefill_flops", r.prefill.matmul_flops + r.prefill.attention_flops},
          {"prefill_attention_flops", r.prefill.attention_flops},
          {"prefill_reconstruction_s", r.reconstruction.seconds},
          {"prefill_reconstruction_rows", r.reconstruction.n_rows},
          {"ttft_s", r.ttft_s},
          {"decode_s_per_step", r.decode.seconds},
          {"decode_weights_s", r.decode.weights_s},
          {"decode_kv_s", r.decode.kv_s},
          {"decode_other_s", r.decode.other_s},
          {"decode_bytes_per_step", r.decode.bytes},
          {"tokens_per_s_per_user", r.tokens_per_s_user},
          {"tokens_per_s_total", r.tokens_per_s_total},
          {"kv_swap_s", r.swap_s}};
  if (r.spec.has_value()) {
    const plan::SpecCost& sc = *r.spec;
    j["spec"] = {{"tokens_per_step", sc.tokens_per_step},
                 {"draft_s", sc.draft.seconds},
                 {"draft_kv_read_bytes", sc.draft_kv.read_bytes},
                 {"draft_kv_tokens_read", sc.draft_kv.n_slots_read},
                 {"verify_s", sc.verify.seconds},
                 {"verify_weights_s", sc.verify.weights_s},
                 {"verify_kv_s", sc.verify.kv_s},
                 {"verify_kv_read_bytes", sc.verify_kv_read_bytes},
                 {"seconds_per_token", sc.seconds_per_token},
                 {"tokens_per_s", 1.0 / sc.seconds_per_token},
                 {"plain_seconds_per_token", sc.plain_seconds},
                 {"speedup", sc.speedup()}};
  }
  return j;
}

}  // namespace

int plan_command(const PlanCommandOptions& o) {
  if (o.model.empty() == o.shape.empty())
    fail("plan needs exactly one model: -m MODEL.gguf or --shape NAME (shapes: {}){}", plan::plan_shape_names(),
         o.model.empty() ? "" : ", not both");
  const std::vector<int64_t> contexts = parse_context_list(o.contexts);
  std::vector<std::string> specs = o.kv_specs;
  if (specs.empty()) specs.push_back("full");

  plan::PlanArch arch;
  std::unique_ptr<Model> model;
  if (!o.model.empty()) {
    model = Model::load(o.model);
    const auto slash = o.model.find_last_of('/');
    arch = plan::plan_arch_from_model(*model, slash == std::string::npos ? o.model : o.model.substr(slash + 1));
  } else {
    arch = plan::plan_arch_from_shape(o.shape, plan::parse_weight_type(o.weights));
  }
  // Policies first: a bad spec is reported before any probe runs.
  std::vector<std::unique_ptr<kv::KvPolicy>> policies;
  std::vector<KvFormat> kv_formats;
  for (const std::string& spec : specs) {
    policies.push_back(kv::make_kv_policy(spec, arch.n_layer, arch.n_head_kv));
    for (KvFormat f : {policies.back()->page_format(), policies.back()->sealed_format()})
      if (std::find(kv_formats.begin(), kv_formats.end(), f) == kv_formats.end()) kv_formats.push_back(f);
  }

  // --spec: the engine's parse (kv::parse_self_spec) with the acceptance plan assumes.
  std::optional<plan::SpecPlan> spec;
  if (!o.spec.empty()) {
    spec = plan::parse_spec_plan(o.spec);
    bool any_full = false;
    for (const auto& p : policies) any_full = any_full || p->keeps_every_token();
    if (!any_full)
      fail("--spec self verifies against the full cache: give --kv full (or full:type=f32) among the --kv policies; "
           "the draft's view is chosen by --spec self:draft=SPEC");
  }

  plan::DeviceSpec dev = plan::device_by_name(o.device);
  if (o.measure && !o.rates.empty()) fail("--measure probes the rates and --rates reads them: give one of the two");
  if (!o.rates.empty()) {
    if (dev.name != "cpu") fail("--rates gives a CPU's probed rates: use it with --device cpu, not '{}'", o.device);
    std::ifstream in(o.rates);
    if (!in) fail("--rates: cannot read '{}'", o.rates);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      fail("--rates '{}' is not JSON: {}", o.rates, e.what());
    }
    if (j.contains("models")) {
      // Per-model probes (scripts/plan_golden_cpu.py): the entry of -m's file.
      const std::string file = o.model.substr(o.model.find_last_of('/') == std::string::npos ? 0 : o.model.find_last_of('/') + 1);
      const nlohmann::json* found = nullptr;
      std::string names;
      for (const nlohmann::json& m : j["models"]) {
        const std::string f = m.value("file", std::string());
        names += (names.empty() ? "" : ", ") + f;
        if (!file.empty() && f == file && m.contains("probes")) found = &m["probes"];
      }
      if (found == nullptr)
        fail("--rates '{}' holds the probes of {}, none for '{}' (per-model probes need -m)", o.rates, names,
             o.model.empty() ? o.shape : file);
      j = *found;
    }
    const std::string source = fmt::format("rates probed at {} threads, read from {}", j.value("threads", 0), o.rates);
    dev = plan::measured_cpu(plan::kernel_rates_from_json(j), dev.memory_bytes);
    dev.source = source;
  }
  if (o.measure) {
    if (dev.name != "cpu") fail("--measure probes this machine's CPU: use it with --device cpu, not '{}'", o.device);
    const int n_threads =
        o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    ThreadPool pool(n_threads);
    if (!o.json) fmt::print(stderr, "plan: probing this CPU's kernels at {} threads...\n", n_threads);
    dev = plan::measured_cpu(plan::probe_kernels(pool, arch, kv_formats), plan::host_memory_bytes());
  }
  if (o.peak) plan::set_peak_fractions(dev);
  plan::PlanOptions po;
  po.concurrency = o.concurrency;
  po.memory_bytes = o.memory_gib > 0 ? static_cast<int64_t>(o.memory_gib * 1073741824.0) : 0;
  po.spec = spec;
  if (model != nullptr)
    for (const auto& p : policies)
      if (const kv::KvReconstruction rec = p->reconstruction(); rec.chunk > 0) {
        // KVzip's instructions as this model's tokenizer encodes them (EngineSession::reconstruct).
        const auto tok = Tokenizer::from_gguf(model->file());
        po.reconstruction_first_tokens = static_cast<int32_t>(tok->encode(rec.first_instruction, false, false).size());
        po.reconstruction_next_tokens = static_cast<int32_t>(tok->encode(rec.next_instruction, false, false).size());
        break;
      }

  std::vector<plan::PlanRow> rows;
  for (size_t i = 0; i < specs.size(); ++i)
    for (int64_t n : contexts) rows.push_back(plan::plan_row(arch, dev, *policies[i], specs[i], n, po));
  const std::vector<std::string> assumptions = plan::plan_assumptions(dev, spec);

  if (o.json) {
    nlohmann::json j;
    j["model"] = {{"name", arch.name},
                  {"n_layer", arch.n_layer},
                  {"n_head", arch.n_head},
                  {"n_head_kv", arch.n_head_kv},
                  {"head_dim", arch.head_dim},
                  {"sliding_window", arch.sliding_window},
                  {"n_params", arch.n_params},
                  {"weight_bytes", arch.weight_bytes},
                  {"weight_bytes_per_token", arch.weight_bytes_per_token()},
                  {"prefill_flops_per_token", arch.layer_flops_per_token()}};
    j["device"] = {{"name", dev.name},
                   {"source", dev.source},
                   {"memory_bytes", dev.memory_bytes},
                   {"bandwidth", dev.bandwidth},
                   {"matmul_flops", dev.matmul_flops},
                   {"link_bandwidth", dev.link_bandwidth},
                   {"fractions",
                    {{"weights", dev.fractions.weights},
                     {"kv", dev.fractions.kv},
                     {"matmul", dev.fractions.matmul},
                     {"attention", dev.fractions.attention}}}};
    if (!dev.kernels.empty()) j["device"]["kernels"] = plan::kernel_rates_to_json(dev.kernels);
    j["assumptions"] = assumptions;
    for (const auto& p : policies)
      for (const std::string& line : plan::policy_assumptions(*p)) j["assumptions"].push_back(line);
    if (spec.has_value())
      j["spec"] = {{"spec", o.spec},
                   {"gamma", spec->gamma},
                   {"draft", spec->draft},
                   {"accept", spec->accept},
                   {"accept_given", spec->accept_given}};
    j["rows"] = nlohmann::json::array();
    for (const plan::PlanRow& r : rows) j["rows"].push_back(row_json(r));
    fmt::print("{}\n", j.dump(1));
    return 0;
  }

  fmt::print("model:   {}: {} layers, {} q / {} kv heads of {}{}, {:.2f} G parameters\n", arch.name, arch.n_layer,
             arch.n_head, arch.n_head_kv, arch.head_dim,
             arch.sliding_window ? fmt::format(", window {} on local layers", arch.sliding_window) : "",
             static_cast<double>(arch.n_params) / 1e9);
  fmt::print("weights: {} held, {} read per decoded token, {:.2f} GFLOP per prompt token\n",
             bytes_str(static_cast<double>(arch.weight_bytes)), bytes_str(static_cast<double>(arch.weight_bytes_per_token())),
             arch.layer_flops_per_token() / 1e9);
  fmt::print("memory:  {}{}\n\n", bytes_str(static_cast<double>(rows.front().memory_bytes)),
             o.concurrency > 0 ? fmt::format(", {} at once (--concurrency)", o.concurrency) : ", concurrency: as many as fit");
  fmt::print("| kv | ctx | KV/token | KV/seq | of f16 | users fit | users | prefill | TTFT | KV read/step/user | "
             "decode/step | tok/s/user | tok/s total | KV swap |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const plan::PlanRow& r : rows) {
    fmt::print("| {} | {} | {} | {} | {:.1f}% | {} | {}{} | {} | {} | {} | {} | {:.2f} | {:.2f} | {} |\n", r.kv_spec,
               r.n_ctx, bytes_str(static_cast<double>(r.kv.bytes()) / static_cast<double>(r.n_ctx)),
               bytes_str(static_cast<double>(r.kv.bytes())),
               100.0 * static_cast<double>(r.kv.bytes()) / static_cast<double>(r.kv_full_f16_bytes), r.n_fit, r.n_seq,
               r.fits ? "" : " (does not fit)", time_str(r.prefill.seconds), time_str(r.ttft_s),
               bytes_str(static_cast<double>(r.kv.read_bytes)), time_str(r.decode.seconds), r.tokens_per_s_user,
               r.tokens_per_s_total, r.swap_s > 0 ? time_str(r.swap_s) : "-");
  }
  fmt::print("\nwhere the time and bytes go (decode: one step of the users' batch):\n\n");
  fmt::print("| kv | ctx | KV pages/seq | KV read/step/seq | of it summaries | of all held | prefill matmul | "
             "prefill attention | prefill other | of prefill: reconstruction | decode weights | decode KV | "
             "decode other |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const plan::PlanRow& r : rows)
    fmt::print("| {} | {} | {} | {} | {} | {:.1f}% | {} | {} | {} | {} | {} | {} | {} |\n", r.kv_spec, r.n_ctx,
               bytes_str(static_cast<double>(r.kv.payload_bytes)), bytes_str(static_cast<double>(r.kv.read_bytes)),
               r.kv.read_bytes_summaries > 0 ? bytes_str(static_cast<double>(r.kv.read_bytes_summaries)) : "-",
               100.0 * static_cast<double>(r.kv.read_bytes) / static_cast<double>(std::max<int64_t>(1, r.kv.read_bytes_dense)),
               time_str(r.prefill.matmul_s), time_str(r.prefill.attention_s), time_str(r.prefill.other_s),
               r.reconstruction.n_rows > 0 ? fmt::format("{} ({} rows)", time_str(r.reconstruction.seconds), r.reconstruction.n_rows) : "-",
               time_str(r.decode.weights_s), time_str(r.decode.kv_s), time_str(r.decode.other_s));
  if (spec.has_value()) {
    fmt::print("\nself-speculation (--spec {}; gamma {}, draft {}, acceptance {}{}), one user:\n\n", o.spec, spec->gamma,
               spec->draft, spec->accept, spec->accept_given ? "" : " ASSUMED");
    fmt::print("| kv | ctx | tokens/step | draft KV read | draft/token | verify (gamma+1 rows) | spec decode/token | "
               "spec tok/s | plain tok/s | speed-up |\n");
    fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const plan::PlanRow& r : rows) {
      if (!r.spec.has_value()) {
        fmt::print("| {} | {} | - (not the full cache) | | | | | | | |\n", r.kv_spec, r.n_ctx);
        continue;
      }
      const plan::SpecCost& sc = *r.spec;
      fmt::print("| {} | {} | {:.2f} | {} | {} | {} | {} | {:.2f} | {:.2f} | {:.2f}x |\n", r.kv_spec, r.n_ctx,
                 sc.tokens_per_step, bytes_str(static_cast<double>(sc.draft_kv.read_bytes)), time_str(sc.draft.seconds),
                 time_str(sc.verify.seconds), time_str(sc.seconds_per_token), 1.0 / sc.seconds_per_token,
                 1.0 / sc.plain_seconds, sc.speedup());
    }
  }
  fmt::print("\nassumptions:\n");
  for (const std::string& a : assumptions) fmt::print("- {}\n", a);
  for (size_t i = 0; i < specs.size(); ++i) {
    fmt::print("- kv {}: {}\n", specs[i], policies[i]->describe());
    for (const std::string& a : plan::policy_assumptions(*policies[i])) fmt::print("  - {}\n", a);
  }
  return 0;
}

}  // namespace longctx
