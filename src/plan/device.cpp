#include "plan/device.h"

#include <cstdlib>
#include <functional>
#include <vector>

#include "core/error.h"

namespace longctx::plan {

namespace {

// GPU fractions, from the H200's kernels timed alone (BENCHMARKS.md, GPU): the decode step's five products stream
// 15.01 GB in 4.26 ms summed (3.52 TB/s, 0.73 of the 4.8 datasheet); decode attention reads 3.3-4.1 TB/s at
// 32K-128K (0.75); prefill attention runs at 420-440 TFLOP/s at 32K (0.44 of 989); the 4K whole-model prefill less
// its attention leaves the GEMMs at ~600 TFLOP/s (0.6). The whole-model decode and the 32K prefill then check them.
constexpr RooflineFractions kGpuFractions{0.73, 0.75, 0.60, 0.44};

DeviceSpec gpu(const char* name, const char* source, double mem_gb, double bw_gbs, double tflops, double link_gbs) {
  DeviceSpec d;
  d.name = name;
  d.source = source;
  d.memory_bytes = static_cast<int64_t>(mem_gb * 1e9);
  d.bandwidth = bw_gbs * 1e9;
  d.matmul_flops = tflops * 1e12;
  d.link_bandwidth = link_gbs * 1e9;
  d.fractions = kGpuFractions;
  return d;
}

// The development machine (2 vCPUs of a KVM guest, Intel Xeon with AVX-512 VNNI and AMX, 480 MiB L3 shared with
// the host) probed at 2 threads by `longctx plan --device cpu --measure` when the figures in
// tests/golden/plan/cpu_measured.json were taken; the same probe figures are in that file.
DeviceSpec dev_cpu() {
  DeviceSpec d;
  d.name = "cpu";
  d.source = "probe of the development machine at 2 threads (tests/golden/plan/cpu_measured.json); --measure "
             "probes this one";
  d.memory_bytes = int64_t{16} << 30;
  d.link_bandwidth = 0;  // the cache already lives in host memory
  KernelRates& k = d.kernels;
  k.n_threads = 2;
  k.copy_bandwidth = 30e9;
  k.gemv_bytes_per_s = {{GgmlType::Q4_1, 20e9}, {GgmlType::Q8_0, 20e9}};
  k.gemm_flops = {{GgmlType::Q4_1, 300e9}, {GgmlType::Q8_0, 300e9}};
  k.attention_read_bytes_per_s = {{KvFormat::F16, 15e9}};
  k.attention_flops = 50e9;
  d.bandwidth = k.copy_bandwidth;
  d.matmul_flops = 300e9;
  return d;
}

const std::vector<std::pair<std::string, std::function<DeviceSpec()>>>& devices() {
  static const std::vector<std::pair<std::string, std::function<DeviceSpec()>>> d = {
      // The paper's running example: "312 TFLOPS", "2 TB/s", 80 GB of HBM.
      {"a100", [] { return gpu("a100", "NVIDIA A100 SXM 80GB datasheet: 312 TFLOP/s bf16 dense, 2.0 TB/s HBM2e, 80 GB, PCIe 4.0 x16 32 GB/s", 80, 2000, 312, 32); }},
      {"h100", [] { return gpu("h100", "NVIDIA H100 SXM datasheet: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, 80 GB, PCIe 5.0 x16 64 GB/s", 80, 3350, 989, 64); }},
      {"h200", [] { return gpu("h200", "NVIDIA H200 SXM datasheet: 989 TFLOP/s bf16 dense, 4.8 TB/s HBM3e, 141 GB, PCIe 5.0 x16 64 GB/s", 141, 4800, 989, 64); }},
      {"cpu", dev_cpu},
  };
  return d;
}

double parse_number(const std::string& key, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || end != value.c_str() + value.size() || !(v > 0) || v > 1e12)
    fail("--device: {}={} is not a positive number", key, value);
  return v;
}

}  // namespace

std::string device_names() {
  std::string names;
  for (const auto& [name, make] : devices()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

void set_peak_fractions(DeviceSpec& d) {
  d.fractions = RooflineFractions{1.0, 1.0, 1.0, 1.0};
}

DeviceSpec device_by_name(const std::string& spec) {
  const std::string name = spec.substr(0, spec.find(':'));
  DeviceSpec d;
  bool found = false;
  for (const auto& [n, make] : devices())
    if (n == name) {
      d = make();
      found = true;
    }
  if (!found) fail("unknown device '{}'; known: {} (override fields with NAME:bw=GB/s,tflops=T,mem=GiB)", name, device_names());
  if (spec.size() == name.size()) return d;
  std::string rest = spec.substr(name.size() + 1);
  size_t start = 0;
  while (start <= rest.size()) {
    const size_t end = std::min(rest.find(',', start), rest.size());
    const std::string item = rest.substr(start, end - start);
    const size_t eq = item.find('=');
    if (eq == std::string::npos) fail("--device '{}': '{}' is not key=value", spec, item);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    const double v = parse_number(key, value);
    const auto fraction = [&] {
      if (v > 1) fail("--device: {}={} is a fraction and must be at most 1", key, value);
      return v;
    };
    if (key == "bw") {
      d.bandwidth = v * 1e9;
      d.kernels = KernelRates{};  // a changed bandwidth replaces the probed rates
    } else if (key == "tflops") {
      d.matmul_flops = v * 1e12;
      d.kernels = KernelRates{};
    } else if (key == "mem") {
      d.memory_bytes = static_cast<int64_t>(v * 1073741824.0);
    } else if (key == "link") {
      d.link_bandwidth = v * 1e9;
    } else if (key == "f_weights") {
      d.fractions.weights = fraction();
    } else if (key == "f_kv") {
      d.fractions.kv = fraction();
    } else if (key == "f_matmul") {
      d.fractions.matmul = fraction();
    } else if (key == "f_attention") {
      d.fractions.attention = fraction();
    } else {
      fail("--device '{}': unknown field '{}' (bw, tflops, mem, link, f_weights, f_kv, f_matmul, f_attention)", spec, key);
    }
    d.source += " (overridden: " + item + ")";
    start = end + 1;
  }
  return d;
}

}  // namespace longctx::plan
