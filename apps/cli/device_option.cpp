#include "device_option.h"

#include <CLI/CLI.hpp>
#include <cstdio>

namespace longctx {

void add_device_option(CLI::App* app, std::string& device) {
  app->add_option("--device", device,
                  "Where the model runs: cpu, cuda (builds with the CUDA backend, the cmake preset 'cuda'), or auto "
                  "(cuda when the build has it and a GPU is usable, else cpu)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
}

Device pick_device(const std::string& name) {
  const Device d = choose_device(name);
  std::fprintf(stderr, "device: %s%s\n", device_name(d), name == "auto" ? " (auto)" : "");
  return d;
}

}  // namespace longctx
