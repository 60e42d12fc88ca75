#include "plan/kernel_rates_json.h"

#include <string>

#include "core/error.h"

namespace longctx::plan {
namespace {

GgmlType ggml_type_named(const std::string& name) {
  for (uint32_t id = 0; id < 64; ++id) {
    const auto tr = ggml_type_traits(id);
    if (tr && tr->name == name) return static_cast<GgmlType>(id);
  }
  fail("kernel rates: unknown weight format '{}'", name);
}

KvFormat kv_format_named(const std::string& name) {
  for (KvFormat f : {KvFormat::F32, KvFormat::F16, KvFormat::Kivi8, KvFormat::Kivi4, KvFormat::Kivi2})
    if (name == kv_format_name(f)) return f;
  fail("kernel rates: unknown KV format '{}'", name);
}

double number(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number()) fail("kernel rates: '{}' is missing or not a number", key);
  return j[key].get<double>();
}

const nlohmann::json& object(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_object()) fail("kernel rates: '{}' is missing or not an object", key);
  return j[key];
}

}  // namespace

nlohmann::json kernel_rates_to_json(const KernelRates& k) {
  nlohmann::json gemv = nlohmann::json::object(), gemm = nlohmann::json::object(), attn = nlohmann::json::object();
  for (const auto& [t, r] : k.gemv_bytes_per_s) gemv[std::string(ggml_traits(t).name)] = r;
  for (const auto& [t, r] : k.gemm_flops) gemm[std::string(ggml_traits(t).name)] = r;
  for (const auto& [f, r] : k.attention_read_bytes_per_s) attn[kv_format_name(f)] = r;
  return {{"threads", k.n_threads},
          {"copy_bandwidth", k.copy_bandwidth},
          {"gemv_bytes_per_s", gemv},
          {"gemm_flops", gemm},
          {"attention_read_bytes_per_s", attn},
          {"matmul_call_s", k.matmul_call_s},
          {"attention_call_s", k.attention_call_s},
          {"attention_flops", k.attention_flops},
          {"layer_overhead_s", k.layer_overhead_s},
          {"prefill_row_overhead_s", k.prefill_row_overhead_s},
          {"quest_rank_s", k.quest_rank_s},
          {"attention_page_s", k.attention_page_s},
          {"prefill_attention_page_s", k.prefill_attention_page_s},
          {"view_page_s", k.view_page_s}};
}

KernelRates kernel_rates_from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail("kernel rates: expected a JSON object");
  KernelRates k;
  k.n_threads = static_cast<int>(number(j, "threads"));
  k.copy_bandwidth = number(j, "copy_bandwidth");
  k.matmul_call_s = number(j, "matmul_call_s");
  k.attention_call_s = number(j, "attention_call_s");
  k.attention_flops = number(j, "attention_flops");
  k.layer_overhead_s = number(j, "layer_overhead_s");
  k.prefill_row_overhead_s = number(j, "prefill_row_overhead_s");
  // Probes recorded before Quest's ranking was probed lack it: the ranking is then not counted.
  k.quest_rank_s = j.contains("quest_rank_s") ? number(j, "quest_rank_s") : 0.0;
  k.attention_page_s = j.contains("attention_page_s") ? number(j, "attention_page_s") : 0.0;
  k.prefill_attention_page_s = j.contains("prefill_attention_page_s") ? number(j, "prefill_attention_page_s") : 0.0;
  k.view_page_s = j.contains("view_page_s") ? number(j, "view_page_s") : 0.0;
  // Keys ending in _range are the spread the golden script records beside each median.
  const auto skip = [](const std::string& key) { return key.size() > 6 && key.compare(key.size() - 6, 6, "_range") == 0; };
  for (const auto& [name, r] : object(j, "gemv_bytes_per_s").items())
    if (!skip(name)) k.gemv_bytes_per_s[ggml_type_named(name)] = r.get<double>();
  for (const auto& [name, r] : object(j, "gemm_flops").items())
    if (!skip(name)) k.gemm_flops[ggml_type_named(name)] = r.get<double>();
  for (const auto& [name, r] : object(j, "attention_read_bytes_per_s").items())
    if (!skip(name)) k.attention_read_bytes_per_s[kv_format_named(name)] = r.get<double>();
  if (k.copy_bandwidth <= 0) fail("kernel rates: copy_bandwidth must be positive");
  return k;
}

}  // namespace longctx::plan
