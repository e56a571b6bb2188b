#pragma once
// The size of a training corpus in packed rows, for epoch-based step counts
// (TrainConfig::epochs).
#include <cstdint>

#include "finmoe/data_config.h"
#include "finmoe/tokenizer.h"

namespace finmoe {

// Rows of seq_len + 1 tokens that one pass over `config`'s files packs, in
// the order of the stream's first epoch (a row that runs into the next pass
// counts). Tokenizes every document once. Throws Error for a config that
// mixes two streams (instruction_ratio in (0, 1)) and as make_batch_source.
int64_t rows_per_epoch(const DataConfig& config, const Tokenizer& tokenizer);

}  // namespace finmoe
