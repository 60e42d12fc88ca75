#include "core/error.h"
#include "kv/policy.h"

namespace longctx::kv {

std::string FullPolicy::describe() const { return std::string("full (") + kv_format_name(format_) + ")"; }

std::unique_ptr<KvPolicy> make_kv_policy(const std::string& spec) {
  const auto colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const std::string args = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (name != "full") fail("unknown KV policy '{}' in --kv '{}'; valid policies: full[:type=f16|f32]", name, spec);
  KvFormat format = KvFormat::F16;
  size_t start = 0;
  while (start < args.size()) {
    const size_t end = std::min(args.find(',', start), args.size());
    const std::string kv = args.substr(start, end - start);
    const auto eq = kv.find('=');
    const std::string key = kv.substr(0, eq), value = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (key == "type" && (value == "f16" || value == "f32")) {
      format = value == "f16" ? KvFormat::F16 : KvFormat::F32;
    } else {
      fail("bad option '{}' in --kv '{}'; valid for full: type=f16 or type=f32", kv, spec);
    }
    start = end + 1;
  }
  return std::make_unique<FullPolicy>(format);
}

}  // namespace longctx::kv
