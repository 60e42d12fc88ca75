// The device byte layout of a KIVI page, shared by the decode kernel (decode_attention.cu) and the host packer
// (kivi_page.cpp). Plain C++, no CUDA header.
//
// The quantization is the CPU's (kv_page_codec.h, from "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
// Cache"): keys per channel over the page's tokens, values per token in groups of 32 channels, asymmetric, value =
// min + scale * code with f16 scale and min. Only where the codes and the scales sit differs from the CPU page: the
// device layout is cut into 16-token tiles and arranged so that each lane of a warp reads exactly the codes of its
// own mma.sync m16n8k16 fragment with one conflict-free shared-memory load, and turns every 32-bit word into f16
// pairs with a shift, a mask and an OR (no byte shuffles), already in the order the fragment wants:
//
//   page  = key (scale, min) block (head_dim * 4 bytes), then page_tokens / 16 tiles, each
//   tile  = key codes (16 * head_dim * bits / 8) | value codes (the same) | value (scale, min) (16 * head_dim / 32 * 4)
//
// so that a tile, plus its page's key block, is two contiguous copies.
//
// Fragment coordinates (as in decode_attention.cu): lane = 4 g + c. For S^T = K Q^T, lane (g, c) holds key rows g
// and g + 8, channels 32 j + 8 c + 2 i + h (j < head_dim / 32, i < 4, h < 2); for O^T += V^T P^T it holds value
// tokens 2 c + t and 8 + 2 c + t (t < 2), channels 64 s + 8 g + 2 i + h (s < head_dim / 64). Either way a lane's
// share of one K row (or of one V token pair) is head_dim / 8 channel pairs = head_dim * bits / 128 words.
//   - A pair's two codes sit in one 32-bit word at bits [b k, b k + b) (h = 0) and [16 + b k, 16 + b k + b) (h = 1),
//     k < 16 / b, so (word >> b k) & mask | 0x6400'6400 is the f16 pair (1024 + code0, 1024 + code1), exact.
//   - Key codes: words ordered (q, row, c, w) with w < min(words, 4) and q the rest: a quarter-warp reads 16 bytes
//     per lane from consecutive addresses. Value codes: (q, token pair u, g, w).
//   - Key (scale, min): words ordered (pair / 2, c, pair % 2, {scale, min}), each word an f16 pair of channels
//     (2 m, 2 m + 1), so lane c reads its scales and mins with one 16-byte load per two pairs, 4 lanes side by side.
//   - Value (scale, min): one word per (token, group): f16 scale in the low half, f16 min in the high half.
#pragma once
#include <cstddef>
#include <cstdint>

// The same functions serve the host packer and the kernel.
#ifdef __CUDACC__
#define LONGCTX_KIVI_FN constexpr __host__ __device__
#else
#define LONGCTX_KIVI_FN constexpr
#endif

namespace longctx::cuda::kivi {

inline constexpr int kTile = 16;   // tokens per tile, the m of the mma
inline constexpr int kGroup = 32;  // value channels sharing one (scale, min), as on the CPU (cpu::kKiviValueGroup)

LONGCTX_KIVI_FN int code_words(int head_dim, int bits) { return head_dim * bits / 128; }  // per lane per K row / V pair
LONGCTX_KIVI_FN int vec_words(int head_dim, int bits) { return code_words(head_dim, bits) < 4 ? code_words(head_dim, bits) : 4; }
LONGCTX_KIVI_FN int pairs_per_word(int bits) { return 16 / bits; }
LONGCTX_KIVI_FN size_t k_scale_bytes(int head_dim) { return static_cast<size_t>(head_dim) * 4; }
LONGCTX_KIVI_FN size_t code_bytes(int head_dim, int bits) { return static_cast<size_t>(kTile) * head_dim * bits / 8; }
LONGCTX_KIVI_FN size_t v_scale_bytes(int head_dim) { return static_cast<size_t>(kTile) * (head_dim / kGroup) * 4; }
LONGCTX_KIVI_FN size_t tile_bytes(int head_dim, int bits) { return 2 * code_bytes(head_dim, bits) + v_scale_bytes(head_dim); }
LONGCTX_KIVI_FN size_t page_bytes(int head_dim, int bits, int page_tokens) {
  return k_scale_bytes(head_dim) + static_cast<size_t>(page_tokens / kTile) * tile_bytes(head_dim, bits);
}

struct Slot {
  int32_t word;  // 32-bit word from the start of its region
  int32_t bit;   // lowest bit of the code in that word
};

// Where the code of (row t < 16 of the tile, channel ch) sits in the tile's key codes.
LONGCTX_KIVI_FN Slot k_code_slot(int head_dim, int bits, int t, int ch) {
  const int hi = ch & 1, i = (ch >> 1) & 3, c = (ch >> 3) & 3, j = ch >> 5;
  const int pair = 4 * j + i, wi = pair / pairs_per_word(bits), k = pair % pairs_per_word(bits);
  const int vec = vec_words(head_dim, bits), q = wi / vec, w = wi % vec;
  return {((q * kTile + t) * 4 + c) * vec + w, bits * k + 16 * hi};
}

// The inverse, for reading a key row word by word (attention_scores.cu): word wi < code_words of lane column c < 4
// of row t sits at k_row_word in the tile's key codes, and its code k < pairs_per_word of the low (high) half is
// channel k_word_channel (+ 1).
LONGCTX_KIVI_FN int k_row_word(int head_dim, int bits, int t, int c, int wi) {
  const int vec = vec_words(head_dim, bits);
  return (((wi / vec) * kTile + t) * 4 + c) * vec + wi % vec;
}
LONGCTX_KIVI_FN int k_word_channel(int bits, int c, int wi, int k) {
  const int pair = wi * pairs_per_word(bits) + k;
  return 32 * (pair >> 2) + 8 * c + 2 * (pair & 3);
}

// Where the code of (token t < 16 of the tile, channel ch) sits in the tile's value codes.
LONGCTX_KIVI_FN Slot v_code_slot(int head_dim, int bits, int t, int ch) {
  const int hi = ch & 1, i = (ch >> 1) & 3, g = (ch >> 3) & 7, s = ch >> 6;
  const int u = t >> 1, tok = t & 1;
  const int pair = tok * (head_dim / 16) + 4 * s + i, wi = pair / pairs_per_word(bits), k = pair % pairs_per_word(bits);
  const int vec = vec_words(head_dim, bits), q = wi / vec, w = wi % vec;
  return {((q * (kTile / 2) + u) * 8 + g) * vec + w, bits * k + 16 * hi};
}

// Word of channel ch's key scale (is_min = 0) or min (1) in the key block; the channel's half is ch & 1.
LONGCTX_KIVI_FN int k_scale_word(int ch, int is_min) {
  const int i = (ch >> 1) & 3, c = (ch >> 3) & 3, j = ch >> 5, pair = 4 * j + i;
  return ((pair / 2) * 4 + c) * 4 + (pair % 2) * 2 + is_min;
}

}  // namespace longctx::cuda::kivi
