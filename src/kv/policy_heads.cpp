// Head roles, after RazorAttention ("RazorAttention: Efficient KV Cache Compression Through Retrieval Heads") and
// DuoAttention: the retrieval heads named in a roles file (`longctx calibrate-heads`) keep what the token policy
// gives them (everything, if the spec names none); every other head keeps the attention sinks plus a window of
// recent tokens, and folds what it drops into one compensation token, the mean of the dropped keys and of the
// dropped values, so the remote context is summarized rather than lost.
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "kv/policy_registry.h"

namespace longctx::kv {
namespace {

constexpr int32_t kDefaultSink = 4, kDefaultWindow = 256;

std::vector<bool> load_retrieval_heads(const std::string& path, int32_t n_layer, int32_t n_head_kv) {
  std::ifstream in(path);
  if (!in) fail("heads: cannot read the roles file '{}' (make one with `longctx calibrate-heads`)", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail("heads: '{}' is not valid JSON: {}", path, e.what());
  }
  if (!j.contains("n_layer") || !j.contains("n_head_kv") || !j.contains("retrieval"))
    fail("heads: '{}' lacks n_layer, n_head_kv or retrieval", path);
  if (j["n_layer"] != n_layer || j["n_head_kv"] != n_head_kv)
    fail("heads: '{}' is for {} layers x {} kv-heads, the model has {} x {}", path, j["n_layer"].dump(),
         j["n_head_kv"].dump(), n_layer, n_head_kv);
  std::vector<bool> retrieval(static_cast<size_t>(n_layer) * n_head_kv, false);
  for (const auto& lh : j["retrieval"]) {
    if (!lh.is_array() || lh.size() != 2 || !lh[0].is_number_integer() || !lh[1].is_number_integer())
      fail("heads: '{}': retrieval entries must be [layer, kv_head]", path);
    const int l = lh[0], h = lh[1];
    if (l < 0 || l >= n_layer || h < 0 || h >= n_head_kv) fail("heads: '{}': head [{}, {}] out of range", path, l, h);
    retrieval[static_cast<size_t>(l) * n_head_kv + h] = true;
  }
  return retrieval;
}

void apply_heads(const SpecArgs& args, KvPolicyDraft& d) {
  if (!args.has("file")) fail("heads needs file=ROLES.json (make one with `longctx calibrate-heads`)");
  const std::string file = args.get_string("file", "");
  const int32_t sink = args.get_int("sink", kDefaultSink, 0, 1 << 20);
  const int32_t window = args.get_int("window", kDefaultWindow, 1, 1 << 30);
  const std::string comp = args.get_string("compensation", "mean");
  if (comp != "mean" && comp != "none") fail("heads: compensation must be mean or none, not '{}'", comp);
  const auto retrieval = load_retrieval_heads(file, d.n_layer, d.n_head_kv);
  const TokenRanker* streaming = d.add_ranker(make_streaming_ranker(
      SpecArgs("streaming:budget=" + std::to_string(sink + window) + ",sink=" + std::to_string(sink), {"budget", "sink"})));
  const HeadPlan streaming_plan{streaming, sink + window, comp == "mean" ? KvDropped::Compensated : KvDropped::Forgotten};
  int32_t n_retrieval = 0;
  for (size_t i = 0; i < d.plans.size(); ++i) {
    if (retrieval[i]) {
      ++n_retrieval;  // keeps the plan the token policy and earlier shapes gave it
    } else {
      d.plans[i] = streaming_plan;
    }
  }
  d.shapes.push_back("heads(" + std::to_string(n_retrieval) + " retrieval of " + std::to_string(d.plans.size()) +
                     ", others sink=" + std::to_string(sink) + " window=" + std::to_string(window) +
                     (comp == "mean" ? " + compensation token" : "") + ")");
}

}  // namespace

KvComponent kv_component_heads() {
  return {"heads",
          KvComponentKind::BudgetShape,
          "head roles (\"RazorAttention: Efficient KV Cache Compression Through Retrieval Heads\"): retrieval heads keep "
          "the token policy's share (all, if none), the others sinks + a window + one compensation token",
          {{"file", "", "the roles file written by `longctx calibrate-heads`"},
           {"sink", std::to_string(kDefaultSink), "first tokens the other heads keep"},
           {"window", std::to_string(kDefaultWindow), "recent tokens the other heads keep"},
           {"compensation", "mean", "mean: fold dropped tokens into one token (keys and values averaged); none"}},
          apply_heads};
}

}  // namespace longctx::kv
