#include "engine/text_breaks.h"

#include <string>

namespace longctx {
namespace {

enum Shape : uint8_t {
  kLeadingSpace = 1,     // starts with whitespace
  kLeadingNewline = 2,   // its leading whitespace holds a line break
  kTrailingSpace = 4,    // ends with whitespace
  kTrailingNewline = 8,  // its trailing whitespace holds a line break
  kEndsSentence = 16,    // its last non-whitespace character closes a sentence
  kControl = 32,         // a control token: a turn marker, BOS, EOS
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

uint8_t shape_of(const std::string& b) {
  uint8_t s = 0;
  size_t lead = 0;
  while (lead < b.size() && is_space(b[lead])) ++lead;
  if (lead > 0) s |= kLeadingSpace;
  if (b.find_first_of("\n\r") < lead) s |= kLeadingNewline;
  size_t last = b.size();
  while (last > lead && is_space(b[last - 1])) --last;
  if (lead == b.size()) last = 0;  // all whitespace: it leads and trails
  if (last < b.size()) s |= kTrailingSpace;
  if (b.find_first_of("\n\r", last) != std::string::npos) s |= kTrailingNewline;
  if (last > 0 && (b[last - 1] == '.' || b[last - 1] == '!' || b[last - 1] == '?')) s |= kEndsSentence;
  return s;
}

kv::TextBreak between(uint8_t prev, uint8_t cur) {
  if ((prev | cur) & kControl) return kv::TextBreak::Sentence;
  if (!(prev & kTrailingSpace) && !(cur & kLeadingSpace)) return kv::TextBreak::None;
  if ((prev & (kTrailingNewline | kEndsSentence)) || (cur & kLeadingNewline)) return kv::TextBreak::Sentence;
  return kv::TextBreak::Word;
}

}  // namespace

TextBreaks::TextBreaks(const Tokenizer& tok) : shape_(static_cast<size_t>(tok.n_vocab())) {
  for (int32_t id = 0; id < tok.n_vocab(); ++id)
    shape_[static_cast<size_t>(id)] = tok.is_control(id) ? uint8_t{kControl} : shape_of(tok.token_bytes(id));
}

void TextBreaks::classify(std::span<const int32_t> tokens, int32_t prev, std::vector<kv::TextBreak>& out) const {
  auto shape = [&](int32_t id) {
    return id >= 0 && static_cast<size_t>(id) < shape_.size() ? shape_[static_cast<size_t>(id)] : uint8_t{kControl};
  };
  out.resize(tokens.size());
  uint8_t p = prev < 0 ? uint8_t{kControl} : shape(prev);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint8_t c = shape(tokens[i]);
    out[i] = between(p, c);
    p = c;
  }
}

}  // namespace longctx
