// Streaming decode: each push() decodes a small window of ids twice (up to the
// last emitted id, and up to the new one) and emits the difference once it no
// longer ends in U+FFFD (an incomplete character). Decoding a window rather
// than single ids keeps decoders that look at neighbours (Metaspace strip) right.
#include "tokenizer/tokenizer_impl.h"

namespace finmoe {

namespace {

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special_tokens)
    : tok_(&tok), skip_special_(skip_special_tokens) {}

std::string IncrementalDecoder::push(int32_t id) {
  ids_.push_back(id);
  const auto& impl = *tok_->impl_;
  std::span<const int32_t> all(ids_);
  std::string prefix = impl.decode_raw(all.subspan(prefix_offset_, read_offset_ - prefix_offset_),
                                       skip_special_);
  std::string text = impl.decode_raw(all.subspan(prefix_offset_), skip_special_);
  if (text.size() > prefix.size() && !ends_with_replacement(text)) {
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    return text.substr(prefix.size());
  }
  return "";
}

std::string IncrementalDecoder::flush() {
  const auto& impl = *tok_->impl_;
  std::span<const int32_t> all(ids_);
  std::string prefix = impl.decode_raw(all.subspan(prefix_offset_, read_offset_ - prefix_offset_),
                                       skip_special_);
  std::string text = impl.decode_raw(all.subspan(prefix_offset_), skip_special_);
  prefix_offset_ = read_offset_ = ids_.size();
  return text.size() > prefix.size() ? text.substr(prefix.size()) : "";
}

}  // namespace finmoe
