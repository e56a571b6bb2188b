#pragma once
// Persona augmentation of SFT data (`finmoe data persona`; YouZhi §3.3
// "diverse persona construction"): the instruction side of each pair is
// asked again by a persona (a self-introduction: "我是一名退休教师" /
// "I'm a retired teacher") in a style; the answer is kept. Templated and
// deterministic in the seed, or written by a model through an
// OpenAI-compatible endpoint (the template's text stands in, counted, when
// a reply drops a number of the instruction or is empty). docs/data_tools.md.
//
// With an endpoint the run is resumable like `data selfqa`: each finished
// record goes to OUT.partial; --resume skips those; OUT is written
// atomically at the end.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "finmoe/chat_endpoint.h"

namespace finmoe {

struct PersonaOptions {
  uint64_t seed = 0;
  int variants = 1;                   // rewrites per record, each by another persona
  std::vector<std::string> personas;  // self-introductions; empty: the built-in ones
  std::vector<std::string> styles;    // of persona_styles(); empty: all
  bool keep_original = false;         // also write each record unchanged first
  bool skip_bad = false;              // skip malformed lines and records without an instruction
  std::optional<ChatEndpointOptions> endpoint;  // set: the model rewrites (`--url`)
  bool resume = false;                          // continue from OUT.partial (endpoint only)
};

struct PersonaResult {
  int64_t records = 0, written = 0, skipped = 0;
  int64_t by_model = 0, model_rejected = 0, resumed = 0, requests = 0, retried = 0;
};

// direct, polite, context.
std::vector<std::string> persona_styles();
// The built-in personas for Chinese (`zh`) or English instructions.
std::vector<std::string> builtin_personas(bool zh);

// The templated rewrite of one instruction; `scenario` is used by the
// context style. Chinese templates when the instruction holds CJK text.
std::string persona_instruction(const std::string& instruction, const std::string& persona,
                                const std::string& style, int64_t scenario);

// Reads SFT records ({"messages": [...]} with a user turn, or {"instruction"})
// from IN and writes `variants` rewrites of each to OUT (must not exist):
// the record with its first user turn (or instruction) replaced, plus
// "persona", "style", "persona_source" (template | model), "source_line".
PersonaResult persona_jsonl(const std::string& in, const std::string& out,
                            const PersonaOptions& opt,
                            const std::function<void(const std::string&)>& log = {},
                            const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace finmoe
