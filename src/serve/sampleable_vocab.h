#pragma once
// The token ids a sampler may pick: those the tokenizer can turn into text.
// A model's vocab_size is often padded past its tokenizer (Qwen2/3: 151,936
// rows, 151,669 tokens); the padded ids are legal model outputs with no text
// (HF decodes them to ""), so the Engine and the Generator mask them (logit
// -inf) instead of emitting tokens no client can read.
//
// Immutable after construction; safe to share between threads.
#include <cstdint>
#include <span>
#include <vector>

#include "finmoe/tokenizer.h"

namespace finmoe {

class SampleableVocab {
 public:
  // Ids [0, model_vocab) that `tokenizer` has a token for; all of them when
  // tokenizer is null.
  SampleableVocab(int64_t model_vocab, const Tokenizer* tokenizer);

  // The logits to sample from: the first size() of `logits` ([model_vocab]),
  // through `scratch` with the ids below size() that have no token set to
  // -inf when there are any.
  std::span<const float> apply(std::span<const float> logits, std::vector<float>& scratch) const;

  int64_t size() const { return size_; }  // every sampleable id is below it
  int64_t num_masked() const;             // ids of [0, model_vocab) never sampled

 private:
  int64_t model_vocab_;
  int64_t size_;
  std::vector<int32_t> holes_;  // ids below size_ without a token
};

}  // namespace finmoe
