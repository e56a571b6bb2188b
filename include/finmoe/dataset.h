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
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <torch/torch.h>

namespace finmoe {

class Tokenizer;

// One micro-batch. labels[b,t] is the target for position t (already shifted:
// the token that follows tokens[b,t]); -100 means no loss at that position
// (padding, prompt/system/user tokens of SFT data, a document's last token).
struct TrainBatch {
  torch::Tensor tokens;        // [B,T] int64
  torch::Tensor labels;        // [B,T] int64, -100 = ignored
  torch::Tensor document_ids;  // [B,T] int64 when document masking is on, else undefined
  int64_t loss_tokens() const;  // positions with a label
};

struct DataConfig {
  // .jsonl files ({"text": ...} or {"messages": [...]}) or plain text files
  // (one document per file, or per blank-line-separated paragraph block).
  std::vector<std::string> files;
  // "text": language-model loss on every token; "sft": `messages` rendered
  // with the chat template, loss only on assistant tokens; "auto": per record.
  std::string format = "auto";
  // Hybrid tuning: instruction files interleaved with `files`; each packed
  // sequence comes from the instruction stream with this probability.
  std::vector<std::string> instruction_files;
  double instruction_ratio = 0.0;
  int64_t seq_len = 512;        // T
  int64_t batch_size = 8;       // B
  bool document_mask = false;   // fill TrainBatch::document_ids
  bool shuffle = true;
  uint64_t seed = 0;
  std::string chat_template;    // override ("chatml", "llama3", ...); "" = the tokenizer's
};

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

// Builds the source a config describes. Throws Error naming the file (and
// line) for unreadable files or malformed records.
std::unique_ptr<BatchSource> make_batch_source(const DataConfig& config, const Tokenizer& tokenizer);

}  // namespace finmoe
