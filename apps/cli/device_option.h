// `--device` on every command that runs a model (run, eval, bench, calibrate-heads, serve): one spelling, one
// default, and the choice printed.
#pragma once
#include <string>

#include "backend/backend.h"

namespace CLI {
class App;
}

namespace longctx {

// Adds --device (auto, cpu or cuda; default auto) to a command, stored in `device`.
void add_device_option(CLI::App* app, std::string& device);

// choose_device(name) (backend.h): auto is cuda where the build has it and a GPU is usable, else cpu; a named device
// that is not available is an Error saying why. The choice goes to stderr.
Device pick_device(const std::string& name);

}  // namespace longctx
