// Storage formats of KV-cache pages, shared by the store (kv/) and the kernels that read pages (backend/).
#pragma once
#include <cstddef>
#include <cstdint>

namespace longctx {

enum class KvFormat {
  F32,
  F16,
  // KIVI ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache"): keys quantized per channel over the
  // page's tokens, values per token in groups of channels, asymmetric (scale and minimum), 8, 4 or 2 bits.
  Kivi8,
  Kivi4,
  Kivi2,
};

const char* kv_format_name(KvFormat f);
int kv_format_bits(KvFormat f);  // bits per stored value, without scales
bool kv_format_is_packed(KvFormat f);

}  // namespace longctx
