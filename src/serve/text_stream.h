#pragma once
// Streaming detokenization with stop strings, shared by Generator and Engine.
//
// Generated ids go in one at a time; text comes out only once it is complete
// UTF-8 (IncrementalDecoder) and can no longer turn out to be the start of a
// stop string: a suffix that is a proper prefix of a stop string is held
// back until the next token resolves it, or until the stream ends.
//
// Not thread-safe; one per sequence.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "finmoe/tokenizer.h"

namespace finmoe {

class TextStream {
 public:
  // `tokenizer` may be null: then there is no text and `stop_strings` must be
  // empty. include_stop: a matched stop string stays in the text.
  // skip_special: special tokens (eos, template markers) add no text.
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stop_strings,
             bool include_stop = false, bool skip_special = true);

  // Adds a generated token. Returns true when the text now contains a stop
  // string: the text is cut there (before the stop string, or after it with
  // include_stop) and the stream has ended.
  bool push(int32_t token);
  // Ends the stream (stop token, length, abort): held bytes are released.
  // A stop string completed by the decoder's last bytes still cuts the text.
  void finish();

  // Text released since the last take().
  std::string take();
  // All text so far, held-back bytes included (cut at a stop string).
  const std::string& text() const { return text_; }
  bool ended() const { return ended_; }

 private:
  // Appends decoded bytes and looks for a stop string ending in them.
  bool append(const std::string& piece);
  size_t releasable() const;

  std::optional<IncrementalDecoder> decoder_;
  std::vector<std::string> stops_;
  bool include_stop_;
  std::string text_;
  size_t taken_ = 0;  // bytes of text_ already returned by take()
  bool ended_ = false;
};

}  // namespace finmoe
