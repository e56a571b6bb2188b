#pragma once
// Finds tokenizer.json "added_tokens" in text before the model sees it, as HF's
// AddedVocabulary does: leftmost-longest match, then the token's single_word,
// lstrip and rstrip rules. Immutable after construction.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace finmoe::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;       // the match also takes the whitespace before it
  bool rstrip = false;       // ... and after it
  bool single_word = false;  // only when not inside a word
  bool normalized = false;   // matched in normalized text (else in the raw input)
};

struct Segment {
  size_t begin, end;  // bytes of the input
  int32_t id;         // the added token's id, or -1 for plain text
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `contents[i]` is the string to look for for `tokens[i]` (normalized where needed).
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<std::string>& contents);
  bool empty() const { return n_tokens_ == 0; }
  // Covers `s` with plain-text and token segments, in order.
  void split(std::string_view s, std::vector<Segment>& out) const;

 private:
  struct Entry {
    std::string content;
    int32_t id;
    bool lstrip, rstrip, single_word;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;  // longest first
  size_t n_tokens_ = 0;
};

}  // namespace finmoe::tok
