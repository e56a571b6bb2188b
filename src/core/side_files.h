#pragma once
// The files of a model directory besides its weights: config, generation
// defaults, tokenizer and chat template. Internal (core layer: no libtorch).
#include <string>

namespace finmoe {

// Copies each of those files that `from` has into `to` (atomically; `to` must
// exist): generation_config.json, tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, vocab.json, merges.txt, tokenizer.model,
// chat_template.jinja, chat_template.json, and when with_config config.json
// and the HF modeling code its auto_map names (core/hf_remote_code.h).
void copy_side_files(const std::string& from, const std::string& to, bool with_config);

}  // namespace finmoe
