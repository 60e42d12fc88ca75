// Probes of this machine's CPU kernels for the cost model (`longctx plan --measure`): the copy bandwidth, the
// CPU backend's matmul at one row (the decode stream) and at a prompt chunk, and its attention at decode and at
// prefill, each on buffers shaped like the model's, so that the rates carry the kernels' own efficiency and the
// caches' effect on a working set of the model's size.
#pragma once
#include <functional>
#include <string>

#include "core/thread_pool.h"
#include "plan/device.h"
#include "plan/plan_arch.h"

namespace longctx::plan {

struct ProbeOptions {
  int32_t prompt_rows = 512;  // rows of the prefill matmul and attention probes (bench's pp chunk)
  int n_reps = 5;             // best of: other load on a shared machine only ever slows a probe down
};

// Measures the rates of the kernels this arch uses (its weight formats; the KV formats given) on the pool's
// threads. Takes a few seconds; allocates up to a few times the model's per-token bytes.
KernelRates probe_kernels(ThreadPool& pool, const PlanArch& arch, const std::vector<KvFormat>& kv_formats,
                          const ProbeOptions& o = {});

// The "cpu" device with rates probed now.
DeviceSpec measured_cpu(const KernelRates& rates, int64_t memory_bytes);

// This machine's physical memory (sysconf), 0 where unknown.
int64_t host_memory_bytes();

}  // namespace longctx::plan
