// libFuzzer target for the tokenizer: arbitrary bytes through encode() with the real tokenizers of the two models
// of DESIGN.md, SmolLM2 (byte-level BPE, the smollm split) and Gemma 3 (SentencePiece BPE with byte fallback),
// loaded once from LONGCTX_MODEL_DIR (default ~/.cache/longctx; scripts/setup.sh installs them), or from the
// colon-separated GGUF paths in LONGCTX_FUZZ_TOKENIZERS. For any input:
//   - encode raises nothing, and every id it gives is in the vocabulary;
//   - decode(encode(x)) == x, less the bytes the vocabulary has no token for (byte-level BPE drops them, as HF
//     does: SmolLM2 lacks a few control characters; found at start-up by encoding each byte alone); a matched
//     added token decodes to its own text; SentencePiece decodes U+2581 as a space, so x is compared with each
//     U+2581 read as one (and must have a token or a byte fallback for every byte, else its <unk> breaks this);
//   - without parse_special no control token comes out (they are never built from text);
//   - the pieces of every pre-tokenizer split rule are non-empty and cover the text exactly, in order.
// A broken property aborts, which libFuzzer reports as a crash with the input saved.
// Input: the first byte picks the tokenizer (bit 0) and parse_special (bit 1); the rest is the text.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

struct Loaded {
  std::string path;
  std::unique_ptr<longctx::gguf::File> file;
  std::unique_ptr<longctx::Tokenizer> tokenizer;
  bool sentencepiece = false;
  bool dropped[256] = {};  // bytes without a token, which encode leaves out
};

std::vector<Loaded>& tokenizers() {
  static std::vector<Loaded> t;
  return t;
}

[[noreturn]] void broken(const char* property, const Loaded& t, std::string_view text, bool parse_special) {
  std::fprintf(stderr, "tokenizer_fuzz: %s fails with %s (parse_special %d, %zu bytes of text)\n", property,
               t.path.c_str(), parse_special ? 1 : 0, text.size());
  std::abort();
}

std::vector<std::string> tokenizer_paths() {
  std::vector<std::string> paths;
  if (const char* list = std::getenv("LONGCTX_FUZZ_TOKENIZERS")) {
    std::string_view rest = list;
    while (!rest.empty()) {
      const size_t colon = rest.find(':');
      if (colon != 0) paths.emplace_back(rest.substr(0, colon));
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
    return paths;
  }
  std::string dir;
  if (const char* d = std::getenv("LONGCTX_MODEL_DIR")) {
    dir = d;
  } else {
    const char* home = std::getenv("HOME");
    dir = std::string(home ? home : "/root") + "/.cache/longctx";
  }
  return {dir + "/SmolLM2-135M-Instruct.Q4_1.gguf", dir + "/gemma-3-270m-q4_k_m.gguf"};
}

// What decode(encode(x)) must give: x less the dropped bytes, U+2581 as a space for SentencePiece.
std::string round_trip(const Loaded& t, std::string_view x) {
  std::string out;
  out.reserve(x.size());
  for (size_t i = 0; i < x.size();) {
    if (t.sentencepiece && x.substr(i, 3) == "\xE2\x96\x81") {
      out += ' ';
      i += 3;
      continue;
    }
    if (!t.dropped[static_cast<uint8_t>(x[i])]) out += x[i];
    ++i;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const std::string& path : tokenizer_paths()) {
    Loaded t;
    t.path = path;
    try {
      t.file = longctx::gguf::File::open(path);
      t.tokenizer = longctx::Tokenizer::from_gguf(*t.file);
      t.sentencepiece = t.file->get_string_opt("tokenizer.ggml.model") == "llama";
    } catch (const longctx::Error& e) {
      std::fprintf(stderr, "tokenizer_fuzz: cannot load a tokenizer: %s (scripts/setup.sh installs the models)\n",
                   e.what());
      std::exit(1);
    }
    // The round trip below holds only where the vocabulary prepends no space.
    if (t.sentencepiece && t.file->get_bool_opt("tokenizer.ggml.add_space_prefix").value_or(true)) {
      std::fprintf(stderr, "tokenizer_fuzz: %s prepends a space (add_space_prefix); use a vocabulary without\n",
                   path.c_str());
      std::exit(1);
    }
    int n_dropped = 0;
    for (int b = 0; b < 256; ++b) {
      const std::string byte(1, static_cast<char>(b));
      const std::string back = t.tokenizer->decode(t.tokenizer->encode(byte, false, false));
      if (back == byte) continue;
      if (!back.empty() || t.sentencepiece) {
        std::fprintf(stderr, "tokenizer_fuzz: %s gives %zu bytes back for byte 0x%02x alone; the round trip "
                     "property expects the byte or nothing (byte-level BPE)\n", path.c_str(), back.size(), b);
        std::exit(1);
      }
      t.dropped[b] = true;
      ++n_dropped;
    }
    std::fprintf(stderr, "tokenizer_fuzz: %s (%s, %d tokens, %d bytes without a token)\n", path.c_str(),
                 t.sentencepiece ? "SentencePiece BPE" : "byte-level BPE", t.tokenizer->n_vocab(), n_dropped);
    tokenizers().push_back(std::move(t));
  }
  if (tokenizers().empty()) {
    std::fprintf(stderr, "tokenizer_fuzz: LONGCTX_FUZZ_TOKENIZERS names no file\n");
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Loaded& t = tokenizers()[data[0] % tokenizers().size()];
  const bool parse_special = (data[0] & 2) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  std::vector<int32_t> ids;
  try {
    ids = t.tokenizer->encode(text, /*add_bos=*/false, parse_special);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_fuzz: encode raised: %s\n", e.what());
    broken("encode raises nothing", t, text, parse_special);
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= t.tokenizer->n_vocab()) broken("every id is in the vocabulary", t, text, parse_special);
    if (!parse_special && t.tokenizer->is_control(id))
      broken("no control token without parse_special", t, text, parse_special);
  }
  const std::string decoded = t.tokenizer->decode(ids);
  if (decoded != round_trip(t, text))
    broken("decode(encode(x)) == x", t, text, parse_special);

  std::vector<std::string_view> pieces;
  for (auto rule : {longctx::unicode::SplitRule::Gpt2, longctx::unicode::SplitRule::Gpt2Digits,
                    longctx::unicode::SplitRule::Llama3, longctx::unicode::SplitRule::Qwen2}) {
    pieces.clear();
    longctx::unicode::pre_tokenize(text, rule, pieces);
    size_t at = 0;
    for (std::string_view p : pieces) {
      if (p.empty() || p.data() != text.data() + at)
        broken("the pre-tokenizer's pieces are non-empty and in order", t, text, parse_special);
      at += p.size();
    }
    if (at != text.size()) broken("the pre-tokenizer's pieces cover the text", t, text, parse_special);
  }
  return 0;
}
