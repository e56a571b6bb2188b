#pragma once
// Unanswerable financial questions with refusal targets (`finmoe data
// refusal`; YouZhi §3.3 "Refusal Data Construction", after TreeCut): a
// question is a dependency tree of quantities (the asked one at the root,
// given premises at the leaves, formulas inside); cutting a leaf at depth
// `cut_depth` removes a premise the answer needs. The answerable twin keeps
// every premise and gets the worked answer. docs/data_tools.md.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/chat_endpoint.h"

namespace finmoe {

struct RefusalOptions {
  int64_t n = 1000;  // records
  uint64_t seed = 0;
  double unanswerable_share = 0.5;  // the rest answerable
  int cut_depth = 0;                // depth of the premise removed (1 = used by the root); 0: any
};

// Names of the built-in trees ("eps", "pe", "roe", "deposit", "cash").
std::vector<std::string> refusal_templates();

// Records {"messages": [user, assistant], "answerable", "template",
// "values": {premise name: value}, "answer": number (answerable) ,
// "cut": {"name", "depth"} (unanswerable)}; deterministic in the seed.
std::vector<nlohmann::json> refusal_records(const RefusalOptions& opt);
// The same records, one at a time (nothing held): what the CLI streams.
void refusal_records(const RefusalOptions& opt, const std::function<void(nlohmann::json&&)>& sink);

// The second stage (YouZhi §3.3: "LLMs translate the tree structures into
// natural language"): each record's question, and each unanswerable
// record's refusal target, rewritten by a model through an OpenAI-compatible
// endpoint (`--model-url`). A rewritten question must keep every number of
// the templated one and add none (so the cut premise is not invented); a
// rewritten refusal must name the missing premise and add no number. A
// rewrite that fails its check keeps the templated text (counted).
// Resumable like `data selfqa`: each finished record goes to OUT.partial,
// --resume skips those, OUT is written atomically at the end.
struct RefusalModelOptions : ChatEndpointOptions {
  bool resume = false;
  bool rewrite_answers = true;  // also the refusal targets of unanswerable records
};

struct RefusalModelResult {
  int64_t records = 0, unanswerable = 0, questions = 0, answers = 0, rejected = 0;
  int64_t resumed = 0, requests = 0, retried = 0;
};

// Records as refusal_records(opt) makes them, each with "rewritten": the
// parts the model wrote ("question", "answer"), written to OUT (must not
// exist).
RefusalModelResult refusal_with_model(
    const RefusalOptions& opt, const RefusalModelOptions& model, const std::string& out,
    const std::function<void(const std::string&)>& log = {},
    const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace finmoe
