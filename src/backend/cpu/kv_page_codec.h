// Reading and writing one KV page in any format. A page holds page_tokens tokens of one (layer, kv-head):
//   F32 / F16: keys channel-major (head_dim, page_tokens), then values (page_tokens, head_dim). Keys are stored
//              transposed so that the attention kernel's q·k products are broadcast-FMAs over a row of
//              page_tokens keys (no horizontal sums), and its p·v products broadcast-FMAs over a value row.
//   Kivi*:     key codes channel-major (head_dim rows of page_tokens codes), key scale (head_dim) f16, key min
//              (head_dim) f16 — one (scale, min) per channel over the page's tokens, since key outliers sit in
//              fixed channels; then value codes token-major (page_tokens rows of head_dim codes), value scale and
//              min f16 per (token, group of kKiviValueGroup channels), since values have no channel structure.
//              A row of n b-bit codes takes s = n * b / 8 bytes, and code i sits in byte i % s at bit b * (i / s):
//              the row is cut into 8 / b runs that share bytes, so that consecutive codes unpack as one vector
//              of bytes shifted by one amount (kivi_code is the plain rule).
// The attention kernel decodes a page tile into f32 with these functions: the cache is never dequantized whole.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/backend.h"
#include "core/kv_format.h"

namespace longctx::cpu {

// The layout and size of a page are backend.h's (the one codec description), named here as the codec's.
using longctx::kivi_page_layout;
using longctx::KiviPageLayout;
using longctx::kKiviValueGroup;
using longctx::kv_page_bytes;

// Code i of a packed row of n codes (the layout above).
inline uint32_t kivi_code(const uint8_t* row, int bits, size_t row_bytes, size_t i) {
  return (static_cast<uint32_t>(row[i % row_bytes]) >> (bits * (i / row_bytes))) & ((1u << bits) - 1);
}

// Writes a page from f32 rows. k, v: (n_rows, head_dim), n_rows <= page_tokens. Packed formats need a full
// page (n_rows == page_tokens) since the key scales span all its tokens.
void kv_page_write(KvFormat f, int32_t page_tokens, int32_t head_dim, const float* k, const float* v, int32_t row0,
                   int32_t n_rows, uint8_t* page);

// Decodes rows [row0, row0 + n) of a page's keys or values into out (n, head_dim).
void kv_page_read_keys(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0,
                       int32_t n, float* out);
void kv_page_read_values(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t row0,
                         int32_t n, float* out);
// Decodes the keys of rows [0, n) channel-major into out (head_dim, page_tokens); columns >= n are left as they
// are. The attention kernel's view of a packed page (plain pages it reads in place).
void kv_page_read_keys_t(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* page, int32_t n,
                         float* out);

// Rows [src_row0, src_row0 + n) of an F32 or F16 page to rows [dst_row0, dst_row0 + n) of another page of the same
// format, bytes as they are.
void kv_page_copy_rows(KvFormat f, int32_t page_tokens, int32_t head_dim, const uint8_t* src, int32_t src_row0,
                       int32_t n, uint8_t* dst, int32_t dst_row0);

// Moves rows keep[0..n_keep) (ascending) of a page to rows [0, n_keep), in order. Packed pages move codes and each
// token's value scales; the per-channel key scales stay those the page was encoded with, so eviction inside a
// packed page never quantizes a kept value again.
void kv_page_compact(KvFormat f, int32_t page_tokens, int32_t head_dim, uint8_t* page, const int32_t* keep,
                     int32_t n_keep);

}  // namespace longctx::cpu
