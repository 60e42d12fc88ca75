// Chat prompt formats. A GGUF carries its chat template as Jinja text; rather than interpret Jinja we
// recognise the formats we support from that text (or from the architecture when the file has none) and
// render them here, matching what the Jinja template renders (tests/golden/tokenizer/chat_templates.json).
#pragma once
#include <string>
#include <vector>

namespace longctx {

namespace gguf {
class File;
}

enum class ChatFormat {
  ChatML,  // <|im_start|>role\n...<|im_end|>\n (SmolLM2, Qwen)
  Gemma,   // <start_of_turn>user\n...<end_of_turn>\n, "assistant" written "model", system folded into the first
           // user turn, contents trimmed
};

struct ChatTemplate {
  ChatFormat format = ChatFormat::ChatML;
  // ChatML: a system turn the template puts first when the conversation does not start with one
  // (SmolLM2's "You are a helpful AI assistant named SmolLM, ..."); empty: none.
  std::string default_system;
};

struct ChatMessage {
  std::string role, content;  // role: "system", "user" or "assistant"
};

// From tokenizer.chat_template, else from general.architecture; throws Error when neither is known.
ChatTemplate chat_template_for(const gguf::File& f);
// Recognises a Jinja chat template's text; throws Error for one of an unknown format.
ChatTemplate chat_template_from_jinja(const std::string& jinja);

// The prompt text, without BOS: encode it with add_bos = Tokenizer::add_bos() and parse_special = true.
// Gemma throws Error when user and assistant turns do not alternate, as its template does.
std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& msgs,
                                bool add_generation_prompt);

}  // namespace longctx
