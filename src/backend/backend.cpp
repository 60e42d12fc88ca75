// The backend-neutral parts of the one backend interface (backend.h): the page views' helpers, the page layout every
// codec follows, RoPE's angles on the host, and device names.
#include "backend/backend.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace longctx {

const char* kv_format_name(KvFormat f) {
  switch (f) {
    case KvFormat::F32: return "f32";
    case KvFormat::F16: return "f16";
    case KvFormat::Kivi8: return "kivi8";
    case KvFormat::Kivi4: return "kivi4";
    case KvFormat::Kivi2: return "kivi2";
  }
  return "?";
}

int kv_format_bits(KvFormat f) {
  switch (f) {
    case KvFormat::F32: return 32;
    case KvFormat::F16: return 16;
    case KvFormat::Kivi8: return 8;
    case KvFormat::Kivi4: return 4;
    case KvFormat::Kivi2: return 2;
  }
  return 0;
}

bool kv_format_is_packed(KvFormat f) { return f != KvFormat::F32 && f != KvFormat::F16; }

KiviPageLayout kivi_page_layout(KvFormat f, int32_t T, int32_t d) {
  KiviPageLayout L{};
  L.bits = kv_format_bits(f);
  L.k_row_bytes = static_cast<size_t>(T) * L.bits / 8;
  L.v_row_bytes = static_cast<size_t>(d) * L.bits / 8;
  const size_t codes = static_cast<size_t>(T) * d * L.bits / 8;
  L.k_codes = 0;
  L.k_scale = codes;
  L.k_min = L.k_scale + static_cast<size_t>(d) * 2;
  L.v_codes = L.k_min + static_cast<size_t>(d) * 2;
  const size_t n_groups = static_cast<size_t>(T) * (d / kKiviValueGroup);
  L.v_scale = L.v_codes + codes;
  L.v_min = L.v_scale + n_groups * 2;
  L.total = L.v_min + n_groups * 2;
  return L;
}

size_t kv_page_bytes(KvFormat f, int32_t page_tokens, int32_t head_dim) {
  if (!kv_format_is_packed(f)) return 2 * static_cast<size_t>(page_tokens) * head_dim * (f == KvFormat::F32 ? 4 : 2);
  if (head_dim % kKiviValueGroup != 0) fail("KIVI formats need a head size that is a multiple of {}", kKiviValueGroup);
  if (page_tokens % 4 != 0) fail("KIVI formats need a page size that is a multiple of 4 tokens");
  return kivi_page_layout(f, page_tokens, head_dim).total;
}

int32_t KvHeadView::page_of(int32_t slot) const {
  // The last page whose first slot is <= slot (empty pages share a first slot with the next; skip them).
  const auto it = std::upper_bound(slot0.begin(), slot0.end() - 1, slot);
  return static_cast<int32_t>(it - slot0.begin()) - 1;
}

KvHeadView keep_pages(const KvHeadView& head, const std::vector<int32_t>& pages, std::vector<int32_t>& positions) {
  KvHeadView out;
  positions.clear();
  out.slot0.push_back(0);
  int32_t prev = -1;
  for (int32_t p : pages) {
    if (p <= prev || p >= head.n_pages()) fail("internal: page {} of {} out of order or range", p, head.n_pages());
    prev = p;
    const int32_t s0 = head.slot0[static_cast<size_t>(p)], rows = head.page_rows(p);
    out.pages.push_back(head.pages[static_cast<size_t>(p)]);
    out.formats.push_back(head.formats[static_cast<size_t>(p)]);
    positions.insert(positions.end(), head.positions + s0, head.positions + s0 + rows);
    out.slot0.push_back(out.slot0.back() + rows);
  }
  out.positions = positions.data();
  out.n_tokens = out.slot0.back();
  return out;
}

void rope_angles(int32_t pos, int64_t n_rot, float base, float* cos_t, float* sin_t) {
  // Angles in double: positions reach 10^5 and beyond, where an f32 product would be off by whole radians' fractions.
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const double inv_freq = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
    const double a = static_cast<double>(pos) * inv_freq;
    cos_t[i] = static_cast<float>(std::cos(a));
    sin_t[i] = static_cast<float>(std::sin(a));
  }
}

void rope_rotate(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float* cos_t, const float* sin_t,
                 RopeOrder order) {
  const int64_t half = n_rot / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const int64_t a = order == RopeOrder::Adjacent ? 2 * i : i;
      const int64_t b = order == RopeOrder::Adjacent ? 2 * i + 1 : i + half;
      const float c = cos_t[i], s = sin_t[i];
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

const char* device_name(Device d) {
  switch (d) {
    case Device::Cpu: return "cpu";
    case Device::Cuda: return "cuda";
  }
  return "?";
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::Cpu;
  if (name == "cuda") return Device::Cuda;
  fail("unknown device '{}': the devices are cpu and cuda", name);
}

}  // namespace longctx
