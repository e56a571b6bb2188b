// libFuzzer target: a training config's YAML through parse_train_config (the
// nesting bounds, yaml-cpp, every field's type and range). Anything but a
// finmoe::Error is a finding.
#include <cstdint>
#include <string>

#include "finmoe/error.h"
#include "finmoe/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    (void)finmoe::parse_train_config(text, "train.yaml").to_json().dump();
  } catch (const finmoe::Error&) {
  }
  return 0;
}
