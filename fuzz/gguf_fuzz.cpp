// libFuzzer target for the GGUF reader: any input must parse or raise longctx::Error; a crash, a sanitizer
// report, another exception or a leak is a bug. The metadata getters and the printer run on what parsed, since
// the loader calls them on untrusted files too.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = longctx::gguf::File::parse(data, size, "fuzz.gguf");
    for (const auto& [key, value] : f->metadata()) (void)longctx::gguf::value_to_string(value);
    (void)f->get_string_opt("general.architecture");
    (void)f->get_int_opt("general.alignment");
    for (const auto& t : f->tensors()) {
      // Touch the first and last byte of each tensor: ASan catches a data pointer outside the input.
      volatile uint8_t first = t.data[0], last = t.data[t.n_bytes - 1];
      (void)first;
      (void)last;
      (void)f->find_tensor(t.name);
    }
  } catch (const longctx::Error&) {
  }
  return 0;
}
