#pragma once
// Model merging: `finmoe merge RECIPE.yaml OUT` (docs/merging.md).
//
// A recipe is mergekit's YAML format: merge_method, base_model, models (each
// with parameters) or slices (layer ranges), global parameters, dtype,
// out_dtype, tokenizer_source / tokenizer, chat_template. A parameter is a scalar, a gradient (a list of
// numbers interpolated over a slice's layers) or a list of {filter, value}
// entries matched as substrings of the tensor name (the first match wins; no
// filter matches everything). Precedence: the model's own parameters, then the
// slice's, then the global ones, then the method's default.
//
// The merge streams: each input directory is memory-mapped, and for every
// output tensor the inputs' copies are read, merged in float32 (float64 when
// dtype is float64) and written through CheckpointWriter, so memory holds the
// tensors of one parameter, never a model. OUT is built under a temporary name
// beside it and renamed when complete; on any error nothing is left.
//
// An input directory may also be an ESFT delta (docs/formats/esft.md): it
// stands for its base model with the delta's trained tensors.
//
// Errors: finmoe::Error naming the recipe key, model, tensor or file.
// Thread safety: free functions, no shared state.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace finmoe {

// One parameter's setting as the recipe writes it.
struct MergeParam {
  enum class Kind { Scalar, Gradient, Filtered } kind = Kind::Scalar;
  std::string scalar;                 // Scalar: the YAML scalar as written
  std::vector<std::string> gradient;  // Gradient: the list's scalars
  // Filtered: (filter, value) in order; an empty filter (or "*") matches every tensor
  std::vector<std::pair<std::string, MergeParam>> filtered;

  static MergeParam number(double v);
  static MergeParam boolean(bool v);
};
using MergeParams = std::map<std::string, MergeParam>;

struct MergeSource {
  std::string model;           // a directory, as written in the recipe
  int64_t layer_begin = 0;     // slices: [layer_begin, layer_end) of that model
  int64_t layer_end = -1;      // -1: every layer (a `models:` entry)
  MergeParams parameters;
};

struct MergeSlice {
  std::vector<MergeSource> sources;
  std::string base_model;  // "" = the recipe's
  MergeParams parameters;
};

struct MergeRecipe {
  std::string merge_method;
  std::string base_model;   // "" = none
  bool uses_slices = false; // `slices:` (else `models:`, one slice over every layer)
  std::vector<MergeSlice> slices;
  MergeParams parameters;   // global
  MergeParams module_parameters;  // `modules.default.parameters`: after the slice's, before the global
  std::string dtype;        // inputs are rounded to it before merging; "" = as stored
  std::string out_dtype;    // "" = dtype, else each tensor's dtype in the base/first model
  // "" | "base" | "union" | a model: OUT's vocabulary. With one, every
  // model's embed_tokens / lm_head rows are mapped to OUT's token ids by token
  // string before merging (as mergekit); "" keeps the rows as they are.
  std::string tokenizer_source;
  // mergekit's `tokenizer:` block (then tokenizer_source is its `source`,
  // default union): per-token row sources and padding of the vocabulary.
  struct TokenSource {
    std::string kind;       // "" (none given) | "model" | "model_token" | "zero"
    std::string model;      // model / model_token
    std::string token;      // model_token: the source token's string, or
    int64_t token_id = -1;  //   its id in that model
    bool force = false;     // every model's row is the source, even where it has the token
  };
  std::vector<std::pair<std::string, TokenSource>> tokens;  // in recipe order
  int64_t pad_to_multiple_of = 0;  // 0 = none
  bool tokenizer_block = false;    // the recipe has `tokenizer:`
  // "" | "auto" (the most common template of the models) | a built-in name
  // (chatml, llama3, alpaca, mistral) | a Jinja template: OUT's chat_template.
  std::string chat_template;
  std::string text;         // the recipe's YAML (for the model card)
  std::string source;       // the recipe file, for messages

  // finmoe's own (not in YAML): rows of the embedding tensors (embed_tokens,
  // lm_head) taken unmerged from `keep_rows_model` (the chat-vector preset's
  // special tokens). Row ids outside a tensor are an error.
  std::string keep_rows_model;
  std::vector<int64_t> keep_rows;
  // finmoe's own: false = tokenizer_source only chooses whose tokenizer files
  // OUT gets, rows are not mapped (the chat-vector preset).
  bool map_vocabulary = true;
};

// The methods finmoe implements (mergekit names plus FuseChat's "varm").
const std::vector<std::string>& merge_method_names();

// Parses a recipe. Model paths stay as written; load_merge_recipe resolves
// relative ones against the current directory, else the recipe's directory.
// Throws Error "SOURCE: ..." naming the key (an unknown or unsupported key,
// a wrong type, an unknown method, a parameter the method does not take).
MergeRecipe parse_merge_recipe(const std::string& yaml, const std::string& source);
MergeRecipe load_merge_recipe(const std::string& path);

struct MergeOptions {
  uint64_t seed = 0;                          // dare_*, della*: the keep draws
  size_t max_shard_bytes = size_t(5) << 30;   // output shard size limit
  bool progress = true;                       // a progress line on stderr
  // Elementwise methods (linear, passthrough, task_arithmetic, dare_*) merge a
  // tensor bigger than this a block of rows at a time: memory then holds the
  // output tensor and one block of each input, not every input whole. The
  // fused path merges and writes every tensor in pieces of this many elements
  // (its output waits in a ring of 12 pieces, never a whole tensor), and the
  // reader threads of `io` read this many elements of every input at a time.
  int64_t chunk_elements = int64_t(1) << 22;  // float32 blocks of 16 MiB: reused from the heap
  // linear, task_arithmetic and ties on bfloat16/float16/float32 through one
  // fused pass per tensor (bit-identical to the libtorch path, which false forces)
  bool fused = true;
  // How the fused path reads its inputs. kMmap: through the mapping (fastest
  // from the page cache: no copy); kRead: reader threads read chunks of every
  // input ahead of the merge into buffers with pread (fastest from the disk:
  // the merge never waits in a page fault); kDirect: as kRead past the page
  // cache (O_DIRECT: less CPU and nothing evicted; an Error naming the file
  // where the file system refuses it); kAuto: kMmap when at least half of
  // the input bytes are in the page cache, else kRead. (TIES with density < 1
  // selects over whole tensors: it reads through the mapping either way.)
  enum class Io { kAuto, kMmap, kRead, kDirect };
  Io io = Io::kAuto;
};

struct MergeReport {
  int64_t tensors = 0;
  uint64_t bytes_read = 0;     // input tensor bytes read
  uint64_t bytes_written = 0;
  size_t num_shards = 0;
  double seconds = 0.0;
  uint64_t bytes_streamed = 0; // of bytes_read, by reader threads (MergeOptions::io)
};

// Merges into OUT (which must not exist): the weights, config.json (of the
// base model, else the first model; num_hidden_layers from the slices,
// torch_dtype from out_dtype, vocab_size from a mapped vocabulary), the
// tokenizer files and generation_config.json of the tokenizer source
// (default: base, else the first model; with a mapped vocabulary its merged
// tokenizer.json / tokenizer_config.json), the chat template asked for,
// mergekit_config.yml (the recipe) and README.md (a model card with it).
// Checks before writing: same model_type, the same tensors with the same
// shapes in every input (vocabulary sizes must match unless rows are mapped
// by a tokenizer source), parameter ranges (density in (0, 1], weights not
// summing to 0 with normalize).
MergeReport merge_models(const MergeRecipe& recipe, const std::string& out_dir,
                         const MergeOptions& options = {});

// The chat-vector recipe (Huang et al.; the finance CPT + instruction-vector
// recipe): OUT = DOMAIN + instruct_scale*(INSTRUCT - BASE), in general
// BASE + domain_scale*(DOMAIN - BASE) + instruct_scale*(INSTRUCT - BASE), with
// the instruct model's tokenizer. keep_special_rows: the embedding and output
// rows of the instruct tokenizer's special tokens (tokenizer.json added_tokens
// with "special": true) are the instruct model's own.
struct ChatVectorOptions {
  std::string base, domain, instruct;
  double domain_scale = 1.0;
  double instruct_scale = 1.0;
  bool keep_special_rows = false;
};
MergeRecipe chat_vector_recipe(const ChatVectorOptions& options);

// ---- `finmoe merge --moe`: an MoE from dense fine-tunes of one base ----------------
//
// mergekit-moe's YAML: base_model, experts (each a source_model with
// positive_prompts and optional negative_prompts), gate_mode, dtype,
// experts_per_token, shared_experts (qwen2_moe: at most one), architecture;
// plus finmoe's shared_weights (docs/merging.md). Each expert model's FFN
// becomes one routed expert of every layer; attention, embeddings and norms
// are the base's (shared_weights: base) or the mean of the expert models'
// (average); router row e of layer l is expert e's gate vector at layer l:
//   hidden:      mean over e's prompts of the hidden state entering layer l
//                at the prompt's last token (negative prompts' mean
//                subtracted), normalised to unit length;
//   hidden_avg:  the same with each prompt's mean over its tokens;
//   cheap_embed: the normalised sum of the prompts' token embeddings (the
//                negative prompts' normalised sum subtracted, normalised
//                again), the same row in every layer;
//   random:      N(0, 1) entries (from MergeOptions::seed).
// Prompts are tokenized with the base's tokenizer, its bos token first.
struct MoeExpert {
  std::string source_model;
  std::vector<std::string> positive_prompts, negative_prompts;
};
struct MoeRecipe {
  std::string base_model;
  std::vector<MoeExpert> experts;
  std::vector<MoeExpert> shared_experts;  // qwen2_moe: its FFN is the shared expert
  std::string gate_mode = "hidden";       // hidden | hidden_avg | cheap_embed | random
  std::string architecture;               // mixtral | qwen2_moe; "" = qwen2_moe with a shared expert, else mixtral
  std::string dtype;                      // "" = the base's
  int64_t experts_per_token = 2;
  // Attention, embeddings, norms: "base" | "average" (of the distinct expert
  // models) | "merge": a mergekit method over the base and the distinct expert
  // models, `shared_weights: {merge_method: M, parameters: {...}}`, whose YAML
  // is shared_merge.
  std::string shared_weights = "base";
  std::string shared_merge;
  std::string text;    // the YAML, for the model card
  std::string source;  // the recipe file, for messages
};
// Throws Error "SOURCE:LINE: KEY: ..." for unknown keys, wrong types, a bad
// gate_mode or architecture, missing prompts where the gate mode needs them.
MoeRecipe parse_moe_recipe(const std::string& yaml, const std::string& source);
MoeRecipe load_moe_recipe(const std::string& path);

// Builds the MoE into OUT (which must not exist), atomically: weights,
// config.json (the base's turned into the output architecture), the base's
// tokenizer files, mergekit_moe_config.yml and README.md. Checks before
// writing: one dense model_type (llama, mistral, qwen2) and the same tensor
// shapes in every model.
MergeReport merge_moe(const MoeRecipe& recipe, const std::string& out_dir,
                      const MergeOptions& options = {});

}  // namespace finmoe
