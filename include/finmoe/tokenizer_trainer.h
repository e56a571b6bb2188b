#pragma once
// Training a byte-level BPE tokenizer (GPT-2 / Qwen2 style) on a corpus and
// writing it as Hugging Face tokenizer files that finmoe's Tokenizer and HF
// `tokenizers` / transformers load.
//
// The pipeline is Qwen2's: text -> (optional NFC) -> special-token strings cut
// out -> Qwen2's split regex (pre_tokenizer Split, Isolated) -> each word's
// UTF-8 bytes as byte-level symbols. The 256 symbols of GPT-2's byte->unicode
// map are the first 256 ids, in code-point order (GPT-2's order). Merges are
// learned by highest pair frequency over the word-frequency dictionary; ties
// go to the smallest (left id, right id) pair. These are the rules of HF
// tokenizers' BpeTrainer (with ByteLevel.alphabet() as initial alphabet), so
// both learn the same merges from the same words. Learned tokens follow the
// bytes; special tokens take the last ids.
//
// Thread safety: a BpeTrainer is used by one thread (feed_file runs its own
// worker threads inside). Errors throw finmoe::Error naming the file (and
// line) or the option.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace finmoe {

struct BpeTrainerOptions {
  int64_t vocab_size = 8192;    // final size: 256 byte symbols + merges + special tokens
  int64_t min_frequency = 2;    // training stops at the first best pair seen fewer times
  std::vector<std::string> special_tokens;  // never split or merged; ids after the learned vocab
  bool nfc = false;             // NFC-normalize (as Qwen2); off keeps decode(encode(x)) == x for all text
  int num_threads = 0;          // pre-tokenization threads of feed_file; 0 = hardware threads
};

// A learned vocabulary: id -> token string in byte-level form ("Ġthe").
struct BpeModel {
  std::vector<std::string> vocab;                              // ids 0..; no special tokens
  std::vector<std::pair<std::string, std::string>> merges;     // in rank order
  std::vector<std::string> special_tokens;                     // id = vocab.size() + index
  int64_t size() const { return int64_t(vocab.size() + special_tokens.size()); }
};

class BpeTrainer {
 public:
  // Throws Error when vocab_size cannot hold the 256 bytes and the special tokens.
  explicit BpeTrainer(BpeTrainerOptions options);
  ~BpeTrainer();
  BpeTrainer(const BpeTrainer&) = delete;
  BpeTrainer& operator=(const BpeTrainer&) = delete;

  // Adds the words of one text (one "sequence": the pre-tokenizer never joins
  // words across two feed() calls). Throws Error when `text` is not UTF-8.
  void feed(std::string_view text);
  // Adds a file, streamed (never held whole in memory): a `.jsonl` file is one
  // record per line, {"text": ...} or {"messages": [{"content": ...}, ...]}
  // (each message's content is a text); any other file is plain text, cut
  // into ~1 MiB blocks only in front of a line whose first character is not
  // white space or a control, where Qwen2's regex never joins two words (so
  // the words are those of the whole file). `progress(bytes read)` is called
  // now and then.
  void feed_file(const std::string& path, const std::function<void(int64_t)>& progress = {});

  int64_t num_words() const;      // distinct words so far
  int64_t num_bytes() const;      // bytes of text fed so far

  // Learns the merges. `progress(merges so far)` is called now and then.
  BpeModel train(const std::function<void(int64_t)>& progress = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Which chat template (and with it which special tokens) a trained tokenizer gets.
struct TokenizerFilesOptions {
  // "chatml": <|endoftext|> <|im_start|> <|im_end|>, eos <|im_end|>, pad <|endoftext|>;
  // "llama3": <|begin_of_text|> <|end_of_text|> <|start_header_id|> <|end_header_id|>
  //           <|eot_id|>, bos <|begin_of_text|> (added by encode), eos <|eot_id|>;
  // "none":   <|endoftext|> as eos and pad, no chat_template.
  std::string chat_template = "chatml";
  std::vector<std::string> extra_special_tokens;  // after the template's own
  bool nfc = false;                               // write the NFC normalizer
};

// The special tokens a tokenizer with these options has, in id order.
// Throws Error for an unknown chat_template name.
std::vector<std::string> special_tokens_for(const TokenizerFilesOptions& options);

// Writes DIR/tokenizer.json and DIR/tokenizer_config.json (each atomically;
// DIR is created). `model.special_tokens` must equal special_tokens_for(options).
void write_bpe_tokenizer(const std::string& dir, const BpeModel& model,
                         const TokenizerFilesOptions& options);

// `finmoe tokenizer train`: feeds `files`, trains and writes DIR.
struct TokenizerTrainOptions {
  int64_t vocab_size = 8192;
  int64_t min_frequency = 2;
  TokenizerFilesOptions files;
  int num_threads = 0;
  bool show_progress = true;  // progress lines on stderr
};
struct TokenizerTrainSummary {
  int64_t bytes = 0;       // text fed
  int64_t words = 0;       // distinct pre-tokenized words
  int64_t vocab_size = 0;  // written, special tokens included
  int64_t merges = 0;
  double seconds_feed = 0, seconds_train = 0;
};
TokenizerTrainSummary train_tokenizer(const std::vector<std::string>& files, const std::string& out_dir,
                                      const TokenizerTrainOptions& options);

}  // namespace finmoe
