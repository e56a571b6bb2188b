#pragma once
// tokenizer.json "pre_tokenizer": Split (regex or string, any behavior),
// ByteLevel, Metaspace and Sequence of them. Immutable after construction.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace finmoe::tok {

struct Piece {
  std::string text;
  bool at_origin = false;  // starts at offset 0 of the encode() input (Metaspace "first")
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits/rewrites every piece; the result replaces `pieces`.
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};

// nullptr for a JSON null. `where` is the JSON path for errors.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& where);

}  // namespace finmoe::tok
