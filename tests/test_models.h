// Where tests find the model files and committed goldens.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace longctx::test {

inline std::string model_dir() {
  if (const char* d = std::getenv("LONGCTX_MODEL_DIR")) return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/longctx";
}

// The two models of DESIGN.md, installed by scripts/setup.sh.
inline std::string smollm2_path() { return model_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf"; }
inline std::string gemma3_path() { return model_dir() + "/gemma-3-270m-q4_k_m.gguf"; }

inline std::string golden_dir() { return std::string(LONGCTX_SOURCE_DIR) + "/tests/golden"; }

// Where data/kjv.txt is: the checkout's data/ (made by scripts/setup.sh), or LONGCTX_DATA_DIR (a device machine,
// where the test binary runs outside the checkout it was built in).
inline std::string data_dir() {
  if (const char* d = std::getenv("LONGCTX_DATA_DIR")) return d;
  return std::string(LONGCTX_SOURCE_DIR) + "/data";
}

// A missing model is a set-up fault, not a skip: the README's test command installs them.
#define LONGCTX_REQUIRE_MODEL(path)                                                                  \
  ASSERT_TRUE(std::filesystem::exists(path)) << "model file " << (path)                              \
                                             << " is missing: run scripts/setup.sh (README) first"

// The first n_bytes of the eval haystack (data/kjv.txt, made by scripts/setup.sh) into text; a fatal failure when it
// is missing (call under ASSERT_NO_FATAL_FAILURE).
inline void read_kjv_head(size_t n_bytes, std::string* text) {
  std::ifstream in(data_dir() + "/kjv.txt");
  ASSERT_TRUE(in) << "data/kjv.txt is missing: run scripts/setup.sh (README) first";
  text->assign(n_bytes, '\0');
  in.read(text->data(), static_cast<std::streamsize>(text->size()));
  text->resize(static_cast<size_t>(in.gcount()));
}

}  // namespace longctx::test
