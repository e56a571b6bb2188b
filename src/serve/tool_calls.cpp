#include "serve/tool_calls.h"

#include <algorithm>

namespace finmoe::serve {

namespace {

using json = nlohmann::json;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && is_space(s[b])) ++b;
  while (e > b && is_space(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// End (one past) of the JSON object or array starting at s[start], or npos.
size_t json_end(const std::string& s, size_t start) {
  if (start >= s.size() || (s[start] != '{' && s[start] != '[')) return std::string::npos;
  int depth = 0;
  bool in_str = false;
  for (size_t i = start; i < s.size(); ++i) {
    const char c = s[i];
    if (in_str) {
      if (c == '\\') ++i;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '{' || c == '[') ++depth;
    else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string::npos;
}

bool known(const std::string& name, const std::vector<std::string>& names) {
  return names.empty() || std::find(names.begin(), names.end(), name) != names.end();
}

// {"name": ..., "arguments"|"parameters": {...}} -> a call; false if it is not one.
bool to_call(const json& j, const std::vector<std::string>& names, ToolCall& out) {
  if (!j.is_object()) return false;
  auto n = j.find("name");
  if (n == j.end() || !n->is_string() || !known(n->get<std::string>(), names)) return false;
  json args = json::object();
  if (auto a = j.find("arguments"); a != j.end()) args = *a;
  else if (auto p = j.find("parameters"); p != j.end()) args = *p;
  if (args.is_string()) {  // already JSON text
    json parsed = json::parse(args.get<std::string>(), nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) return false;
    args = parsed;
  }
  if (!args.is_object()) return false;
  out.name = n->get<std::string>();
  out.arguments = args.dump(-1, ' ', false, json::error_handler_t::replace);
  return true;
}

json parse_at(const std::string& s, size_t start, size_t& end) {
  end = json_end(s, start);
  if (end == std::string::npos) return json(json::value_t::discarded);
  return json::parse(s.begin() + long(start), s.begin() + long(end), nullptr, false);
}

// <tool_call>{...}</tool_call> blocks.
bool parse_hermes(const std::string& text, const std::vector<std::string>& names, ParsedToolCalls& out) {
  const std::string open = "<tool_call>", close = "</tool_call>";
  size_t first = text.find(open);
  if (first == std::string::npos) return false;
  std::string rest;
  size_t pos = 0;
  while (true) {
    size_t o = text.find(open, pos);
    if (o == std::string::npos) break;
    size_t b = o + open.size();
    while (b < text.size() && is_space(text[b])) ++b;
    size_t end;
    json j = parse_at(text, b, end);
    ToolCall call;
    if (j.is_discarded() || !to_call(j, names, call)) break;
    size_t e = end;
    while (e < text.size() && is_space(text[e])) ++e;
    if (text.compare(e, close.size(), close) == 0) e += close.size();
    rest += text.substr(pos, o - pos);
    out.calls.push_back(std::move(call));
    pos = e;
  }
  if (out.calls.empty()) return false;
  rest += text.substr(pos);
  out.content = trim(rest);
  return true;
}

// [TOOL_CALLS] [{...}, ...] (or a bare [{"name"...}] reply).
bool parse_mistral(const std::string& text, const std::vector<std::string>& names, ParsedToolCalls& out) {
  const std::string marker = "[TOOL_CALLS]";
  size_t m = text.find(marker);
  size_t b;
  std::string before;
  if (m != std::string::npos) {
    before = text.substr(0, m);
    b = m + marker.size();
  } else {
    b = 0;
  }
  while (b < text.size() && is_space(text[b])) ++b;
  if (b >= text.size() || text[b] != '[') return false;
  if (m == std::string::npos && text.compare(b, 2, "[{") != 0) return false;
  size_t end;
  json j = parse_at(text, b, end);
  if (j.is_discarded() || !j.is_array() || j.empty()) return false;
  std::vector<ToolCall> calls;
  for (const auto& e : j) {
    ToolCall c;
    if (!to_call(e, names, c)) return false;
    calls.push_back(std::move(c));
  }
  out.calls = std::move(calls);
  out.content = trim(before + text.substr(end));
  return true;
}

// Llama-3.1 JSON: the whole reply is {"name", "parameters"} (";"-separated for several).
bool parse_llama_json(const std::string& text, const std::vector<std::string>& names, ParsedToolCalls& out) {
  std::string t = trim(text);
  const std::string tag = "<|python_tag|>";
  if (t.starts_with(tag)) t = trim(t.substr(tag.size()));
  if (t.empty() || t[0] != '{') return false;
  std::vector<ToolCall> calls;
  size_t pos = 0;
  while (pos < t.size()) {
    size_t end;
    json j = parse_at(t, pos, end);
    ToolCall c;
    if (j.is_discarded() || !to_call(j, names, c)) return false;
    calls.push_back(std::move(c));
    pos = end;
    while (pos < t.size() && (is_space(t[pos]) || t[pos] == ';')) ++pos;
    if (pos < t.size() && t[pos] != '{') return false;
  }
  out.calls = std::move(calls);
  out.content.clear();
  return true;
}

}  // namespace

ParsedToolCalls parse_tool_calls(const std::string& text, const std::vector<std::string>& tool_names) {
  ParsedToolCalls out;
  if (parse_hermes(text, tool_names, out)) return out;
  out = {};
  if (parse_mistral(text, tool_names, out)) return out;
  out = {};
  if (parse_llama_json(text, tool_names, out)) return out;
  return {text, {}};
}

}  // namespace finmoe::serve
