// The cost model of long-context serving ("Challenges in Deploying Long-Context Transformers: A Theoretical Peak
// Performance Analysis"): every extra cost of a long context follows from the size of its KV cache.
//   - concurrency is memory-bound: (memory - weights - scratch) / KV bytes per sequence;
//   - prefill is compute-bound: 2 FLOPs per weight per prompt token, plus the attention's quadratic part,
//     4 * head_dim FLOPs per (query head, visible key) pair (both products, causal: each query sees the keys up
//     to its own position, or its window);
//   - decode is bandwidth-bound: every step reads the weights once for the whole batch and each sequence's KV as
//     the policy left it (what the attention may see: windows and evicted tokens are not read);
//   - context switching is link-bound: a sequence's KV out to host memory and another's in.
// Rates are the device's figures times its roofline fractions, or the kernels' probed rates (device.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "plan/device.h"
#include "plan/kv_footprint.h"
#include "plan/plan_arch.h"

namespace longctx::kv {
class KvPolicy;
}

namespace longctx::plan {

struct DecodeCost {
  double seconds = 0;     // one step of the batch
  double weights_s = 0;   // the weight stream (or the batch's matmul FLOPs, when those take longer)
  double kv_s = 0;        // the KV read of every sequence in the batch
  double other_s = 0;     // the ops besides matmul and attention, and the attention calls' fixed cost
  int64_t bytes = 0;      // read per step: weights once, KV of every sequence
};

struct PrefillCost {
  double seconds = 0;
  double matmul_s = 0;
  double attention_s = 0;
  double other_s = 0;
  double matmul_flops = 0;
  double attention_flops = 0;
};

// One decode step of n_seq sequences whose KV reads are `kv` each (the footprint at their context).
DecodeCost decode_cost(const PlanArch& arch, const DeviceSpec& dev, const KvFootprint& kv, int64_t n_seq = 1,
                       bool scores_pass = false);

// Prefill of n_new prompt tokens on top of a cache whose (layer, kv-head) i already holds cached[i] tokens at
// the positions before them (empty: nothing cached), logits of the last row only (as bench's pp and a run's
// prompt).
PrefillCost prefill_cost(const PlanArch& arch, const DeviceSpec& dev, int64_t n_new,
                         const std::vector<int64_t>& cached = {});

struct PlanOptions {
  int64_t concurrency = 0;   // sequences served at once; 0: as many as fit
  int64_t memory_bytes = 0;  // memory for weights, KV and scratch; 0: the device's
};

// Everything `longctx plan` prints for one (policy, context).
struct PlanRow {
  std::string kv_spec;
  std::string kv_describe;
  int64_t n_ctx = 0;
  KvFootprint kv;
  int64_t kv_full_f16_bytes = 0;   // the same context in full f16, the reference of compression
  int64_t scratch_bytes = 0;       // per sequence: the policy's attention scores, when it gathers them
  int64_t memory_bytes = 0;        // what the plan may use
  int64_t n_fit = 0;               // sequences that fit in memory_bytes
  int64_t n_seq = 0;               // sequences served (the concurrency asked, or n_fit)
  int64_t memory_needed = 0;       // weights + n_seq x (KV + scratch) + the pool's slack
  bool fits = false;
  PrefillCost prefill;             // one sequence's whole prompt
  DecodeCost decode;               // one step of the n_seq batch at this context
  double ttft_s = 0;               // prefill + the first decode step
  double tokens_per_s_user = 0;
  double tokens_per_s_total = 0;
  double swap_s = 0;               // one sequence's KV out to host memory and another's in; 0 without a link
};

PlanRow plan_row(const PlanArch& arch, const DeviceSpec& dev, const kv::KvPolicy& policy, const std::string& kv_spec,
                 int64_t n_ctx, const PlanOptions& o);

// The assumptions behind the figures, one per line, for the output.
std::vector<std::string> plan_assumptions(const DeviceSpec& dev);

}  // namespace longctx::plan
