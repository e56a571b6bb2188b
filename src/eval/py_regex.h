#pragma once
// Python `re` patterns (as lm-eval task files write them) for std::regex:
// leading inline flags (?i) (?m), named groups (?P<name>...), \A and \Z are
// rewritten; anything else ECMAScript does not read is an Error naming
// `where`. Internal to the eval layer.
#include <regex>
#include <string>

namespace finmoe::eval {

std::regex python_regex(std::string pattern, const std::string& where);

}  // namespace finmoe::eval
