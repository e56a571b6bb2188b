#pragma once
// Helpers shared by the tokenizer tests: loading the golden tokenizers once and
// reading JSON-lines files.
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/tokenizer.h"

namespace finmoe::test {

inline std::string tok_data(const std::string& rel) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/" + rel;
}

// Golden tokenizers are 8-11 MB of JSON: load each once per test binary.
inline const Tokenizer& golden_tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto& slot = cache[name];
  if (!slot) slot = std::make_unique<Tokenizer>(Tokenizer::from_dir(tok_data(name)));
  return *slot;
}

inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace finmoe::test
