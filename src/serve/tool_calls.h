#pragma once
// Tool calls read back from a model's output text, in the formats the common
// chat templates teach a model:
//   Hermes / Qwen2.5 / Qwen3:  <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> (repeated)
//   Mistral:                   [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]
//                              (also without the marker, which decoding may drop as a special token)
//   Llama-3.1 / 3.2 JSON:      {"name": ..., "parameters": {...}} as the whole reply,
//                              optionally after <|python_tag|>, several joined by ";"
// Thread safety: pure functions.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe::serve {

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text of an object (OpenAI's "arguments")
};

struct ParsedToolCalls {
  std::string content;  // the text around the calls (trimmed); "" when none
  std::vector<ToolCall> calls;
};

// Parses `text`; a call whose name is not in `tool_names` (when it is not
// empty) or whose JSON does not parse is left in `content` as text. With no
// call found, content is `text` unchanged.
ParsedToolCalls parse_tool_calls(const std::string& text, const std::vector<std::string>& tool_names);

}  // namespace finmoe::serve
