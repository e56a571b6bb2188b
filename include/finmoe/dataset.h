#pragma once
// Training data: token batches from text, instruction (SFT) and mixed
// ("hybrid tuning", FinMoE §4.2) corpora.
//
// A BatchSource is an endless, deterministic stream (epochs wrap around, the
// order is a function of the seed) whose position can be saved and restored,
// so a resumed run sees exactly the batches an uninterrupted run would.
//
// Thread safety: a BatchSource is used by one thread.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <torch/torch.h>

#include "finmoe/data_config.h"
#include "finmoe/tokenizer.h"

namespace finmoe {

// One micro-batch. labels[b,t] is the target for position t (already shifted:
// the token that follows tokens[b,t]); -100 means no loss at that position
// (padding, prompt/system/user tokens of SFT data, a document's last token).
struct TrainBatch {
  torch::Tensor tokens;        // [B,T] int64
  torch::Tensor labels;        // [B,T] int64, -100 = ignored
  torch::Tensor document_ids;  // [B,T] int64 when document masking is on, else undefined
  torch::Tensor padding;       // [B,T] bool, true = a pad token filling a row's end; undefined = none
  int64_t loss_tokens() const;  // positions with a label
};

// One conversation tokenized for SFT: the chat template's rendering, with a
// loss mask over the assistant turns (their content and end-of-turn token,
// e.g. <|im_end|> / <|eot_id|>; never the role header). The text before each
// assistant turn is tokenized apart from the turn, as it is at inference
// (prompt, then generated tokens); for ordinary content this equals encoding
// the whole rendering. Throws Error for an unknown role, or a template whose
// rendering of the conversation does not start with its rendering of the
// messages before an assistant turn (+ generation prompt).
struct ChatTokens {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // per id: 1 = an assistant token
};
ChatTokens tokenize_chat(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                         std::optional<ChatTemplateKind> kind = std::nullopt);

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual TrainBatch next() = 0;
  // The position in the stream, as JSON (stored in training checkpoints).
  virtual nlohmann::json state() const = 0;
  // Continues from a state() of a source built with the same config and files;
  // throws Error naming what differs otherwise.
  virtual void restore(const nlohmann::json& state) = 0;
};

// Builds the source a config describes; `tokenizer` must outlive it. Every
// file is scanned once here (records checked, byte offsets indexed; no text
// is kept). Throws Error naming the file (and line) for unreadable files or
// malformed records, and for a corpus without documents.
std::unique_ptr<BatchSource> make_batch_source(const DataConfig& config, const Tokenizer& tokenizer);

}  // namespace finmoe
