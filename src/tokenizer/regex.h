#pragma once
// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available).
// Immutable after construction; find_all may be called from many threads.
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace finmoe::tok {

class Regex {
 public:
  // `literal`: match `pattern` as plain text. `where` names the pattern in errors.
  Regex(const std::string& pattern, bool literal, const std::string& where);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();
  // Non-overlapping matches [begin, end) in `s` (valid UTF-8), left to right.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Code;
  std::unique_ptr<Code> code_;
  std::string where_;
};

}  // namespace finmoe::tok
