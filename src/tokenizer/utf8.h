#pragma once
// UTF-8 helpers shared by the tokenizer: validation, lossy decoding (as Rust's
// String::from_utf8_lossy, which HF uses) and GPT-2's byte <-> unicode map.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace finmoe::tok {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is invalid
// or truncated.
size_t utf8_valid_len(std::string_view s, size_t i);
// Byte offset of the first invalid sequence, or npos when `s` is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);
// Each maximal invalid subpart becomes one U+FFFD (Unicode's recommended practice).
std::string utf8_lossy(std::string_view s);
// Length in bytes of the character whose lead byte is `c` (1 for invalid leads).
inline size_t utf8_char_len(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
}
// Decodes the code point at s[i] (s must be valid there); advances i.
char32_t utf8_next(std::string_view s, size_t& i);
void utf8_append(std::string& out, char32_t cp);

// Whether text that ends with '\n' may be cut in front of `line` without
// changing the words the GPT-2 / Qwen2 / Llama-3 split regexes find: true
// when line's first character is valid and neither white space nor a control
// (no match of those regexes runs from a newline into such a character, and
// none looks behind). Lets long text be tokenized in blocks.
bool can_start_block(std::string_view line);

// GPT-2's reversible map from bytes to printable code points ("Ġ" = space).
struct ByteLevelMap {
  std::array<std::string, 256> byte_to_utf8;  // byte -> UTF-8 of its code point
  std::array<int16_t, 324> cp_to_byte;        // code point (< 324) -> byte, -1 if none
  ByteLevelMap();
  static const ByteLevelMap& get();
  // Maps every byte of `s` to its printable character.
  std::string encode(std::string_view s) const;
  // Inverse of encode() per token; a token holding any unmapped character is
  // kept as its raw bytes (as HF's ByteLevel decoder does).
  void decode_append(std::string_view token, std::string& out) const;
};

}  // namespace finmoe::tok
