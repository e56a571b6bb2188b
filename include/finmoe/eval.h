#pragma once
// The task evaluation harness behind `finmoe eval MODEL --tasks ...`, modelled
// on lm-evaluation-harness (lm-eval): the same task YAML keys, request kinds,
// metric definitions and result JSON shape, so an lm-eval task ports by
// copying its YAML and pointing `dataset_path` at a local file.
//
//   TaskConfig  a task YAML (or a built-in one), validated
//   load_docs   its documents from JSONL / JSON / CSV, per split
//   build_requests  prompts (few-shot, chat template) -> loglikelihood /
//               rolling / generation requests
//   LanguageModel   answers the requests (eval_model.h: a local model
//               through finmoe's paged engine; an OpenAI-compatible URL)
//   evaluate    scores every document, aggregates per task and group, and
//               returns lm-eval's result JSON
//
// Errors: finmoe::Error naming the task file, the data file and line, and
// the field. No torch here: tensors stay behind LanguageModel.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe::eval {

// ---- templates ---------------------------------------------------------

// Renders the `{{ expr }}` templates of doc_to_text/target/choice over one
// document. A template that is a single `{{ expr }}` and nothing else yields
// the field's JSON value itself (a list of choices, an integer label);
// anything else yields a string. The built-in engine knows field paths
// (`question`, `choices.text`, `messages[0].content`), `| trim` and the
// `.strip()` method, and string/number/list literals; a fuller Jinja engine
// implements the same interface.
class TemplateEngine {
 public:
  virtual ~TemplateEngine() = default;
  // `where` names the task and key for errors ("task fin_mc, doc_to_text").
  // Throws Error when the template names a field `doc` lacks.
  virtual nlohmann::json render(const std::string& tmpl, const nlohmann::json& doc,
                                const std::string& where) const = 0;
};
std::shared_ptr<const TemplateEngine> default_template_engine();

// ---- tasks -------------------------------------------------------------

enum class OutputType { kMultipleChoice, kLoglikelihood, kLoglikelihoodRolling, kGenerateUntil };
const char* output_type_name(OutputType t);

struct MetricSpec {
  std::string name;         // acc, acc_norm, exact_match, bits_per_byte, ...
  std::string aggregation;  // mean | perplexity | weighted_perplexity | bits_per_byte
  bool higher_is_better = true;
  nlohmann::json kwargs = nlohmann::json::object();  // ignore_case, pattern, tolerance, field ...
};

// One step of a response filter pipeline (lm-eval's `filter_list`):
// `function` with its options (regex_pattern, group_select, fallback,
// mapping_dict, default_value, k).
struct FilterStep {
  std::string function;  // regex | take_first | take_first_k | majority_vote | lowercase |
                         // uppercase | remove_whitespace | map
  nlohmann::json options = nlohmann::json::object();
};

// A named pipeline: its answers are scored under metric keys "METRIC,NAME"
// (lm-eval's "exact_match,strict-match"). A task without `filter_list`
// has one pipeline, "none" = [take_first].
struct FilterPipeline {
  std::string name;
  std::vector<FilterStep> steps;
};

// A pipeline checked and compiled: each step's options read, regexes
// compiled once. Throws Error naming `where`, the pipeline and the step (an
// unknown function, a bad option, a pipeline that does not end in one
// answer per document, take_first_k/majority_vote past `repeats`).
class ResponseFilter {
 public:
  ResponseFilter(const FilterPipeline& pipeline, int64_t repeats, const std::string& where);
  const std::string& name() const;
  // One document's responses (its `repeats` generations) -> the answer the
  // metrics score. Throws Error (naming the pipeline) where lm-eval fails:
  // a group_select beyond the matches, a map without default_value.
  std::string apply(std::vector<std::string> responses) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

struct TaskConfig {
  std::string task;       // name (`task:`)
  std::string yaml_path;  // "" for a built-in task
  std::string group;      // category for aggregation (`group:`, else first `tag:`)
  std::vector<std::string> tags;
  std::string dataset_path;  // file or directory, relative to the YAML's directory
  std::string dataset_name;  // subject for directory layouts (C-Eval/CMMLU)
  std::map<std::string, std::string> data_files;  // split -> file (`dataset_kwargs.data_files`)
  std::string
      layout;  // "" | ceval | cmmlu | fineval | cflue | flare: field normalisation + defaults
  std::string split_field;  // one file holding every split, split named by this field
  std::string test_split = "test";
  std::string fewshot_split;  // "" = the test split (the document itself excluded)
  std::string description;    // prepended to every prompt (a template)
  std::string doc_to_text, doc_to_target;
  std::optional<std::string> doc_to_choice;     // a template yielding a list
  std::vector<std::string> doc_to_choice_list;  // or a literal list
  std::string target_delimiter = " ";
  std::string fewshot_delimiter = "\n\n";
  int num_fewshot = 0;
  std::string fewshot_sampler =
      "default";  // default (Python's Random(seed).sample, as lm-eval) | first_n
  uint64_t fewshot_seed = 1234;
  OutputType output_type = OutputType::kMultipleChoice;
  std::vector<MetricSpec> metrics;
  std::vector<std::string> until;  // generate_until stop strings
  int64_t max_gen_toks = 256;
  int64_t rolling_context_len = 1;      // lm-eval's context_len: 1 = disjoint windows
  std::vector<FilterPipeline> filters;  // `filter_list` (generate_until); empty = "none"
  int64_t repeats = 1;  // generations per document (greedy: the same text `repeats` times)
  // `process_docs` as declarative steps (docs/eval.md): applied to every
  // split's documents after loading and layout normalisation.
  nlohmann::json process_docs = nlohmann::json::array();
  double version = 0;
  nlohmann::json raw = nlohmann::json::object();  // the config as read, for `configs`

  bool has_choices() const { return doc_to_choice.has_value() || !doc_to_choice_list.empty(); }
};

// Parses and validates a task YAML; errors name the file and key.
TaskConfig parse_task_yaml(const std::string& path);
TaskConfig parse_task_yaml_text(const std::string& text, const std::string& source,
                                const std::string& base_dir);
// The tasks named by `spec` entries: a built-in task or group name
// (finmoe_fin, finmoe_fin_mc, ...), a YAML file, or a directory of YAMLs
// (every task in it). `data_dir` resolves built-in tasks' data (the demo
// cache). Unknown names throw Error listing the known ones.
std::vector<TaskConfig> resolve_tasks(const std::vector<std::string>& spec,
                                      const std::string& data_dir);
// Names and one-line descriptions of the built-in tasks and groups.
std::vector<std::pair<std::string, std::string>> builtin_task_names();

// ---- documents ---------------------------------------------------------

struct Doc {
  nlohmann::json fields;  // one record, after layout normalisation
  std::string where;      // "file:line" for errors and sample logs
};

struct LoadOptions {
  bool skip_bad = false;                         // skip malformed lines instead of failing
  std::function<void(const std::string&)> warn;  // told about each skipped line
};
// Reads one data file: .jsonl (one object per line), .json (an array of
// objects, or an object holding one array), .csv (RFC 4180, header row).
// Errors name the file, line and problem.
std::vector<Doc> read_records(const std::string& path, const LoadOptions& options = {});
// The documents of `split` for a task (its data_files, directory layout or
// split field), normalised by its layout.
std::vector<Doc> load_docs(const TaskConfig& task, const std::string& split,
                           const LoadOptions& options = {});

// `process_docs` as data instead of lm-eval's Python function: a list of
// steps, each a mapping with one key (docs/eval.md "process_docs"):
//   set: {FIELD: TEMPLATE}   rename: {OLD: NEW}   drop: [FIELD]
//   keep: {field: F, equals|not_equals|in|not_in|matches: V}
//   replace: {field: F, pattern: REGEX, with: TEXT}   strip: [FIELD]
// check_process_docs throws Error naming `where` and the step;
// apply_process_docs applies the steps in order (documents that fail a
// `keep` are dropped) and its errors name the document's file and line.
void check_process_docs(const nlohmann::json& steps, const std::string& where);
std::vector<Doc> apply_process_docs(const nlohmann::json& steps, std::vector<Doc> docs,
                                    const std::string& task);

// ---- requests ----------------------------------------------------------

struct Request {
  // loglikelihood: context + continuation; rolling: continuation only (the
  // whole text); generate_until: context, until, max_gen_toks.
  std::string context, continuation;
  std::vector<std::string> until;
  int64_t max_gen_toks = 0;
};

struct LlResult {
  double logprob = 0;      // sum of the continuation tokens' log-probabilities
  bool is_greedy = false;  // every continuation token was the argmax
  int64_t tokens = 0;      // continuation tokens scored
};

struct ChatOptions {
  bool apply_chat_template = false;
  bool fewshot_as_multiturn = true;  // lm-eval's --fewshot_as_multiturn
  std::string system;                // --system
  // Renders role/content messages to the model's prompt; set by the caller
  // (the model's tokenizer template) when apply_chat_template.
  std::function<std::string(const std::vector<std::pair<std::string, std::string>>&)> render;
};

// A model answering lm-eval's three request kinds. Implementations batch.
class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual std::string name() const = 0;
  // `progress(done)` is called with the cumulative number of finished requests.
  virtual std::vector<LlResult> loglikelihood(const std::vector<Request>& requests,
                                              const std::function<void(int64_t)>& progress) = 0;
  // Whole-text log-likelihood in windows of the model's context (lm-eval's
  // get_rolling_token_windows with `context_len`).
  virtual std::vector<LlResult> loglikelihood_rolling(
      const std::vector<Request>& requests, int64_t context_len,
      const std::function<void(int64_t)>& progress) = 0;
  virtual std::vector<std::string> generate_until(const std::vector<Request>& requests,
                                                  const std::function<void(int64_t)>& progress) = 0;
};

// lm-eval's rolling windows over `tokens` (utils.get_rolling_token_windows
// followed by make_disjoint_window): each pair is (context, continuation);
// every token is predicted exactly once, the first from `prefix_token`.
std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> rolling_windows(
    const std::vector<int32_t>& tokens, int32_t prefix_token, int64_t max_seq_len,
    int64_t context_len);

// ---- scoring -----------------------------------------------------------

// lm-eval's multiple-choice metrics for one document.
struct ChoiceScores {
  double acc = 0, acc_norm = 0, acc_bytes = 0;
  int64_t pred = 0, pred_norm = 0;
};
// acc: argmax of the log-likelihoods; acc_norm: argmax of ll / len(choice)
// in Unicode code points (Python's len); acc_bytes: / UTF-8 bytes.
ChoiceScores score_choices(const std::vector<double>& lls, const std::vector<std::string>& choices,
                           int64_t gold);
// A generate_until metric (exact_match, regex_match, numeric, json_field)
// of one prediction against one reference.
double score_generation(const MetricSpec& metric, const std::string& prediction,
                        const std::string& reference);
// Words of a text as lm-eval counts them: len(re.split(r"\s+", text)).
int64_t count_words(const std::string& text);

// ---- running -----------------------------------------------------------

struct EvalOptions {
  std::optional<int> num_fewshot;  // overrides every task's num_fewshot
  std::optional<double> limit;     // < 1: a fraction of each task's docs; else a count
  bool log_samples = false;
  ChatOptions chat;
  LoadOptions load;
  std::string model_name;  // for the result JSON
  int64_t batch_size = 16;
};

struct TaskOutput {
  std::string task;
  nlohmann::json samples = nlohmann::json::array();  // per-sample records (log_samples)
};

struct EvalOutput {
  nlohmann::json results;  // lm-eval's shape: results, groups, configs, versions, n-shot, ...
  std::vector<TaskOutput> tasks;
};

EvalOutput evaluate(const std::vector<TaskConfig>& tasks, LanguageModel& model,
                    const EvalOptions& options);

// ---- reports -----------------------------------------------------------

// A Markdown table: one section per group (category), a row per task and
// metric, the group's aggregate last.
std::string markdown_report(const nlohmann::json& results);
// Side by side: every (task, metric) in either file, values A and B and B - A.
std::string compare_report(const nlohmann::json& a, const nlohmann::json& b,
                           const std::string& name_a, const std::string& name_b);
// Writes OUT/results.json, OUT/results.md and (log_samples) OUT/samples_TASK.jsonl,
// each atomically. Returns the paths written.
std::vector<std::string> write_outputs(const EvalOutput& out, const std::string& dir);

}  // namespace finmoe::eval
