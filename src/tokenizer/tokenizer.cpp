#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <queue>

#include "core/error.h"
#include "gguf/gguf.h"

namespace longctx {
namespace {

// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100.. in byte
// order, so that every byte has a visible character and a vocabulary is plain text.
struct ByteAlphabet {
  uint32_t to_cp[256];
  int16_t to_byte[324];  // indexed by code point; -1: not in the alphabet (all of it lies below U+0144)
  ByteAlphabet() {
    std::fill(std::begin(to_byte), std::end(to_byte), int16_t{-1});
    uint32_t n_extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? b : 256 + n_extra++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
  int byte_of(uint32_t cp) const { return cp < 324 ? to_byte[cp] : -1; }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

constexpr uint32_t kSpmSpace = 0x2581;  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space
constexpr std::string_view kSpmSpaceUtf8 = "\xE2\x96\x81";

// The byte of a "<0xNN>" token, or -1 (HF's ByteFallback decoder reads the same shape).
int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(s[3]), lo = hex(s[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// End-of-turn markers of the chat formats we know; llama.cpp stops on the same texts.
constexpr std::string_view kEogTexts[] = {"<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>",
                                          "<|endoftext|>", "<|end|>", "<|end_of_text|>", "<EOT>"};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const gguf::File& f) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  const auto model = f.get_string_opt("tokenizer.ggml.model");
  if (!model) fail("{}: no tokenizer in the file (tokenizer.ggml.model is missing)", f.path());
  t->tokens_ = f.get_string_array("tokenizer.ggml.tokens");
  const size_t n_vocab = t->tokens_.size();
  if (n_vocab == 0 || n_vocab > (size_t{1} << 20))
    fail("{}: tokenizer.ggml.tokens holds {} tokens (1 to 2^20 supported)", f.path(), n_vocab);

  t->types_.assign(n_vocab, TokenType::Normal);
  if (f.has("tokenizer.ggml.token_type")) {
    const auto types = f.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n_vocab)
      fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", f.path(), types.size(), n_vocab);
    for (size_t i = 0; i < n_vocab; ++i) {
      if (types[i] < 0 || types[i] > 6) fail("{}: token {} has unknown token_type {}", f.path(), i, types[i]);
      t->types_[i] = static_cast<TokenType>(types[i]);
    }
  }
  auto id_opt = [&](const char* key) -> int32_t {
    const auto v = f.get_int_opt(key);
    if (!v) return -1;
    if (*v < 0 || *v >= static_cast<int64_t>(n_vocab)) fail("{}: {} = {} is not a token id", f.path(), key, *v);
    return static_cast<int32_t>(*v);
  };
  t->bos_ = id_opt("tokenizer.ggml.bos_token_id");
  t->eos_ = id_opt("tokenizer.ggml.eos_token_id");
  t->unk_ = id_opt("tokenizer.ggml.unknown_token_id");

  // Respelling (below) gives tokens the spelling the BPE model looks up; tokens it changes are no longer
  // matched as added tokens, as in transformers' GGUF conversion.
  std::vector<char> respelled(n_vocab, 0);
  if (*model == "gpt2") {
    t->kind_ = Kind::ByteLevel;
    const std::string pre = f.get_string_opt("tokenizer.ggml.pre").value_or("gpt2");
    if (pre == "gpt2" || pre == "gpt-2" || pre == "default") {
      t->split_ = unicode::SplitRule::Gpt2;
    } else if (pre == "smollm" || pre == "starcoder") {
      t->split_ = unicode::SplitRule::Gpt2Digits;
    } else if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" || pre == "dbrx" ||
               pre == "smaug-bpe") {
      t->split_ = unicode::SplitRule::Llama3;
    } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
      t->split_ = unicode::SplitRule::Qwen2;
    } else {
      fail("{}: pre-tokenizer '{}' is not supported (gpt2, smollm, starcoder, llama3/llama-bpe, qwen2)", f.path(),
           pre);
    }
    // A token written outside the byte alphabet (raw UTF-8) is spelled in it, byte by byte.
    const ByteAlphabet& a = byte_alphabet();
    for (size_t i = 0; i < n_vocab; ++i) {
      const std::string& s = t->tokens_[i];
      bool in_alphabet = true;
      for (size_t pos = 0, n; pos < s.size() && in_alphabet; pos += n)
        in_alphabet = a.byte_of(unicode::utf8_decode(s, pos, &n)) >= 0;
      if (in_alphabet) continue;
      std::string spelled;
      for (char c : s) unicode::utf8_append(spelled, a.to_cp[static_cast<uint8_t>(c)]);
      t->tokens_[i] = std::move(spelled);
      respelled[i] = 1;
    }
  } else if (*model == "llama") {
    t->kind_ = Kind::SentencePiece;
    // Space-only tokens (Gemma's "  ", "   "...) are stored with real spaces, but the text is looked up with
    // U+2581 for each space: spell them so, one U+2581 per code point, as transformers does.
    for (size_t i = 0; i < n_vocab; ++i) {
      const std::string& s = t->tokens_[i];
      bool all_space = !s.empty(), has_space = false;
      size_t n_cp = 0;
      for (size_t pos = 0, n; pos < s.size(); pos += n, ++n_cp) {
        const uint32_t cp = unicode::utf8_decode(s, pos, &n);
        all_space = all_space && unicode::is_py_space(cp);
        has_space = has_space || cp == ' ';
      }
      if (!all_space || !has_space) continue;
      std::string spelled;
      for (size_t k = 0; k < n_cp; ++k) spelled += kSpmSpaceUtf8;
      t->tokens_[i] = std::move(spelled);
      respelled[i] = 1;
    }
  } else {
    fail("{}: tokenizer model '{}' is not supported (gpt2: byte-level BPE, llama: SentencePiece BPE)", f.path(),
         *model);
  }

  t->ids_.reserve(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) t->ids_[t->tokens_[i]] = static_cast<int32_t>(i);

  if (t->kind_ == Kind::ByteLevel) {
    t->build_byte_level(f);
  } else {
    t->build_sentencepiece(f);
  }
  // transformers adds BOS to a SentencePiece vocabulary that does not say otherwise, as llama.cpp does.
  t->add_bos_ = f.get_bool_opt("tokenizer.ggml.add_bos_token").value_or(t->kind_ == Kind::SentencePiece);
  if (t->add_bos_ && t->bos_ < 0) fail("{}: the tokenizer adds BOS but names no bos_token_id", f.path());

  for (size_t i = 0; i < n_vocab; ++i) {
    const TokenType ty = t->types_[i];
    if ((ty == TokenType::Control || ty == TokenType::UserDefined) && !respelled[i] && !t->tokens_[i].empty())
      t->added_.push_back({t->tokens_[i], t->ids_.at(t->tokens_[i]), ty == TokenType::Control});
  }
  t->build_added_tokens();

  t->eog_.assign(n_vocab, 0);
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (const int32_t id = id_opt(key); id >= 0) t->eog_[id] = 1;
  for (std::string_view s : kEogTexts)
    if (const int32_t id = t->find_token(s); id >= 0 && t->types_[id] == TokenType::Control) t->eog_[id] = 1;
  return t;
}

void Tokenizer::build_byte_level(const gguf::File& f) {
  const ByteAlphabet& a = byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::utf8_append(s, a.to_cp[b]);
    byte_ids_[b] = find_token(s);
  }
  if (!f.has("tokenizer.ggml.merges")) fail("{}: a byte-level BPE tokenizer needs tokenizer.ggml.merges", f.path());
  const auto& merges = f.get_string_array("tokenizer.ggml.merges");
  merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& m = merges[rank];
    const size_t space = m.find(' ');
    if (space == std::string::npos || m.find(' ', space + 1) != std::string::npos)
      fail("{}: merge {} '{}' is not two tokens separated by a space", f.path(), rank, m);
    const std::string_view left = std::string_view(m).substr(0, space), right = std::string_view(m).substr(space + 1);
    joined.assign(left);
    joined += right;
    const int32_t l = find_token(left), r = find_token(right), merged = find_token(joined);
    if (l < 0 || r < 0 || merged < 0) fail("{}: merge {} '{}' names a token not in the vocabulary", f.path(), rank, m);
    // A pair listed twice keeps its last rank, as HF's merge map does.
    merges_[(static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r)] = {rank, merged};
  }
}

void Tokenizer::build_sentencepiece(const gguf::File& f) {
  add_space_prefix_ = f.get_bool_opt("tokenizer.ggml.add_space_prefix").value_or(true);
  for (int b = 0; b < 256; ++b) byte_fallback_[b] = find_token(fmt::format("<0x{:02X}>", b));

  // The order in which pieces are merged. HF rebuilds merges from the vocabulary, best piece first; Gemma's
  // scores put its user-defined pieces ("\n\n", the U+2581 runs) at -1000, out of their real merge order, and
  // transformers ranks Gemma's pieces by their place in the file instead, which we follow.
  const size_t n_vocab = tokens_.size();
  piece_rank_.resize(n_vocab);
  const std::string arch = f.get_string_opt("general.architecture").value_or("");
  if (arch == "gemma" || arch == "gemma2" || arch == "gemma3" || !f.has("tokenizer.ggml.scores")) {
    for (size_t i = 0; i < n_vocab; ++i) piece_rank_[i] = static_cast<uint32_t>(i);
  } else {
    const auto scores = f.get_float_array("tokenizer.ggml.scores");
    if (scores.size() != n_vocab) fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", f.path(), scores.size(), n_vocab);
    std::vector<uint32_t> order(n_vocab);
    for (size_t i = 0; i < n_vocab; ++i) order[i] = static_cast<uint32_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) { return scores[x] > scores[y]; });
    // Equal scores share a rank: HF then orders by the lengths of the parts (below).
    uint32_t rank = 0;
    for (size_t k = 0; k < n_vocab; ++k) {
      if (k > 0 && scores[order[k]] != scores[order[k - 1]]) rank = static_cast<uint32_t>(k);
      piece_rank_[order[k]] = rank;
    }
  }
  n_chars_.resize(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i)
    n_chars_[i] = static_cast<uint16_t>(std::min<size_t>(unicode::utf8_length(tokens_[i]), 1023));
}

void Tokenizer::build_added_tokens() {
  trie_.assign(1, TrieNode{});
  for (size_t k = 0; k < added_.size(); ++k) {
    int32_t node = 0;
    for (char ch : added_[k].text) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t next = -1;
      for (const auto& [c, n] : trie_[node].next)
        if (c == b) next = n;
      if (next < 0) {
        next = static_cast<int32_t>(trie_.size());
        trie_[node].next.emplace_back(b, next);
        trie_.emplace_back();
      }
      node = next;
    }
    trie_[node].added = static_cast<int32_t>(k);
    trie_first_byte_[static_cast<uint8_t>(added_[k].text[0])] = true;
  }
}

size_t Tokenizer::match_added(std::string_view text, size_t pos, bool parse_special, int32_t* id) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    int32_t next = -1;
    for (const auto& [c, n] : trie_[node].next)
      if (c == b) next = n;
    if (next < 0) break;
    node = next;
    const int32_t k = trie_[node].added;
    if (k >= 0 && (parse_special || !added_[k].control)) {
      best = i + 1 - pos;
      *id = added_[k].id;
    }
  }
  return best;
}

bool Tokenizer::find_merge(int32_t left, int32_t right, MergeMemo& memo, Merge* m) const {
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
  if (kind_ == Kind::ByteLevel) {
    const auto it = merges_.find(key);
    if (it == merges_.end()) return false;
    *m = it->second;
    return true;
  }
  // SentencePiece: HF's merges are every split of a piece into two pieces (transformers generate_merges).
  // Deriving all of them for Gemma's 262K pieces costs half a second and 30 MB at load; the pairs a text
  // meets are far fewer, so they are looked up when met and remembered for the call.
  auto [it, inserted] = memo.try_emplace(key, Merge{0, -1});
  if (inserted) {
    std::string joined = tokens_[left];
    joined += tokens_[right];
    const int32_t merged = find_token(joined);
    // A control token is never built from text: it only comes from an added-token match (so with
    // parse_special off, "<start_of_turn>" stays text).
    if (merged >= 0 && types_[merged] != TokenType::Control) {
      // HF's order: the merged piece's rank, then the longer left part, then the longer right part, then the
      // piece's place in the file; packed as 20 bits of rank, 10 of each length, 20 of id.
      const uint64_t rank = (uint64_t{piece_rank_[merged]} << 40) | (uint64_t{1023u - n_chars_[left]} << 30) |
                            (uint64_t{1023u - n_chars_[right]} << 20) | static_cast<uint64_t>(merged);
      it->second = {rank, merged};
    }
  }
  if (it->second.id < 0) return false;
  *m = it->second;
  return true;
}

void Tokenizer::bpe(std::vector<int32_t>& symbols, MergeMemo& memo) const {
  // HF tokenizers' Word::merge_all: repeatedly merge the adjacent pair of lowest rank, leftmost first. Symbols
  // keep their index when a right neighbour is merged into them, so a queued pair names its left symbol.
  const size_t n = symbols.size();
  if (n < 2) return;
  struct Sym {
    int32_t id, prev, next;
  };
  std::vector<Sym> s(n);  // (n_symbols); id -1: merged into its left neighbour
  for (size_t i = 0; i < n; ++i)
    s[i] = {symbols[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  struct Cand {
    uint64_t rank;
    int32_t pos, id;
  };
  auto later = [](const Cand& x, const Cand& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
  std::priority_queue<Cand, std::vector<Cand>, decltype(later)> queue(later);
  Merge m;
  for (size_t i = 0; i + 1 < n; ++i)
    if (find_merge(s[i].id, s[i + 1].id, memo, &m)) queue.push({m.rank, static_cast<int32_t>(i), m.id});

  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& a = s[c.pos];
    if (a.id < 0 || a.next < 0) continue;
    Sym& b = s[a.next];
    // A stale entry: the pair at this position has changed since it was queued.
    if (!find_merge(a.id, b.id, memo, &m) || m.id != c.id) continue;
    a.id = c.id;
    b.id = -1;
    a.next = b.next;
    if (a.next >= 0) s[a.next].prev = c.pos;
    if (a.prev >= 0 && find_merge(s[a.prev].id, a.id, memo, &m)) queue.push({m.rank, a.prev, m.id});
    if (a.next >= 0 && find_merge(a.id, s[a.next].id, memo, &m)) queue.push({m.rank, c.pos, m.id});
  }
  symbols.clear();
  for (int32_t i = 0; i >= 0; i = s[i].next) symbols.push_back(s[i].id);
}

void Tokenizer::encode_text(std::string_view text, bool at_start, std::vector<int32_t>& out, WordCache& cache,
                            MergeMemo& memo) const {
  if (text.empty()) return;
  std::vector<int32_t> symbols;
  if (kind_ == Kind::ByteLevel) {
    std::vector<std::string_view> words;
    unicode::pre_tokenize(text, split_, words);
    for (std::string_view w : words) {
      if (auto it = cache.find(w); it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        continue;
      }
      symbols.clear();
      // A byte whose character is not in the vocabulary is dropped, as HF's BPE does without an unk token.
      for (char c : w)
        if (const int32_t id = byte_ids_[static_cast<uint8_t>(c)]; id >= 0) symbols.push_back(id);
      bpe(symbols, memo);
      out.insert(out.end(), symbols.begin(), symbols.end());
      cache.emplace(w, symbols);
    }
    return;
  }

  // SentencePiece: the whole stretch between added tokens is one word (HF's Gemma pre-tokenizer splits on
  // spaces after the normalizer has replaced them all, so it never splits). The prefix space is Metaspace's
  // prepend_scheme "first": only for the stretch at the very start of the input.
  std::string norm;
  norm.reserve(text.size() + text.size() / 4 + 3);
  if (add_space_prefix_ && at_start) norm += kSpmSpaceUtf8;
  for (char c : text) {
    if (c == ' ') {
      norm += kSpmSpaceUtf8;
    } else {
      norm += c;
    }
  }
  bool after_unk = false;
  for (size_t pos = 0, n; pos < norm.size(); pos += n) {
    unicode::utf8_decode(norm, pos, &n);
    const int32_t id = find_token(std::string_view(norm).substr(pos, n));
    if (id >= 0) {
      symbols.push_back(id);
      after_unk = false;
      continue;
    }
    bool all_bytes = true;
    for (size_t k = 0; k < n; ++k) all_bytes = all_bytes && byte_fallback_[static_cast<uint8_t>(norm[pos + k])] >= 0;
    if (all_bytes) {
      for (size_t k = 0; k < n; ++k) symbols.push_back(byte_fallback_[static_cast<uint8_t>(norm[pos + k])]);
      continue;
    }
    // No piece and no byte tokens: one unk for a run of such characters (HF's fuse_unk).
    if (unk_ >= 0 && !after_unk) symbols.push_back(unk_);
    after_unk = true;
  }
  bpe(symbols, memo);
  out.insert(out.end(), symbols.begin(), symbols.end());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  // Per call, so encode() stays const and thread-safe: views of `text` key the cache, and a book repeats most
  // of its words.
  WordCache cache;
  MergeMemo memo;
  size_t seg = 0;
  for (size_t i = 0; i < text.size();) {
    int32_t id = -1;
    const size_t n = trie_first_byte_[static_cast<uint8_t>(text[i])] ? match_added(text, i, parse_special, &id) : 0;
    if (n == 0) {
      ++i;
      continue;
    }
    encode_text(text.substr(seg, i - seg), seg == 0, out, cache, memo);
    out.push_back(id);
    i += n;
    seg = i;
  }
  encode_text(text.substr(seg), seg == 0, out, cache, memo);
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  const std::string& s = token_text(id);
  std::string out;
  if (kind_ == Kind::ByteLevel) {
    // HF's ByteLevel decoder: alphabet characters back to their bytes, anything else as written.
    const ByteAlphabet& a = byte_alphabet();
    for (size_t pos = 0, n; pos < s.size(); pos += n) {
      const uint32_t cp = unicode::utf8_decode(s, pos, &n);
      if (const int b = a.byte_of(cp); b >= 0) {
        out += static_cast<char>(b);
      } else {
        out.append(s, pos, n);
      }
    }
    return out;
  }
  if (const int b = parse_byte_token(s); b >= 0) return std::string(1, static_cast<char>(b));
  for (size_t pos = 0, n; pos < s.size(); pos += n) {
    if (unicode::utf8_decode(s, pos, &n) == kSpmSpace) {
      out += ' ';
    } else {
      out.append(s, pos, n);
    }
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

const std::string& Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("token id {} is outside the vocabulary (0..{})", id, n_vocab() - 1);
  return tokens_[id];
}

int32_t Tokenizer::find_token(std::string_view text) const {
  const auto it = ids_.find(text);
  return it == ids_.end() ? -1 : it->second;
}

bool Tokenizer::is_eog(int32_t id) const { return id >= 0 && id < n_vocab() && eog_[id]; }
bool Tokenizer::is_control(int32_t id) const {
  return id >= 0 && id < n_vocab() && types_[id] == TokenType::Control;
}

}  // namespace longctx
