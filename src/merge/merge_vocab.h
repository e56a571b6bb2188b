#pragma once
// Internal to the merge layer: the output vocabulary of a merge with a
// tokenizer source (union, base or a model), each model's rows mapped to it by
// token string, and the chat template a recipe asks for (docs/merging.md).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/merge.h"

namespace finmoe {

// One model's vocabulary: token string -> row, for the tokens of its
// tokenizer.json (model.vocab and added_tokens) whose id is below its
// config.json vocab_size.
struct ModelVocab {
  std::unordered_map<std::string, int64_t> ids;
};

struct OutputVocab {
  std::vector<std::string> tokens;  // OUT's id -> token string
  int64_t rows = 0;                 // rows of OUT's vocabulary tensors (pad_to_multiple_of)
  std::map<std::string, ModelVocab> models;  // every input by its recipe name
  nlohmann::ordered_json tokenizer_json;     // OUT's tokenizer.json
  nlohmann::ordered_json tokenizer_config;   // OUT's tokenizer_config.json (null: none)
  std::string files_from;                    // the directory whose other tokenizer files OUT gets
};

// The output vocabulary of recipe.tokenizer_source (and recipe.tokens), as
// mergekit builds it: `base` the base model's tokenizer (the first model's
// without a base); a model its tokenizer; `union` the base's tokenizer with
// every token of the other models it lacks appended as added tokens (the
// models in `models` order, each's tokens by id; a token's added-token
// settings from the first model that has it). `models` holds every input,
// base first. A model without tokenizer.json has the base's vocabulary.
// Throws Error naming the file for a tokenizer it cannot read.
OutputVocab build_output_vocab(const MergeRecipe& recipe, const std::string& base,
                               const std::vector<std::string>& models);

// How one vocabulary tensor's rows are built for each input of a job.
struct RowMap {
  int64_t vocab = 0;  // OUT's tokens
  int64_t rows = 0;   // with padding: rows past `vocab` are the mean of the first `vocab`
  // per input of the job: OUT id -> that input's row, -1 where it takes the default
  std::vector<std::vector<int64_t>> own;
  struct Default {
    int64_t id = 0;
    std::vector<std::pair<int, int64_t>> mean_of;  // (input, row); empty: a zero row
  };
  std::vector<Default> defaults;
};

// The rows of a job whose inputs are `inputs` (recipe names; `base` the
// recipe's base model or ""), as mergekit's PermutedVocabulary assigns them:
// a token every input has keeps each input's own row; otherwise (or when its
// `tokens` entry says force) the inputs lacking it take a default row: the
// `tokens` entry's source if there is one, else the row of the only input
// that has it, the base's when the base is an input and has it, the mean of
// the inputs that have it, or zero when none has it. `tensor` and
// `tensor_rows` (each input's row count) are for messages and checks.
RowMap build_row_map(const MergeRecipe& recipe, const OutputVocab& vocab,
                     const std::vector<std::string>& inputs, const std::string& base,
                     const std::string& tensor, const std::vector<int64_t>& tensor_rows);

// Whether the row maps are all the identity over [0, rows) with no padding:
// then remapping changes nothing.
bool row_map_is_identity(const RowMap& m, const std::vector<int64_t>& tensor_rows);

// recipe.chat_template resolved: "auto" the template most models have (the
// first among the most frequent, std::nullopt when none has one); a built-in
// name its template; else the Jinja text itself.
std::optional<std::string> resolve_chat_template(const MergeRecipe& recipe,
                                                 const std::vector<std::string>& models);

// The built-in templates by name (chatml, llama3, alpaca, mistral); nullptr
// for another name.
const char* builtin_chat_template(const std::string& name);

// Checks a recipe's chat_template value the way mergekit does: "auto", a
// built-in name, or a Jinja text (at least 20 characters with a '{').
// Throws Error naming `where`.
void check_chat_template(const std::string& value, const std::string& where);

}  // namespace finmoe
