#include "backend/cpu/kv_page_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/fp16.h"

namespace longctx {

namespace cpu {
namespace {

void put_code(uint8_t* row, int bits, size_t row_bytes, size_t i, uint32_t q) {
  row[i % row_bytes] |= static_cast<uint8_t>(q << (bits * (i / row_bytes)));
}

// Asymmetric quantization of a set of values to [0, 2^bits - 1] given its min and max. The scale and min are
// rounded to f16 first, and the codes computed against the rounded values, so decode matches encode exactly.
struct QParams {
  uint16_t scale_h, min_h;
  float scale, min;
};

QParams qparams(float lo, float hi, int bits) {
  QParams p;
  p.min_h = f32_to_fp16(lo);
  p.min = fp16_to_f32(p.min_h);
  const float levels = static_cast<float>((1 << bits) - 1);
  // The f16 min may sit above lo by rounding; widen the range so every value stays representable.
  const float range = std::max(hi - p.min, 0.0f);
  p.scale_h = f32_to_fp16(range / levels);
  p.scale = fp16_to_f32(p.scale_h);
  if (p.scale > 0 && p.scale * levels < range) {  // rounded down: step one f16 ulp up
    p.scale_h = static_cast<uint16_t>(p.scale_h + 1);
    p.scale = fp16_to_f32(p.scale_h);
  }
  return p;
}

uint32_t quantize(float x, const QParams& p, int bits) {
  if (p.scale <= 0) return 0;
  const float q = std::nearbyint((x - p.min) / p.scale);
  return static_cast<uint32_t>(std::clamp(q, 0.0f, static_cast<float>((1 << bits) - 1)));
}

void write_kivi(KvFormat f, int32_t T, int32_t d, const float* k, const float* v, uint8_t* page) {
  const KiviPageLayout L = kivi_page_layout(f, T, d);
  const int bits = L.bits;
  std::memset(page, 0, L.total);
  auto* k_scale = reinterpret_cast<uint16_t*>(page + L.k_scale);
  auto* k_min = reinterpret_cast<uint16_t*>(page + L.k_min);
  for (int32_t c = 0; c < d; ++c) {
    float lo = k[c], hi = k[c];
    for (int32_t t = 1; t < T; ++t) {
      lo = std::min(lo, k[static_cast<size_t>(t) * d + c]);
      hi = std::max(hi, k[static_cast<size_t>(t) * d + c]);
    }
    const QParams p = qparams(lo, hi, bits);
    k_scale[c] = p.scale_h;
    k_min[c] = p.min_h;
    uint8_t* row = page + L.k_codes + c * L.k_row_bytes;
    for (int32_t t = 0; t < T; ++t)
      put_code(row, bits, L.k_row_bytes, static_cast<size_t>(t), quantize(k[static_cast<size_t>(t) * d + c], p, bits));
  }
  auto* v_scale = reinterpret_cast<uint16_t*>(page + L.v_scale);
  auto* v_min = reinterpret_cast<uint16_t*>(page + L.v_min);
  const int32_t n_groups = d / kKiviValueGroup;
  for (int32_t t = 0; t < T; ++t)
    for (int32_t g = 0; g < n_groups; ++g) {
      const float* x = v + static_cast<size_t>(t) * d + g * kKiviValueGroup;
      const auto [lo, hi] = std::minmax_element(x, x + kKiviValueGroup);
      const QParams p = qparams(*lo, *hi, bits);
      v_scale[t * n_groups + g] = p.scale_h;
      v_min[t * n_groups + g] = p.min_h;
      uint8_t* row = page + L.v_codes + t * L.v_row_bytes;
      for (int32_t i = 0; i < kKiviValueGroup; ++i)
        put_code(row, bits, L.v_row_bytes, static_cast<size_t>(g * kKiviValueGroup + i), quantize(x[i], p, bits));
    }
}

}  // namespace

void kv_page_write(KvFormat f, int32_t T, int32_t d, const float* k, const float* v, int32_t row0, int32_t n_rows,
                   uint8_t* page) {
  if (kv_format_is_packed(f)) {
    if (row0 != 0 || n_rows != T) fail("internal: a packed KV page is written whole");
    write_kivi(f, T, d, k, v, page);
    return;
  }
  const size_t half = static_cast<size_t>(T) * d * (f == KvFormat::F32 ? 4 : 2);
  for (int32_t r = 0; r < n_rows; ++r) {
    const int32_t row = row0 + r;
    const float* kr = k + static_cast<size_t>(r) * d;
    const float* vr = v + static_cast<size_t>(r) * d;
    if (f == KvFormat::F32) {
      auto* kd = reinterpret_cast<float*>(page);
      for (int32_t c = 0; c < d; ++c) kd[static_cast<size_t>(c) * T + row] = kr[c];
      std::memcpy(page + half + static_cast<size_t>(row) * d * 4, vr, static_cast<size_t>(d) * 4);
    } else {
      auto* kd = reinterpret_cast<uint16_t*>(page);
      auto* vd = reinterpret_cast<uint16_t*>(page + half) + static_cast<size_t>(row) * d;
      for (int32_t c = 0; c < d; ++c) {
        kd[static_cast<size_t>(c) * T + row] = f32_to_fp16(kr[c]);
        vd[c] = f32_to_fp16(vr[c]);
      }
    }
  }
}

namespace {

void read_plain(KvFormat f, const uint8_t* src, size_t n, float* out) {
  if (f == KvFormat::F32) {
    std::memcpy(out, src, n * 4);
  } else {
    const auto* s = reinterpret_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; ++i) out[i] = fp16_to_f32(s[i]);
  }
}

float plain_value(KvFormat f, const uint8_t* src, size_t i) {
  if (f == KvFormat::F32) return reinterpret_cast<const float*>(src)[i];
  return fp16_to_f32(reinterpret_cast<const uint16_t*>(src)[i]);
}

// Calls put(r, c, value) for every key of rows [row0, row0 + n) of a page, whatever its format.
template <class Put>
void for_each_key(KvFormat f, int32_t T, int32_t d, const uint8_t* page, int32_t row0, int32_t n, Put put) {
  if (!kv_format_is_packed(f)) {
    for (int32_t c = 0; c < d; ++c)
      for (int32_t r = 0; r < n; ++r) put(r, c, plain_value(f, page, static_cast<size_t>(c) * T + row0 + r));
    return;
  }
  const KiviPageLayout L = kivi_page_layout(f, T, d);
  const auto* k_scale = reinterpret_cast<const uint16_t*>(page + L.k_scale);
  const auto* k_min = reinterpret_cast<const uint16_t*>(page + L.k_min);
  for (int32_t c = 0; c < d; ++c) {
    const float scale = fp16_to_f32(k_scale[c]), mn = fp16_to_f32(k_min[c]);
    const uint8_t* row = page + L.k_codes + c * L.k_row_bytes;
    for (int32_t r = 0; r < n; ++r)
      put(r, c, mn + scale * static_cast<float>(kivi_code(row, L.bits, L.k_row_bytes, static_cast<size_t>(row0 + r))));
  }
}

}  // namespace

void kv_page_read_keys(KvFormat f, int32_t T, int32_t d, const uint8_t* page, int32_t row0, int32_t n, float* out) {
  for_each_key(f, T, d, page, row0, n, [&](int32_t r, int32_t c, float x) { out[static_cast<size_t>(r) * d + c] = x; });
}

void kv_page_read_keys_t(KvFormat f, int32_t T, int32_t d, const uint8_t* page, int32_t n, float* out) {
  for_each_key(f, T, d, page, 0, n, [&](int32_t r, int32_t c, float x) { out[static_cast<size_t>(c) * T + r] = x; });
}

void kv_page_read_values(KvFormat f, int32_t T, int32_t d, const uint8_t* page, int32_t row0, int32_t n, float* out) {
  if (!kv_format_is_packed(f)) {
    const size_t elem = f == KvFormat::F32 ? 4 : 2;
    const size_t half = static_cast<size_t>(T) * d * elem;
    read_plain(f, page + half + static_cast<size_t>(row0) * d * elem, static_cast<size_t>(n) * d, out);
    return;
  }
  const KiviPageLayout L = kivi_page_layout(f, T, d);
  const auto* v_scale = reinterpret_cast<const uint16_t*>(page + L.v_scale);
  const auto* v_min = reinterpret_cast<const uint16_t*>(page + L.v_min);
  const int32_t n_groups = d / kKiviValueGroup;
  for (int32_t r = 0; r < n; ++r) {
    const int32_t t = row0 + r;
    const uint8_t* row = page + L.v_codes + t * L.v_row_bytes;
    for (int32_t g = 0; g < n_groups; ++g) {
      const float scale = fp16_to_f32(v_scale[t * n_groups + g]);
      const float mn = fp16_to_f32(v_min[t * n_groups + g]);
      for (int32_t i = 0; i < kKiviValueGroup; ++i) {
        const int32_t c = g * kKiviValueGroup + i;
        out[static_cast<size_t>(r) * d + c] =
            mn + scale * static_cast<float>(kivi_code(row, L.bits, L.v_row_bytes, static_cast<size_t>(c)));
      }
    }
  }
}


void kv_page_copy_rows(KvFormat f, int32_t T, int32_t d, const uint8_t* src, int32_t src_row0, int32_t n,
                       uint8_t* dst, int32_t dst_row0) {
  if (kv_format_is_packed(f)) fail("internal: rows of {} pages are not copied between pages", kv_format_name(f));
  if (n < 0 || src_row0 < 0 || dst_row0 < 0 || src_row0 + n > T || dst_row0 + n > T || src == dst)
    fail("internal: copying rows [{}, +{}) to [{}, +{}) of pages of {}", src_row0, n, dst_row0, n, T);
  const size_t e = f == KvFormat::F32 ? 4 : 2;
  const size_t vals = static_cast<size_t>(d) * T * e;  // keys: (head_dim, page_tokens); values: (page_tokens, head_dim)
  for (int32_t c = 0; c < d; ++c)
    std::memcpy(dst + (static_cast<size_t>(c) * T + dst_row0) * e, src + (static_cast<size_t>(c) * T + src_row0) * e,
                n * e);
  std::memcpy(dst + vals + static_cast<size_t>(dst_row0) * d * e, src + vals + static_cast<size_t>(src_row0) * d * e,
              static_cast<size_t>(n) * d * e);
}

void kv_page_compact(KvFormat f, int32_t T, int32_t d, uint8_t* page, const int32_t* keep, int32_t n_keep) {
  for (int32_t i = 0; i < n_keep; ++i)
    if (keep[i] < i || keep[i] >= T || (i > 0 && keep[i] <= keep[i - 1]))
      fail("internal: compacting page rows must be ascending and below {}", T);
  if (!kv_format_is_packed(f)) {
    // Rows before the first hole stay; after it, each run of consecutive kept rows moves as one block (a decode
    // step's eviction leaves one hole: one move per key channel and one for the values).
    const size_t e = f == KvFormat::F32 ? 4 : 2;  // element bytes
    uint8_t* vals = page + static_cast<size_t>(d) * T * e;  // values: (page_tokens, head_dim); keys: (head_dim, page_tokens)
    for (int32_t i = 0; i < n_keep;) {
      if (keep[i] == i) {
        ++i;
        continue;
      }
      int32_t run = 1;
      while (i + run < n_keep && keep[i + run] == keep[i] + run) ++run;
      for (int32_t c = 0; c < d; ++c) {
        uint8_t* row = page + static_cast<size_t>(c) * T * e;
        std::memmove(row + i * e, row + keep[i] * e, run * e);
      }
      std::memmove(vals + static_cast<size_t>(i) * d * e, vals + static_cast<size_t>(keep[i]) * d * e, run * d * e);
      i += run;
    }
    return;
  }
  const KiviPageLayout L = kivi_page_layout(f, T, d);
  std::vector<uint32_t> codes(static_cast<size_t>(n_keep));
  for (int32_t c = 0; c < d; ++c) {  // a channel's codes share bytes across tokens: gather, clear, put back
    uint8_t* row = page + L.k_codes + c * L.k_row_bytes;
    for (int32_t i = 0; i < n_keep; ++i) codes[static_cast<size_t>(i)] = kivi_code(row, L.bits, L.k_row_bytes, keep[i]);
    std::memset(row, 0, L.k_row_bytes);
    for (int32_t i = 0; i < n_keep; ++i) put_code(row, L.bits, L.k_row_bytes, static_cast<size_t>(i), codes[static_cast<size_t>(i)]);
  }
  const int32_t n_groups = d / kKiviValueGroup;
  auto* v_scale = reinterpret_cast<uint16_t*>(page + L.v_scale);
  auto* v_min = reinterpret_cast<uint16_t*>(page + L.v_min);
  for (int32_t i = 0; i < n_keep; ++i) {  // values are per token: whole rows move
    std::memmove(page + L.v_codes + i * L.v_row_bytes, page + L.v_codes + keep[i] * L.v_row_bytes, L.v_row_bytes);
    std::memmove(v_scale + i * n_groups, v_scale + keep[i] * n_groups, n_groups * sizeof(uint16_t));
    std::memmove(v_min + i * n_groups, v_min + keep[i] * n_groups, n_groups * sizeof(uint16_t));
  }
}

}  // namespace cpu
}  // namespace longctx
