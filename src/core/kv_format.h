// Storage formats of KV-cache pages, shared by the store (kv/) and the kernels that read pages (backend/).
#pragma once
#include <cstddef>

namespace longctx {

enum class KvFormat { F32, F16 };

inline const char* kv_format_name(KvFormat f) { return f == KvFormat::F32 ? "f32" : "f16"; }
inline size_t kv_format_bytes(KvFormat f) { return f == KvFormat::F32 ? 4 : 2; }  // per stored value

}  // namespace longctx
