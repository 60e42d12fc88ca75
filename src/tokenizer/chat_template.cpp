#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "gguf/gguf.h"
#include "tokenizer/unicode.h"

namespace longctx {
namespace {

// A ChatML template's default system prompt: the literal between "<|im_start|>system\n" and "<|im_end|>" in a
// Jinja string (SmolLM2: '<|im_start|>system\nYou are ...<|im_end|>\n'). Occurrences built from an expression
// ('<|im_start|>system\n' + messages[0]['content'] ...) hold a quote or brace and are passed over. The newline
// may be written as a real one or as the escape \n.
std::string chatml_default_system(const std::string& jinja) {
  const std::string open = "<|im_start|>system", close = "<|im_end|>";
  for (size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
    size_t body = at + open.size();
    if (jinja.compare(body, 1, "\n") == 0) {
      body += 1;
    } else if (jinja.compare(body, 2, "\\n") == 0) {
      body += 2;
    } else {
      continue;
    }
    const size_t end = jinja.find(close, body);
    if (end == std::string::npos) break;
    const std::string literal = jinja.substr(body, end - body);
    if (literal.empty() || literal.find_first_of("'\"{}+") != std::string::npos) continue;
    std::string out;
    for (size_t i = 0; i < literal.size(); ++i) {
      if (literal[i] == '\\' && i + 1 < literal.size()) {
        const char c = literal[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        out += literal[i];
      }
    }
    return out;
  }
  return {};
}

// Jinja's `trim`: Python's str.strip(), which strips Unicode whitespace.
std::string trim(const std::string& s) {
  size_t begin = 0, end = s.size();
  for (size_t n; begin < end; begin += n)
    if (!unicode::is_py_space(unicode::utf8_decode(s, begin, &n))) break;
  while (end > begin) {
    size_t start = end - 1;  // back to the first byte of the last code point
    while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
    size_t n;
    const uint32_t cp = unicode::utf8_decode(s, start, &n);
    if (start + n != end || !unicode::is_py_space(cp)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

}  // namespace

ChatTemplate chat_template_from_jinja(const std::string& jinja) {
  if (jinja.find("<|im_start|>") != std::string::npos) return {ChatFormat::ChatML, chatml_default_system(jinja)};
  if (jinja.find("<start_of_turn>") != std::string::npos) return {ChatFormat::Gemma, {}};
  fail("chat template not recognised (ChatML and Gemma are supported): {:.80}...", jinja);
}

ChatTemplate chat_template_for(const gguf::File& f) {
  if (const auto jinja = f.get_string_opt("tokenizer.chat_template")) return chat_template_from_jinja(*jinja);
  const std::string arch = f.get_string_opt("general.architecture").value_or("");
  if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") return {ChatFormat::Gemma, {}};
  if (arch == "qwen2" || arch == "qwen3") return {ChatFormat::ChatML, {}};
  fail("{}: no chat template in the file, and none known for architecture '{}'", f.path(), arch);
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt) {
  std::string out;
  if (t.format == ChatFormat::ChatML) {
    if (!msgs.empty() && msgs[0].role != "system" && !t.default_system.empty())
      out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
    for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }

  // Gemma has no system turn: the system text opens the first user turn. Its template fails on an empty
  // conversation (it reads messages[0]), and so do we.
  if (msgs.empty()) fail("Gemma chat: the conversation has no messages");
  size_t first = 0;
  std::string prefix;
  if (!msgs.empty() && msgs[0].role == "system") {
    prefix = msgs[0].content + "\n\n";
    first = 1;
  }
  for (size_t k = first; k < msgs.size(); ++k) {
    const ChatMessage& m = msgs[k];
    const bool user_turn = (k - first) % 2 == 0;
    if ((m.role == "user") != user_turn)
      fail("Gemma chat: roles must alternate user/assistant/user/...; message {} is '{}'", k, m.role);
    const std::string role = m.role == "assistant" ? "model" : m.role;
    out += "<start_of_turn>" + role + "\n" + (k == first ? prefix : std::string()) + trim(m.content) +
           "<end_of_turn>\n";
  }
  if (add_generation_prompt) out += "<start_of_turn>model\n";
  return out;
}

}  // namespace longctx
