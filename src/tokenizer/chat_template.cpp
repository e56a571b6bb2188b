// Chat templates: the tokenizer's own Jinja template (tokenizer/jinja.h) with
// Hugging Face's render context, and native renderings of three families
// (ChatML, Llama-3, DeepSeek-V3) for a tokenizer without a template or when
// one is chosen by name.
#include "finmoe/chat_template.h"

#include <list>
#include <mutex>

#include <unicode/uchar.h>

#include "finmoe/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace finmoe {

namespace {

const char* const kSupported =
    "a built-in template can be chosen with --chat-template NAME (chatml, qwen, llama3, deepseek_v3)";

bool contains(const std::string& s, std::string_view what) { return s.find(what) != std::string::npos; }

// Python str.strip() (Jinja's trim) on Unicode whitespace.
std::string strip_ws(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t k = b;
    if (!u_isUWhiteSpace(static_cast<UChar32>(tok::utf8_next(s, k)))) break;
    b = k;
  }
  while (e > b) {
    size_t pb = e - 1;
    while (pb > b && (static_cast<unsigned char>(s[pb]) & 0xC0) == 0x80) --pb;
    size_t k = pb;
    if (!u_isUWhiteSpace(static_cast<UChar32>(tok::utf8_next(s, k)))) break;
    e = pb;
  }
  return std::string(s.substr(b, e - b));
}

std::string lstrip_nl(std::string_view s) {
  size_t b = s.find_first_not_of('\n');
  return b == std::string_view::npos ? "" : std::string(s.substr(b));
}
std::string rstrip_nl(std::string_view s) {
  size_t e = s.find_last_not_of('\n');
  return e == std::string_view::npos ? "" : std::string(s.substr(0, e + 1));
}

void check_role(const ChatMessage& m, size_t i) {
  if (m.role != "system" && m.role != "user" && m.role != "assistant")
    throw Error("render_chat: messages[" + std::to_string(i) + "].role '" + m.role +
                "' not supported (system, user, assistant)");
}

// Qwen2/2.5/3 ChatML. Qwen3 wraps the reasoning of assistant turns after the
// last user query in <think>; Qwen2/2.5 add a default system prompt.
std::string render_chatml(const TokenizerConfig& c, const std::vector<ChatMessage>& msgs,
                          bool add_generation_prompt) {
  const std::string& tpl = c.chat_template;
  const bool qwen3_think = contains(tpl, "</think>");
  std::string default_system;
  if (contains(tpl, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
    default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
  else if (contains(tpl, "system\\nYou are a helpful assistant."))
    default_system = "You are a helpful assistant.";

  std::string out;
  if (!default_system.empty() && (msgs.empty() || msgs[0].role != "system"))
    out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
  size_t last_query = msgs.empty() ? 0 : msgs.size() - 1;
  for (size_t k = msgs.size(); k-- > 0;) {
    const std::string& t = msgs[k].content;
    bool tool_response = t.starts_with("<tool_response>") && t.ends_with("</tool_response>");
    if (msgs[k].role == "user" && !tool_response) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    check_role(m, i);
    if (m.role != "assistant") {
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      continue;
    }
    if (!qwen3_think) {
      out += "<|im_start|>assistant\n" + m.content + "<|im_end|>\n";
      continue;
    }
    std::string content = m.content, reasoning;
    if (size_t close = content.find("</think>"); close != std::string::npos) {
      std::string before = content.substr(0, close);
      size_t last_close = content.rfind("</think>");
      content = lstrip_nl(std::string_view(m.content).substr(last_close + 8));
      before = rstrip_nl(before);
      size_t open = before.rfind("<think>");
      reasoning = lstrip_nl(open == std::string::npos ? before : before.substr(open + 7));
    }
    bool is_last = i + 1 == msgs.size();
    if (i > last_query && (is_last || !reasoning.empty()))
      out += "<|im_start|>assistant\n<think>\n" + lstrip_nl(rstrip_nl(reasoning)) +
             "\n</think>\n\n" + lstrip_nl(content);
    else
      out += "<|im_start|>assistant\n" + content;
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Llama-3 (and 3.1, whose template always opens with a dated system header).
std::string render_llama3(const TokenizerConfig& c, const std::vector<ChatMessage>& msgs,
                          bool add_generation_prompt) {
  const std::string& tpl = c.chat_template;
  auto turn = [](const std::string& role, const std::string& content) {
    return "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + strip_ws(content) + "<|eot_id|>";
  };
  std::string out = c.bos_token;
  size_t first = 0;
  if (contains(tpl, "Cutting Knowledge Date")) {
    std::string system;
    if (!msgs.empty() && msgs[0].role == "system") {
      system = strip_ws(msgs[0].content);
      first = 1;
    }
    out += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
           "Today Date: 26 Jul 2024\n\n" + system + "<|eot_id|>";
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    check_role(msgs[i], i);
    out += turn(msgs[i].role, msgs[i].content);
  }
  // Some Llama-3 templates add the assistant header unconditionally.
  if (add_generation_prompt || !contains(tpl, "add_generation_prompt"))
    out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_deepseek_v3(const TokenizerConfig& c, const std::vector<ChatMessage>& msgs,
                               bool add_generation_prompt) {
  const bool drop_think = contains(c.chat_template, "</think>");  // R1-style templates
  std::string system;
  bool first_system = true;
  for (const auto& m : msgs) {
    if (m.role != "system") continue;
    system += (first_system ? "" : "\n\n") + m.content;
    first_system = false;
  }
  std::string out = c.bos_token + system;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    check_role(m, i);
    if (m.role == "user") {
      out += "<\xEF\xBD\x9CUser\xEF\xBD\x9C>" + m.content;
    } else if (m.role == "assistant") {
      std::string content = m.content;
      if (drop_think)
        if (size_t p = content.rfind("</think>"); p != std::string::npos) content = content.substr(p + 8);
      out += "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>" + content +
             "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
    }
  }
  if (add_generation_prompt) out += "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
  return out;
}

using ojson = nlohmann::ordered_json;

// HF's _alias_reasoning_fields: a message's reasoning under any of its names
// becomes {"thinking": r, **message, "reasoning_content": r}.
ojson alias_reasoning(const ojson& m) {
  if (!m.is_object()) return m;
  const ojson* r = nullptr;
  for (const char* k : {"reasoning_content", "thinking", "reasoning"})
    if (auto it = m.find(k); it != m.end() && !it->is_null()) {
      r = &*it;
      break;
    }
  if (!r) return m;
  ojson out = ojson::object();
  out["thinking"] = *r;
  for (auto it = m.begin(); it != m.end(); ++it) out[it.key()] = it.value();
  out["reasoning_content"] = *r;
  return out;
}

// Parsed templates by source, so render_chat() does not re-parse per call.
std::shared_ptr<const jinja::Template> compiled(const std::string& source) {
  static std::mutex mu;
  static std::list<std::pair<std::string, std::shared_ptr<const jinja::Template>>> cache;  // most recent first
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = cache.begin(); it != cache.end(); ++it)
    if (it->first == source) {
      cache.splice(cache.begin(), cache, it);
      return cache.front().second;
    }
  auto t = std::make_shared<const jinja::Template>(source);
  cache.emplace_front(source, t);
  if (cache.size() > 8) cache.pop_back();
  return t;
}

}  // namespace

struct ChatTemplate::Impl {
  std::shared_ptr<const jinja::Template> tpl;
  std::string bos, eos, pad;
  std::optional<std::time_t> fixed_now;
};

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token,
                           std::string pad_token)
    : impl_(std::make_shared<Impl>()) {
  impl_->tpl = compiled(source);
  impl_->bos = std::move(bos_token);
  impl_->eos = std::move(eos_token);
  impl_->pad = std::move(pad_token);
}

ChatTemplate ChatTemplate::from_tokenizer(const Tokenizer& tok) {
  const TokenizerConfig& c = tok.config();
  if (c.chat_template.empty())
    throw Error(std::string("the tokenizer has no chat_template; ") + kSupported);
  return ChatTemplate(c.chat_template, c.bos_token, c.eos_token, c.pad_token);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

void ChatTemplate::set_fixed_time(std::time_t t) { impl_->fixed_now = t; }

std::string ChatTemplate::render(const ChatRequest& r) const {
  if (!r.messages.is_array()) throw Error("chat template: messages must be an array");
  ojson ctx = ojson::object();
  ojson msgs = ojson::array();
  for (const auto& m : r.messages) {
    if (!m.is_object()) throw Error("chat template: every message must be an object, got " + m.dump());
    msgs.push_back(alias_reasoning(m));
  }
  ctx["messages"] = std::move(msgs);
  ctx["tools"] = r.tools;
  ctx["documents"] = r.documents;
  ctx["add_generation_prompt"] = r.add_generation_prompt;
  // apply_chat_template: {**special_tokens_map, **kwargs}
  if (!impl_->bos.empty()) ctx["bos_token"] = impl_->bos;
  if (!impl_->eos.empty()) ctx["eos_token"] = impl_->eos;
  if (!impl_->pad.empty()) ctx["pad_token"] = impl_->pad;
  if (!r.kwargs.is_null()) {
    if (!r.kwargs.is_object()) throw Error("chat template: kwargs must be an object");
    for (auto it = r.kwargs.begin(); it != r.kwargs.end(); ++it) ctx[it.key()] = it.value();
  }
  return impl_->tpl->render(ctx, impl_->fixed_now);
}

nlohmann::ordered_json chat_messages_json(const std::vector<ChatMessage>& messages) {
  ojson out = ojson::array();
  for (const auto& m : messages) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

ChatTemplateKind detect_chat_template(const TokenizerConfig& config) {
  const std::string& t = config.chat_template;
  if (t.empty()) throw Error(std::string("the tokenizer has no chat_template; ") + kSupported);
  if (contains(t, "<|im_start|>")) return ChatTemplateKind::ChatML;
  if (contains(t, "<|start_header_id|>")) return ChatTemplateKind::Llama3;
  if (contains(t, "<\xEF\xBD\x9CUser\xEF\xBD\x9C>")) return ChatTemplateKind::DeepSeekV3;
  throw Error(std::string("chat_template of an unknown family; ") + kSupported);
}

ChatTemplateKind chat_template_from_name(std::string_view name) {
  if (name == "chatml" || name == "qwen") return ChatTemplateKind::ChatML;
  if (name == "llama3") return ChatTemplateKind::Llama3;
  if (name == "deepseek_v3") return ChatTemplateKind::DeepSeekV3;
  throw Error("chat template '" + std::string(name) +
              "' unknown (chatml, qwen, llama3, deepseek_v3)");
}

std::string render_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, std::optional<ChatTemplateKind> kind) {
  const TokenizerConfig& c = tok.config();
  if (!kind) {
    ChatRequest r;
    r.messages = chat_messages_json(messages);
    r.add_generation_prompt = add_generation_prompt;
    return ChatTemplate::from_tokenizer(tok).render(r);
  }
  switch (*kind) {
    case ChatTemplateKind::ChatML: return render_chatml(c, messages, add_generation_prompt);
    case ChatTemplateKind::Llama3: return render_llama3(c, messages, add_generation_prompt);
    case ChatTemplateKind::DeepSeekV3: return render_deepseek_v3(c, messages, add_generation_prompt);
  }
  throw Error("render_chat: bad ChatTemplateKind");
}

}  // namespace finmoe
