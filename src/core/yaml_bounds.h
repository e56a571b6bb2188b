#pragma once
// Bounds checked on YAML text before yaml-cpp parses it: yaml-cpp recurses
// once per nesting level (its own guard stops only at 2000 levels), so a
// small file of `[[[[` or `- - - -` could otherwise exhaust the stack.
// Internal: training configs and their overrides (train), merge recipes (convert).
#include <cstddef>
#include <string_view>

namespace finmoe {

inline constexpr int kMaxYamlDepth = 64;                  // nested collections
inline constexpr size_t kMaxYamlBytes = size_t(1) << 20;  // a training config is a few KB

// The deepest nesting of collections in `text`, from its layout alone and
// never below the true depth: block collections by their indentation and by
// compact `- `, `? ` and `key: ` entries on one line, flow collections by
// brackets outside quoted scalars and comments; block scalar (`|`, `>`)
// content is skipped. Stops at `limit + 1`, with `*line` (1-based) the line
// where the limit was passed.
int yaml_depth(std::string_view text, int limit, size_t* line = nullptr);

// Throws Error "SOURCE: ..." when `text` is larger than kMaxYamlBytes or
// nests deeper than kMaxYamlDepth (naming the line).
void check_yaml_bounds(std::string_view text, const std::string_view source);

}  // namespace finmoe
