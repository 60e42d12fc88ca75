// libFuzzer target for the GGUF reader: any input must parse or raise longctx::Error; a crash, a sanitizer
// report, another exception or a leak is a bug. The metadata getters and the printer run on what parsed, since
// the loader calls them on untrusted files too, and so does the tokenizer's construction from the metadata
// (then a short encode and decode with what was built).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<longctx::gguf::File> f;
  try {
    f = longctx::gguf::File::parse(data, size, "fuzz.gguf");
  } catch (const longctx::Error&) {
    return 0;
  }
  for (const auto& [key, value] : f->metadata()) {
    (void)longctx::gguf::value_to_string(value);
    // Every getter on every key: each gives a value or raises Error (wrong type, out of range).
    try { (void)f->get_string_opt(key); } catch (const longctx::Error&) {}
    try { (void)f->get_int_opt(key); } catch (const longctx::Error&) {}
    try { (void)f->get_float_opt(key); } catch (const longctx::Error&) {}
    try { (void)f->get_bool_opt(key); } catch (const longctx::Error&) {}
    try { (void)f->get_string_array(key); } catch (const longctx::Error&) {}
    try { (void)f->get_int_array(key); } catch (const longctx::Error&) {}
    try { (void)f->get_float_array(key); } catch (const longctx::Error&) {}
    try { (void)f->get_bool_array(key); } catch (const longctx::Error&) {}
  }
  for (const auto& t : f->tensors()) {
    // Touch the first and last byte of each tensor: ASan catches a data pointer outside the input.
    volatile uint8_t first = t.data[0], last = t.data[t.n_bytes - 1];
    (void)first;
    (void)last;
    if (f->find_tensor(t.name) != &t) std::abort();
  }

  std::unique_ptr<longctx::Tokenizer> tok;
  try {
    tok = longctx::Tokenizer::from_gguf(*f);
  } catch (const longctx::Error&) {
    return 0;
  }
  for (bool parse_special : {false, true}) {
    const auto ids = tok->encode("Hello, world! <s> 123\n\t\xE2\x96\x81 caf\xC3\xA9 \xFF", tok->add_bos(), parse_special);
    for (int32_t id : ids)
      if (id < 0 || id >= tok->n_vocab()) {
        std::fprintf(stderr, "gguf_fuzz: encode gave id %d outside the vocabulary of %d\n", id, tok->n_vocab());
        std::abort();
      }
    (void)tok->decode(ids);
  }
  return 0;
}
