// finmoe tokenizer train
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/tokenizer_trainer.h"

namespace finmoe::cli {

void add_tokenizer(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("tokenizer", "Tokenizer tools: train a byte-level BPE tokenizer");
  c->require_subcommand(1);
  auto* t = c->add_subcommand(
      "train", "Train a byte-level BPE tokenizer (Qwen2-style pre-tokenizer) on text files and "
               "write tokenizer.json + tokenizer_config.json");
  static std::vector<std::string> inputs;
  static TokenizerTrainOptions opt;
  t->add_option("FILES", inputs,
                "training text: .jsonl ({\"text\"} or {\"messages\"} per line) or plain text files; "
                "the last argument is OUT_DIR")
      ->required()
      ->expected(2, -1);
  t->add_option("--vocab-size", opt.vocab_size,
                "vocabulary size, 256 byte symbols and special tokens included")
      ->capture_default_str();
  t->add_option("--min-frequency", opt.min_frequency, "stop when the best pair is seen fewer times")
      ->capture_default_str();
  t->add_option("--special-tokens", opt.files.extra_special_tokens,
                "special tokens added after the chat template's own (comma-separated or repeated)")
      ->delimiter(',')
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  t->add_option("--chat-template", opt.files.chat_template,
                "chatml | llama3 | none: the chat template and its special tokens")
      ->capture_default_str();
  t->add_flag("--nfc", opt.files.nfc,
              "NFC-normalize text (as Qwen2); off keeps decode(encode(x)) == x for any text");
  t->add_option("--threads", opt.num_threads, "pre-tokenization threads (0 = all cores)")
      ->capture_default_str();
  t->callback([&run] {
    run = [] {
      std::vector<std::string> files(inputs.begin(), inputs.end() - 1);
      const std::string out = inputs.back();
      TokenizerTrainSummary s = train_tokenizer(files, out, opt);
      std::printf("wrote %s/tokenizer.json: vocab %lld (%lld merges), %lld distinct words from %.1f MB; "
                  "reading %.1f s, merges %.1f s\n",
                  out.c_str(), static_cast<long long>(s.vocab_size), static_cast<long long>(s.merges),
                  static_cast<long long>(s.words), double(s.bytes) / 1e6, s.seconds_feed,
                  s.seconds_train);
      return 0;
    };
  });
}

}  // namespace finmoe::cli
