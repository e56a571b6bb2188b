// libFuzzer target: chat template text through the Jinja interpreter, parsed
// and rendered with a conversation that has tools, a tool call and its result.
// Anything but a finmoe::Error is a finding (limits keep each run small).
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"
#include "tokenizer/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::ordered_json context = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Price of AAPL in \u20ac?"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0001", "type": "function",
        "function": {"name": "get_stock_price", "arguments": {"ticker": "AAPL", "n": [1, 2.5, true, null]}}}]},
      {"role": "tool", "tool_call_id": "call_0001", "content": "{\"price\": 227.52}"},
      {"role": "assistant", "content": "<think>\nok\n</think>\n\n227.52", "reasoning_content": "ok"}],
    "tools": [{"type": "function", "function": {"name": "get_stock_price", "description": "d",
      "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}}],
    "documents": null, "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>",
    "enable_thinking": false})");
  finmoe::jinja::Options o;
  o.limits.max_output_bytes = 1 << 20;
  o.limits.max_iterations = 100000;
  try {
    const finmoe::jinja::Template t(std::string(reinterpret_cast<const char*>(data), size), o);
    (void)t.render(context, 1721995200);
  } catch (const finmoe::Error&) {
  }
  return 0;
}
