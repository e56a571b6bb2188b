// JSON files: read with positioned errors, write pretty and atomically.
#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/file_util.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

int json_depth(std::string_view text, int limit, size_t* offset) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // an escape: skip the escaped character
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) {
        if (offset) *offset = i;
        return limit + 1;
      }
      deepest = std::max(deepest, depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

namespace {

// The key last read before nlohmann gives up on `text` (a number out of range
// has no byte offset): found by parsing again, keeping nothing, on the error
// path only.
std::string last_key_before_error(std::string_view text) {
  std::string key;
  try {
    auto keep_nothing = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& v) {
      if (event == nlohmann::json::parse_event_t::key) key = v.get<std::string>();
      return false;
    };
    [[maybe_unused]] const nlohmann::json empty = nlohmann::json::parse(text, keep_nothing);
  } catch (const nlohmann::json::exception&) {
  }
  return key;
}

}  // namespace

nlohmann::json parse_json(std::string_view text, std::string_view source, int max_depth) {
  size_t at = 0;
  if (json_depth(text, max_depth, &at) > max_depth)
    throw JsonError(std::string(source) + ": JSON nested deeper than " + std::to_string(max_depth) +
                    " levels (at byte " + std::to_string(at) + ")");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() carries "line L, column C"; e.byte is the offset.
    throw JsonError(std::string(source) + ": invalid JSON (byte " + std::to_string(e.byte) +
                    "): " + e.what());
  } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range: a number overflows
    const std::string key = last_key_before_error(text);
    throw JsonError(std::string(source) + ": invalid JSON" +
                    (key.empty() ? std::string() : " (at field '" + key + "')") + ": " + e.what());
  }
}

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_errno("cannot read", path);
  return parse_json(ss.str(), path);
}

void write_json_file(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

}  // namespace finmoe
