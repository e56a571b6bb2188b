// Task YAMLs (lm-eval's keys), the built-in tasks over the project's own
// corpus, and resolving `--tasks` names.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/yaml_json.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"
#include "core/yaml_bounds.h"

namespace fs = std::filesystem;

namespace finmoe::eval {

namespace {

using nlohmann::json;

std::string need_string(const json& v, const std::string& where, const std::string& key) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  throw Error(where + ": '" + key + "' must be a string");
}

std::vector<std::string> string_list(const json& v, const std::string& where,
                                     const std::string& key) {
  std::vector<std::string> out;
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) throw Error(where + ": '" + key + "' must be a string or a list of strings");
  for (const auto& x : v) out.push_back(need_string(x, where, key));
  return out;
}

MetricSpec default_metric(const std::string& name) {
  MetricSpec m;
  m.name = name;
  m.aggregation = "mean";
  if (name == "perplexity") {
    m.aggregation = "perplexity";
    m.higher_is_better = false;
  } else if (name == "word_perplexity" || name == "byte_perplexity" || name == "token_perplexity") {
    m.aggregation = "weighted_perplexity";
    m.higher_is_better = false;
  } else if (name == "bits_per_byte") {
    m.aggregation = "bits_per_byte";
    m.higher_is_better = false;
  }
  return m;
}

const std::set<std::string>& metrics_for(OutputType t) {
  static const std::set<std::string> mc = {"acc", "acc_norm", "acc_bytes"};
  static const std::set<std::string> ll = {"acc", "perplexity"};
  static const std::set<std::string> roll = {"word_perplexity", "byte_perplexity", "bits_per_byte",
                                             "token_perplexity"};
  static const std::set<std::string> gen = {"exact_match", "regex_match", "numeric", "json_field"};
  switch (t) {
    case OutputType::kMultipleChoice:
      return mc;
    case OutputType::kLoglikelihood:
      return ll;
    case OutputType::kLoglikelihoodRolling:
      return roll;
    case OutputType::kGenerateUntil:
      return gen;
  }
  return mc;
}

std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

// Fills what a benchmark layout implies when the YAML does not say it.
void apply_layout_defaults(TaskConfig& t, const std::string& where) {
  if (t.layout.empty()) return;
  if (t.layout == "ceval" || t.layout == "cmmlu" || t.layout == "fineval" || t.layout == "cflue") {
    if (t.doc_to_text.empty())
      t.doc_to_text = "{{question}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：";
    if (!t.has_choices()) t.doc_to_choice_list = {"A", "B", "C", "D"};
    if (t.doc_to_target.empty()) t.doc_to_target = "{{answer}}";
  } else if (t.layout == "flare") {
    if (t.doc_to_text.empty()) t.doc_to_text = "{{query}}";
    if (!t.has_choices()) t.doc_to_choice = "{{choices}}";
    if (t.doc_to_target.empty()) t.doc_to_target = "{{gold}}";
  } else {
    throw Error(where + ": unknown layout '" + t.layout +
                "' (known: ceval, cmmlu, fineval, cflue, flare)");
  }
}

const std::set<std::string> kKnownKeys = {"task",
                                          "tag",
                                          "group",
                                          "dataset_path",
                                          "dataset_name",
                                          "dataset_kwargs",
                                          "layout",
                                          "split_field",
                                          "test_split",
                                          "validation_split",
                                          "training_split",
                                          "fewshot_split",
                                          "description",
                                          "doc_to_text",
                                          "doc_to_target",
                                          "doc_to_choice",
                                          "target_delimiter",
                                          "fewshot_delimiter",
                                          "num_fewshot",
                                          "fewshot_config",
                                          "output_type",
                                          "metric_list",
                                          "generation_kwargs",
                                          "metadata",
                                          "rolling_context_len",
                                          "include",
                                          "should_decontaminate",
                                          "doc_to_decontamination_query",
                                          "repeats",
                                          "filter_list",
                                          "process_docs"};

TaskConfig from_json(const json& y, const std::string& where, const std::string& base_dir) {
  if (!y.is_object()) throw Error(where + ": a task file must be a mapping of keys");
  for (auto it = y.begin(); it != y.end(); ++it)
    if (!kKnownKeys.count(it.key()))
      throw Error(where + ": unknown key '" + it.key() + "' (known: " + join(kKnownKeys) + ")");
  TaskConfig t;
  t.raw = y;
  auto str = [&](const char* key, std::string& out) {
    if (y.contains(key) && !y.at(key).is_null()) out = need_string(y.at(key), where, key);
  };
  if (!y.contains("task")) throw Error(where + ": missing key 'task' (the task's name)");
  str("task", t.task);
  if (y.contains("tag")) t.tags = string_list(y.at("tag"), where, "tag");
  if (y.contains("group")) {
    const auto g = string_list(y.at("group"), where, "group");
    if (!g.empty()) t.group = g.front();
  }
  if (t.group.empty() && !t.tags.empty()) t.group = t.tags.front();
  if (!y.contains("dataset_path"))
    throw Error(where +
                ": missing key 'dataset_path' (a local .jsonl, .json, .csv file or a "
                "directory of them)");
  str("dataset_path", t.dataset_path);
  if (!t.dataset_path.empty() && fs::path(t.dataset_path).is_relative() && !base_dir.empty())
    t.dataset_path = (fs::path(base_dir) / t.dataset_path).string();
  str("dataset_name", t.dataset_name);
  if (y.contains("dataset_kwargs")) {
    const json& k = y.at("dataset_kwargs");
    if (k.is_object() && k.contains("data_files")) {
      const json& df = k.at("data_files");
      if (!df.is_object())
        throw Error(where + ": 'dataset_kwargs.data_files' must map split names to files");
      for (auto it = df.begin(); it != df.end(); ++it) {
        std::string f = need_string(it.value(), where, "dataset_kwargs.data_files." + it.key());
        if (fs::path(f).is_relative()) {
          // relative to dataset_path when that names a directory (it need not exist yet)
          const std::string ext = fs::path(t.dataset_path).extension().string();
          // `dataset_path: json` (HF's builder name, as lm-eval YAMLs write it) too
          const bool is_file = ext == ".jsonl" || ext == ".json" || ext == ".csv" ||
                               fs::path(t.dataset_path).filename() == "json" ||
                               fs::path(t.dataset_path).filename() == "csv";
          const fs::path dir = is_file ? fs::path(base_dir) : fs::path(t.dataset_path);
          f = (dir / f).string();
        }
        t.data_files[it.key()] = f;
      }
    }
  }
  str("layout", t.layout);
  str("split_field", t.split_field);
  if (y.contains("test_split"))
    str("test_split", t.test_split);
  else if (y.contains("validation_split"))
    str("validation_split", t.test_split);
  str("fewshot_split", t.fewshot_split);
  if (t.fewshot_split.empty() && y.contains("training_split"))
    str("training_split", t.fewshot_split);
  str("description", t.description);
  str("doc_to_text", t.doc_to_text);
  str("doc_to_target", t.doc_to_target);
  if (y.contains("doc_to_choice") && !y.at("doc_to_choice").is_null()) {
    const json& c = y.at("doc_to_choice");
    if (c.is_array())
      t.doc_to_choice_list = string_list(c, where, "doc_to_choice");
    else
      t.doc_to_choice = need_string(c, where, "doc_to_choice");
  }
  str("target_delimiter", t.target_delimiter);
  str("fewshot_delimiter", t.fewshot_delimiter);
  if (y.contains("num_fewshot")) {
    if (!y.at("num_fewshot").is_number_integer() || y.at("num_fewshot").get<int64_t>() < 0)
      throw Error(where + ": 'num_fewshot' must be a non-negative integer");
    t.num_fewshot = int(y.at("num_fewshot").get<int64_t>());
  }
  if (y.contains("fewshot_config") && y.at("fewshot_config").is_object()) {
    const json& f = y.at("fewshot_config");
    if (f.contains("sampler"))
      t.fewshot_sampler = need_string(f.at("sampler"), where, "fewshot_config.sampler");
    if (t.fewshot_sampler != "default" && t.fewshot_sampler != "first_n")
      throw Error(where + ": fewshot_config.sampler must be default or first_n, got '" +
                  t.fewshot_sampler + "'");
  }
  std::string ot = "multiple_choice";
  str("output_type", ot);
  if (ot == "multiple_choice")
    t.output_type = OutputType::kMultipleChoice;
  else if (ot == "loglikelihood")
    t.output_type = OutputType::kLoglikelihood;
  else if (ot == "loglikelihood_rolling")
    t.output_type = OutputType::kLoglikelihoodRolling;
  else if (ot == "generate_until")
    t.output_type = OutputType::kGenerateUntil;
  else
    throw Error(where +
                ": output_type must be multiple_choice, loglikelihood, "
                "loglikelihood_rolling or generate_until, got '" +
                ot + "'");
  apply_layout_defaults(t, where);

  const auto& allowed = metrics_for(t.output_type);
  if (y.contains("metric_list")) {
    const json& ml = y.at("metric_list");
    if (!ml.is_array()) throw Error(where + ": 'metric_list' must be a list");
    for (const auto& m : ml) {
      if (!m.is_object() || !m.contains("metric"))
        throw Error(where + ": each metric_list entry needs a 'metric' key");
      MetricSpec spec = default_metric(need_string(m.at("metric"), where, "metric_list.metric"));
      if (!allowed.count(spec.name))
        throw Error(where + ": metric '" + spec.name + "' does not apply to output_type " + ot +
                    " (available: " + join(allowed) + ")");
      for (auto it = m.begin(); it != m.end(); ++it) {
        if (it.key() == "metric") continue;
        if (it.key() == "aggregation")
          spec.aggregation = need_string(it.value(), where, "aggregation");
        else if (it.key() == "higher_is_better")
          spec.higher_is_better = it.value().get<bool>();
        else
          spec.kwargs[it.key()] = it.value();
      }
      t.metrics.push_back(spec);
    }
  } else {
    const std::vector<std::string> def =
        t.output_type == OutputType::kMultipleChoice ? std::vector<std::string>{"acc", "acc_norm"}
        : t.output_type == OutputType::kLoglikelihood
            ? std::vector<std::string>{"perplexity", "acc"}
        : t.output_type == OutputType::kLoglikelihoodRolling
            ? std::vector<std::string>{"word_perplexity", "byte_perplexity", "bits_per_byte"}
            : std::vector<std::string>{"exact_match"};
    for (const auto& n : def) t.metrics.push_back(default_metric(n));
  }
  t.until = {t.fewshot_delimiter};
  if (y.contains("generation_kwargs") && y.at("generation_kwargs").is_object()) {
    const json& g = y.at("generation_kwargs");
    if (g.contains("until")) t.until = string_list(g.at("until"), where, "generation_kwargs.until");
    if (g.contains("max_gen_toks")) {
      if (!g.at("max_gen_toks").is_number_integer() || g.at("max_gen_toks").get<int64_t>() < 1)
        throw Error(where + ": generation_kwargs.max_gen_toks must be a positive integer");
      t.max_gen_toks = g.at("max_gen_toks").get<int64_t>();
    }
    if (g.contains("do_sample") && g.at("do_sample").is_boolean() && g.at("do_sample").get<bool>())
      throw Error(where + ": generation_kwargs.do_sample: true is not supported (greedy decoding)");
  }
  if (y.contains("rolling_context_len")) {
    if (!y.at("rolling_context_len").is_number_integer() ||
        y.at("rolling_context_len").get<int64_t>() < 1)
      throw Error(where + ": 'rolling_context_len' must be an integer >= 1");
    t.rolling_context_len = y.at("rolling_context_len").get<int64_t>();
  }
  if (y.contains("repeats")) {
    if (!y.at("repeats").is_number_integer() || y.at("repeats").get<int64_t>() < 1)
      throw Error(where + ": 'repeats' must be an integer >= 1");
    t.repeats = y.at("repeats").get<int64_t>();
  }
  if (y.contains("filter_list") && !y.at("filter_list").is_null()) {
    if (t.output_type != OutputType::kGenerateUntil)
      throw Error(where + ": 'filter_list' applies to output_type generate_until only");
    const json& fl = y.at("filter_list");
    if (!fl.is_array() || fl.empty())
      throw Error(where + ": 'filter_list' must be a non-empty list of {name, filter}");
    std::set<std::string> names;
    for (const auto& f : fl) {
      if (!f.is_object() || !f.contains("name") || !f.contains("filter"))
        throw Error(where + ": each filter_list entry needs 'name' and 'filter' (a list of steps)");
      FilterPipeline p;
      p.name = need_string(f.at("name"), where, "filter_list.name");
      if (p.name.empty() || p.name.find(',') != std::string::npos)
        throw Error(where + ": filter_list name '" + p.name +
                    "' must be non-empty and without commas (it becomes 'metric,name')");
      if (!names.insert(p.name).second)
        throw Error(where + ": filter_list name '" + p.name + "' is given twice");
      for (auto it = f.begin(); it != f.end(); ++it)
        if (it.key() != "name" && it.key() != "filter")
          throw Error(where + ": filter_list '" + p.name + "': unknown key '" + it.key() +
                      "' (name, filter)");
      if (!f.at("filter").is_array())
        throw Error(where + ": filter_list '" + p.name + "': 'filter' must be a list of steps");
      for (const auto& st : f.at("filter")) {
        if (!st.is_object() || !st.contains("function"))
          throw Error(where + ": filter_list '" + p.name + "': each step needs a 'function'");
        FilterStep step;
        step.function = need_string(st.at("function"), where, "filter_list.filter.function");
        step.options = st;
        step.options.erase("function");
        p.steps.push_back(std::move(step));
      }
      t.filters.push_back(std::move(p));
    }
  }
  if (t.output_type == OutputType::kGenerateUntil) {
    for (const auto& p : t.filters) ResponseFilter(p, t.repeats, where);  // checks each step
  } else if (t.repeats != 1) {
    throw Error(where + ": 'repeats' applies to output_type generate_until only");
  }
  if (y.contains("process_docs") && !y.at("process_docs").is_null()) {
    t.process_docs = y.at("process_docs");
    check_process_docs(t.process_docs, where + ": process_docs");
  }
  if (y.contains("metadata") && y.at("metadata").is_object() &&
      y.at("metadata").contains("version") && y.at("metadata").at("version").is_number())
    t.version = y.at("metadata").at("version").get<double>();

  // what each output type needs
  if (t.output_type == OutputType::kMultipleChoice && !t.has_choices())
    throw Error(where + ": output_type multiple_choice needs 'doc_to_choice'");
  if (t.output_type != OutputType::kLoglikelihoodRolling && t.doc_to_text.empty())
    throw Error(where + ": missing key 'doc_to_text'");
  if (t.doc_to_target.empty()) throw Error(where + ": missing key 'doc_to_target'");
  return t;
}

json load_yaml_json(const std::string& text, const std::string& source, const std::string& base_dir,
                    int depth) {
  check_yaml_bounds(text, source);
  YAML::Node node;
  try {
    node = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(source + ": invalid YAML: " + e.what());
  }
  // lm-eval points some keys at Python (`!function utils.process_docs`):
  // say which key and what finmoe reads instead
  if (node.IsMap())
    for (const auto& kv : node)
      if (kv.second.IsScalar() && kv.second.Tag().find("function") != std::string::npos) {
        const std::string key = kv.first.Scalar();
        throw Error(source + ": '" + key + ": !function " + kv.second.Scalar() +
                    "' is a Python function, which finmoe does not run; " +
                    (key == "process_docs"
                         ? std::string("write process_docs as a list of steps (set, rename, "
                                       "drop, keep, replace, strip; docs/eval.md)")
                         : std::string("write it as a template over the document's fields")));
      }
  json y = finmoe::yaml_to_json(node, source);
  if (y.is_object() && y.contains("include")) {
    if (depth > 4) throw Error(source + ": 'include' nested more than 4 levels");
    std::string inc = need_string(y.at("include"), source, "include");
    if (fs::path(inc).is_relative()) inc = (fs::path(base_dir) / inc).string();
    std::ifstream in(inc, std::ios::binary);
    if (!in) throw Error(source + ": 'include' file " + inc + " cannot be read");
    std::stringstream ss;
    ss << in.rdbuf();
    json base = load_yaml_json(ss.str(), inc, fs::path(inc).parent_path().string(), depth + 1);
    y.erase("include");
    if (!base.is_object()) throw Error(inc + ": an included task file must be a mapping");
    base.update(y);  // the including file's keys win
    return base;
  }
  return y;
}

// ---- built-in tasks ------------------------------------------------------

struct Builtin {
  const char* name;
  const char* about;
  const char* yaml;
};

// Data paths are relative to the demo cache (`finmoe demo`, `finmoe corpus`).
const Builtin kBuiltins[] = {
    {"finmoe_fin_mc", "financial multiple choice (corpus qa test_mc.jsonl), acc/acc_norm",
     R"(task: finmoe_fin_mc
group: finmoe_fin
dataset_path: qa
dataset_kwargs:
  data_files:
    test: test_mc.jsonl
test_split: test
fewshot_split: test
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
)"},
    {"finmoe_fin_qa",
     "financial QA, greedy generation scored by exact match (corpus qa test.jsonl)",
     R"(task: finmoe_fin_qa
group: finmoe_fin
dataset_path: qa
dataset_kwargs:
  data_files:
    test: test.jsonl
    train: train.jsonl
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
output_type: generate_until
doc_to_text: "Question: {{messages[0].content}}\nAnswer:"
doc_to_target: "{{messages[1].content}}"
generation_kwargs:
  until: ["\n"]
  max_gen_toks: 48
metric_list:
  - metric: exact_match
    strip: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 1.0
)"},
    {"finmoe_fin_ppl",
     "held-out financial manuals (corpus fin/test.jsonl): word/byte ppl, bits per byte",
     R"(task: finmoe_fin_ppl
group: finmoe_fin
dataset_path: corpus/fin
test_split: test
output_type: loglikelihood_rolling
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
  - metric: token_perplexity
metadata:
  version: 1.0
)"},
    {"finmoe_general_ppl", "held-out general English (corpus general/test.jsonl)",
     R"(task: finmoe_general_ppl
group: finmoe_general
dataset_path: corpus/general
test_split: test
output_type: loglikelihood_rolling
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
  - metric: token_perplexity
metadata:
  version: 1.0
)"},
    {"finmoe_zh_ppl", "held-out general Chinese (corpus zh/test.jsonl)",
     R"(task: finmoe_zh_ppl
group: finmoe_general
dataset_path: corpus/zh
test_split: test
output_type: loglikelihood_rolling
doc_to_target: "{{text}}"
metric_list:
  - metric: byte_perplexity
  - metric: bits_per_byte
  - metric: token_perplexity
metadata:
  version: 1.0
)"},
};

}  // namespace

const char* output_type_name(OutputType t) {
  switch (t) {
    case OutputType::kMultipleChoice:
      return "multiple_choice";
    case OutputType::kLoglikelihood:
      return "loglikelihood";
    case OutputType::kLoglikelihoodRolling:
      return "loglikelihood_rolling";
    case OutputType::kGenerateUntil:
      return "generate_until";
  }
  return "?";
}

TaskConfig parse_task_yaml_text(const std::string& text, const std::string& source,
                                const std::string& base_dir) {
  TaskConfig t = from_json(load_yaml_json(text, source, base_dir, 0), source, base_dir);
  t.yaml_path = source;
  return t;
}

TaskConfig parse_task_yaml(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("task file " + path + " cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_task_yaml_text(ss.str(), path, fs::path(path).parent_path().string());
}

std::vector<std::pair<std::string, std::string>> builtin_task_names() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& b : kBuiltins) out.emplace_back(b.name, b.about);
  out.emplace_back("finmoe_fin", "group: finmoe_fin_mc, finmoe_fin_qa, finmoe_fin_ppl");
  out.emplace_back("finmoe_general", "group: finmoe_general_ppl, finmoe_zh_ppl");
  return out;
}

std::vector<TaskConfig> resolve_tasks(const std::vector<std::string>& spec,
                                      const std::string& data_dir) {
  std::vector<TaskConfig> out;
  std::set<std::string> seen;
  auto add = [&](TaskConfig t) {
    if (seen.insert(t.task).second) out.push_back(std::move(t));
  };
  for (const auto& name : spec) {
    if (name.empty()) continue;
    bool found = false;
    for (const auto& b : kBuiltins) {
      const std::string n = b.name;
      TaskConfig t = parse_task_yaml_text(b.yaml, std::string("built-in task ") + b.name, data_dir);
      t.yaml_path.clear();
      // a group name (finmoe_fin) selects the tasks of that group
      if (n == name || t.group == name) {
        add(std::move(t));
        found = true;
      }
    }
    if (found) continue;
    std::error_code ec;
    if (fs::is_directory(name, ec)) {
      std::vector<std::string> files;
      for (const auto& e : fs::directory_iterator(name))
        if (e.path().extension() == ".yaml" || e.path().extension() == ".yml")
          files.push_back(e.path().string());
      std::sort(files.begin(), files.end());
      if (files.empty()) throw Error("--tasks " + name + ": the directory holds no .yaml files");
      for (const auto& f : files) add(parse_task_yaml(f));
      continue;
    }
    if (fs::is_regular_file(name, ec)) {
      add(parse_task_yaml(name));
      continue;
    }
    std::string known;
    for (const auto& [n, about] : builtin_task_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("--tasks: unknown task '" + name +
                "' (not a built-in task, a .yaml file or a "
                "directory; built-in: " +
                known + ")");
  }
  if (out.empty()) throw Error("--tasks: no task given");
  return out;
}

}  // namespace finmoe::eval
