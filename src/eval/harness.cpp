// Running tasks: prompts with few-shot examples (plain text or a chat
// template), requests to the model (all tasks of a kind in one batch),
// per-document metrics, and aggregation into lm-eval's result JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <numeric>
#include <optional>

#include "core/progress.h"
#include "eval/py_random.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace finmoe::eval {

namespace {

using nlohmann::json;

struct Message {
  std::string role, content, delimiter;  // delimiter: appended in plain text
};

bool ends_with_space(const std::string& s) {
  return !s.empty() && std::isspace(static_cast<unsigned char>(s.back()));
}

// lm-eval's maybe_delimit: join with `delim` unless either side has
// whitespace at the boundary.
std::string maybe_delimit(const std::string& a, const std::string& b, const std::string& delim) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  if (ends_with_space(a) || std::isspace(static_cast<unsigned char>(b.front()))) return a + b;
  return a + delim + b;
}

std::string value_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  return v.dump();
}

struct DocPlan {
  const Doc* doc = nullptr;
  int64_t doc_id = 0;
  std::vector<std::string> choices;
  json target;                  // as doc_to_target rendered it
  int64_t gold = -1;            // multiple choice
  std::string target_text;      // generation / rolling reference
  std::vector<size_t> request;  // indices into the kind's request list
};

struct TaskRun {
  const TaskConfig* cfg = nullptr;
  int num_fewshot = 0;
  int64_t n_original = 0;
  std::vector<Doc> docs, fewshot_docs;
  bool fewshot_same_split = false;
  std::optional<PyRandom> rng;  // the default sampler's generator
  std::vector<DocPlan> plans;
};

class Builder {
 public:
  Builder(const EvalOptions& o) : o_(o), engine_(default_template_engine()) {}

  json render(const TaskConfig& t, const std::string& key, const std::string& tmpl, const Doc& d) {
    return engine_->render(tmpl, d.fields, "task " + t.task + ", " + key + " (" + d.where + ")");
  }
  std::string text(const TaskConfig& t, const std::string& key, const std::string& tmpl,
                   const Doc& d) {
    const json v = render(t, key, tmpl, d);
    if (!v.is_string() && !v.is_number())
      throw Error("task " + t.task + ", " + key + " (" + d.where + "): expected text, got " +
                  v.dump());
    return value_text(v);
  }
  std::vector<std::string> choices(const TaskConfig& t, const Doc& d) {
    if (!t.doc_to_choice) {
      std::vector<std::string> out;
      for (const auto& c : t.doc_to_choice_list) out.push_back(text(t, "doc_to_choice", c, d));
      return out;
    }
    const json v = render(t, "doc_to_choice", *t.doc_to_choice, d);
    if (!v.is_array() || v.empty())
      throw Error("task " + t.task + ", doc_to_choice (" + d.where +
                  "): expected a non-empty list of choices, got " + v.dump());
    std::vector<std::string> out;
    for (const auto& c : v) out.push_back(value_text(c));
    return out;
  }
  // The gold index of a multiple-choice document (lm-eval: an int is an
  // index, a string is looked up in the choices; digits count as an int).
  int64_t gold(const TaskConfig& t, const Doc& d, const json& target,
               const std::vector<std::string>& ch) {
    int64_t g = -1;
    if (target.is_number_integer()) {
      g = target.get<int64_t>();
    } else if (target.is_string()) {
      const std::string s = target.get<std::string>();
      const auto it = std::find(ch.begin(), ch.end(), s);
      if (it != ch.end())
        g = it - ch.begin();
      else if (!s.empty() &&
               std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
        g = std::stoll(s);
    }
    if (g < 0 || g >= int64_t(ch.size())) {
      std::string list;
      for (const auto& c : ch) list += (list.empty() ? "" : ", ") + json(c).dump();
      throw Error("task " + t.task + " (" + d.where + "): the choices do not contain the answer " +
                  target.dump() + " (doc_to_target; choices: " + list + ")");
    }
    return g;
  }
  // The answer text of a few-shot example.
  std::string answer_text(const TaskConfig& t, const Doc& d) {
    const json target = render(t, "doc_to_target", t.doc_to_target, d);
    if (t.has_choices()) {
      const auto ch = choices(t, d);
      return ch[size_t(gold(t, d, target, ch))];
    }
    if (target.is_array() && !target.empty()) return value_text(target.front());
    return value_text(target);
  }

  // lm-eval's samplers: `first_n` takes the first examples; `default` is
  // Python's Random(fewshot_seed).sample, drawn per document in document
  // order (one generator per task), n + 1 when the document itself may be
  // drawn, then every copy of the document removed.
  std::vector<const Doc*> sample_fewshot(TaskRun& run, const Doc& doc) {
    const TaskConfig& t = *run.cfg;
    const size_t n = size_t(run.num_fewshot);
    const auto& all = run.fewshot_docs;
    auto not_doc = [&](const Doc* f) { return !run.fewshot_same_split || f->fields != doc.fields; };
    std::vector<const Doc*> pool;
    for (const auto& f : all)
      if (not_doc(&f)) pool.push_back(&f);
    if (pool.size() < n)
      throw Error("task " + t.task + ": " + std::to_string(n) +
                  " few-shot examples asked, the few-shot split has " +
                  std::to_string(pool.size()));
    if (t.fewshot_sampler == "first_n") {
      pool.resize(n);
      return pool;
    }
    if (!run.rng) run.rng.emplace(t.fewshot_seed);
    std::vector<const Doc*> res;
    if (!run.fewshot_same_split) {
      for (uint64_t i : run.rng->sample(all.size(), n)) res.push_back(&all[size_t(i)]);
      return res;
    }
    for (uint64_t i : run.rng->sample(all.size(), std::min(all.size(), n + 1)))
      if (not_doc(&all[size_t(i)]) && res.size() < n) res.push_back(&all[size_t(i)]);
    if (res.size() < n) {  // the document drawn more than once: from the pool without it
      res.clear();
      for (uint64_t i : run.rng->sample(pool.size(), n)) res.push_back(pool[size_t(i)]);
    }
    return res;
  }

  // lm-eval's fewshot_context: [system] + (user q + tgt_delim, assistant a +
  // fewshot_delim) per example + user q; plain text or a chat template.
  std::string context(TaskRun& run, const Doc& doc) {
    const TaskConfig& t = *run.cfg;
    std::vector<Message> msgs;
    const std::string description =
        t.description.empty() ? "" : text(t, "description", t.description, doc);
    const std::string system = maybe_delimit(o_.chat.system, description, t.fewshot_delimiter);
    if (!system.empty()) msgs.push_back({"system", system, ""});
    if (run.num_fewshot > 0)
      for (const Doc* f : sample_fewshot(run, doc)) {
        msgs.push_back({"user", text(t, "doc_to_text", t.doc_to_text, *f), t.target_delimiter});
        msgs.push_back({"assistant", answer_text(t, *f), t.fewshot_delimiter});
      }
    msgs.push_back({"user", text(t, "doc_to_text", t.doc_to_text, doc), ""});
    if (!o_.chat.apply_chat_template) {
      std::string s;
      for (const auto& m : msgs) s += m.content + m.delimiter;
      return s;
    }
    if (!o_.chat.render)
      throw Error("--apply-chat-template: the model has no chat template renderer");
    std::vector<std::pair<std::string, std::string>> chat;
    if (o_.chat.fewshot_as_multiturn) {
      for (const auto& m : msgs) chat.emplace_back(m.role, m.content);
    } else {  // lm-eval's multiturn_to_singleturn: everything in one user turn
      size_t b = 0;
      if (msgs.front().role == "system") chat.emplace_back("system", msgs.front().content), b = 1;
      std::string user;
      for (size_t i = b; i < msgs.size(); ++i)
        user += msgs[i].content + (i + 1 < msgs.size() ? msgs[i].delimiter : "");
      chat.emplace_back("user", user);
    }
    return o_.chat.render(chat);
  }

 private:
  const EvalOptions& o_;
  std::shared_ptr<const TemplateEngine> engine_;
};

double mean(const std::vector<double>& v) {
  return v.empty() ? NAN : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

json stderr_of_mean(const std::vector<double>& v) {
  if (v.size() < 2) return "N/A";
  const double mu = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - mu) * (x - mu);
  return std::sqrt(ss / double(v.size() - 1)) / std::sqrt(double(v.size()));
}

struct MetricItems {
  std::vector<double> values;   // mean / perplexity: one per doc
  std::vector<double> weights;  // weighted: the doc's words / bytes / tokens
};

double aggregate(const MetricSpec& m, const MetricItems& it) {
  if (m.aggregation == "mean") return mean(it.values);
  if (m.aggregation == "perplexity") return std::exp(-mean(it.values));
  const double ll = std::accumulate(it.values.begin(), it.values.end(), 0.0);
  const double w = std::accumulate(it.weights.begin(), it.weights.end(), 0.0);
  if (m.aggregation == "weighted_perplexity") return std::exp(-ll / w);
  if (m.aggregation == "bits_per_byte") return -ll / w / std::log(2.0);
  throw Error("metric " + m.name + ": unknown aggregation '" + m.aggregation +
              "' (mean, perplexity, weighted_perplexity, bits_per_byte)");
}

}  // namespace

EvalOutput evaluate(const std::vector<TaskConfig>& tasks, LanguageModel& model,
                    const EvalOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  Builder b(o);
  std::vector<TaskRun> runs(tasks.size());
  std::vector<Request> ll_reqs, roll_reqs, gen_reqs;

  // 1. documents, prompts and requests; every template and answer is checked
  //    here, before the model runs
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    TaskRun& run = runs[ti];
    const TaskConfig& t = tasks[ti];
    run.cfg = &t;
    run.num_fewshot = o.num_fewshot.value_or(t.num_fewshot);
    if (t.output_type == OutputType::kLoglikelihoodRolling) run.num_fewshot = 0;
    run.docs = load_docs(t, t.test_split, o.load);
    run.n_original = int64_t(run.docs.size());
    if (o.limit) {
      const double l = *o.limit;
      if (!(l > 0)) throw Error("limit must be positive");
      const double n = l < 1.0 ? std::ceil(double(run.docs.size()) * l) : std::floor(l);
      if (n < double(run.docs.size())) run.docs.resize(size_t(n));
    }
    if (run.num_fewshot > 0) {
      const std::string fs_split = t.fewshot_split.empty() ? t.test_split : t.fewshot_split;
      run.fewshot_docs = load_docs(t, fs_split, o.load);
      // the document itself is never its own example: same split, or one
      // file standing for every split
      std::error_code ec;
      run.fewshot_same_split = fs_split == t.test_split ||
                               (t.data_files.empty() && t.split_field.empty() &&
                                std::filesystem::is_regular_file(t.dataset_path, ec));
    }
    for (size_t di = 0; di < run.docs.size(); ++di) {
      const Doc& d = run.docs[di];
      DocPlan p;
      p.doc = &d;
      p.doc_id = int64_t(di);
      p.target = b.render(t, "doc_to_target", t.doc_to_target, d);
      switch (t.output_type) {
        case OutputType::kMultipleChoice: {
          p.choices = b.choices(t, d);
          p.gold = b.gold(t, d, p.target, p.choices);
          const std::string ctx = b.context(run, d);
          // lm-eval: with a chat template the choice follows the assistant turn directly
          const std::string delim = o.chat.apply_chat_template ? "" : t.target_delimiter;
          for (const auto& c : p.choices) {
            p.request.push_back(ll_reqs.size());
            ll_reqs.push_back({ctx, delim + c, {}, 0});
          }
          break;
        }
        case OutputType::kLoglikelihood:
          p.target_text = value_text(p.target);
          p.request.push_back(ll_reqs.size());
          ll_reqs.push_back({b.context(run, d), p.target_text, {}, 0});
          break;
        case OutputType::kLoglikelihoodRolling:
          p.target_text = value_text(p.target);
          p.request.push_back(roll_reqs.size());
          roll_reqs.push_back({"", p.target_text, {}, 0});
          break;
        case OutputType::kGenerateUntil:
          if (t.has_choices()) {
            p.choices = b.choices(t, d);
            p.target_text = p.choices[size_t(b.gold(t, d, p.target, p.choices))];
          } else {
            p.target_text = p.target.is_array() && !p.target.empty() ? value_text(p.target.front())
                                                                     : value_text(p.target);
          }
          p.request.push_back(gen_reqs.size());
          gen_reqs.push_back({b.context(run, d), "", t.until, t.max_gen_toks});
          break;
      }
      run.plans.push_back(std::move(p));
    }
  }

  // 2. the model, one batch per request kind
  std::vector<LlResult> ll, roll;
  std::vector<std::string> gen;
  if (!ll_reqs.empty()) {
    Progress bar("loglikelihood", int64_t(ll_reqs.size()), "req");
    ll = model.loglikelihood(ll_reqs, [&](int64_t n) { bar.update(n); });
  }
  if (!roll_reqs.empty()) {
    // one context length per call: tasks may differ
    roll.resize(roll_reqs.size());
    Progress bar("rolling", int64_t(roll_reqs.size()), "doc");
    int64_t done = 0;
    for (const auto& run : runs) {
      if (run.cfg->output_type != OutputType::kLoglikelihoodRolling || run.plans.empty()) continue;
      std::vector<Request> mine;
      for (const auto& p : run.plans) mine.push_back(roll_reqs[p.request[0]]);
      const int64_t base = done;
      auto r = model.loglikelihood_rolling(mine, run.cfg->rolling_context_len,
                                           [&](int64_t n) { bar.update(base + n); });
      for (size_t i = 0; i < run.plans.size(); ++i) roll[run.plans[i].request[0]] = r[i];
      done += int64_t(mine.size());
    }
  }
  if (!gen_reqs.empty()) {
    Progress bar("generate_until", int64_t(gen_reqs.size()), "req");
    gen = model.generate_until(gen_reqs, [&](int64_t n) { bar.update(n); });
  }

  // 3. metrics per document, aggregated per task and group
  EvalOutput out;
  json results = json::object(), groups = json::object(), configs = json::object(),
       versions = json::object(), nshot = json::object(), hib = json::object(),
       nsamples = json::object(), group_subtasks = json::object();
  struct GroupAcc {
    std::map<std::string, std::pair<double, double>> sum;  // "metric,filter" -> (sum of value*n, n)
  };
  std::map<std::string, GroupAcc> gacc;
  for (auto& run : runs) {
    const TaskConfig& t = *run.cfg;
    TaskOutput to;
    to.task = t.task;
    // items per "metric,filter" key; generate_until answers go through the
    // task's filter pipelines (lm-eval's "none" = take_first without one)
    std::map<std::string, MetricItems> items;
    std::vector<ResponseFilter> filters;
    std::vector<std::string> filter_names = {"none"};
    if (t.output_type == OutputType::kGenerateUntil) {
      const std::string where = t.yaml_path.empty() ? "task " + t.task : t.yaml_path;
      if (t.filters.empty())
        filters.emplace_back(FilterPipeline{"none", {{"take_first", json::object()}}}, t.repeats,
                             where);
      for (const auto& fp : t.filters) filters.emplace_back(fp, t.repeats, where);
      filter_names.clear();
      for (const auto& f : filters) filter_names.push_back(f.name());
    }
    std::vector<std::vector<json>> logged(filter_names.size());  // lm-eval: filter-major
    for (const auto& p : run.plans) {
      json sample = {{"doc_id", p.doc_id},
                     {"doc", p.doc->fields},
                     {"source", p.doc->where},
                     {"target", p.target},
                     {"filter", "none"}};
      json args = json::array(), resps = json::array();
      json metrics_here = json::object();
      switch (t.output_type) {
        case OutputType::kMultipleChoice: {
          std::vector<double> lls;
          for (size_t r : p.request) {
            lls.push_back(ll[r].logprob);
            args.push_back({{"arg_0", ll_reqs[r].context}, {"arg_1", ll_reqs[r].continuation}});
            resps.push_back(json::array({ll[r].logprob, ll[r].is_greedy}));
          }
          const ChoiceScores s = score_choices(lls, p.choices, p.gold);
          for (const auto& m : t.metrics) {
            const double v = m.name == "acc"        ? s.acc
                             : m.name == "acc_norm" ? s.acc_norm
                                                    : s.acc_bytes;
            items[m.name + ",none"].values.push_back(v);
            metrics_here[m.name] = v;
          }
          break;
        }
        case OutputType::kLoglikelihood: {
          const LlResult& r = ll[p.request[0]];
          args.push_back({{"arg_0", ll_reqs[p.request[0]].context},
                          {"arg_1", ll_reqs[p.request[0]].continuation}});
          resps.push_back(json::array({r.logprob, r.is_greedy}));
          for (const auto& m : t.metrics) {
            const double v = m.name == "acc" ? double(r.is_greedy) : r.logprob;
            items[m.name + ",none"].values.push_back(v);
            metrics_here[m.name] = v;
          }
          break;
        }
        case OutputType::kLoglikelihoodRolling: {
          const LlResult& r = roll[p.request[0]];
          args.push_back({{"arg_0", p.target_text}});
          resps.push_back(json::array({r.logprob}));
          const double words = double(count_words(p.target_text));
          const double bytes = double(p.target_text.size());
          for (const auto& m : t.metrics) {
            const double w = m.name == "word_perplexity"    ? words
                             : m.name == "token_perplexity" ? double(r.tokens)
                                                            : bytes;
            items[m.name + ",none"].values.push_back(r.logprob);
            items[m.name + ",none"].weights.push_back(w);
            metrics_here[m.name] = json::array({r.logprob, w});
          }
          break;
        }
        case OutputType::kGenerateUntil: {
          const std::string& g = gen[p.request[0]];
          const Request& q = gen_reqs[p.request[0]];
          args.push_back({{"arg_0", q.context},
                          {"arg_1", {{"until", q.until}, {"max_gen_toks", q.max_gen_toks}}}});
          // greedy decoding: the `repeats` responses are the same text
          const std::vector<std::string> copies(size_t(t.repeats), g);
          resps.push_back(copies);
          sample["arguments"] = args;
          sample["resps"] = resps;
          sample["metrics"] = json::array();
          for (const auto& m : t.metrics) sample["metrics"].push_back(m.name);
          for (size_t fi = 0; fi < filters.size(); ++fi) {
            const std::string answer = filters[fi].apply(copies);
            json s = sample;
            s["filter"] = filters[fi].name();
            s["filtered_resps"] = json::array({answer});
            for (const auto& m : t.metrics) {
              const double v = score_generation(m, answer, p.target_text);
              items[m.name + "," + filters[fi].name()].values.push_back(v);
              s[m.name] = v;
            }
            if (o.log_samples) logged[fi].push_back(std::move(s));
          }
          continue;
        }
      }
      sample["arguments"] = args;
      sample["resps"] = resps;
      sample["filtered_resps"] = resps;
      sample["metrics"] = json::array();
      for (const auto& m : t.metrics) sample["metrics"].push_back(m.name);
      sample.update(metrics_here);
      if (o.log_samples) logged[0].push_back(std::move(sample));
    }
    for (auto& l : logged)
      for (auto& s : l) to.samples.push_back(std::move(s));
    json r = {{"alias", t.task}};
    json h = json::object();
    for (const auto& f : filter_names)
      for (const auto& m : t.metrics) {
        const MetricItems& it = items[m.name + "," + f];
        const double v = it.values.empty() ? NAN : aggregate(m, it);
        r[m.name + "," + f] = std::isfinite(v) ? json(v) : json("N/A");
        r[m.name + "_stderr," + f] =
            m.aggregation == "mean" ? stderr_of_mean(it.values) : json("N/A");
        h[m.name] = m.higher_is_better;
        if (!t.group.empty() && std::isfinite(v)) {
          auto& [sum, n] = gacc[t.group].sum[m.name + "," + f];
          sum += v * double(it.values.size());
          n += double(it.values.size());
        }
      }
    results[t.task] = r;
    hib[t.task] = h;
    json c = t.raw;
    c["task"] = t.task;
    c["output_type"] = output_type_name(t.output_type);
    c["num_fewshot"] = run.num_fewshot;
    c["target_delimiter"] = t.target_delimiter;
    c["fewshot_delimiter"] = t.fewshot_delimiter;
    c["doc_to_text"] = t.doc_to_text;
    c["doc_to_target"] = t.doc_to_target;
    if (t.doc_to_choice)
      c["doc_to_choice"] = *t.doc_to_choice;
    else if (!t.doc_to_choice_list.empty())
      c["doc_to_choice"] = t.doc_to_choice_list;
    if (!t.yaml_path.empty()) c["yaml_path"] = t.yaml_path;
    configs[t.task] = c;
    versions[t.task] = t.version;
    nshot[t.task] = run.num_fewshot;
    nsamples[t.task] = {{"original", run.n_original}, {"effective", int64_t(run.docs.size())}};
    if (!t.group.empty()) group_subtasks[t.group].push_back(t.task);
    out.tasks.push_back(std::move(to));
  }
  // groups: each metric averaged over the subtasks that report it, weighted by size
  for (const auto& [g, acc] : gacc) {
    json r = {{"alias", g}};
    for (const auto& [key, sn] : acc.sum) {  // key: "metric,filter"
      const size_t comma = key.find(',');
      r[key] = sn.first / sn.second;
      r[key.substr(0, comma) + "_stderr" + key.substr(comma)] = "N/A";
    }
    groups[g] = r;
  }
  for (auto it = group_subtasks.begin(); it != group_subtasks.end(); ++it) {
    if (!groups.contains(it.key())) groups[it.key()] = {{"alias", it.key()}};
    versions[it.key()] = nullptr;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.results = {{"results", results},
                 {"groups", groups},
                 {"group_subtasks", group_subtasks},
                 {"configs", configs},
                 {"versions", versions},
                 {"n-shot", nshot},
                 {"higher_is_better", hib},
                 {"n-samples", nsamples},
                 {"config",
                  {{"model", o.model_name},
                   {"batch_size", o.batch_size},
                   {"limit", o.limit ? json(*o.limit) : json(nullptr)},
                   {"num_fewshot", o.num_fewshot ? json(*o.num_fewshot) : json(nullptr)},
                   {"apply_chat_template", o.chat.apply_chat_template},
                   {"fewshot_as_multiturn", o.chat.fewshot_as_multiturn},
                   {"system_instruction", o.chat.system}}},
                 {"date", double(std::time(nullptr))},
                 {"total_evaluation_time_seconds", std::to_string(secs)}};
  return out;
}

}  // namespace finmoe::eval
