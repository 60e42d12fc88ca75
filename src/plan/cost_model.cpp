#include "plan/cost_model.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <fmt/format.h>

#include "core/error.h"
#include "kv/composed_policy.h"
#include "kv/kv_store.h"
#include "kv/policy.h"
#include "kv/policy_registry.h"
#include "kv/quest.h"
#include "kv/spec_args.h"
#include "kv/spec_draft.h"
#include "kv/token_ranker.h"

namespace longctx::plan {

namespace {

bool probed(const DeviceSpec& d) { return !d.kernels.empty(); }

// Bytes/s at which a decode step streams weights of this format.
double weight_rate(const DeviceSpec& d, GgmlType t) {
  if (probed(d)) {
    const auto it = d.kernels.gemv_bytes_per_s.find(t);
    if (it != d.kernels.gemv_bytes_per_s.end()) return it->second;
    // A format the probe did not see: the slowest one it did, a lower bound on the rate.
    double slowest = 0;
    for (const auto& [type, rate] : d.kernels.gemv_bytes_per_s) slowest = slowest == 0 ? rate : std::min(slowest, rate);
    if (slowest > 0) return slowest;
    return d.kernels.copy_bandwidth;
  }
  return d.bandwidth * d.fractions.weights;
}

// FLOP/s of a prompt chunk's matmul in this format.
double matmul_rate(const DeviceSpec& d, GgmlType t) {
  if (probed(d)) {
    const auto it = d.kernels.gemm_flops.find(t);
    if (it != d.kernels.gemm_flops.end()) return it->second;
    double slowest = 0;
    for (const auto& [type, rate] : d.kernels.gemm_flops) slowest = slowest == 0 ? rate : std::min(slowest, rate);
    if (slowest > 0) return slowest;
  }
  return d.matmul_flops * d.fractions.matmul;
}

double kv_rate(const DeviceSpec& d, KvFormat f) {
  if (probed(d)) {
    const auto& m = d.kernels.attention_read_bytes_per_s;
    if (auto it = m.find(f); it != m.end()) return it->second;
    if (auto it = m.find(KvFormat::F16); it != m.end()) return it->second;
    return d.kernels.copy_bandwidth;
  }
  return d.bandwidth * d.fractions.kv;
}

// The store holds one sealed format at a time, so the probe measured at most one packed format.
double sealed_kv_rate(const DeviceSpec& d) {
  if (probed(d))
    for (const auto& [f, r] : d.kernels.attention_read_bytes_per_s)
      if (kv_format_is_packed(f)) return r;
  return kv_rate(d, KvFormat::Kivi2);
}

double attention_rate(const DeviceSpec& d) {
  if (probed(d) && d.kernels.attention_flops > 0) return d.kernels.attention_flops;
  return d.matmul_flops * d.fractions.attention;
}

// Sum over i in [0, n) of min(window, c + i + 1): the keys that prompt row i sees when c come before it.
double visible_keys(int64_t n, int64_t c, int64_t window) {
  const double nn = static_cast<double>(n), cc = static_cast<double>(c);
  if (window <= 0) return nn * cc + nn * (nn + 1) / 2;
  // Rows whose c + i + 1 < window see all; the rest see exactly window.
  const int64_t n_all = std::clamp<int64_t>(window - 1 - c, 0, n);
  const double a = static_cast<double>(n_all);
  return a * cc + a * (a + 1) / 2 + static_cast<double>(n - n_all) * static_cast<double>(window);
}

std::string gbs(double bytes_per_s) { return fmt::format("{:.1f} GB/s", bytes_per_s / 1e9); }
std::string tfs(double flops) {
  return flops >= 1e12 ? fmt::format("{:.0f} TFLOP/s", flops / 1e12) : fmt::format("{:.0f} GFLOP/s", flops / 1e9);
}

// Seconds to stream the weights one decode step reads, at the one-row matmul's rate per format.
double weight_stream_s(const PlanArch& arch, const DeviceSpec& dev) {
  double stream_s = static_cast<double>(arch.small_bytes_per_token) / weight_rate(dev, arch.head.type);
  for (const WeightUse& u : arch.layers) stream_s += static_cast<double>(u.bytes) / weight_rate(dev, u.type);
  stream_s += static_cast<double>(arch.head.bytes) / weight_rate(dev, arch.head.type);
  return stream_s;
}

// Seconds of one row's matmul FLOPs (layers and head) at the prompt chunk's rate.
double row_flops_s(const PlanArch& arch, const DeviceSpec& dev) {
  double flops_s = 0;
  for (const WeightUse& u : arch.layers) flops_s += u.flops_per_row / matmul_rate(dev, u.type);
  flops_s += arch.head.flops_per_row / matmul_rate(dev, arch.head.type);
  return flops_s;
}

// One read of a sequence's KV as the footprint says (open pages and key summaries at the f16 rate, sealed pages at
// the packed format's).
double kv_read_s(const DeviceSpec& dev, const KvFootprint& kv) {
  const int64_t open_bytes = kv.read_bytes - kv.read_bytes_sealed;
  return static_cast<double>(open_bytes) / kv_rate(dev, KvFormat::F16) +
         static_cast<double>(kv.read_bytes_sealed) / sealed_kv_rate(dev);
}

// Quest's ranking in one decode step of one sequence: every page whose summary the step reads (all of a narrowed
// head's but its recent ones), bounded for each query head of its kv-head, at the probed rate. Not counted on a datasheet
// device (no probe).
double quest_rank_seconds(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv) {
  if (!probed(dev) || kv.read_bytes_summaries == 0) return 0;
  const int64_t summary_bytes = 2 * int64_t{arch.head_dim} * static_cast<int64_t>(sizeof(float));
  return static_cast<double>(kv.read_bytes_summaries / summary_bytes) * arch.heads_per_kv_head() *
         dev.kernels.quest_rank_s;
}

}  // namespace

PrefillCost& PrefillCost::operator+=(const PrefillCost& o) {
  seconds += o.seconds;
  matmul_s += o.matmul_s;
  attention_s += o.attention_s;
  other_s += o.other_s;
  matmul_flops += o.matmul_flops;
  attention_flops += o.attention_flops;
  n_rows += o.n_rows;
  return *this;
}

DecodeCost decode_cost(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv, int64_t n_seq,
                       bool scores_pass) {
  DecodeCost c;
  const double B = static_cast<double>(std::max<int64_t>(1, n_seq));
  const double stream_s = weight_stream_s(arch, dev);
  // A batch reads the weights once but multiplies them by every sequence: past the device's ridge point the
  // step is compute-bound.
  const double flops_s = B * row_flops_s(arch, dev);
  c.weights_s = std::max(stream_s, flops_s);
  // The policy's score pass (H2O, TOVA) reads the keys once more: half the bytes.
  const double kv_passes = scores_pass ? 1.5 : 1.0;
  c.kv_s = B * kv_passes * (kv_read_s(dev, kv) + static_cast<double>(kv.n_pages_read) * dev.kernels.attention_page_s);
  // Per layer: four matmul calls (q/k/v together, o, gate/up together, down), the attention call(s) and the
  // serial ops; the head is one more call.
  if (probed(dev))
    c.other_s = B * arch.n_layer *
                    (dev.kernels.layer_overhead_s + dev.kernels.attention_call_s * kv_passes) +
                (4.0 * arch.n_layer + 1) * dev.kernels.matmul_call_s + B * quest_rank_seconds(arch, dev, kv) +
                B * static_cast<double>(kv.n_pages_open + kv.n_pages_sealed + kv.n_pages_narrowed) *
                    dev.kernels.view_page_s;
  c.seconds = c.weights_s + c.kv_s + c.other_s;
  c.bytes = arch.weight_bytes_per_token() + static_cast<int64_t>(B) * kv.read_bytes;
  return c;
}

PrefillCost prefill_cost(const PlanArch& arch, const DeviceSpec& dev, int64_t n_new, const std::vector<int64_t>& cached,
                         bool logits, int32_t page_tokens) {
  if (page_tokens < 1) fail("internal: pages of {} tokens", page_tokens);
  PrefillCost c;
  if (n_new <= 0) return c;
  c.n_rows = n_new;
  const double n = static_cast<double>(n_new);
  for (const WeightUse& u : arch.layers) {
    c.matmul_flops += n * u.flops_per_row;
    c.matmul_s += n * u.flops_per_row / matmul_rate(dev, u.type);
  }
  // The head runs for the last row alone: a one-row product, which streams the head's bytes.
  if (logits) {
    c.matmul_flops += arch.head.flops_per_row;
    c.matmul_s += static_cast<double>(arch.head.bytes) / weight_rate(dev, arch.head.type);
  }
  const int32_t group = arch.heads_per_kv_head();
  double page_visits = 0;  // (prompt token, kv-head, page): each token's keys in whole pages, half a page more
  for (int32_t il = 0; il < arch.n_layer; ++il)
    for (int32_t g = 0; g < arch.n_head_kv; ++g) {
      const size_t i = static_cast<size_t>(il) * arch.n_head_kv + g;
      const int64_t before = i < cached.size() ? cached[i] : 0;
      const double keys = visible_keys(n_new, before, arch.local(il) ? arch.sliding_window : 0);
      c.attention_flops += 4.0 * arch.head_dim * group * keys;
      page_visits += keys / page_tokens + 0.5 * n;
    }
  c.attention_s = c.attention_flops / attention_rate(dev) + page_visits * dev.kernels.prefill_attention_page_s;
  if (probed(dev)) c.other_s = n * arch.n_layer * dev.kernels.prefill_row_overhead_s;
  c.seconds = c.matmul_s + c.attention_s + c.other_s;
  return c;
}

int32_t estimate_text_tokens(const std::string& text) {
  return std::max(1, static_cast<int32_t>((text.size() + 3) / 4));
}

PrefillCost reconstruction_cost(const PlanArch& arch, const DeviceSpec& dev, const kv::KvReconstruction& rec,
                                int64_t n_prompt, int32_t n_first, int32_t n_next) {
  PrefillCost total;
  if (rec.chunk <= 0 || n_prompt <= 0) return total;
  if (n_first < 0 || n_next < 0) fail("internal: instructions of {} and {} tokens", n_first, n_next);
  // Every (layer, kv-head) holds the prompt while the pass runs (a sliding-window layer its window, which
  // visible_keys applies).
  const std::vector<int64_t> cached(static_cast<size_t>(arch.n_layer) * arch.n_head_kv, n_prompt);
  for (int64_t c0 = 0; c0 < n_prompt; c0 += rec.chunk) {
    const int64_t c1 = std::min<int64_t>(n_prompt, c0 + rec.chunk);
    const int64_t n_ids = (c0 == 0 ? n_first : n_next + std::min<int64_t>(rec.n_overlap, c0)) + (c1 - c0);
    PrefillCost p = prefill_cost(arch, dev, n_ids, cached, /*logits=*/false);
    // The score pass: every reconstruction row's probabilities over the same keys.
    p.attention_flops *= 2;
    p.attention_s *= 2;
    p.seconds = p.matmul_s + p.attention_s + p.other_s;
    total += p;
  }
  return total;
}

DecodeCost verify_cost(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv, int32_t n_rows) {
  if (n_rows < 1) fail("internal: a forward of {} rows", n_rows);
  DecodeCost c;
  const double R = n_rows;
  const double stream_s = weight_stream_s(arch, dev);
  // The CPU's rows path multiplies each row on its own (its rate is the one-row matmul's); a GPU streams the
  // weights once for all rows unless their FLOPs take longer.
  c.weights_s = probed(dev) ? R * stream_s : std::max(stream_s, R * row_flops_s(arch, dev));
  c.kv_s = kv_read_s(dev, kv);  // the rows' queries share one read of the pages
  if (probed(dev))
    c.other_s = arch.n_layer * (R * dev.kernels.layer_overhead_s + dev.kernels.attention_call_s) +
                (4.0 * arch.n_layer + 1) * dev.kernels.matmul_call_s;
  c.seconds = c.weights_s + c.kv_s + c.other_s;
  c.bytes = arch.weight_bytes_per_token() + kv.read_bytes;
  return c;
}

SpecPlan parse_spec_plan(const std::string& spec) {
  const kv::SelfSpec parsed = kv::parse_self_spec(spec, "accept");
  SpecPlan sp;
  sp.gamma = parsed.gamma;
  sp.draft = parsed.draft;
  if (parsed.extra_given) {
    char* end = nullptr;
    const double a = std::strtod(parsed.extra.c_str(), &end);
    if (parsed.extra.empty() || *end != '\0' || !(a >= 0.0 && a <= 1.0))
      fail("--spec '{}': accept is the acceptance per drafted token, a number in [0, 1], not '{}'", spec, parsed.extra);
    sp.accept = a;
    sp.accept_given = true;
  }
  return sp;
}

double spec_tokens_per_step(double accept, int32_t gamma) {
  if (accept >= 1.0) return gamma + 1.0;
  return (1.0 - std::pow(accept, gamma + 1)) / (1.0 - accept);
}

SpecCost spec_cost(const PlanArch& arch, const DeviceSpec& dev, const kv::KvPolicy& verifier, const SpecPlan& spec,
                   int64_t n_ctx, const std::string& verifier_spec) {
  if (!verifier.keeps_every_token())
    fail("--spec self verifies against the full cache, not '{}'", verifier.describe());
  SpecCost s;
  s.tokens_per_step = spec_tokens_per_step(spec.accept, spec.gamma);
  if (kv::is_read_draft(spec.draft)) {
    // Quest's own reads (and ranking) over the cache the verifier keeps with its summaries, the drafts beside it.
    const auto cache = kv::make_kv_policy(kv::verifier_spec_for_draft(verifier_spec, spec.draft), arch.n_layer,
                                          arch.n_head_kv);
    s.draft_kv = kv_footprint(arch, *cache, n_ctx, spec.gamma);
  } else {
    std::vector<std::unique_ptr<kv::TokenRanker>> owned;
    s.draft_kv = spec_draft_footprint(arch, verifier, *kv::make_draft_ranker(spec.draft, owned), n_ctx, spec.gamma);
  }
  s.draft = decode_cost(arch, dev, s.draft_kv, 1);
  // The verify's cache holds the gamma drafts beside the context when it runs.
  const KvFootprint full = kv_footprint(arch, verifier, n_ctx, spec.gamma);
  s.verify_kv_read_bytes = full.read_bytes;
  s.verify = verify_cost(arch, dev, full, spec.gamma + 1);
  s.seconds_per_token = (spec.gamma * s.draft.seconds + s.verify.seconds) / s.tokens_per_step;
  s.plain_seconds = decode_cost(arch, dev, kv_footprint(arch, verifier, n_ctx), 1).seconds;
  return s;
}

PlanRow plan_row(const PlanArch& arch, const DeviceSpec& dev, const kv::KvPolicy& policy, const std::string& kv_spec,
                 int64_t n_ctx, const PlanOptions& o) {
  if (n_ctx <= 0) fail("--ctx must be positive, not {}", n_ctx);
  PlanRow r;
  r.kv_spec = kv_spec;
  r.kv_describe = policy.describe();
  r.n_ctx = n_ctx;
  r.kv = kv_footprint(arch, policy, n_ctx);
  r.kv_full_f16_bytes = n_ctx * int64_t{arch.n_layer} * arch.n_head_kv * arch.head_dim * 2 * 2;
  const kv::KvReconstruction rec = policy.reconstruction();
  const bool gathers_scores = policy.prefill_score_from(static_cast<int32_t>(std::min<int64_t>(n_ctx, INT_MAX))) != INT_MAX ||
                              policy.wants_decode_scores() || rec.chunk > 0;
  // The attention the policy votes with: one f32 per (layer, kv-head, cached token).
  if (gathers_scores) r.scratch_bytes = n_ctx * int64_t{arch.n_layer} * arch.n_head_kv * 4;
  r.memory_bytes = o.memory_bytes > 0 ? o.memory_bytes : dev.memory_bytes;
  // The pool takes memory from the system in chunks per format: at most one chunk of each format stands partly
  // empty.
  const int32_t page_tokens = policy.page_tokens() > 0 ? policy.page_tokens() : kPlanPageTokens;
  const auto chunk = [&](KvFormat f) {
    return static_cast<int64_t>(kv::kv_pool_chunk_bytes(
        static_cast<size_t>(kv_plan_page_bytes(f, page_tokens, arch.head_dim))));
  };
  const int64_t pool_slack =
      chunk(policy.page_format()) + (policy.sealed_format() != policy.page_format() ? chunk(policy.sealed_format()) : 0);
  const int64_t per_seq = r.kv.bytes() + r.scratch_bytes;
  const int64_t room = r.memory_bytes - arch.weight_bytes - pool_slack;
  r.n_fit = room > 0 ? room / per_seq : 0;
  r.n_seq = o.concurrency > 0 ? o.concurrency : std::max<int64_t>(1, r.n_fit);
  r.memory_needed = arch.weight_bytes + pool_slack + r.n_seq * per_seq;
  r.fits = r.memory_needed <= r.memory_bytes;
  r.prefill = prefill_cost(arch, dev, n_ctx, {}, true, page_tokens);
  if (rec.chunk > 0) {
    const int32_t n_first = o.reconstruction_first_tokens >= 0 ? o.reconstruction_first_tokens
                                                               : estimate_text_tokens(rec.first_instruction);
    const int32_t n_next = o.reconstruction_next_tokens >= 0 ? o.reconstruction_next_tokens
                                                             : estimate_text_tokens(rec.next_instruction);
    r.reconstruction = reconstruction_cost(arch, dev, rec, n_ctx, n_first, n_next);
    r.prefill += r.reconstruction;
  }
  r.decode = decode_cost(arch, dev, r.kv, r.n_seq, policy.wants_decode_scores());
  const DecodeCost first = decode_cost(arch, dev, r.kv, 1, policy.wants_decode_scores());
  r.ttft_s = r.prefill.seconds + first.seconds;
  r.tokens_per_s_user = 1.0 / r.decode.seconds;
  r.tokens_per_s_total = static_cast<double>(r.n_seq) / r.decode.seconds;
  if (dev.link_bandwidth > 0) r.swap_s = 2.0 * static_cast<double>(r.kv.bytes()) / dev.link_bandwidth;
  if (o.spec.has_value() && policy.keeps_every_token()) r.spec = spec_cost(arch, dev, policy, *o.spec, n_ctx, kv_spec);
  return r;
}

std::vector<std::string> plan_assumptions(const DeviceSpec& dev, const std::optional<SpecPlan>& spec) {
  std::vector<std::string> a;
  a.push_back(fmt::format("device {}: {}", dev.name, dev.source));
  if (!dev.kernels.empty()) {
    const KernelRates& k = dev.kernels;
    a.push_back(fmt::format("rates of this CPU's own kernels at {} threads (roofline fractions 1: the probes are the "
                            "roofline); copy bandwidth {}",
                            k.n_threads, gbs(k.copy_bandwidth)));
    std::string w, m;
    for (const auto& [t, r] : k.gemv_bytes_per_s) w += fmt::format("{}{} {}", w.empty() ? "" : ", ", ggml_traits(t).name, gbs(r));
    for (const auto& [t, r] : k.gemm_flops) m += fmt::format("{}{} {}", m.empty() ? "" : ", ", ggml_traits(t).name, tfs(r));
    a.push_back("decode streams weights at the one-row matmul's rate per format: " + w);
    a.push_back("prefill multiplies at the 512-row matmul's rate per format: " + m);
    std::string kvr;
    for (const auto& [f, r] : k.attention_read_bytes_per_s) kvr += fmt::format("{}{} {}", kvr.empty() ? "" : ", ", kv_format_name(f), gbs(r));
    a.push_back(fmt::format("decode attention reads KV at {} plus {:.1f} us a layer; prefill attention at {}", kvr,
                            k.attention_call_s * 1e6, tfs(k.attention_flops)));
    a.push_back(k.attention_page_s > 0 || k.prefill_attention_page_s > 0
                    ? fmt::format("a KV page (one kv-head's) costs the attention {:.0f} ns a decode step and {:.1f} ns a "
                                  "prompt token beyond its bytes and FLOPs, and {:.0f} ns a decode step to enter in "
                                  "the step's views (again where a read filter keeps it)",
                                  k.attention_page_s * 1e9, k.prefill_attention_page_s * 1e9, k.view_page_s * 1e9)
                    : "no probe of a KV page's own cost: not counted (pages smaller than 64 tokens cost more than "
                      "predicted)");
    a.push_back(fmt::format("other ops (norms, RoPE, KV append, activation): {:.1f} us a layer per decoded token, "
                            "{:.2f} us a layer per prompt token; {:.1f} us per matmul call (4 a layer and the head); "
                            "{}",
                            k.layer_overhead_s * 1e6, k.prefill_row_overhead_s * 1e6, k.matmul_call_s * 1e6,
                            k.quest_rank_s > 0
                                ? fmt::format("Quest's ranking {:.1f} ns per page and query head", k.quest_rank_s * 1e9)
                                : std::string("Quest's ranking not probed in these rates: not counted")));
  } else {
    const RooflineFractions& f = dev.fractions;
    a.push_back(fmt::format("decode: weights at {:.0f}% and KV at {:.0f}% of {} (bandwidth-bound)", 100 * f.weights,
                            100 * f.kv, gbs(dev.bandwidth)));
    a.push_back(fmt::format("prefill: matmul at {:.0f}% and attention at {:.0f}% of {} (compute-bound)", 100 * f.matmul,
                            100 * f.attention, tfs(dev.matmul_flops)));
    a.push_back("ops besides matmul and attention, kernel launches and the policy's own work are not counted");
  }
  a.push_back("prefill FLOPs: 2 per weight per prompt token, plus 4 x head_dim per (query head, visible key): "
              "causal, windows on sliding-window layers");
  a.push_back("decode bytes: weights once per step for the whole batch, plus each sequence's KV as the policy "
              "leaves it (bytes of its page formats; evicted and out-of-window tokens are not read)");
  a.push_back("KV bytes: the store's pages (the page codec's sizes, 64 tokens a page, full pages sealed) plus "
              "positions and page tables; concurrency = (memory - weights - one pool chunk per format) / (KV + the "
              "policy's score buffer) per sequence");
  if (spec.has_value()) {
    const double tau = spec_tokens_per_step(spec->accept, spec->gamma);
    a.push_back(fmt::format(
        "spec self (gamma={}, draft={}): acceptance a = {} per drafted token ({}), independent until the first "
        "rejection: tau = (1 - a^(gamma+1)) / (1 - a) = {:.2f} tokens per verify step; decode time per token = "
        "(gamma x t_draft + t_verify) / tau; one sequence (the engine's --spec decodes one); only rows whose --kv "
        "keeps the full cache (the verifier)",
        spec->gamma, spec->draft, spec->accept, spec->accept_given ? "given by accept=" : "ASSUMED: accept=A sets it",
        tau));
    a.push_back(kv::is_read_draft(spec->draft)
                    ? "spec draft: one token through the weights over the pages quest ranks highest for it (its reads "
                      "and ranking as a quest row's, the drafts' own tokens held), the verifier's cache keeping "
                      "quest's key summaries"
                    : "spec draft: one token through the weights over its view of the full cache: the pages of the "
                      "draft policy's selection (the most-selected pages, at most ceil(budget / 64) + 2; a policy "
                      "that needs attention scores is taken to scatter its picks over that many), the page of the "
                      "newest token and the drafts' own tokens; sliding-window layers read their window");
    if (!dev.kernels.empty())
      a.push_back("spec verify: gamma + 1 rows over the full cache, read once; on this CPU the matmul is compute-bound "
                  "per row: gamma + 1 one-row matmuls (tests/matmul_rates measured a 5-row call of the rows path at "
                  "~4.3x a 1-row call: gamma = 4's matmuls are over-counted 5 / 4.3 = 1.16x), the other ops per row");
    else
      a.push_back("spec verify: gamma + 1 rows over the full cache, read once; the weights stream once "
                  "(bandwidth-bound) unless the rows' FLOPs take longer");
  }
  return a;
}

std::vector<std::string> policy_assumptions(const kv::KvPolicy& policy) {
  std::vector<std::string> a;
  auto* quest = dynamic_cast<const kv::QuestReadFilter*>(const_cast<kv::KvPolicy&>(policy).read_filter());
  if (quest != nullptr) {
    const int32_t page = policy.page_tokens() > 0 ? policy.page_tokens() : kPlanPageTokens;
    a.push_back(fmt::format(
        "Quest: memory as the rest of the policy leaves it plus the key summaries (2 x head_dim f32 a page); a decode "
        "step reads, on layers >= {} and heads of more than {} pages of {}, the newest {} pages always and {} others "
        "at the pages' mean bytes, plus the summaries of the others (at the f16 KV rate), and ranks those pages for "
        "each query head (on a CPU at the probed rate per page and head, in decode's other ops; not counted on a "
        "datasheet device); the other layers and heads read everything",
        quest->dense_layers(), quest->read_pages(page), page, quest->recent_pages(page),
        quest->read_pages(page) - quest->recent_pages(page)));
  }
  const kv::KvReconstruction rec = policy.reconstruction();
  if (rec.chunk > 0)
    a.push_back(fmt::format(
        "KVzip: its reconstruction after prefill counts in prefill and TTFT: per chunk of {} prompt tokens a forward "
        "without logits of the instruction (and {} tokens of the previous chunk) and the chunk, over the whole "
        "cached prompt, plus its score pass over the same (query, key) pairs, counted as the attention again",
        rec.chunk, rec.n_overlap));
  return a;
}

}  // namespace longctx::plan
