#include "plan/cost_model.h"

#include <algorithm>
#include <climits>
#include <fmt/format.h>

#include "core/error.h"
#include "kv/kv_store.h"
#include "kv/policy.h"

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

}  // namespace

DecodeCost decode_cost(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv, int64_t n_seq,
                       bool scores_pass) {
  DecodeCost c;
  const double B = static_cast<double>(std::max<int64_t>(1, n_seq));
  double stream_s = static_cast<double>(arch.small_bytes_per_token) / weight_rate(dev, arch.head.type);
  for (const WeightUse& u : arch.layers) stream_s += static_cast<double>(u.bytes) / weight_rate(dev, u.type);
  stream_s += static_cast<double>(arch.head.bytes) / weight_rate(dev, arch.head.type);
  // A batch reads the weights once but multiplies them by every sequence: past the device's ridge point the
  // step is compute-bound.
  double flops_s = 0;
  for (const WeightUse& u : arch.layers) flops_s += B * u.flops_per_row / matmul_rate(dev, u.type);
  flops_s += B * arch.head.flops_per_row / matmul_rate(dev, arch.head.type);
  c.weights_s = std::max(stream_s, flops_s);
  const int64_t open_bytes = kv.read_bytes - kv.read_bytes_sealed;
  // The policy's score pass (H2O, TOVA) reads the keys once more: half the bytes.
  const double kv_passes = scores_pass ? 1.5 : 1.0;
  c.kv_s = B * kv_passes *
           (static_cast<double>(open_bytes) / kv_rate(dev, KvFormat::F16) +
            static_cast<double>(kv.read_bytes_sealed) / sealed_kv_rate(dev));
  // Per layer: four matmul calls (q/k/v together, o, gate/up together, down), the attention call(s) and the
  // serial ops; the head is one more call.
  if (probed(dev))
    c.other_s = B * arch.n_layer *
                    (dev.kernels.layer_overhead_s + dev.kernels.attention_call_s * kv_passes) +
                (4.0 * arch.n_layer + 1) * dev.kernels.matmul_call_s;
  c.seconds = c.weights_s + c.kv_s + c.other_s;
  c.bytes = arch.weight_bytes_per_token() + static_cast<int64_t>(B) * kv.read_bytes;
  return c;
}

PrefillCost prefill_cost(const PlanArch& arch, const DeviceSpec& dev, int64_t n_new, const std::vector<int64_t>& cached) {
  PrefillCost c;
  if (n_new <= 0) return c;
  const double n = static_cast<double>(n_new);
  for (const WeightUse& u : arch.layers) {
    c.matmul_flops += n * u.flops_per_row;
    c.matmul_s += n * u.flops_per_row / matmul_rate(dev, u.type);
  }
  // The head runs for the last row alone: a one-row product, which streams the head's bytes.
  c.matmul_flops += arch.head.flops_per_row;
  c.matmul_s += static_cast<double>(arch.head.bytes) / weight_rate(dev, arch.head.type);
  const int32_t group = arch.n_head / std::max(1, arch.n_head_kv);
  for (int32_t il = 0; il < arch.n_layer; ++il)
    for (int32_t g = 0; g < arch.n_head_kv; ++g) {
      const size_t i = static_cast<size_t>(il) * arch.n_head_kv + g;
      const int64_t before = i < cached.size() ? cached[i] : 0;
      c.attention_flops += 4.0 * arch.head_dim * group *
                           visible_keys(n_new, before, arch.local(il) ? arch.sliding_window : 0);
    }
  c.attention_s = c.attention_flops / attention_rate(dev);
  if (probed(dev)) c.other_s = n * arch.n_layer * dev.kernels.prefill_row_overhead_s;
  c.seconds = c.matmul_s + c.attention_s + c.other_s;
  return c;
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
  const bool gathers_scores = policy.prefill_score_from(static_cast<int32_t>(std::min<int64_t>(n_ctx, INT_MAX))) != INT_MAX ||
                              policy.wants_decode_scores();
  // The attention the policy votes with: one f32 per (layer, kv-head, cached token).
  if (gathers_scores) r.scratch_bytes = n_ctx * int64_t{arch.n_layer} * arch.n_head_kv * 4;
  r.memory_bytes = o.memory_bytes > 0 ? o.memory_bytes : dev.memory_bytes;
  // The pool takes memory from the system in chunks per format: at most one chunk of each format stands partly
  // empty.
  const auto chunk = [&](KvFormat f) {
    return static_cast<int64_t>(kv::kv_pool_chunk_bytes(
        static_cast<size_t>(kv_plan_page_bytes(f, kPlanPageTokens, arch.head_dim))));
  };
  const int64_t pool_slack =
      chunk(policy.page_format()) + (policy.sealed_format() != policy.page_format() ? chunk(policy.sealed_format()) : 0);
  const int64_t per_seq = r.kv.bytes() + r.scratch_bytes;
  const int64_t room = r.memory_bytes - arch.weight_bytes - pool_slack;
  r.n_fit = room > 0 ? room / per_seq : 0;
  r.n_seq = o.concurrency > 0 ? o.concurrency : std::max<int64_t>(1, r.n_fit);
  r.memory_needed = arch.weight_bytes + pool_slack + r.n_seq * per_seq;
  r.fits = r.memory_needed <= r.memory_bytes;
  r.prefill = prefill_cost(arch, dev, n_ctx);
  r.decode = decode_cost(arch, dev, r.kv, r.n_seq, policy.wants_decode_scores());
  const DecodeCost first = decode_cost(arch, dev, r.kv, 1, policy.wants_decode_scores());
  r.ttft_s = r.prefill.seconds + first.seconds;
  r.tokens_per_s_user = 1.0 / r.decode.seconds;
  r.tokens_per_s_total = static_cast<double>(r.n_seq) / r.decode.seconds;
  if (dev.link_bandwidth > 0) r.swap_s = 2.0 * static_cast<double>(r.kv.bytes()) / dev.link_bandwidth;
  return r;
}

std::vector<std::string> plan_assumptions(const DeviceSpec& dev) {
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
    a.push_back(fmt::format("other ops (norms, RoPE, KV append, activation): {:.1f} us a layer per decoded token, "
                            "{:.2f} us a layer per prompt token; {:.1f} us per matmul call (4 a layer and the head)",
                            k.layer_overhead_s * 1e6, k.prefill_row_overhead_s * 1e6, k.matmul_call_s * 1e6));
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
  return a;
}

}  // namespace longctx::plan
