// engine/text_breaks.h on the real vocabularies: where a prompt may be cut without splitting a word or a sentence.
#include "engine/text_breaks.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "engine/session.h"
#include "gguf/gguf.h"
#include "smollm2_suite.h"
#include "test_models.h"

namespace longctx {
namespace {

using kv::TextBreak;

// The boundary before each character of `text` that starts a token, from the tokens' own bytes: so that a test can
// ask "is there a cut before the 'T' of 'This'" whatever the vocabulary made of the text.
std::map<size_t, TextBreak> breaks_by_offset(const Tokenizer& tok, const TextBreaks& tb, const std::string& text) {
  const std::vector<int32_t> ids = tok.encode(text, false, true);
  std::vector<TextBreak> b;
  tb.classify(ids, -1, b);
  std::map<size_t, TextBreak> out;
  size_t off = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = tok.token_bytes(ids[i]);
    // Where the token's first non-space byte lies: a token " This" breaks before 'T' as much as before ' '.
    size_t lead = 0;
    while (lead < piece.size() && (piece[lead] == ' ' || piece[lead] == '\n')) ++lead;
    out[off + lead] = b[i];
    off += piece.size();
  }
  EXPECT_EQ(off, text.size()) << "the tokens spell the text";
  return out;
}

TextBreak at(const std::map<size_t, TextBreak>& m, const std::string& text, const std::string& what) {
  const size_t off = text.find(what);
  EXPECT_NE(off, std::string::npos) << what;
  const auto it = m.find(off);
  EXPECT_NE(it, m.end()) << "no token starts at '" << what << "'";
  return it == m.end() ? TextBreak::Sentence : it->second;
}

void check_model(const std::string& path) {
  LONGCTX_REQUIRE_MODEL(path);
  const auto file = gguf::File::open(path);
  const auto tok = Tokenizer::from_gguf(*file);
  const TextBreaks tb(*tok);
  const std::string text = "The special magic number for lucid-harbor is 9296705. This is the end of it\nAnd here";
  const auto m = breaks_by_offset(*tok, tb, text);
  // Inside the number (read one digit a token by both models) nothing may be cut.
  const size_t num = text.find("9296705");
  for (size_t i = num + 1; i < num + 7; ++i)
    if (m.count(i)) EXPECT_EQ(m.at(i), TextBreak::None) << path << ": a cut inside the number at byte " << i;
  if (m.count(num + 7)) EXPECT_EQ(m.at(num + 7), TextBreak::None) << "the full stop stays with its number";
  EXPECT_EQ(at(m, text, "9296705"), TextBreak::Word) << path;
  EXPECT_EQ(at(m, text, "special"), TextBreak::Word) << path;
  EXPECT_EQ(at(m, text, "This"), TextBreak::Sentence) << path << ": after a full stop and a space";
  EXPECT_EQ(at(m, text, "And"), TextBreak::Sentence) << path << ": after a line break";
  // A hyphenated word's pieces touch: no cut between them.
  const size_t hy = text.find("-harbor");
  if (m.count(hy)) EXPECT_EQ(m.at(hy), TextBreak::None) << path;
  // A chat template's turn markers stand between sentences.
  const std::string chat = "<|im_start|>user\nhello there<|im_end|>";
  std::vector<int32_t> ids = tok->encode(chat, false, true);
  std::vector<TextBreak> b;
  tb.classify(ids, ids.front(), b);
  if (tok->is_control(ids.front())) {
    EXPECT_EQ(b[1], TextBreak::Sentence) << path << ": after a control token";
    EXPECT_EQ(b.back(), TextBreak::Sentence) << path << ": before a control token";
  }
  // The start of a text is a sentence boundary; a token carried from before decides the first boundary.
  tb.classify(std::vector<int32_t>{ids[2]}, -1, b);
  EXPECT_EQ(b[0], TextBreak::Sentence);
}

TEST(TextBreaks, SmolLM2KeepsNumbersAndWordsWhole) { check_model(test::smollm2_path()); }
TEST(TextBreaks, Gemma3KeepsNumbersAndWordsWhole) { check_model(test::gemma3_path()); }

// A policy that keeps everything and records what the session tells it of the text.
class TextSpy final : public kv::KvPolicy {
 public:
  std::string describe() const override { return "text spy"; }
  KvFormat page_format() const override { return KvFormat::F16; }
  bool wants_text_breaks() const override { return true; }
  void on_text(int32_t first_pos, std::span<const TextBreak> breaks) override {
    if (text.size() < first_pos + breaks.size()) text.resize(first_pos + breaks.size(), TextBreak::Word);
    std::copy(breaks.begin(), breaks.end(), text.begin() + first_pos);
    ++calls;
  }
  void reset() override { text.clear(); }
  std::vector<TextBreak> text;
  int calls = 0;
};

class SessionText : public test::SmolLM2Suite {};

// The session tells a policy the boundaries of every prompt token as it prefills them, chunk after chunk and
// prompt after prompt, and the boundaries of a prefix shared from another sequence.
TEST_F(SessionText, ThePolicyLearnsThePromptsBoundariesAlsoThroughASharedPrefix) {
  SessionOptions so;
  so.n_ctx = 512;
  so.n_batch = 16;
  so.n_seq_max = 2;
  EngineSession session(*model_, *pool_, so, tok_);
  TextSpy a, b;
  const SequenceId sa = session.add_sequence(a), sb = session.add_sequence(b);
  const std::string first = "The special magic number for lucid-harbor is 9296705. Remember it.\n",
                    second = " What is the special magic number?";
  const std::vector<int32_t> t1 = tok_->encode(first, false, false), t2 = tok_->encode(second, false, false);
  std::vector<float> logits;
  session.prefill(sa, t1, {}, logits);
  session.prefill(sa, t2, {}, logits);
  std::vector<int32_t> all(t1);
  all.insert(all.end(), t2.begin(), t2.end());
  const TextBreaks tb(*tok_);
  std::vector<TextBreak> want;
  tb.classify(all, -1, want);
  EXPECT_EQ(a.text, want);
  EXPECT_EQ(a.calls, 2) << "once per prefill";
  // The second prompt's first boundary came from the first prompt's last token (a line break: a sentence).
  EXPECT_EQ(a.text[t1.size()], TextBreak::Sentence);

  const int32_t n_shared = static_cast<int32_t>(t1.size()) - 3;
  session.share_prefix(sb, sa, n_shared);
  EXPECT_EQ(b.text, std::vector<TextBreak>(want.begin(), want.begin() + n_shared));
  session.prefill(sb, std::span<const int32_t>(all).subspan(static_cast<size_t>(n_shared)), {}, logits);
  EXPECT_EQ(b.text, want) << "the tokens after a shared prefix continue its text";
}

}  // namespace
}  // namespace longctx
