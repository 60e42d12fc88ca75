// The real SmolLM2 model for a whole test suite: the model, its tokenizer and a 2-thread pool, loaded once before the
// suite's first test. Tests that run the engine on the real model derive their fixture from it.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "model/model.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"

namespace longctx::test {

class SmolLM2Suite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(smollm2_path())) return;  // each test reports the missing model (SetUp)
    model_ = Model::load(smollm2_path()).release();
    tok_ = Tokenizer::from_gguf(model_->file()).release();
    pool_ = new ThreadPool(2);
  }
  static void TearDownTestSuite() {
    delete pool_;
    delete tok_;
    delete model_;
    pool_ = nullptr;
    tok_ = nullptr;
    model_ = nullptr;
  }
  void SetUp() override { LONGCTX_REQUIRE_MODEL(smollm2_path()); }

  // Where the engine runs in these tests: LONGCTX_TEST_DEVICE (cpu or cuda; the device scripts set cuda), else cpu.
  static Device device() {
    const char* d = std::getenv("LONGCTX_TEST_DEVICE");
    return d != nullptr ? parse_device(d) : Device::Cpu;
  }

  // n tokens of the eval haystack (data/kjv.txt) from token `from` on.
  static std::vector<int32_t> kjv(int32_t from, int32_t n) {
    std::string text;
    read_kjv_head(static_cast<size_t>(from + n) * 8, &text);
    std::vector<int32_t> ids = tok_->encode(text, false, false);
    EXPECT_GE(static_cast<int32_t>(ids.size()), from + n);
    if (static_cast<int32_t>(ids.size()) < from + n) return {};
    return {ids.begin() + from, ids.begin() + from + n};
  }

  static inline Model* model_ = nullptr;
  static inline Tokenizer* tok_ = nullptr;
  static inline ThreadPool* pool_ = nullptr;
};

}  // namespace longctx::test
