// KIVI ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"): keys quantized per channel, values per
// token, in groups; the most recent `residual` tokens of every (layer, kv-head) stay at full precision and a group
// is packed only when it leaves that window (the paper's R, 128 by default). The store keeps the window; the
// policy only names it.
#include "core/error.h"
#include "kv/policy_registry.h"

namespace longctx::kv {

namespace {
constexpr int32_t kDefaultBits = 4, kDefaultResidual = 128;
}  // namespace

KvComponent kv_component_kivi() {
  return {"kivi",
          KvComponentKind::Format,
          "KIVI (\"KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache\"): keys per channel, values per "
          "token, packed to a few bits once they leave the full-precision window",
          {{"bits", std::to_string(kDefaultBits), "2, 4 or 8"},
           {"residual", std::to_string(kDefaultResidual), "most recent tokens per (layer, kv-head) kept at f16 (0: none)"}},
          [](const SpecArgs& args, KvPolicyDraft& d) {
            const int32_t bits = args.get_int("bits", kDefaultBits, 2, 8);
            if (bits != 2 && bits != 4 && bits != 8) fail("kivi: bits must be 2, 4 or 8, not {}", bits);
            d.sealed = bits == 2 ? KvFormat::Kivi2 : bits == 4 ? KvFormat::Kivi4 : KvFormat::Kivi8;
            d.n_recent_full_precision = args.get_int("residual", kDefaultResidual, 0, 1 << 20);
            d.format = std::string(kv_format_name(d.open)) + " recent (" + std::to_string(d.n_recent_full_precision) +
                       " at least) + " + kv_format_name(d.sealed) + " sealed pages";
          }};
}

}  // namespace longctx::kv
