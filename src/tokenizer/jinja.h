#pragma once
// A Jinja2 interpreter for chat templates, configured as Hugging Face
// transformers configures its environment (chat_template_utils.py):
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
// extensions=[generation, loopcontrols]) with the globals raise_exception,
// strftime_now, namespace and dict, and a tojson filter that does not escape
// HTML (json.dumps(x, ensure_ascii=False, ...)).
//
// Covered: text with whitespace control ({%- -%}, {%+), comments, raw;
// for (loop.*, else, filtering if, tuple unpacking, break/continue), if/elif/
// else, set (also ns.attr and block set), macro (defaults, kwargs), call,
// filter blocks, generation blocks; Python-like expressions, slicing, string
// and dict methods, the filters and tests chat templates use. Undefined
// values follow Jinja's default Undefined (empty when printed, false, empty
// when iterated, an error for arithmetic or attribute access).
//
// Errors: Error("chat template line L col C: ...") for syntax errors and for
// runtime errors (undefined attribute, bad types); raise_exception(msg) gives
// Error("chat template raised an exception: msg"). Limits make hostile
// templates fail cleanly: nesting and call depth, loop iterations and output
// size are bounded (Limits).
//
// Thread safety: a Template is immutable after construction; render() may be
// called from many threads at once.
#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace finmoe::jinja {

struct Limits {
  int max_depth = 200;                   // nested expressions / statements / macro calls
  int64_t max_iterations = 10'000'000;   // loop iterations over a whole render
  size_t max_output_bytes = 64u << 20;   // rendered text and any intermediate string
};

struct Options {
  bool trim_blocks = true;    // drop the first newline after a block tag
  bool lstrip_blocks = true;  // strip spaces and tabs before a block tag on its line
  bool keep_trailing_newline = false;
  Limits limits;
};

class Template {
 public:
  // Parses `source`; throws Error naming line and column on a syntax error.
  explicit Template(std::string_view source, Options options = {});
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `context` (an object) as the template's variables.
  // strftime_now() formats `fixed_now` as UTC when given, else the local time now.
  std::string render(const nlohmann::ordered_json& context,
                     std::optional<std::time_t> fixed_now = std::nullopt) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace finmoe::jinja
