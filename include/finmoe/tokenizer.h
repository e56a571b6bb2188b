#pragma once
// Hugging Face `tokenizer.json` tokenizers and chat templates.
//
// Supported: BPE with ByteLevel pre-tokenization (the Split regexes of
// Qwen2/Qwen3, Llama-3 and DeepSeek-V3, run with PCRE2 + Unicode), NFC
// normalizer, added/special tokens matched before BPE, ByteLevel decoder;
// and the byte-fallback + Metaspace variant (Llama-2 / Mistral style).
// Anything else throws finmoe::Error naming the tokenizer.json field.
//
// Thread safety: a loaded Tokenizer is immutable; encode/decode may be called
// from many threads at once.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace finmoe {

// The parts of `tokenizer_config.json` finmoe uses.
struct TokenizerConfig {
  std::string bos_token;                   // "" when none
  std::string eos_token;
  std::string pad_token;
  bool add_bos_token = false;              // prepend bos in encode(add_special_tokens=true)
  bool add_eos_token = false;
  bool clean_up_tokenization_spaces = false;
  std::string chat_template;               // the Jinja source, "" when none
  int64_t model_max_length = 0;            // 0 = unknown
};

struct ChatMessage {
  std::string role;     // system | user | assistant
  std::string content;
};

class Tokenizer {
 public:
  // `tokenizer.json` (+ `tokenizer_config.json` beside it when present).
  static Tokenizer from_file(const std::string& tokenizer_json);
  // DIR/tokenizer.json and DIR/tokenizer_config.json.
  static Tokenizer from_dir(const std::string& dir);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Special-token strings in `text` are matched as special tokens (as HF).
  // add_special_tokens: apply bos/eos per the config (HF's default is true).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // HF decode(); applies clean_up_tokenization_spaces when the config asks.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;                          // largest id + 1, added tokens included
  std::string id_to_token(int32_t id) const;           // the vocabulary string ("Ġthe"); throws if out of range
  std::optional<int32_t> token_to_id(std::string_view token) const;
  bool is_special(int32_t id) const;
  const TokenizerConfig& config() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class IncrementalDecoder;
};

// Streams text for a growing id sequence and never emits a partial UTF-8
// character: bytes of an incomplete character are held until it completes.
// Concatenating every push() and flush() equals decode(all ids) (without the
// clean-up pass).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens = false);
  std::string push(int32_t id);
  std::string flush();  // whatever is held (invalid bytes become U+FFFD)

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
};

// Built-in native templates (finmoe/chat_template.h runs a model's own Jinja).
enum class ChatTemplateKind { ChatML, Llama3, DeepSeekV3 };

// The built-in family a tokenizer's template looks like; throws Error for none,
// naming the built-in families and the --chat-template override.
ChatTemplateKind detect_chat_template(const TokenizerConfig& config);
// "chatml" | "qwen" | "llama3" | "deepseek_v3" -> kind; throws for others.
ChatTemplateKind chat_template_from_name(std::string_view name);
// Renders like HF apply_chat_template(messages, tokenize=False, add_generation_prompt)
// with the tokenizer's own Jinja template; `kind` renders a built-in one instead.
std::string render_chat(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt,
                        std::optional<ChatTemplateKind> kind = std::nullopt);

}  // namespace finmoe
