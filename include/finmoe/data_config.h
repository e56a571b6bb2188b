#pragma once
// What a training or evaluation data stream reads (make_batch_source in
// finmoe/dataset.h), apart from the stream itself: no torch here, so the
// training config parses without it.
#include <cstdint>
#include <string>
#include <vector>

namespace finmoe {

// Upper bounds make_batch_source and the training config put on a batch, far
// above any run on one process, so that nothing sized by them overflows.
inline constexpr int64_t kMaxSeqLen = int64_t(1) << 24;
inline constexpr int64_t kMaxBatchSize = int64_t(1) << 16;    // also buffered rows
inline constexpr int64_t kMaxBatchTokens = int64_t(1) << 28;  // seq_len x batch_size
inline constexpr int64_t kMaxTextBlockBytes = int64_t(1) << 30;

struct DataConfig {
  // .jsonl files ({"text": ...} or an SFT record, sft_format) or plain text files
  // (one document per file, or per blank-line-separated paragraph block).
  std::vector<std::string> files;
  // "text": language-model loss on every token; "sft": `messages` rendered
  // with the chat template, loss only on assistant tokens; "auto": per record.
  std::string format = "auto";
  // Layout of an SFT record, turned into `messages` before the chat template:
  //   messages           {"messages": [{"role", "content"}, ...]}
  //   alpaca             {"instruction", "input"?, "output", "system"?}
  //   sharegpt           {"conversations": [{"from": human|gpt|system, "value"}, ...]}
  //   prompt_completion  {"prompt", "completion"}: both strings, or both message lists (TRL)
  //   auto               each record by its fields
  std::string sft_format = "auto";
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
  // Plain text files: "file" = the whole file is one document (read in blocks,
  // never whole); "paragraph" = every blank-line-separated block is a document.
  std::string text_documents = "file";
  // With shuffle: packed rows held back and drawn at random, so rows of one
  // long document spread over batches; 0 = none.
  int64_t shuffle_buffer = 64;
  // Plain text is read and tokenized in blocks of about this many bytes.
  int64_t text_block_bytes = 1 << 16;
};

}  // namespace finmoe
