// SFT conversations -> token ids with an assistant-only loss mask.
//
// The assistant spans are found on the rendering itself: R = the whole
// conversation; for each assistant turn k, G_k = the messages before it with
// the generation prompt. G_k must be a prefix of R (true for the templates
// finmoe renders when the turn follows a user or system message), so the turn
// starts at |G_k| in R and runs through the template's first end-of-turn
// token after that point.
#include <string_view>

#include "finmoe/dataset.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

const char* end_of_turn(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::ChatML: return "<|im_end|>";
    case ChatTemplateKind::Llama3: return "<|eot_id|>";
    case ChatTemplateKind::DeepSeekV3: return "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  }
  throw Error("end_of_turn: bad ChatTemplateKind");
}

}  // namespace

ChatTokens tokenize_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                         std::optional<ChatTemplateKind> kind) {
  // The end-of-turn token: the family's when the template is one finmoe knows,
  // else the tokenizer's eos_token. `kind` unset renders the tokenizer's own template.
  std::optional<ChatTemplateKind> family = kind;
  if (!family) {
    try {
      family = detect_chat_template(tok.config());
    } catch (const Error&) {
    }
  }
  const std::string eot_text = family ? end_of_turn(*family) : tok.config().eos_token;
  const std::optional<int32_t> eot = tok.token_to_id(eot_text);
  if (!eot) throw Error("the tokenizer has no end-of-turn token '" + eot_text + "'");

  const std::string whole = render_chat(tok, messages, /*add_generation_prompt=*/false, kind);
  // Where each assistant turn starts in `whole`.
  std::vector<size_t> starts;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    std::vector<ChatMessage> before(messages.begin(), messages.begin() + long(i));
    const std::string prompt = render_chat(tok, before, /*add_generation_prompt=*/true, kind);
    if (!std::string_view(whole).starts_with(prompt))
      throw Error("messages[" + std::to_string(i) +
                  "]: the chat template renders the conversation differently from the messages "
                  "before this assistant turn; cannot place its loss mask");
    if (!starts.empty() && prompt.size() < starts.back())
      throw Error("messages[" + std::to_string(i) + "]: assistant turns out of order in the rendering");
    starts.push_back(prompt.size());
  }

  ChatTokens out;
  // Appends the ids of `text`; in an assistant turn the mask is 1 through the
  // first end-of-turn token.
  auto append = [&](std::string_view text, bool assistant, size_t message) {
    std::vector<int32_t> ids = tok.encode(text, /*add_special_tokens=*/false);
    bool in_turn = assistant;
    for (int32_t id : ids) {
      out.ids.push_back(id);
      out.loss_mask.push_back(in_turn ? 1 : 0);
      if (in_turn && id == *eot) in_turn = false;
    }
    if (in_turn)
      throw Error("messages[" + std::to_string(message) + "]: no end-of-turn token " + eot_text +
                  " after the assistant turn in the rendering");
  };
  size_t pos = 0, turn = 0;
  for (size_t j = 0; j < starts.size(); ++j) {
    while (messages[turn].role != "assistant") ++turn;
    append(std::string_view(whole).substr(pos, starts[j] - pos), false, 0);
    const size_t end = j + 1 < starts.size() ? starts[j + 1] : whole.size();
    append(std::string_view(whole).substr(starts[j], end - starts[j]), true, turn++);
    pos = end;
  }
  append(std::string_view(whole).substr(pos), false, 0);
  return out;
}

}  // namespace finmoe
