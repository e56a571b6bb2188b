#pragma once
// finmoe's one exception type. Library code throws it for bad input (files,
// fields, request parameters) with a message naming what was wrong and what
// was expected; processes convert it at their boundary (CLI exit code, HTTP 400).
#include <stdexcept>
#include <string>

namespace finmoe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace finmoe
