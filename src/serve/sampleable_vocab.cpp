#include "serve/sampleable_vocab.h"

#include <algorithm>
#include <cmath>

#include "finmoe/error.h"

namespace finmoe {

SampleableVocab::SampleableVocab(int64_t model_vocab, const Tokenizer* tokenizer)
    : model_vocab_(model_vocab), size_(model_vocab) {
  if (!tokenizer) return;
  size_ = std::min(model_vocab, tokenizer->vocab_size());
  // Ids inside the tokenizer's range without a token are rare (gaps in added
  // tokens); id_to_token throws for them.
  for (int32_t id = 0; id < size_; ++id) {
    try {
      tokenizer->id_to_token(id);
    } catch (const Error&) {
      holes_.push_back(id);
    }
  }
}

std::span<const float> SampleableVocab::apply(std::span<const float> logits,
                                              std::vector<float>& scratch) const {
  if (int64_t(logits.size()) != model_vocab_)
    throw Error("SampleableVocab: logits have " + std::to_string(logits.size()) +
                " entries, the model's vocab " + std::to_string(model_vocab_));
  const auto head = logits.first(size_t(size_));
  if (holes_.empty()) return head;
  scratch.assign(head.begin(), head.end());
  for (int32_t id : holes_) scratch[size_t(id)] = -INFINITY;
  return scratch;
}

int64_t SampleableVocab::num_masked() const {
  return model_vocab_ - size_ + int64_t(holes_.size());
}

}  // namespace finmoe
