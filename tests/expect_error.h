#pragma once
// Checking the messages of finmoe::Error in tests.
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "finmoe/error.h"

namespace finmoe::test {

// What f throws as finmoe::Error, or "<no error>".
inline std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace finmoe::test

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)
