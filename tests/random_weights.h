// Random weights of any GGML format for the matmul test and benchmark: random bytes with finite f16 scales of
// either sign, or random normal values for the float formats.
#pragma once
#include <cstring>
#include <random>
#include <vector>

#include "core/fp16.h"
#include "core/ggml_type.h"

namespace longctx::test {

// Byte offsets of the f16 scale fields in one block: random bytes there would be NaN or inf.
inline std::vector<size_t> scale_offsets(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q8_0: return {0};
    case GgmlType::Q4_1: case GgmlType::Q5_1: case GgmlType::Q4_K: case GgmlType::Q5_K: return {0, 2};
    case GgmlType::Q6_K: return {208};
    default: return {};
  }
}

// Random weights (n_out, n_in) in format t: random bytes with finite f16 scales of either sign, or random
// normal values for the float formats.
inline std::vector<uint8_t> random_weights(GgmlType t, int64_t n_out, int64_t n_in, std::mt19937& rng) {
  const auto tr = ggml_traits(t);
  std::vector<uint8_t> w(ggml_row_bytes(t, n_in) * static_cast<size_t>(n_out));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  auto put16 = [&](size_t at, uint16_t v) { std::memcpy(w.data() + at, &v, 2); };
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
    for (size_t i = 0; i < w.size() / tr.block_bytes; ++i) {
      const float f = normal(rng);
      if (t == GgmlType::F32) {
        std::memcpy(w.data() + 4 * i, &f, 4);
      } else {
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        put16(2 * i, t == GgmlType::F16 ? f32_to_fp16(f) : static_cast<uint16_t>(bits >> 16));
      }
    }
    return w;
  }
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  for (size_t blk = 0; blk < w.size() / tr.block_bytes; ++blk)
    for (size_t off : scale_offsets(t)) put16(blk * tr.block_bytes + off, f32_to_fp16(scale(rng)));
  return w;
}

}  // namespace longctx::test
