// The --kv components (DESIGN.md, "The KV cache": policies are registered, one file each). Each component file
// defines one function returning its entry: name, kind, arguments with their defaults, a help line, and how it
// fills its share of the policy. kv_components() lists those functions in one place, so no entry depends on a
// static initializer surviving the link of a static library; a new method is its file, its line there, and its
// test. make_kv_policy (policy.h) loops over the '+'-separated spec and looks each part up here; kv_policy_help()
// is generated from the same entries.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kv/composed_policy.h"
#include "kv/spec_args.h"
#include "kv/token_ranker.h"

namespace longctx::kv {

// A spec names at most one token policy, one format and one read policy, and any budget shapes, each at most once.
// A read policy (Quest) decides what each decode step reads of what the others keep.
enum class KvComponentKind { TokenPolicy, BudgetShape, Format, ReadPolicy };

// What the parts of one spec put together. The parts apply in the order formats, token policy, budget shapes (in
// registry order), so that a budget shape sees the token policy it shapes; the plans are the token policy's
// uniform budget (or keep-all) before the first budget shape runs.
struct KvPolicyDraft {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  std::vector<std::unique_ptr<TokenRanker>> rankers;  // owned; the policy takes them
  const TokenRanker* ranker = nullptr;                // the spec's token policy; null: none
  std::vector<HeadPlan> plans;                        // (n_layer * n_head_kv)
  KvFormat open = KvFormat::F16, sealed = KvFormat::F16;
  int32_t n_recent_full_precision = 0;
  std::unique_ptr<LayerBudgetShare> share;  // a shape that shares each layer's budget at the cut (AdaKV); null: none
  std::vector<std::string> shapes;  // what each budget shape did, for describe()
  std::string format;               // the format's description
  std::unique_ptr<KvReadFilter> read_filter;  // the read policy's filter; null: decode reads everything
  bool key_summaries = false;                 // the read policy needs per-page key summaries in the store
  int32_t page_tokens = 0;                    // the store page size the read policy asks for; 0: the default
  std::string read;                           // the read policy's description

  const TokenRanker* add_ranker(std::unique_ptr<TokenRanker> r);
  HeadPlan& plan(int32_t layer, int32_t kv_head) { return plans[static_cast<size_t>(layer) * n_head_kv + kv_head]; }
};

struct KvComponent {
  std::string name;
  KvComponentKind kind;
  std::string help;  // one line: the method, by its paper's title
  std::vector<SpecArg> args;
  void (*apply)(const SpecArgs& args, KvPolicyDraft& draft);
};

// One per component file.
KvComponent kv_component_streaming();  // policy_streaming.cpp
KvComponent kv_component_h2o();        // policy_h2o.cpp
KvComponent kv_component_snapkv();     // policy_snapkv.cpp
KvComponent kv_component_chunkkv();    // policy_chunkkv.cpp
KvComponent kv_component_tova();       // policy_tova.cpp
KvComponent kv_component_kvzip();      // policy_kvzip.cpp
KvComponent kv_component_expected_attention();  // policy_expected_attention.cpp
KvComponent kv_component_pyramid();    // policy_pyramid.cpp
KvComponent kv_component_heads();      // policy_heads.cpp
KvComponent kv_component_adakv();      // policy_adakv.cpp
KvComponent kv_component_full();       // policy_full.cpp
KvComponent kv_component_kivi();       // policy_kivi.cpp
KvComponent kv_component_quest();      // policy_quest.cpp
KvComponent kv_component_shadowkv();   // policy_shadowkv.cpp

// Every component, token policies first, then budget shapes (in the order they apply), then formats, then read
// policies.
const std::vector<KvComponent>& kv_components();
// The entry named `name`, null if none.
const KvComponent* find_kv_component(const std::string& name);

}  // namespace longctx::kv
