// The tokenizer a GGUF file describes, giving the same ids as HF `tokenizers` does for that model:
//   tokenizer.ggml.model "gpt2":  byte-level BPE (GPT-2 byte alphabet, merges ranked by their order in the
//                                 file), split first by the regex that tokenizer.ggml.pre names.
//   tokenizer.ggml.model "llama": SentencePiece-style BPE: spaces as U+2581, no pre-split, any two pieces that
//                                 make a piece merge, ranked by that piece's score (Gemma: its place in the
//                                 file, as transformers ranks it), <0xNN> byte fallback.
// Added tokens (control: token_type 3, user-defined: 4) are cut out of the text first, leftmost-longest, as
// HF's AddedVocabulary does; control tokens only when parse_special is asked for.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/unicode.h"

namespace longctx {

namespace gguf {
class File;
}

// tokenizer.ggml.token_type, as llama.cpp writes it.
enum class TokenType : uint8_t { Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4,
                                 Unused = 5, Byte = 6 };

class Tokenizer {
 public:
  // Throws Error when the file has no tokenizer, or one of a kind or pre-tokenizer not supported.
  static std::unique_ptr<Tokenizer> from_gguf(const gguf::File& f);

  // add_bos: put bos() first (callers usually pass add_bos()). parse_special: match control tokens written
  // in the text ("<|im_start|>"); without it they are tokenized as plain text. User-defined tokens always match.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;

  // The bytes one token stands for, for printing as tokens arrive: a multi-byte character split over tokens
  // comes out in parts, and concatenating the parts gives decode()'s result. Control tokens give their text.
  std::string token_bytes(int32_t id) const;
  std::string decode(const std::vector<int32_t>& ids) const;

  // The vocabulary's spelling of a token (byte-level alphabet, U+2581 for spaces): as in the GGUF, except
  // where HF respells (Gemma's runs of real spaces as U+2581 runs, raw UTF-8 in a byte-level vocabulary).
  const std::string& token_text(int32_t id) const;
  // The id of a token spelled `text`, or -1.
  int32_t find_token(std::string_view text) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  // End of generation: eos, eot, and the end-of-turn tokens of known chat formats (<|im_end|>, <end_of_turn>...).
  bool is_eog(int32_t id) const;
  bool is_control(int32_t id) const;

 private:
  enum class Kind { ByteLevel, SentencePiece };
  struct Merge {
    uint64_t rank;  // lower merges first
    int32_t id;     // the merged token
  };
  struct AddedToken {
    std::string text;
    int32_t id;
    bool control;
  };
  // A byte trie over the added tokens' texts, for leftmost-longest matching; node 0 is the root.
  struct TrieNode {
    std::vector<std::pair<uint8_t, int32_t>> next;  // (byte, node)
    int32_t added = -1;                             // index into added_ of the token ending here
  };

  Tokenizer() = default;
  void build_byte_level(const gguf::File& f);
  void build_sentencepiece(const gguf::File& f);
  void build_added_tokens();
  size_t match_added(std::string_view text, size_t pos, bool parse_special, int32_t* id) const;
  using WordCache = std::unordered_map<std::string_view, std::vector<int32_t>>;  // byte level: word -> ids
  using MergeMemo = std::unordered_map<uint64_t, Merge>;  // SentencePiece: pair -> merge (id -1: none)
  bool find_merge(int32_t left, int32_t right, MergeMemo& memo, Merge* m) const;
  void encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out, WordCache& cache,
                   MergeMemo& memo) const;
  void bpe(std::vector<int32_t>& symbols, MergeMemo& memo) const;

  Kind kind_ = Kind::ByteLevel;
  unicode::SplitRule split_ = unicode::SplitRule::Gpt2;
  std::vector<std::string> tokens_;  // (n_vocab) spelled as in the vocabulary (respelled where HF respells)
  std::vector<TokenType> types_;     // (n_vocab)
  std::unordered_map<std::string_view, int32_t> ids_;  // views into tokens_; a repeated spelling keeps the last id
  std::vector<AddedToken> added_;
  std::vector<TrieNode> trie_;
  bool trie_first_byte_[256] = {};   // bytes that begin some added token: the scan skips the others at once
  std::vector<char> eog_;            // (n_vocab)
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;

  // Byte level: the file's merges keyed by (left << 32 | right).
  std::unordered_map<uint64_t, Merge> merges_;
  // Byte level: the id of each byte's alphabet character (-1: not in the vocabulary, the byte is dropped as
  // HF does without an unk token).
  int32_t byte_ids_[256];
  // SentencePiece: the <0xNN> token of each byte (-1 when missing); each piece's place in the merge order
  // (equal for equal scores) and its length in code points, which order merges as HF does.
  int32_t byte_fallback_[256];
  std::vector<uint32_t> piece_rank_;  // (n_vocab)
  std::vector<uint16_t> n_chars_;     // (n_vocab)
};

}  // namespace longctx
