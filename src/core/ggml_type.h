// The weight formats of GGUF files: ids as in the file, block geometry, names.
// Layouts are those of ggml (blocks of 32 values, or super-blocks of 256 for the K-quants).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace longctx {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30,
};

struct GgmlTypeTraits {
  std::string_view name;
  int64_t block_values;  // values per block
  size_t block_bytes;    // bytes per block
  bool supported;        // the engine can compute with it
};

// nullopt for an id the engine does not know at all.
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id);

inline GgmlTypeTraits ggml_traits(GgmlType t) { return *ggml_type_traits(static_cast<uint32_t>(t)); }

// Bytes of one row of n values; n must be a multiple of the block size.
inline size_t ggml_row_bytes(GgmlType t, int64_t n) {
  const auto tr = ggml_traits(t);
  return static_cast<size_t>(n / tr.block_values) * tr.block_bytes;
}

}  // namespace longctx
