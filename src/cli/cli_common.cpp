#include "cli/cli_common.h"

#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "finmoe/error.h"

namespace finmoe::cli {

namespace {

enum class Number { kInteger, kUnsigned, kFloat };

std::string strict_number(std::string& s, Number kind) {
  errno = 0;
  if (kind == Number::kFloat) {
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0' || !std::isfinite(v) || errno == ERANGE)
      return "expected a finite number, got '" + s + "'";
    return "";
  }
  const size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (s.size() == sign || s.find_first_not_of("0123456789", sign) != std::string::npos)
    return "expected a decimal integer, got '" + s + "'";
  if (kind == Number::kUnsigned && s[0] == '-')
    return "expected a non-negative integer, got '" + s + "'";
  // leading zeros are decimal here, not CLI11's octal: "010" is 10
  const size_t first = s.find_first_not_of('0', sign);
  s.erase(sign, std::min(first, s.size() - 1) - sign);
  if (kind == Number::kInteger)
    (void)std::strtoll(s.c_str(), nullptr, 10);
  else
    (void)std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE)
    return "'" + s + "' does not fit in a " + (kind == Number::kInteger ? "signed" : "unsigned") +
           " 64-bit integer";
  return "";
}

}  // namespace

void check_numbers(CLI::App* app) {
  for (CLI::Option* o : app->get_options()) {
    const std::string type = o->get_type_name();
    Number kind;
    if (type.starts_with("UINT"))
      kind = Number::kUnsigned;
    else if (type.starts_with("INT"))
      kind = Number::kInteger;
    else if (type.starts_with("FLOAT"))
      kind = Number::kFloat;
    else
      continue;
    o->transform(CLI::Validator([kind](std::string& s) { return strict_number(s, kind); }, ""));
  }
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) check_numbers(sub);
}

void keep_freed_memory() {
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_THRESHOLD_") ||
      std::getenv("MALLOC_TRIM_THRESHOLD_"))
    return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

int run_reporting_errors(const std::function<int()>& command) {
  try {
    return command();
  } catch (const finmoe::Error& e) {
    std::cerr << "finmoe: error: " << e.what() << "\n";
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {
    // a path the system refuses (too long, a loop of links, no permission)
    // where a loader asks std::filesystem directly; what() names the path
    std::cerr << "finmoe: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "finmoe: internal error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace finmoe::cli
