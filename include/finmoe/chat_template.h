#pragma once
// A model's own chat template (the Jinja `chat_template` of
// tokenizer_config.json or chat_template.jinja), rendered as Hugging Face
// transformers' apply_chat_template(..., tokenize=False) renders it.
//
// Errors: finmoe::Error for a template that does not parse (naming line and
// column), for one that fails while rendering, and for a conversation the
// template refuses (its raise_exception message, prefixed "chat template
// raised an exception: ").
//
// Thread safety: render() may be called from many threads at once;
// set_fixed_time() only before the template is shared.
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "finmoe/tokenizer.h"

namespace finmoe {

// What apply_chat_template passes to the template.
struct ChatRequest {
  // [{role, content, tool_calls?, tool_call_id?, name?, reasoning_content?...}];
  // keys are kept in order (tojson prints them as given).
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;      // null = none (the template sees None), else an array
  nlohmann::ordered_json documents;  // null = none
  bool add_generation_prompt = false;
  // Further template variables (enable_thinking, ...); they override the
  // tokenizer's special tokens of the same name.
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();
};

class ChatTemplate {
 public:
  // Parses `source`; throws Error on a syntax error ("chat template line L col C: ...").
  // bos_token / eos_token (and pad_token when not empty) are the variables of those names.
  ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token,
               std::string pad_token = "");
  // The tokenizer's template; throws Error when it has none.
  static ChatTemplate from_tokenizer(const Tokenizer& tok);

  // The rendered prompt text (special tokens as text, not yet tokenized).
  std::string render(const ChatRequest& request) const;
  // For reproducible renders: the time strftime_now() formats (as UTC).
  void set_fixed_time(std::time_t t);

  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Messages with plain string content as the JSON the template sees.
nlohmann::ordered_json chat_messages_json(const std::vector<ChatMessage>& messages);

}  // namespace finmoe
