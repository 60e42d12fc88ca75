#include "kv/composed_policy.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace longctx::kv {

void KvScores::reset(int32_t n_layer, int32_t n_head_kv, int32_t n_stride, int32_t n_slots) {
  if (stride != n_stride || layers.size() != static_cast<size_t>(n_layer)) {
    stride = n_stride;
    layers.assign(static_cast<size_t>(n_layer), std::vector<float>(static_cast<size_t>(n_head_kv) * n_stride, 0.0f));
    return;
  }
  for (auto& l : layers)
    for (int32_t g = 0; g < n_head_kv; ++g)
      std::fill_n(l.begin() + static_cast<ptrdiff_t>(g) * stride, std::min(n_slots, stride), 0.0f);
}

ComposedPolicy::ComposedPolicy(std::vector<std::unique_ptr<TokenRanker>> rankers, std::vector<HeadPlan> plans,
                               int32_t n_head_kv, KvFormat open, KvFormat sealed, std::string description)
    : rankers_(std::move(rankers)),
      plans_(std::move(plans)),
      n_head_kv_(n_head_kv),
      open_(open),
      sealed_(sealed),
      description_(std::move(description)),
      accumulated_(plans_.size()) {}

int32_t ComposedPolicy::prefill_score_from(int32_t n_prompt) const {
  int32_t from = INT_MAX;
  for (const auto& r : rankers_) from = std::min(from, r->prefill_score_from(n_prompt));
  return from;
}

bool ComposedPolicy::wants_decode_scores() const {
  return std::any_of(rankers_.begin(), rankers_.end(), [](const auto& r) { return r->wants_decode_scores(); });
}

// In-cache positions only when every head's ranker gives them: a head that keeps everything (a retrieval head, the
// full cache) would need original positions past the trained context.
KvPositions ComposedPolicy::positions() const {
  const bool all = std::all_of(plans_.begin(), plans_.end(), [](const HeadPlan& p) {
    return p.ranker != nullptr && p.ranker->positions() == KvPositions::InCache;
  });
  return all ? KvPositions::InCache : KvPositions::Original;
}

void ComposedPolicy::compress(KvSequence& seq, const KvScores& scores, bool decode_step) {
  const int32_t n_layer = static_cast<int32_t>(plans_.size()) / n_head_kv_;
  for (int32_t l = 0; l < n_layer; ++l)
    for (int32_t g = 0; g < n_head_kv_; ++g) {
      const HeadPlan& plan = plans_[index(l, g)];
      if (plan.ranker == nullptr) continue;
      const KvHeadCache& h = seq.head(l, g);
      const int32_t n = h.n_tokens();
      std::vector<float>& acc = accumulated_[index(l, g)];
      const bool accumulate = plan.ranker->accumulates_scores();
      if (accumulate && scores.wanted()) {
        acc.resize(static_cast<size_t>(n), 0.0f);  // new slots start at zero
        const float* s = scores.head(l, g);
        for (int32_t i = 0; i < n; ++i) acc[static_cast<size_t>(i)] += s[i];
      }
      if (plan.budget == kKeepAll || n <= plan.budget) continue;
      if (decode_step && !plan.ranker->evicts_during_decode()) continue;
      const float* s = accumulate ? acc.data() : (scores.wanted() ? scores.head(l, g) : nullptr);
      if (s == nullptr && plan.ranker->prefill_score_from(n) != INT_MAX)
        fail("internal: {} needs attention scores that were not gathered", plan.ranker->describe());
      const std::vector<int32_t> drop = complement_slots(plan.ranker->select(h.positions, s, plan.budget), n);
      seq.remove_slots(l, g, drop);
      if (accumulate) swap_remove(acc, drop);
    }
}

void ComposedPolicy::after_prefill_chunk(KvSequence& seq, const KvScores& scores) { compress(seq, scores, false); }
void ComposedPolicy::after_prefill(KvSequence& seq, const KvScores& scores) { compress(seq, scores, false); }
void ComposedPolicy::after_decode_step(KvSequence& seq, const KvScores& scores) { compress(seq, scores, true); }

void ComposedPolicy::on_slots_removed(int32_t layer, int32_t kv_head, int32_t n_before,
                                      const std::vector<int32_t>& slots) {
  std::vector<float>& acc = accumulated_[index(layer, kv_head)];
  if (acc.empty()) return;  // nothing accumulated for this head
  acc.resize(static_cast<size_t>(n_before), 0.0f);  // slots appended since the last scores start at zero
  swap_remove(acc, slots);
}

std::vector<int32_t> pyramid_budgets(int32_t budget, double beta, int32_t n_layer) {
  std::vector<int32_t> b(static_cast<size_t>(n_layer));
  const double last = budget / beta, first = 2.0 * budget - last;
  for (int32_t l = 0; l < n_layer; ++l) {
    const double t = n_layer > 1 ? static_cast<double>(l) / (n_layer - 1) : 0.0;
    b[static_cast<size_t>(l)] = std::max(1, static_cast<int32_t>(std::lround(first - (first - last) * t)));
  }
  return b;
}

namespace {

// Named presets for the common cases.
const std::map<std::string, std::string>& presets() {
  static const std::map<std::string, std::string> p = {
      {"lossless", "full"},
      {"compact", "snapkv:budget=1024+kivi:bits=4"},
      {"tiny", "snapkv:budget=512+kivi:bits=2"},
  };
  return p;
}

const char* kValidComponents =
    "full[:type=f16|f32], streaming[:budget,sink], h2o[:budget,recent], snapkv[:budget,window,pool,pooling], "
    "tova[:budget], pyramid[:budget,beta], heads:file=ROLES.json[,sink,window], kivi[:bits=2|4|8]; "
    "presets: lossless, compact, tiny";

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(sep, start);
    out.push_back(s.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return out;
    start = at + 1;
  }
}

// Head roles (RazorAttention, DuoAttention): written by `longctx calibrate-heads`.
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

}  // namespace

std::string kv_policy_help() {
  return std::string("Components joined by '+': one token policy, one budget shape, one format. ") + kValidComponents +
         ". Examples: snapkv:budget=1024+kivi:bits=2, pyramid:budget=2048+snapkv, heads:file=heads.json+kivi:bits=4.";
}

std::unique_ptr<KvPolicy> make_kv_policy(const std::string& spec_in, int32_t n_layer, int32_t n_head_kv) {
  std::string spec = spec_in;
  if (auto it = presets().find(spec); it != presets().end()) spec = it->second;
  if (spec.empty()) fail("empty --kv spec; valid: {}", kValidComponents);

  std::unique_ptr<TokenRanker> ranker;
  std::unique_ptr<SpecArgs> pyramid, heads;
  KvFormat open = KvFormat::F16, sealed = KvFormat::F16;
  bool have_format = false;
  for (const std::string& part : split(spec, '+')) {
    const std::string name = part.substr(0, part.find(':'));
    auto one_ranker = [&](std::unique_ptr<TokenRanker> r) {
      if (ranker) fail("--kv '{}' has two token policies ({} and {}); use one", spec_in, ranker->describe(), name);
      ranker = std::move(r);
    };
    if (name == "streaming") {
      one_ranker(make_streaming_ranker(SpecArgs(part, {"budget", "sink"})));
    } else if (name == "h2o") {
      one_ranker(make_h2o_ranker(SpecArgs(part, {"budget", "recent"})));
    } else if (name == "snapkv") {
      one_ranker(make_snapkv_ranker(SpecArgs(part, {"budget", "window", "pool", "pooling"})));
    } else if (name == "tova") {
      one_ranker(make_tova_ranker(SpecArgs(part, {"budget"})));
    } else if (name == "pyramid") {
      if (pyramid) fail("--kv '{}' has pyramid twice", spec_in);
      pyramid = std::make_unique<SpecArgs>(part, std::vector<std::string>{"budget", "beta"});
    } else if (name == "heads") {
      if (heads) fail("--kv '{}' has heads twice", spec_in);
      heads = std::make_unique<SpecArgs>(part, std::vector<std::string>{"file", "sink", "window"});
    } else if (name == "full" || name == "kivi") {
      if (have_format) fail("--kv '{}' has two formats; use one of full or kivi", spec_in);
      have_format = true;
      if (name == "full") {
        SpecArgs a(part, {"type"});
        const std::string t = a.get_string("type", "f16");
        if (t != "f16" && t != "f32") fail("full: type must be f16 or f32, not '{}'", t);
        open = sealed = t == "f16" ? KvFormat::F16 : KvFormat::F32;
      } else {
        SpecArgs a(part, {"bits"});
        const int32_t bits = a.get_int("bits", 4, 2, 8);
        if (bits != 2 && bits != 4 && bits != 8) fail("kivi: bits must be 2, 4 or 8, not {}", bits);
        sealed = bits == 2 ? KvFormat::Kivi2 : bits == 4 ? KvFormat::Kivi4 : KvFormat::Kivi8;
      }
    } else {
      fail("unknown KV policy '{}' in --kv '{}'; valid: {}", name, spec_in, kValidComponents);
    }
  }
  // PyramidKV selects tokens the SnapKV way unless another ranker is named.
  if (pyramid && !ranker) ranker = make_snapkv_ranker(SpecArgs("snapkv", {}));

  std::vector<int32_t> layer_budget(static_cast<size_t>(n_layer), ranker ? ranker->budget() : kKeepAll);
  std::string description = ranker ? ranker->describe() : "full";
  if (pyramid) {
    const int32_t budget = pyramid->get_int("budget", ranker->budget(), 1, 1 << 30);
    const double beta = pyramid->get_float("beta", 20.0, 1.0, 1000.0);
    layer_budget = pyramid_budgets(budget, beta, n_layer);
    description = "pyramid(budget=" + std::to_string(budget) + ", beta=" + std::to_string(static_cast<int>(beta)) +
                  ", layer 0: " + std::to_string(layer_budget.front()) + ", last: " +
                  std::to_string(layer_budget.back()) + ") + " + description;
  }

  std::vector<std::unique_ptr<TokenRanker>> owned;
  const TokenRanker* main_ranker = ranker.get();
  if (ranker) owned.push_back(std::move(ranker));
  std::vector<HeadPlan> plans(static_cast<size_t>(n_layer) * n_head_kv);
  for (int32_t l = 0; l < n_layer; ++l)
    for (int32_t g = 0; g < n_head_kv; ++g)
      plans[static_cast<size_t>(l) * n_head_kv + g] = HeadPlan{main_ranker, layer_budget[static_cast<size_t>(l)]};

  if (heads) {
    if (!heads->has("file")) fail("heads needs file=ROLES.json (make one with `longctx calibrate-heads`)");
    const std::string file = heads->get_string("file", "");
    const int32_t sink = heads->get_int("sink", 4, 0, 1 << 20);
    const int32_t window = heads->get_int("window", 256, 1, 1 << 30);
    const auto retrieval = load_retrieval_heads(file, n_layer, n_head_kv);
    // Streaming heads keep sinks plus a window; retrieval heads keep what the token policy gives (all, if none).
    owned.push_back(make_streaming_ranker(
        SpecArgs("streaming:budget=" + std::to_string(sink + window) + ",sink=" + std::to_string(sink), {"budget", "sink"})));
    const TokenRanker* streaming = owned.back().get();
    int32_t n_retrieval = 0;
    for (size_t i = 0; i < plans.size(); ++i) {
      if (retrieval[i]) {
        ++n_retrieval;
        if (!main_ranker) plans[i] = HeadPlan{nullptr, kKeepAll};
      } else {
        plans[i] = HeadPlan{streaming, sink + window};
      }
    }
    description = "heads(" + std::to_string(n_retrieval) + " retrieval of " + std::to_string(plans.size()) +
                  ", others sink=" + std::to_string(sink) + " window=" + std::to_string(window) + ")" +
                  (main_ranker ? " + " + description : "");
  }
  description += std::string(", ") + kv_format_name(open) +
                 (sealed != open ? std::string(" recent + ") + kv_format_name(sealed) + " sealed pages" : "");
  return std::make_unique<ComposedPolicy>(std::move(owned), std::move(plans), n_head_kv, open, sealed, description);
}

}  // namespace longctx::kv
