// Host side of the device KIVI page (kivi_layout.h): the packing, and the sizes the views and the store need.
#include <cstring>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kivi_layout.h"

namespace longctx::cuda {

int kv_packing_bits(KvPacking f) {
  switch (f) {
    case KvPacking::None: return 0;
    case KvPacking::Kivi2: return 2;
    case KvPacking::Kivi4: return 4;
    case KvPacking::Kivi8: return 8;
  }
  return 0;
}

size_t PagedKvView::packed_page_bytes() const {
  const int bits = kv_packing_bits(packing);
  return bits ? kivi::page_bytes(head_dim, bits, page_tokens) : 0;
}

Status kivi_page_pack(KvPacking f, int32_t page_tokens, int32_t head_dim, const KiviPageCodes& page, uint8_t* dst) {
  const int bits = kv_packing_bits(f);
  if (bits == 0) return Status::error("kivi_page_pack: not a packed format");
  if (head_dim != 64 && head_dim != 128)
    return Status::error("kivi_page_pack: head_dim " + std::to_string(head_dim) + " not supported (64, 128)");
  if (page_tokens <= 0 || page_tokens % kivi::kTile != 0)
    return Status::error("kivi_page_pack: page_tokens " + std::to_string(page_tokens) + " is not a multiple of 16");
  if (!page.k_codes || !page.k_scale || !page.k_min || !page.v_codes || !page.v_scale || !page.v_min || !dst)
    return Status::error("kivi_page_pack: null pointer");
  const uint32_t code_max = (1u << bits) - 1;
  const size_t bytes = kivi::page_bytes(head_dim, bits, page_tokens);
  std::memset(dst, 0, bytes);
  auto word = [&](size_t byte_offset, int32_t w) -> uint32_t& {
    return reinterpret_cast<uint32_t*>(dst + byte_offset)[w];  // dst is 4-byte aligned: every region is
  };
  for (int32_t ch = 0; ch < head_dim; ++ch) {
    const int sh = 16 * (ch & 1);
    word(0, kivi::k_scale_word(ch, 0)) |= static_cast<uint32_t>(page.k_scale[ch]) << sh;
    word(0, kivi::k_scale_word(ch, 1)) |= static_cast<uint32_t>(page.k_min[ch]) << sh;
  }
  const int32_t n_groups = head_dim / kivi::kGroup;
  for (int32_t t = 0; t < page_tokens; ++t) {
    const size_t tile = kivi::k_scale_bytes(head_dim) + static_cast<size_t>(t / kivi::kTile) * kivi::tile_bytes(head_dim, bits);
    const size_t v_codes = tile + kivi::code_bytes(head_dim, bits);
    const size_t v_scales = v_codes + kivi::code_bytes(head_dim, bits);
    const int tt = t % kivi::kTile;
    for (int32_t ch = 0; ch < head_dim; ++ch) {
      const uint32_t kc = page.k_codes[static_cast<size_t>(t) * head_dim + ch];
      const uint32_t vc = page.v_codes[static_cast<size_t>(t) * head_dim + ch];
      if (kc > code_max || vc > code_max)
        return Status::error("kivi_page_pack: a code does not fit " + std::to_string(bits) + " bits");
      const kivi::Slot ks = kivi::k_code_slot(head_dim, bits, tt, ch);
      const kivi::Slot vs = kivi::v_code_slot(head_dim, bits, tt, ch);
      word(tile, ks.word) |= kc << ks.bit;
      word(v_codes, vs.word) |= vc << vs.bit;
    }
    for (int32_t g = 0; g < n_groups; ++g) {
      const size_t i = static_cast<size_t>(t) * n_groups + g;
      word(v_scales, tt * n_groups + g) =
          static_cast<uint32_t>(page.v_scale[i]) | (static_cast<uint32_t>(page.v_min[i]) << 16);
    }
  }
  return Status::success();
}

}  // namespace longctx::cuda
