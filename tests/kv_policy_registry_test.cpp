// The --kv registry: every component is listed with its arguments in --help, parses alone with its defaults, and
// the spec's errors name the bad part and what is valid. KIVI's residual window reaches the policy's interface.
#include "kv/policy_registry.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "core/error.h"

namespace longctx::kv {
namespace {

std::string error_of(const std::string& spec) {
  try {
    make_kv_policy(spec, 4, 2);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(KvPolicyRegistry, EveryComponentOfEveryKindIsRegistered) {
  for (const char* name : {"streaming", "h2o", "snapkv", "chunkkv", "tova", "kvzip", "expected", "pyramid", "heads",
                           "adakv", "full", "kivi", "quest", "shadowkv"})
    EXPECT_NE(find_kv_component(name), nullptr) << name;
  EXPECT_EQ(find_kv_component("snapkvv"), nullptr);
  int n_kind[4] = {0, 0, 0, 0};
  for (const KvComponent& c : kv_components()) {
    ++n_kind[static_cast<int>(c.kind)];
    EXPECT_FALSE(c.help.empty()) << c.name;
    EXPECT_NE(c.apply, nullptr) << c.name;
  }
  EXPECT_EQ(n_kind[static_cast<int>(KvComponentKind::TokenPolicy)], 7);
  EXPECT_EQ(n_kind[static_cast<int>(KvComponentKind::BudgetShape)], 3);
  EXPECT_EQ(n_kind[static_cast<int>(KvComponentKind::Format)], 2);
  EXPECT_EQ(n_kind[static_cast<int>(KvComponentKind::ReadPolicy)], 2);
}

TEST(KvPolicyRegistry, HelpListsEveryComponentWithItsArguments) {
  const std::string help = kv_policy_help();
  for (const KvComponent& c : kv_components()) {
    EXPECT_TRUE(contains(help, "\n  " + c.name)) << c.name;
    EXPECT_TRUE(contains(help, c.help)) << c.name;
    for (const SpecArg& a : c.args) {
      EXPECT_TRUE(contains(help, a.name + "=" + (a.fallback.empty() ? "..." : a.fallback))) << c.name << " " << a.name;
      EXPECT_TRUE(contains(help, a.name + ": " + a.help)) << c.name << " " << a.name;
    }
  }
  for (const char* preset : {"lossless", "compact", "tiny"}) EXPECT_TRUE(contains(help, preset)) << preset;
}

TEST(KvPolicyRegistry, EveryComponentParsesWithItsDefaults) {
  const std::string roles = ::testing::TempDir() + "/registry_roles.json";
  std::ofstream(roles) << R"({"n_layer": 4, "n_head_kv": 2, "retrieval": [[0, 0]]})";
  for (const KvComponent& c : kv_components()) {
    // heads needs its roles file, adakv a token policy whose scores it shares.
    const std::string spec = c.name == "heads" ? "heads:file=" + roles : c.name == "adakv" ? "snapkv+adakv" : c.name;
    auto p = make_kv_policy(spec, 4, 2);
    EXPECT_FALSE(p->describe().empty()) << spec;
  }
  // Defaults as --help states them.
  const auto snap_policy = make_kv_policy("snapkv", 4, 2);
  const auto* snap = dynamic_cast<const ComposedPolicy*>(snap_policy.get());
  ASSERT_NE(snap, nullptr);
  EXPECT_EQ(snap->plan(0, 0).budget, 1024);
  EXPECT_EQ(make_kv_policy("snapkv", 4, 2)->prefill_score_from(100), 100 - 32);
  EXPECT_EQ(make_kv_policy("kivi", 4, 2)->sealed_format(), KvFormat::Kivi4);
  const std::string chunk = make_kv_policy("chunkkv", 4, 2)->describe();
  EXPECT_TRUE(contains(chunk, "chunkkv(budget=1024, window=32, chunk=20, cut between sentences, one set per layer)")) << chunk;
  EXPECT_EQ(make_kv_policy("chunkkv", 4, 2)->prefill_score_from(100), 100 - 32);
  const std::string ada = make_kv_policy("snapkv+adakv", 4, 2)->describe();
  EXPECT_TRUE(contains(ada, "adakv(alpha=0.2)")) << ada;
  EXPECT_EQ(make_kv_policy("full", 4, 2)->page_format(), KvFormat::F16);
  auto heads = make_kv_policy("heads:file=" + roles, 4, 2);
  auto* h = dynamic_cast<const ComposedPolicy*>(heads.get());
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->plan(0, 0).ranker, nullptr);
  EXPECT_EQ(h->plan(0, 1).budget, 4 + 256);
  EXPECT_EQ(h->plan(0, 1).dropped, KvDropped::Compensated);
  std::remove(roles.c_str());
}

TEST(KvPolicyRegistry, ComponentsCompose) {
  auto p = make_kv_policy("pyramid:budget=256+h2o:budget=128,recent=16+kivi:bits=2,residual=64", 4, 2);
  const auto* c = dynamic_cast<const ComposedPolicy*>(p.get());
  ASSERT_NE(c, nullptr);
  // h2o keeps no window, so the whole budget is shared out: 2 * 256 - 256 / 20 first, 256 / 20 last.
  EXPECT_EQ(c->plan(0, 1).budget, 499);
  EXPECT_EQ(c->plan(3, 0).budget, 13);
  EXPECT_TRUE(c->wants_decode_scores());
  EXPECT_EQ(c->sealed_format(), KvFormat::Kivi2);
  EXPECT_TRUE(contains(p->describe(), "pyramid(")) << p->describe();
  EXPECT_TRUE(contains(p->describe(), "h2o(")) << p->describe();
  // The order of the parts does not matter.
  auto q = make_kv_policy("kivi:residual=64,bits=2+h2o:recent=16,budget=128+pyramid:budget=256", 4, 2);
  EXPECT_EQ(q->describe(), p->describe());
  EXPECT_EQ(make_kv_policy("compact", 4, 2)->describe(), make_kv_policy("snapkv:budget=1024+kivi:bits=4", 4, 2)->describe());
}

TEST(KvPolicyRegistry, KiviNamesItsFullPrecisionWindow) {
  EXPECT_EQ(make_kv_policy("kivi:bits=2", 4, 2)->n_recent_full_precision(), 128);  // the paper's R
  EXPECT_EQ(make_kv_policy("snapkv+kivi:bits=2,residual=32", 4, 2)->n_recent_full_precision(), 32);
  EXPECT_EQ(make_kv_policy("kivi:residual=0", 4, 2)->n_recent_full_precision(), 0);
  EXPECT_EQ(make_kv_policy("full", 4, 2)->n_recent_full_precision(), 0);  // nothing is packed
  EXPECT_EQ(make_kv_policy("h2o", 4, 2)->n_recent_full_precision(), 0);
  EXPECT_TRUE(contains(error_of("kivi:residual=-1"), "residual"));
}

TEST(KvPolicyRegistry, ErrorsNameTheBadPartAndWhatIsValid) {
  const std::string unknown = error_of("snapkv+pyramidd:beta=2");
  EXPECT_TRUE(contains(unknown, "unknown KV policy 'pyramidd'")) << unknown;
  for (const KvComponent& c : kv_components()) EXPECT_TRUE(contains(unknown, c.name)) << unknown;
  EXPECT_TRUE(contains(error_of("snapkv+tova"), "two token policies (snapkv and tova)"));
  EXPECT_TRUE(contains(error_of("full+kivi"), "two formats (full and kivi)"));
  EXPECT_TRUE(contains(error_of("pyramid+pyramid"), "names pyramid twice"));
  const std::string key = error_of("h2o:budgit=3");
  EXPECT_TRUE(contains(key, "unknown key 'budgit'") && contains(key, "budget, recent")) << key;
  EXPECT_TRUE(contains(error_of("tova:budget=0"), "must be between"));
  EXPECT_TRUE(contains(error_of("tova:reduce=max"), "mean or sum"));
  EXPECT_TRUE(contains(error_of("snapkv:pool=4"), "odd"));
  EXPECT_TRUE(contains(error_of("pyramid:budget=32+snapkv:window=32"), "window"));
  EXPECT_TRUE(contains(error_of("heads:file=/nonexistent/roles.json"), "cannot read"));
  EXPECT_TRUE(contains(error_of("heads:file=x,compensation=max"), "mean or none"));
  EXPECT_TRUE(contains(error_of("snapkv+"), "unknown KV policy ''"));
  EXPECT_TRUE(contains(error_of("chunkkv:chunk=0"), "must be between"));
  EXPECT_TRUE(contains(error_of("chunkkv:scope=kvhead"), "layer or head"));
  EXPECT_TRUE(contains(error_of("chunkkv:pooling=median"), "max or avg"));
  EXPECT_TRUE(contains(error_of("chunkkv:pool=2"), "odd"));
  const std::string small = error_of("chunkkv:budget=40,window=32,chunk=10");  // 32 + 10 > 40
  EXPECT_TRUE(contains(small, "no chunk of 10 tokens beyond the window of 32") && contains(small, "42")) << small;
  // AdaKV shares a layer's budget by the per-head scores of a token policy that cuts once.
  EXPECT_TRUE(contains(error_of("adakv"), "name one (snapkv, chunkkv)"));
  EXPECT_TRUE(contains(error_of("adakv+kivi"), "name one (snapkv, chunkkv)"));
  for (const char* spec : {"h2o+adakv", "tova+adakv", "streaming+adakv"})
    EXPECT_TRUE(contains(error_of(spec), "does not rank by scores it can share across heads")) << spec;
  EXPECT_TRUE(contains(error_of("chunkkv+adakv"), "use chunkkv:scope=head"));
  EXPECT_TRUE(contains(error_of("snapkv+adakv:alpha=1.5"), "must be between"));
  EXPECT_EQ(error_of("chunkkv:scope=head+adakv+pyramid:budget=512"), "");
  EXPECT_TRUE(contains(error_of(""), "empty --kv spec"));
}

}  // namespace
}  // namespace longctx::kv
