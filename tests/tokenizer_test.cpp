// Tokenizer against HF references (goldens from scripts/gen_tokenizer_goldens.py): ids of a varied corpus for
// SmolLM2 (byte-level BPE) and Gemma 3 (SentencePiece BPE), pre-tokenizer pieces against Python's `regex`, chat
// prompts against jinja2; plus streaming decode, special-token handling, bad input and speed.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "gguf/gguf.h"
#include "test_models.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace longctx {
namespace {

using nlohmann::json;

json load_golden(const std::string& name) {
  const std::string path = test::golden_dir() + "/tokenizer/" + name;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("missing golden " + path + ": run scripts/gen_tokenizer_goldens.py");
  return json::parse(in);
}

// A short printable form of a test text for failure messages.
std::string shown(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 60)) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      out += c;
    }
  }
  return out;
}

// Loaded once per model: the Gemma vocabulary is 262K tokens.
struct Loaded {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
};

const Loaded& load(const std::string& path) {
  static std::map<std::string, Loaded> cache;
  auto it = cache.find(path);
  if (it == cache.end()) {
    Loaded l;
    l.file = gguf::File::open(path);
    l.tok = Tokenizer::from_gguf(*l.file);
    it = cache.emplace(path, std::move(l)).first;
  }
  return it->second;
}

TEST(Unicode, Categories) {
  using unicode::Category;
  EXPECT_EQ(unicode::category('A'), Category::Lu);
  EXPECT_EQ(unicode::category(0x4E2D), Category::Lo);   // 中
  EXPECT_EQ(unicode::category(0x0661), Category::Nd);   // ARABIC-INDIC DIGIT ONE
  EXPECT_EQ(unicode::category(0x2167), Category::Nl);   // ROMAN NUMERAL EIGHT
  EXPECT_EQ(unicode::category(0x1F600), Category::So);  // 😀
  EXPECT_EQ(unicode::category(0x0301), Category::Mn);   // combining acute: not a letter for \p{L}
  EXPECT_EQ(unicode::category(0x10FFFF), Category::Cn);
  EXPECT_TRUE(unicode::is_letter(0x1D400));  // MATHEMATICAL BOLD CAPITAL A
  EXPECT_TRUE(unicode::is_number(0x1D7D9));  // MATHEMATICAL DOUBLE-STRUCK DIGIT ONE
  EXPECT_FALSE(unicode::is_letter(0x0301));
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x2028u, 0x3000u})
    EXPECT_TRUE(unicode::is_whitespace(cp)) << cp;
  for (uint32_t cp : {0x1Cu, 0x200Bu, 0x2581u, 0x61u}) EXPECT_FALSE(unicode::is_whitespace(cp)) << cp;
}

TEST(Unicode, Utf8DecodeRejectsInvalid) {
  size_t n;
  EXPECT_EQ(unicode::utf8_decode("\xC3\xA9", 0, &n), 0xE9u);
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(unicode::utf8_decode("\xF0\x9F\x98\x80", 0, &n), 0x1F600u);
  EXPECT_EQ(n, 4u);
  for (std::string bad : {"\x80", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\xFF"}) {
    EXPECT_EQ(unicode::utf8_decode(bad, 0, &n), unicode::kInvalid) << shown(bad);
    EXPECT_EQ(n, 1u);
  }
}

TEST(Unicode, PreTokenizerMatchesRegexGoldens) {
  const json g = load_golden("splits.json");
  const std::pair<const char*, unicode::SplitRule> rules[] = {{"gpt2", unicode::SplitRule::Gpt2},
                                                              {"gpt2_digits", unicode::SplitRule::Gpt2Digits},
                                                              {"llama3", unicode::SplitRule::Llama3},
                                                              {"qwen2", unicode::SplitRule::Qwen2}};
  size_t n_checked = 0;
  for (const auto& c : g["cases"]) {
    const std::string text = c["text"];
    for (const auto& [name, rule] : rules) {
      std::vector<std::string_view> pieces;
      unicode::pre_tokenize(text, rule, pieces);
      const std::vector<std::string> expected = c[name];
      ASSERT_EQ(std::vector<std::string>(pieces.begin(), pieces.end()), expected)
          << name << " on \"" << shown(text) << "\"";
      ++n_checked;
    }
  }
  EXPECT_GE(n_checked, 100u);
}

TEST(Unicode, PreTokenizerCoversInvalidUtf8) {
  const std::string text = "ab\xFF\xFE c\x80 12\xC3";
  for (auto rule : {unicode::SplitRule::Gpt2, unicode::SplitRule::Gpt2Digits, unicode::SplitRule::Llama3,
                    unicode::SplitRule::Qwen2}) {
    std::vector<std::string_view> pieces;
    unicode::pre_tokenize(text, rule, pieces);
    std::string joined;
    for (auto p : pieces) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, text);
  }
}

void check_ids_golden(const std::string& model_path, const std::string& golden) {
  LONGCTX_REQUIRE_MODEL(model_path);
  const Tokenizer& tok = *load(model_path).tok;
  const json g = load_golden(golden);
  size_t n_tokens = 0;
  for (const auto& c : g["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> expected = c["ids"];
    const std::vector<int32_t> ids = tok.encode(text, /*add_bos=*/false, /*parse_special=*/true);
    ASSERT_EQ(ids, expected) << "text \"" << shown(text) << "\"";
    // Decoding gives what HF's decoder gives (the text itself unless the golden says otherwise), and token by
    // token the same bytes (streaming).
    const std::string decoded = c.contains("decoded") ? c["decoded"].get<std::string>() : text;
    EXPECT_EQ(tok.decode(ids), decoded) << "text \"" << shown(text) << "\"";
    std::string streamed;
    for (int32_t id : ids) streamed += tok.token_bytes(id);
    EXPECT_EQ(streamed, tok.decode(ids));
    n_tokens += ids.size();
  }
  EXPECT_GT(n_tokens, 3000u);
}

TEST(TokenizerSmolLM2, IdsMatchHf) { check_ids_golden(test::smollm2_path(), "ids_smollm2.json"); }
TEST(TokenizerGemma3, IdsMatchHf) { check_ids_golden(test::gemma3_path(), "ids_gemma3.json"); }

TEST(TokenizerSmolLM2, SpecialTokens) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const Tokenizer& tok = *load(test::smollm2_path()).tok;
  EXPECT_EQ(tok.n_vocab(), 49152);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_TRUE(tok.is_eog(2));  // <|im_end|>
  EXPECT_TRUE(tok.is_eog(0));  // <|endoftext|>
  EXPECT_FALSE(tok.is_eog(1));
  EXPECT_TRUE(tok.is_control(1));
  EXPECT_EQ(tok.encode("<|im_start|>user", false, true).front(), 1);
  // Without parse_special the marker is text: no control id comes out, and it decodes back to itself.
  const auto plain = tok.encode("<|im_start|>user", false, false);
  for (int32_t id : plain) EXPECT_FALSE(tok.is_control(id));
  EXPECT_EQ(tok.decode(plain), "<|im_start|>user");
  EXPECT_EQ(tok.encode("Hi", true, true).front(), 1);  // add_bos puts bos() first even where the model does not
}

TEST(TokenizerGemma3, SpecialTokens) {
  LONGCTX_REQUIRE_MODEL(test::gemma3_path());
  const Tokenizer& tok = *load(test::gemma3_path()).tok;
  EXPECT_EQ(tok.n_vocab(), 262144);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_EQ(tok.bos(), 2);
  EXPECT_EQ(tok.eos(), 1);
  EXPECT_TRUE(tok.is_eog(1));
  EXPECT_TRUE(tok.is_eog(tok.find_token("<end_of_turn>")));
  EXPECT_FALSE(tok.is_eog(tok.find_token("<start_of_turn>")));
  const auto ids = tok.encode("<start_of_turn>user\nHi", tok.add_bos(), true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], tok.find_token("<start_of_turn>"));
  // Without parse_special control tokens stay text, but user-defined ones ("\n\n") still match whole.
  const auto plain = tok.encode("<start_of_turn>a\n\nb", false, false);
  for (int32_t id : plain) EXPECT_FALSE(tok.is_control(id));
  EXPECT_NE(std::find(plain.begin(), plain.end(), tok.find_token("\n\n")), plain.end());
  EXPECT_EQ(tok.decode(plain), "<start_of_turn>a\n\nb");
}

TEST(Tokenizer, InvalidUtf8RoundTrips) {
  LONGCTX_REQUIRE_MODEL(test::gemma3_path());
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const std::string text = "ok \xFF\xFE\x80 caf\xC3 \xE4\xB8 end";
  // SentencePiece falls back to <0xNN> tokens; byte-level BPE spells every byte SmolLM2's alphabet has.
  const Tokenizer& gemma = *load(test::gemma3_path()).tok;
  EXPECT_EQ(gemma.decode(gemma.encode(text, false, false)), text);
  const Tokenizer& smol = *load(test::smollm2_path()).tok;
  EXPECT_EQ(smol.decode(smol.encode("caf\xC3 \xE4\xB8 \x80\xBF", false, false)), "caf\xC3 \xE4\xB8 \x80\xBF");
  EXPECT_THROW(smol.token_bytes(-1), Error);
  EXPECT_THROW(smol.token_bytes(smol.n_vocab()), Error);
}

// Arbitrary bytes (what a corrupt or binary --file gives): no crash, and SentencePiece's byte fallback gives
// them all back.
TEST(Tokenizer, RandomBytes) {
  LONGCTX_REQUIRE_MODEL(test::gemma3_path());
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  const Tokenizer& gemma = *load(test::gemma3_path()).tok;
  const Tokenizer& smol = *load(test::smollm2_path()).tok;
  std::mt19937 rng(7);
  for (int k = 0; k < 300; ++k) {
    std::string text(rng() % 80, '\0');
    for (char& c : text) c = static_cast<char>(k % 2 ? rng() % 256 : "<|>_\n \xE2\x96\x81" "abc\xF0"[rng() % 13]);
    for (bool special : {false, true}) {
      const auto ids = gemma.encode(text, true, special);
      if (text.find("\xE2\x96\x81") == std::string::npos) {  // a literal U+2581 decodes as a space
        EXPECT_EQ(gemma.decode(std::vector<int32_t>(ids.begin() + 1, ids.end())), text);
      }
      for (int32_t id : smol.encode(text, false, special)) ASSERT_TRUE(id >= 0 && id < smol.n_vocab());
    }
  }
}

// ~100K tokens of the KJV text, a book's worth, in one call: every id in the vocabulary and the text back from
// them. (How fast it goes is `longctx run`'s business: it prints what each stage cost.)
TEST(Tokenizer, EncodesABookAndDecodesItBack) {
  const json g = load_golden("ids_smollm2.json");
  std::string kjv;
  for (const auto& c : g["cases"])
    if (c["text"].get<std::string>().size() > kjv.size()) kjv = c["text"];
  std::string book;
  while (book.size() < 450000) book += kjv;
  for (const std::string& path : {test::smollm2_path(), test::gemma3_path()}) {
    LONGCTX_REQUIRE_MODEL(path);
    const Tokenizer& tok = *load(path).tok;
    const auto ids = tok.encode(book, false, false);
    EXPECT_GT(ids.size(), 90000u) << path;
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.n_vocab()) << path;
    EXPECT_EQ(tok.decode(ids), book) << path;
  }
}

// The vocabulary read from the GGUF: one entry per tokenizer.ggml.tokens string, spelled as the file spells it.
TEST(Tokenizer, LoadsTheWholeVocabulary) {
  for (const std::string& path : {test::smollm2_path(), test::gemma3_path()}) {
    LONGCTX_REQUIRE_MODEL(path);
    auto f = gguf::File::open(path);
    const auto& tokens = f->get_string_array("tokenizer.ggml.tokens");
    auto tok = Tokenizer::from_gguf(*f);
    ASSERT_EQ(tok->n_vocab(), static_cast<int32_t>(tokens.size())) << path;
    int32_t n_same = 0;
    for (int32_t id = 0; id < tok->n_vocab(); ++id) n_same += tok->token_text(id) == tokens[static_cast<size_t>(id)];
    EXPECT_GE(n_same, tok->n_vocab() - 64) << path;  // a few are respelled as HF respells them (tokenizer.h)  // "respelled where HF respells": a few, not most
  }
}

TEST(ChatTemplate, MatchesJinjaGoldens) {
  const json g = load_golden("chat_templates.json");
  const ChatTemplate smollm2 = chat_template_from_jinja(
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
      "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}");
  const ChatTemplate gemma{ChatFormat::Gemma, {}};
  for (const auto& c : g["cases"]) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
    const bool gen = c["add_generation_prompt"];
    for (const auto& [key, t] : {std::pair{"chatml_smollm2", &smollm2}, std::pair{"gemma", &gemma}}) {
      if (c[key].is_null()) {
        EXPECT_THROW(apply_chat_template(*t, msgs, gen), Error) << key << " " << c["messages"].dump();
      } else {
        EXPECT_EQ(apply_chat_template(*t, msgs, gen), c[key].get<std::string>()) << key << " " << c["messages"].dump();
      }
    }
  }
}

TEST(ChatTemplate, ChosenFromGguf) {
  LONGCTX_REQUIRE_MODEL(test::smollm2_path());
  LONGCTX_REQUIRE_MODEL(test::gemma3_path());
  const ChatTemplate s = chat_template_for(*load(test::smollm2_path()).file);
  EXPECT_EQ(s.format, ChatFormat::ChatML);
  EXPECT_EQ(s.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(chat_template_for(*load(test::gemma3_path()).file).format, ChatFormat::Gemma);  // by architecture
}

TEST(ChatTemplate, RecognisesJinjaText) {
  // Qwen 2.5 writes its default system prompt with escaped newlines, after an expression that uses the same
  // opening; the literal is the one taken.
  const ChatTemplate q = chat_template_from_jinja(
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
      "helpful assistant.<|im_end|>\\n' }}{%- endif %}");
  EXPECT_EQ(q.format, ChatFormat::ChatML);
  EXPECT_EQ(q.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(chat_template_from_jinja("{{ '<|im_start|>' + message['role'] }}").default_system, "");
  EXPECT_EQ(chat_template_from_jinja("{{ '<start_of_turn>' + role }}").format, ChatFormat::Gemma);
  EXPECT_THROW(chat_template_from_jinja("[INST] {{ content }} [/INST]"), Error);
}

// A minimal GGUF holding only tokenizer metadata, for the refusals.
class GgufBuilder {
 public:
  GgufBuilder& str(const std::string& key, const std::string& v) {
    head(key, 8);
    s(v);
    ++n_kv_;
    return *this;
  }
  GgufBuilder& strs(const std::string& key, const std::vector<std::string>& v) {
    head(key, 9);
    u32(8);
    u64(v.size());
    for (const auto& x : v) s(x);
    ++n_kv_;
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    auto put = [&](const void* p, size_t n) { out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    const uint32_t version = 3;
    const uint64_t n_tensors = 0, n_kv = n_kv_;
    put("GGUF", 4);
    put(&version, 4);
    put(&n_tensors, 8);
    put(&n_kv, 8);
    out.insert(out.end(), body_.begin(), body_.end());
    out.resize((out.size() + 31) / 32 * 32);
    return out;
  }

 private:
  void u32(uint32_t v) { body_.insert(body_.end(), (uint8_t*)&v, (uint8_t*)&v + 4); }
  void u64(uint64_t v) { body_.insert(body_.end(), (uint8_t*)&v, (uint8_t*)&v + 8); }
  void s(const std::string& v) {
    u64(v.size());
    body_.insert(body_.end(), v.begin(), v.end());
  }
  void head(const std::string& key, uint32_t type) {
    s(key);
    u32(type);
  }
  std::vector<uint8_t> body_;
  uint64_t n_kv_ = 0;
};

void expect_refused(const GgufBuilder& b, const std::string& message_part) {
  const auto bytes = b.bytes();
  auto f = gguf::File::parse(bytes.data(), bytes.size(), "synthetic.gguf");
  try {
    Tokenizer::from_gguf(*f);
    ADD_FAILURE() << "accepted; expected an error naming '" << message_part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message_part), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, RefusesWhatItCannotTokenize) {
  expect_refused(GgufBuilder().str("general.architecture", "llama"), "no tokenizer");
  expect_refused(GgufBuilder().str("tokenizer.ggml.model", "bert").strs("tokenizer.ggml.tokens", {"a"}), "'bert'");
  expect_refused(GgufBuilder().str("tokenizer.ggml.model", "gpt2").strs("tokenizer.ggml.tokens", {}), "0 tokens");
  expect_refused(GgufBuilder()
                     .str("tokenizer.ggml.model", "gpt2")
                     .str("tokenizer.ggml.pre", "tekken")
                     .strs("tokenizer.ggml.tokens", {"a", "b", "ab"})
                     .strs("tokenizer.ggml.merges", {"a b"}),
                 "'tekken'");
  expect_refused(GgufBuilder().str("tokenizer.ggml.model", "gpt2").strs("tokenizer.ggml.tokens", {"a", "b"}),
                 "merges");
  expect_refused(GgufBuilder()
                     .str("tokenizer.ggml.model", "gpt2")
                     .strs("tokenizer.ggml.tokens", {"a", "b"})
                     .strs("tokenizer.ggml.merges", {"a c"}),
                 "not in the vocabulary");
}

// A toy byte-level vocabulary: merges apply by rank, and a byte missing from the vocabulary is dropped.
TEST(Tokenizer, ByteLevelMergesByRank) {
  const auto bytes = GgufBuilder()
                         .str("tokenizer.ggml.model", "gpt2")
                         .strs("tokenizer.ggml.tokens", {"a", "b", "c", "ab", "bc", "abc", "\xC4\xA0", "\xC4\xA0" "a"})
                         .strs("tokenizer.ggml.merges", {"b c", "a b", "a bc", "\xC4\xA0 a"})
                         .bytes();
  auto f = gguf::File::parse(bytes.data(), bytes.size(), "toy.gguf");
  auto tok = Tokenizer::from_gguf(*f);
  // "b c" outranks "a b": abc = a + bc. The space (Ġ) joins the next word; 'x' has no token and vanishes.
  EXPECT_EQ(tok->encode("abc", false, false), (std::vector<int32_t>{5}));
  EXPECT_EQ(tok->encode("ab a", false, false), (std::vector<int32_t>{3, 7}));
  EXPECT_EQ(tok->encode("axb", false, false), (std::vector<int32_t>{3}));  // HF merges across the dropped byte
  EXPECT_EQ(tok->decode({3, 7}), "ab a");
}

}  // namespace
}  // namespace longctx
