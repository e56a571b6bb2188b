#include "tokenizer/added_tokens.h"

#include <algorithm>

#include <unicode/uchar.h>

#include "tokenizer/utf8.h"

namespace finmoe::tok {

namespace {

bool is_word_char(char32_t c) { return c == U'_' || u_isalnum(static_cast<UChar32>(c)); }
bool is_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

// The code point ending at byte `end` of `s` (end > 0), and its first byte.
char32_t prev_char(std::string_view s, size_t end, size_t& begin) {
  begin = end - 1;
  while (begin > 0 && (static_cast<unsigned char>(s[begin]) & 0xC0) == 0x80) --begin;
  size_t i = begin;
  return utf8_next(s, i);
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens,
                                     const std::vector<std::string>& contents) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (contents[i].empty()) continue;
    const AddedToken& t = tokens[i];
    by_first_byte_[static_cast<unsigned char>(contents[i][0])].push_back(
        {contents[i], t.id, t.lstrip, t.rstrip, t.single_word});
    ++n_tokens_;
  }
  for (auto& b : by_first_byte_)
    std::stable_sort(b.begin(), b.end(), [](const Entry& a, const Entry& c) {
      return a.content.size() > c.content.size();
    });
}

void AddedTokenMatcher::split(std::string_view s, std::vector<Segment>& out) const {
  size_t emitted = 0;  // end of what is already covered
  size_t i = 0;
  while (i < s.size()) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(s[i])];
    const Entry* hit = nullptr;
    for (const Entry& e : bucket) {
      if (s.compare(i, e.content.size(), e.content) == 0) {
        hit = &e;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + hit->content.size();
    i = stop;
    if (hit->single_word) {
      size_t pb;
      bool left_ok = start == 0 || !is_word_char(prev_char(s, start, pb));
      size_t k = stop;
      bool right_ok = stop == s.size() || !is_word_char(utf8_next(s, k));
      if (!left_ok || !right_ok) continue;
    }
    if (hit->lstrip) {
      while (start > emitted) {
        size_t pb;
        if (!is_space(prev_char(s, start, pb))) break;
        start = pb;
      }
    }
    if (hit->rstrip) {
      while (stop < s.size()) {
        size_t k = stop;
        if (!is_space(utf8_next(s, k))) break;
        stop = k;
      }
      i = stop;
    }
    if (start > emitted) out.push_back({emitted, start, -1});
    out.push_back({start, stop, hit->id});
    emitted = stop;
  }
  if (emitted < s.size()) out.push_back({emitted, s.size(), -1});
}

}  // namespace finmoe::tok
