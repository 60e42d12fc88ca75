// A machine for the cost model: its memory, its bandwidth, its matmul rate, and the share of each that the engine
// reaches (the roofline fractions). GPUs come from datasheets with fractions validated against the device
// benchmarks in BENCHMARKS.md; a CPU comes from probes of its own kernels (probe.h), which measure the rates
// directly, so its fractions are 1.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "core/ggml_type.h"
#include "core/kv_format.h"

namespace longctx::plan {

// The share of the device's rates that each phase reaches.
struct RooflineFractions {
  double weights = 1.0;    // decode's weight stream, of bandwidth
  double kv = 1.0;         // decode attention's KV read, of bandwidth
  double matmul = 1.0;     // prefill's matrix products, of matmul_flops
  double attention = 1.0;  // prefill attention's FLOPs, of matmul_flops
};

// Rates measured on this machine by running the CPU backend's own kernels (probe.h). Where present they replace
// bandwidth and matmul_flops times the fractions.
struct KernelRates {
  int n_threads = 0;
  double copy_bandwidth = 0;                      // bytes/s, read + write (memory_bandwidth.h)
  std::map<GgmlType, double> gemv_bytes_per_s;    // a one-token matmul streaming weights of the format
  std::map<GgmlType, double> gemm_flops;          // a prompt-chunk matmul (512 rows) of the format
  std::map<KvFormat, double> attention_read_bytes_per_s;  // decode attention over pages of the format
  double matmul_call_s = 0;       // fixed cost of one one-row matmul call (a parallel region), beyond its bytes
  double attention_call_s = 0;    // fixed cost of one decode attention call (one layer), beyond its bytes
  double attention_flops = 0;     // prefill attention (512 queries over a few thousand keys), f16 pages
  double layer_overhead_s = 0;    // one token's other ops in one layer: norms, RoPE, append, activation
  double prefill_row_overhead_s = 0;  // the same per prompt row per layer
  // Quest's page ranking (kv::quest_select_pages, on the forward's thread): one page's key summary bounded for one
  // query head, the choice of the pages to read included. 0: not probed (older probe files), not counted.
  double quest_rank_s = 0;
  // The attention's cost of a page beyond its bytes or FLOPs (one page of one kv-head): visited by a decode step's
  // query, and by one prompt token's query in prefill (the rates above are net of it). A cache of 16-token pages
  // (Quest's page=16) visits 4x the pages of 64. 0: not probed (older probe files), not counted.
  double attention_page_s = 0;
  double prefill_attention_page_s = 0;
  // A page entered in the views a decode step builds (every held page of every layer, and again each page a read
  // filter keeps), on the forward's thread. 0: not probed, not counted.
  double view_page_s = 0;
  bool empty() const { return copy_bandwidth == 0; }
};

struct DeviceSpec {
  std::string name;
  std::string source;            // where the figures come from, for the printed assumptions
  int64_t memory_bytes = 0;      // what KV and weights may use
  double bandwidth = 0;          // bytes/s of the memory the weights and KV live in
  double matmul_flops = 0;       // FLOP/s of dense 16-bit matrix products
  double link_bandwidth = 0;     // bytes/s to host memory, for swapping a sequence's KV out and in
  RooflineFractions fractions;
  KernelRates kernels;           // probed rates (CPU); empty for a datasheet device
};

// Named devices: "a100", "h100", "h200" (datasheet figures), "cpu" (the rates committed from the probe of the
// development machine; --measure replaces them with this machine's). NAME:key=value,... overrides fields:
// bw (GB/s), tflops, mem (GiB), link (GB/s), and the fractions f_weights, f_kv, f_matmul, f_attention.
// Throws Error for an unknown name (listing the known) or a bad override.
DeviceSpec device_by_name(const std::string& spec);
std::string device_names();

// Every rate at 100% of the device's figures: the theoretical-peak convention of "Challenges in Deploying
// Long-Context Transformers".
void set_peak_fractions(DeviceSpec& d);

}  // namespace longctx::plan
