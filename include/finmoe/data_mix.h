#pragma once
// The hybrid-tuning stream (`finmoe data mix`; FinMoE §4.2): pretraining
// text and instruction data in one shuffled JSONL, either all of both
// shuffled together (the union, as FinMoE does) or sampled to a share of text
// records. docs/data_tools.md.
//
// Inputs are indexed (file and byte offset of every record: 16 bytes each),
// never loaded whole; the output is written by seeking to each chosen record,
// which is copied byte for byte. Text records need a string "text", SFT
// records a non-empty "messages" array.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace finmoe {

struct MixOptions {
  std::vector<std::string> text_files;  // pretraining text JSONL
  std::vector<std::string> sft_files;   // instruction JSONL
  double text_share = -1;               // < 0: the union; else the share of text records in [0, 1]
  int64_t total = 0;  // with text_share: records out; 0: as many as the pools allow without repeats
  uint64_t seed = 0;
  bool skip_bad = false;
};

struct MixResult {
  int64_t text_in = 0, sft_in = 0, text_out = 0, sft_out = 0, skipped = 0;
};

MixResult mix_jsonl(const std::string& out, const MixOptions& opt,
                    const std::function<void(const std::string&)>& on_skip = {},
                    const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace finmoe
