#pragma once
// Output-format constraints for instruction-following data (`finmoe data
// format`; YouZhi §3.3 "Instruction-Following Data Construction") and the
// automatic checker used both to filter data and as an evaluation metric.
// docs/data_tools.md.
//
// A constraint is a JSON object with a "type":
//   {"type": "json_keys", "keys": ["answer", ...], "exact": false}
//       the output is a JSON object (optionally in a ```json fence) with
//       every key (and, with exact, no other)
//   {"type": "markdown_table", "columns": 2, "min_rows": 1}
//       a Markdown table: a header row, a |---| separator row, at least
//       min_rows body rows, every row with `columns` cells (0: any, equal)
//   {"type": "bullets", "count": 3}
//       exactly `count` bullet lines ("- ", "* ", "• ", "1. ", "1、")
//   {"type": "length", "min_chars": 0, "max_chars": 200}
//       the trimmed output's length in code points (or min_words/max_words
//       in white-space separated words) within the bounds
// Functions are pure and thread-safe; a malformed constraint throws Error
// naming the field.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe {

struct FormatVerdict {
  bool ok = false;
  std::string reason;  // why not, e.g. "missing key 'answer'"; "" when ok
};

// Checks `output` against one constraint.
FormatVerdict check_format(const nlohmann::json& constraint, std::string_view output);

// The constraint's type, checked ("json_keys", "markdown_table", "bullets", "length").
std::string format_type(const nlohmann::json& constraint);

// Building instruction data: for an SFT record's prompt and answer, a
// constraint of `type`, the instruction sentence appended to the prompt
// (one of a few phrasings, Chinese or English like the prompt) and the
// answer rewritten to satisfy it; false when the answer cannot take that
// format (bullets and tables need at least two sentences).
struct FormattedExample {
  nlohmann::json constraint;
  std::string instruction;
  std::string answer;
};
bool make_formatted(const std::string& type, const std::string& prompt, const std::string& answer,
                    uint64_t seed, FormattedExample* out);

// The sentences of a text (split after 。！？；.!?; and at line breaks).
std::vector<std::string> split_sentences(std::string_view text);

// ---- JSONL (`finmoe data format make | check`)

// Records of SFT data ({"messages"} with a user and an assistant turn, or
// {"instruction", "input", "output"}) -> {"messages": [..., user + "\n" +
// instruction, formatted answer], "format": constraint}. The type is drawn by
// `weights` among those the answer can take; records that can take none are
// counted as unusable.
struct FormatMakeOptions {
  std::map<std::string, double> weights = {
      {"json_keys", 1}, {"markdown_table", 1}, {"bullets", 1}, {"length", 1}};
  uint64_t seed = 0;
  bool skip_bad = false;
};
struct FormatMakeResult {
  int64_t records = 0, written = 0, unusable = 0, skipped = 0;
  std::map<std::string, int64_t> per_type;
};
FormatMakeResult make_format_jsonl(const std::string& in, const std::string& out,
                                   const FormatMakeOptions& opt,
                                   const std::function<void(const std::string&)>& on_skip = {},
                                   const std::function<void(int64_t bytes)>& progress = {});

// Checks every record's response (the last assistant message, else
// `response`/`output`/`completion`, or `response_field`) against its
// "format" (or one `constraint` for all, as JSON text). Passing records go to
// `passed` unchanged, failing ones to `failed` with "format_error" (either
// path may be "").
struct FormatCheckOptions {
  std::string constraint;
  std::string response_field;
  bool skip_bad = false;
};
struct FormatCheckResult {
  int64_t checked = 0, passed = 0, skipped = 0;
  std::map<std::string, std::pair<int64_t, int64_t>> per_type;  // type -> (checked, passed)
};
FormatCheckResult check_format_jsonl(const std::string& in, const std::string& passed,
                                     const std::string& failed, const FormatCheckOptions& opt,
                                     const std::function<void(const std::string&)>& on_skip = {},
                                     const std::function<void(int64_t bytes)>& progress = {});

}  // namespace finmoe
