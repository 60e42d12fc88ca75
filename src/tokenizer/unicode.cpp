#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace longctx::unicode {
namespace {

struct CategoryRange {
  uint32_t first, last;
  uint8_t category;
};
struct CodepointRange {
  uint32_t first, last;
};
#include "tokenizer/unicode_data.inc"

Category category_search(uint32_t cp) {
  auto it = std::upper_bound(std::begin(kCategoryRanges), std::end(kCategoryRanges), cp,
                             [](uint32_t c, const CategoryRange& r) { return c < r.first; });
  if (it == std::begin(kCategoryRanges)) return Category::Cn;
  --it;
  return cp <= it->last ? static_cast<Category>(it->category) : Category::Cn;
}

bool whitespace_search(uint32_t cp) {
  for (const auto& r : kWhiteSpaceRanges)
    if (cp >= r.first && cp <= r.last) return true;
  return false;
}

// The pre-tokenizers ask three questions per code point; answering them from one byte per BMP code point keeps
// encoding fast (a binary search over 3,000 ranges per character would dominate it).
enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4 };

uint8_t flags_of(Category c, bool space) {
  uint8_t f = space ? kSpace : 0;
  if (c >= Category::Lu && c <= Category::Lo) f |= kLetter;
  if (c >= Category::Nd && c <= Category::No) f |= kNumber;
  return f;
}

struct BmpTable {
  std::array<uint8_t, 0x10000> category{};
  std::array<uint8_t, 0x10000> flags{};
  BmpTable() {
    for (uint32_t cp = 0; cp < 0x10000; ++cp) {
      Category c = category_search(cp);
      category[cp] = static_cast<uint8_t>(c);
      flags[cp] = flags_of(c, whitespace_search(cp));
    }
  }
};

const BmpTable& bmp() {
  static const BmpTable table;
  return table;
}

uint8_t flags(uint32_t cp) {
  if (cp < 0x10000) return bmp().flags[cp];
  if (cp == kInvalid) return 0;
  return flags_of(category_search(cp), false);  // no White_Space code point lies above the BMP
}

}  // namespace

Category category(uint32_t cp) {
  if (cp < 0x10000) return static_cast<Category>(bmp().category[cp]);
  return category_search(cp);
}
bool is_letter(uint32_t cp) { return flags(cp) & kLetter; }
bool is_number(uint32_t cp) { return flags(cp) & kNumber; }
bool is_whitespace(uint32_t cp) { return flags(cp) & kSpace; }

uint32_t utf8_decode(std::string_view s, size_t pos, size_t* n_bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + pos;
  const size_t n_left = s.size() - pos;
  *n_bytes = 1;
  const uint8_t b0 = p[0];
  if (b0 < 0x80) return b0;
  size_t n;
  uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return kInvalid;
  }
  if (n > n_left) return kInvalid;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  *n_bytes = n;
  return cp;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

size_t utf8_length(std::string_view s) {
  size_t n_cp = 0;
  for (size_t pos = 0, n; pos < s.size(); pos += n, ++n_cp) utf8_decode(s, pos, &n);
  return n_cp;
}

namespace {

// What distinguishes the GPT-2 family of split regexes; one matcher reads these instead of one copy per regex.
struct SplitRules {
  bool icase_contractions;   // (?i:'s|...) rather than 's|...
  bool any_letter_prefix;    // [^\r\n\p{L}\p{N}]?\p{L}+ rather than ` ?\p{L}+`
  bool space_before_number;  // ` ?\p{N}+` rather than \p{N}{1,max}
  size_t max_number_run;     // 0: unbounded
  bool punct_takes_newlines; // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  bool newline_runs;         // the \s*[\r\n]+ alternative
};

constexpr SplitRules kGpt2Rules{false, false, true, 0, false, false};
constexpr SplitRules kLlama3Rules{true, true, false, 3, true, true};
constexpr SplitRules kQwen2Rules{true, true, false, 1, true, true};

struct Char {
  uint32_t cp;
  uint32_t offset;  // byte offset in the text
  uint8_t flags;
};

bool is_other(const Char& c) { return (c.flags & (kLetter | kNumber | kSpace)) == 0; }
bool is_newline(const Char& c) { return c.cp == '\r' || c.cp == '\n'; }

uint32_t fold_case(uint32_t cp, bool icase) {
  if (!icase) return cp;
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x17F) return 's';  // LATIN SMALL LETTER LONG S folds to 's'; Oniguruma and `regex` agree
  return cp;
}

// The end of the alternative that the regex picks at chars[i] (leftmost alternative wins, each greedy with
// backtracking); i < end. Every code point is a letter, a number, a space or "other", so some alternative
// always matches and the result is > i.
size_t match_one(const Char* chars, size_t i, size_t end, const SplitRules& r) {
  auto run = [&](size_t j, uint8_t flag, size_t max) {
    size_t k = j;
    while (k < end && (chars[k].flags & flag) && (max == 0 || k - j < max)) ++k;
    return k;
  };
  const Char& c = chars[i];
  const bool has1 = i + 1 < end;

  if (c.cp == '\'' && has1) {
    const uint32_t c1 = fold_case(chars[i + 1].cp, r.icase_contractions);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (i + 2 < end) {
      const uint32_t c2 = fold_case(chars[i + 2].cp, r.icase_contractions);
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
    }
  }

  if (c.flags & kLetter) return run(i, kLetter, 0);
  if (has1 && (chars[i + 1].flags & kLetter)) {
    const bool prefix_ok = r.any_letter_prefix ? !is_newline(c) && !(c.flags & kNumber) : c.cp == ' ';
    if (prefix_ok) return run(i + 1, kLetter, 0);
  }

  if (c.flags & kNumber) return run(i, kNumber, r.max_number_run);
  if (r.space_before_number && c.cp == ' ' && has1 && (chars[i + 1].flags & kNumber))
    return run(i + 1, kNumber, r.max_number_run);

  size_t j = (c.cp == ' ' && has1 && is_other(chars[i + 1])) ? i + 1 : i;
  if (is_other(chars[j])) {
    size_t k = j;
    while (k < end && is_other(chars[k])) ++k;
    if (r.punct_takes_newlines)
      while (k < end && is_newline(chars[k])) ++k;
    return k;
  }

  // c is a space. \s*[\r\n]+ ends after the last newline of the run of spaces, if it holds one.
  const size_t k = run(i, kSpace, 0);
  if (r.newline_runs) {
    for (size_t m = k; m > i; --m)
      if (is_newline(chars[m - 1])) return m;
  }
  // \s+(?!\S): the whole run at the end of the text, else all but its last space (which then prefixes the next
  // piece); \s+ takes a single space followed by a non-space.
  if (k == end || k - 1 == i) return k;
  return k - 1;
}

void split_range(const std::vector<Char>& chars, size_t begin, size_t end, const SplitRules& r,
                 std::string_view text, std::vector<std::string_view>& out) {
  for (size_t i = begin; i < end;) {
    const size_t k = match_one(chars.data(), i, end, r);
    out.push_back(text.substr(chars[i].offset, chars[k].offset - chars[i].offset));
    i = k;
  }
}

}  // namespace

void pre_tokenize(std::string_view text, SplitRule rule, std::vector<std::string_view>& out) {
  // (n_chars + 1): the last entry only carries the end offset.
  std::vector<Char> chars;
  chars.reserve(text.size() + 1);
  for (size_t pos = 0, n; pos < text.size(); pos += n) {
    const uint32_t cp = utf8_decode(text, pos, &n);
    chars.push_back({cp, static_cast<uint32_t>(pos), flags(cp)});
  }
  const size_t n_chars = chars.size();
  chars.push_back({0, static_cast<uint32_t>(text.size()), 0});

  switch (rule) {
    case SplitRule::Gpt2: split_range(chars, 0, n_chars, kGpt2Rules, text, out); break;
    case SplitRule::Llama3: split_range(chars, 0, n_chars, kLlama3Rules, text, out); break;
    case SplitRule::Qwen2: split_range(chars, 0, n_chars, kQwen2Rules, text, out); break;
    case SplitRule::Gpt2Digits: {
      // Digits(individual_digits) isolates every number character; the GPT-2 regex then runs on each stretch
      // between them on its own, so its lookahead stops at a digit (`a  1` gives `a`, `  `, `1`).
      size_t begin = 0;
      for (size_t i = 0; i < n_chars; ++i) {
        if (!(chars[i].flags & kNumber)) continue;
        split_range(chars, begin, i, kGpt2Rules, text, out);
        out.push_back(text.substr(chars[i].offset, chars[i + 1].offset - chars[i].offset));
        begin = i + 1;
      }
      split_range(chars, begin, n_chars, kGpt2Rules, text, out);
      break;
    }
  }
}

}  // namespace longctx::unicode
