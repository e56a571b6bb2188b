#pragma once
// tokenizer.json "normalizer": NFC/NFD/NFKC/NFKD (ICU), Prepend, Replace and
// Sequence of them. Immutable after construction.
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace finmoe::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;  // s: valid UTF-8, in place
};

// nullptr for a JSON null. `where` is the JSON path for errors ("tokenizer.json: normalizer").
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where);

}  // namespace finmoe::tok
