#include "serve/text_stream.h"

#include <algorithm>

#include "finmoe/error.h"

namespace finmoe {

TextStream::TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings,
                       bool include_stop, bool skip_special)
    : stops_(std::move(stop_strings)), include_stop_(include_stop) {
  if (tokenizer)
    decoder_.emplace(*tokenizer, skip_special);
  else if (!stops_.empty())
    throw Error("stop_strings need a tokenizer");
  for (const auto& s : stops_)
    if (s.empty()) throw Error("stop_strings: an empty stop string is not allowed");
}

bool TextStream::append(const std::string& piece) {
  if (piece.empty() || ended_) return false;
  const size_t old = text_.size();
  text_ += piece;
  // The text before `old` held no stop string, so a match ends in the new
  // bytes; the earliest start over all stop strings wins.
  size_t cut = std::string::npos, cut_end = 0;
  for (const auto& s : stops_) {
    const size_t from = old >= s.size() - 1 ? old - (s.size() - 1) : 0;
    const size_t at = text_.find(s, from);
    if (at != std::string::npos && at < cut) {
      cut = at;
      cut_end = at + s.size();
    }
  }
  if (cut == std::string::npos) return false;
  text_.resize(include_stop_ ? cut_end : cut);
  // A match starts in held-back bytes, so nothing already taken is cut.
  ended_ = true;
  return true;
}

bool TextStream::push(int32_t token) {
  if (ended_ || !decoder_) return false;
  return append(decoder_->push(token));
}

void TextStream::finish() {
  if (ended_) return;
  if (decoder_) append(decoder_->flush());
  ended_ = true;
}

size_t TextStream::releasable() const {
  if (ended_) return text_.size();
  // Longest suffix of the text that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_)
    for (size_t n = std::min(s.size() - 1, text_.size()); n > hold; --n)
      if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  return text_.size() - hold;
}

std::string TextStream::take() {
  const size_t end = releasable();
  if (end <= taken_) return {};
  std::string out = text_.substr(taken_, end - taken_);
  taken_ = end;
  return out;
}

}  // namespace finmoe
