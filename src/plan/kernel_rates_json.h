// The probed kernel rates (device.h's KernelRates) as JSON: what `longctx plan --measure --json` prints, and what
// the plan's validation reads back from the measurements committed under tests/golden/plan.
#pragma once
#include <nlohmann/json.hpp>

#include "plan/device.h"

namespace longctx::plan {

nlohmann::json kernel_rates_to_json(const KernelRates& k);
// Throws Error naming what is missing or unknown (a weight or KV format this build does not have).
KernelRates kernel_rates_from_json(const nlohmann::json& j);

}  // namespace longctx::plan
