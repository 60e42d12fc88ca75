#include "kv/policy_registry.h"

#include <map>

#include "core/error.h"

namespace longctx::kv {

const TokenRanker* KvPolicyDraft::add_ranker(std::unique_ptr<TokenRanker> r) {
  rankers.push_back(std::move(r));
  return rankers.back().get();
}

const std::vector<KvComponent>& kv_components() {
  static const std::vector<KvComponent> all = {
      kv_component_streaming(), kv_component_h2o(),   kv_component_snapkv(), kv_component_chunkkv(),
      kv_component_tova(),      kv_component_kvzip(), kv_component_expected_attention(),
      kv_component_pyramid(),   kv_component_heads(), kv_component_adakv(),
      kv_component_full(),      kv_component_kivi(),
      kv_component_quest(),
      kv_component_shadowkv(),
  };
  return all;
}

const KvComponent* find_kv_component(const std::string& name) {
  for (const KvComponent& c : kv_components())
    if (c.name == name) return &c;
  return nullptr;
}

namespace {

// Named specs for the common cases.
const std::map<std::string, std::string>& presets() {
  static const std::map<std::string, std::string> p = {
      {"lossless", "full"},
      {"compact", "snapkv:budget=1024+kivi:bits=4"},
      {"tiny", "snapkv:budget=512+kivi:bits=2"},
  };
  return p;
}

std::string valid_names() {
  std::string s;
  for (const KvComponent& c : kv_components()) s += (s.empty() ? "" : ", ") + c.name;
  s += "; presets:";
  for (const auto& [name, spec] : presets()) s += " " + name;
  return s;
}

const char* kind_name(KvComponentKind k) {
  switch (k) {
    case KvComponentKind::TokenPolicy: return "token policies";
    case KvComponentKind::BudgetShape: return "budget shapes";
    case KvComponentKind::Format: return "formats";
    case KvComponentKind::ReadPolicy: return "read policies (what each decode step reads)";
  }
  return "";
}

// "name[:a=1,b=2]", or "name:file=FILE[,a=1]" when the first argument is required.
std::string synopsis(const KvComponent& c) {
  std::string required, optional;
  for (const SpecArg& a : c.args) {
    std::string& into = a.fallback.empty() ? required : optional;
    into += (into.empty() ? "" : ",") + a.name + "=" + (a.fallback.empty() ? "..." : a.fallback);
  }
  if (!required.empty()) return c.name + ":" + required + (optional.empty() ? "" : "[," + optional + "]");
  return c.name + (optional.empty() ? "" : "[:" + optional + "]");
}

}  // namespace

std::string kv_policy_help() {
  std::string s =
      "Components joined by '+': at most one token policy, any budget shapes, at most one format, at most one read "
      "policy; each name[:key=value,...] (defaults shown).";
  for (KvComponentKind kind : {KvComponentKind::TokenPolicy, KvComponentKind::BudgetShape, KvComponentKind::Format,
                               KvComponentKind::ReadPolicy}) {
    s += std::string("\n") + kind_name(kind) + ":";
    for (const KvComponent& c : kv_components()) {
      if (c.kind != kind) continue;
      s += "\n  " + synopsis(c) + ": " + c.help;
      for (const SpecArg& a : c.args) s += "\n      " + a.name + ": " + a.help;
    }
  }
  s += "\npresets:";
  for (const auto& [name, spec] : presets()) s += " " + name + " (" + spec + ")";
  s += "\nExamples: snapkv:budget=1024+kivi:bits=2, pyramid:budget=2048+snapkv, chunkkv:budget=512, "
       "snapkv:budget=1024+adakv, heads:file=heads.json+kivi:bits=4, snapkv:budget=4096+quest:budget=1024+kivi:bits=4.";
  return s;
}

std::unique_ptr<KvPolicy> make_kv_policy(const std::string& spec_in, int32_t n_layer, int32_t n_head_kv) {
  std::string spec = spec_in;
  if (auto it = presets().find(spec); it != presets().end()) spec = it->second;
  if (spec.empty()) fail("empty --kv spec; valid: {}", valid_names());

  struct Part {
    const KvComponent* component;
    SpecArgs args;
  };
  std::vector<Part> parts;
  for (const std::string& text : split_spec(spec, '+')) {
    const std::string name = text.substr(0, text.find(':'));
    const KvComponent* c = find_kv_component(name);
    if (c == nullptr) fail("unknown KV policy '{}' in --kv '{}'; valid: {}", name, spec_in, valid_names());
    for (const Part& p : parts) {
      if (p.component == c) fail("--kv '{}' names {} twice", spec_in, name);
      if (p.component->kind == c->kind && c->kind == KvComponentKind::TokenPolicy)
        fail("--kv '{}' has two token policies ({} and {}); use one", spec_in, p.component->name, name);
      if (p.component->kind == c->kind && c->kind == KvComponentKind::Format)
        fail("--kv '{}' has two formats ({} and {}); use one", spec_in, p.component->name, name);
      if (p.component->kind == c->kind && c->kind == KvComponentKind::ReadPolicy)
        fail("--kv '{}' has two read policies ({} and {}); use one", spec_in, p.component->name, name);
    }
    std::vector<std::string> keys;
    for (const SpecArg& a : c->args) keys.push_back(a.name);
    parts.push_back({c, SpecArgs(text, keys)});
  }

  KvPolicyDraft d;
  d.n_layer = n_layer;
  d.n_head_kv = n_head_kv;
  for (KvComponentKind kind : {KvComponentKind::Format, KvComponentKind::TokenPolicy, KvComponentKind::ReadPolicy})
    for (const Part& p : parts)
      if (p.component->kind == kind) p.component->apply(p.args, d);
  d.plans.assign(static_cast<size_t>(n_layer) * n_head_kv,
                 d.ranker ? HeadPlan{d.ranker, d.ranker->budget()} : HeadPlan{});
  for (const KvComponent& c : kv_components())
    for (const Part& p : parts)
      if (p.component == &c && c.kind == KvComponentKind::BudgetShape) c.apply(p.args, d);

  std::vector<std::string> what = d.shapes;
  if (d.ranker) what.push_back(d.ranker->describe());
  std::string description;
  for (const std::string& s : what) description += (description.empty() ? "" : " + ") + s;
  if (description.empty()) description = "full";
  description += ", " + (d.format.empty() ? std::string(kv_format_name(d.open)) : d.format);
  if (!d.read.empty()) description += ", read " + d.read;
  auto policy = std::make_unique<ComposedPolicy>(std::move(d.rankers), std::move(d.plans), n_head_kv, d.open, d.sealed,
                                                 d.n_recent_full_precision, description, std::move(d.share));
  if (d.read_filter) {
    // In-cache positions re-rotate the oldest keys each step, which the stored key summaries do not follow.
    if (policy->positions() == KvPositions::InCache)
      fail("--kv '{}': a read policy does not compose with streaming's in-cache positions", spec_in);
    policy->set_read_filter(std::move(d.read_filter), d.key_summaries, d.page_tokens);
  }
  return policy;
}

}  // namespace longctx::kv
