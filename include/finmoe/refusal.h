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

}  // namespace finmoe
