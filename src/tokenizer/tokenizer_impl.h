#pragma once
// Tokenizer::Impl: the loaded pipeline (added tokens -> normalizer ->
// pre-tokenizer -> BPE; decoder). Shared by tokenizer.cpp, incremental_decoder.cpp
// and chat_template.cpp. Immutable after loading (Bpe guards its own cache).
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "finmoe/tokenizer.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pre_tokenizer.h"

namespace finmoe {

struct Tokenizer::Impl {
  std::string file;  // tokenizer.json path, for messages
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tok::Decoder> decoder;
  std::unique_ptr<tok::Bpe> bpe;
  std::vector<tok::AddedToken> added;
  tok::Vocab added_ids;                   // content -> id
  tok::AddedTokenMatcher raw_matcher;     // normalized == false, matched in the input
  tok::AddedTokenMatcher norm_matcher;    // normalized == true, matched after the normalizer
  std::vector<std::string> id_to_token;   // "" where no token has the id
  std::vector<uint8_t> special;           // per id
  TokenizerConfig config;
  std::vector<int32_t> prefix_ids, suffix_ids;  // added by encode(add_special_tokens=true)

  void encode_into(std::string_view text, std::vector<int32_t>& ids) const;
  // The decoder's text without the clean-up pass (invalid UTF-8 -> U+FFFD).
  std::string decode_raw(std::span<const int32_t> ids, bool skip_special) const;
};

// HF's clean_up_tokenization: " ." -> "." etc.
std::string clean_up_tokenization(std::string s);

}  // namespace finmoe
