// Where a text may be cut without splitting a word or a sentence, per token (kv::TextBreak), for KV policies that
// keep spans of tokens whole (ChunkKV's align=). Derived from what each token spells (Tokenizer::token_bytes), so
// it holds for any vocabulary: a boundary lies wherever whitespace separates two tokens, a sentence boundary where
// that whitespace holds a line break or follows a sentence's closing mark (. ! ?), and every control token (a chat
// template's turn markers) stands between sentences. Tokens that touch without whitespace (the digits of a number,
// the pieces of a word, a word and its punctuation) are never cut apart.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "kv/policy.h"
#include "tokenizer/tokenizer.h"

namespace longctx {

class TextBreaks {
 public:
  // One byte of shape per vocabulary entry.
  explicit TextBreaks(const Tokenizer& tok);
  // out[i]: the boundary before tokens[i]; prev: the token before tokens[0], -1 at the start of a text (a sentence
  // boundary).
  void classify(std::span<const int32_t> tokens, int32_t prev, std::vector<kv::TextBreak>& out) const;

 private:
  std::vector<uint8_t> shape_;  // (n_vocab) of Shape bits
};

}  // namespace longctx
