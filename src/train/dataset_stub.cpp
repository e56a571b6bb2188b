// make_batch_source before the file-reading data pipeline exists: a clear
// error instead of a link failure. Trainer users can pass their own source
// (TrainerHooks::make_source).
#include "finmoe/dataset.h"
#include "finmoe/error.h"

namespace finmoe {

std::unique_ptr<BatchSource> make_batch_source(const DataConfig& config, const Tokenizer&) {
  throw Error("reading training data files (" +
              (config.files.empty() ? std::string("data.files") : config.files.front()) +
              ") is not supported by this build");
}

}  // namespace finmoe
