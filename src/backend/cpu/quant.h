// Dequantization of the GGUF weight formats (ggml block layouts): the plain scalar reference.
// The fast paths (SIMD, fused with the dot product) live in matmul.cpp and are tested against this.
#pragma once
#include <cstdint>

#include "core/ggml_type.h"

namespace longctx::cpu {

// Dequantizes the first n values of one row stored in format t: src holds ggml_row_bytes(t, n) bytes,
// dst (n) receives f32. Formats: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
// Throws Error for another format or an n that is not a multiple of the block size.
// Results equal gguf-py's numpy dequantizers bit for bit: same f32 operations in the same order.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// True for the formats dequantize_row and matmul accept.
bool quant_supported(GgmlType t);

// The 6-bit scale and min of sub-block j in [0, 8) of a Q4_K/Q5_K block, from its 12 scale bytes (inline: the
// SIMD dequantizers call it per sub-block). Sub-blocks 0..3 keep theirs in the low 6 bits of bytes 0..3 (scale)
// and 4..7 (min); sub-blocks 4..7 put their low 4 bits in the nibbles of bytes 8..11 and their top 2 bits in the
// top 2 bits of bytes 0..7.
inline void k_scale_min(const uint8_t* s, int j, int* sc, int* m) {  // s (12)
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace longctx::cpu
