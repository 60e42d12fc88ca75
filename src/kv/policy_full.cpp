// The plain format: every token at f16 (the default) or f32, never packed.
#include "core/error.h"
#include "kv/policy_registry.h"

namespace longctx::kv {

KvComponent kv_component_full() {
  return {"full",
          KvComponentKind::Format,
          "every kept token in a plain format, never packed",
          {{"type", "f16", "f16 or f32"}},
          [](const SpecArgs& args, KvPolicyDraft& d) {
            const std::string t = args.get_string("type", "f16");
            if (t != "f16" && t != "f32") fail("full: type must be f16 or f32, not '{}'", t);
            d.open = d.sealed = t == "f16" ? KvFormat::F16 : KvFormat::F32;
          }};
}

}  // namespace longctx::kv
