// finmoe eval: the task harness (`finmoe eval MODEL --tasks ...`, also
// `eval run`), result comparison, the built-in task list, and held-out
// perplexity of text or SFT files (`eval ppl`).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "core/progress.h"
#include "finmoe/config.h"
#include "finmoe/dataset.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"
#include "finmoe/eval_model.h"
#include "finmoe/model.h"
#include "finmoe/train.h"

namespace finmoe::cli {

namespace {

struct TaskArgs {
  std::string model, tasks, out, device = "cpu", dtype = "float32", data_dir, model_url,
                                 api_key_file, served_name, system, chat_template;
  std::optional<int> num_fewshot;
  std::optional<double> limit;
  int64_t batch_size = 16, max_length = 0;
  bool log_samples = false, apply_chat_template = false, fewshot_as_multiturn = true,
       skip_bad = false, json = false;
};

void add_task_options(CLI::App* c, TaskArgs& a, bool model_positional) {
  if (model_positional)
    c->add_option("MODEL", a.model, "model directory (HF format, with tokenizer.json)");
  const char* g = "Tasks";
  c->add_option("--tasks", a.tasks,
                "comma-separated: built-in tasks/groups (finmoe eval tasks), task .yaml files, "
                "or directories of them")
      ->group(g);
  c->add_option("--num-fewshot", a.num_fewshot,
                "few-shot examples per prompt (default: each task's num_fewshot)")
      ->group(g);
  c->add_option("--limit", a.limit,
                "documents per task: a count, or a fraction when < 1 (default: all)")
      ->group(g);
  c->add_option(
       "--data-dir", a.data_dir,
       "where built-in tasks find their data (default: the demo cache, ~/.cache/finmoe/demo)")
      ->group(g);
  c->add_flag("--skip-bad", a.skip_bad,
              "skip malformed data lines (each reported) instead of failing")
      ->group(g);
  const char* m = "Model";
  c->add_option("--batch-size", a.batch_size, "requests per forward step")
      ->capture_default_str()
      ->group(m);
  c->add_option("--max-length", a.max_length,
                "context window (default: the model's max_position_embeddings)")
      ->group(m);
  c->add_option("--device", a.device, "cpu | cuda | cuda:N")->capture_default_str()->group(m);
  c->add_option("--dtype", a.dtype, "float32 | bfloat16")->capture_default_str()->group(m);
  c->add_option("--model-url", a.model_url,
                "an OpenAI-compatible server (finmoe serve or another) for generate_until tasks "
                "instead of MODEL")
      ->group(m);
  c->add_option("--model-name", a.served_name, "the \"model\" field sent to --model-url")->group(m);
  c->add_option("--api-key-file", a.api_key_file,
                "API key for --model-url (first line; else env FINMOE_API_KEY)")
      ->group(m);
  const char* ch = "Chat";
  c->add_flag("--apply-chat-template", a.apply_chat_template,
              "format prompts with the tokenizer's chat template")
      ->group(ch);
  c->add_option("--chat-template", a.chat_template,
                "chatml | llama3 | deepseek_v3 (default: detect)")
      ->group(ch);
  c->add_option("--system", a.system, "system instruction prepended to every prompt")->group(ch);
  c->add_flag(
       "--fewshot-as-multiturn,!--no-fewshot-as-multiturn", a.fewshot_as_multiturn,
       "with a chat template: few-shot examples as user/assistant turns (default) or one user turn")
      ->group(ch);
  const char* o = "Output";
  c->add_option("--out", a.out, "write results.json, results.md (and samples_TASK.jsonl) here")
      ->group(o);
  c->add_flag("--log-samples", a.log_samples, "with --out: one JSONL line per document and request")
      ->group(o);
  c->add_flag("--json", a.json, "print the result JSON instead of the Markdown table")->group(o);
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ','))
    if (!x.empty()) out.push_back(x);
  return out;
}

int run_tasks(const TaskArgs& a) {
  if (a.tasks.empty())
    throw Error("--tasks is required (see `finmoe eval tasks` for the built-in ones)");
  if (a.model.empty() && a.model_url.empty())
    throw Error("give MODEL (a model directory) or --model-url");
  if (!a.model.empty() && !a.model_url.empty()) throw Error("give MODEL or --model-url, not both");
  if (a.batch_size < 1) throw Error("--batch-size must be at least 1");
  if (a.limit && !(*a.limit > 0)) throw Error("--limit must be positive");
  if (a.num_fewshot && *a.num_fewshot < 0) throw Error("--num-fewshot must be >= 0");
  if (a.log_samples && a.out.empty()) throw Error("--log-samples needs --out DIR");
  std::string data_dir = a.data_dir;
  if (data_dir.empty()) {
    const char* home = std::getenv("HOME");
    data_dir = std::string(home ? home : ".") + "/.cache/finmoe/demo";
  }
  const auto tasks = eval::resolve_tasks(split_commas(a.tasks), data_dir);

  eval::EvalOptions eo;
  eo.num_fewshot = a.num_fewshot;
  eo.limit = a.limit;
  eo.log_samples = a.log_samples;
  eo.batch_size = a.batch_size;
  eo.load.skip_bad = a.skip_bad;
  eo.load.warn = [](const std::string& m) { std::cerr << "finmoe: warning: " << m << "\n"; };
  eo.chat.apply_chat_template = a.apply_chat_template;
  eo.chat.fewshot_as_multiturn = a.fewshot_as_multiturn;
  eo.chat.system = a.system;
  eo.model_name = a.model.empty() ? a.model_url : a.model;

  std::optional<Transformer> model;
  std::optional<Tokenizer> tok;
  std::unique_ptr<eval::LanguageModel> lm;
  if (!a.model.empty()) {
    model.emplace(load_model(
        a.model, {.dtype = dtype_from_string(a.dtype), .device = device_from_string(a.device)}));
    tok.emplace(Tokenizer::from_dir(a.model));
    eval::LocalModelOptions lo;
    lo.batch_size = a.batch_size;
    lo.max_length = a.max_length;
    lm = eval::make_local_model(*model, *tok, lo);
    if (a.apply_chat_template) {
      std::optional<ChatTemplateKind> kind;
      if (!a.chat_template.empty())
        kind = chat_template_from_name(a.chat_template);
      else
        kind = detect_chat_template(tok->config());
      const Tokenizer* t = &*tok;
      eo.chat.render = [t, kind](const std::vector<std::pair<std::string, std::string>>& msgs) {
        std::vector<ChatMessage> m;
        for (const auto& [role, content] : msgs) m.push_back({role, content});
        return render_chat(*t, m, /*add_generation_prompt=*/true, kind);
      };
    }
  } else {
    if (a.apply_chat_template)
      throw Error(
          "--apply-chat-template with --model-url: the server applies its own template; "
          "evaluate through /v1/completions without it");
    eval::HttpModelOptions ho;
    ho.url = a.model_url;
    ho.model = a.served_name;
    ho.batch_size = a.batch_size;
    if (!a.api_key_file.empty()) {
      std::ifstream in(a.api_key_file);
      if (!in) throw Error("--api-key-file " + a.api_key_file + ": cannot open");
      std::getline(in, ho.api_key);
    } else if (const char* k = std::getenv("FINMOE_API_KEY")) {
      ho.api_key = k;
    }
    lm = eval::make_http_model(ho);
  }
  const auto out = eval::evaluate(tasks, *lm, eo);
  if (!a.out.empty())
    for (const auto& p : eval::write_outputs(out, a.out)) std::cerr << "wrote " << p << "\n";
  if (a.json)
    std::cout << out.results.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else
    std::cout << eval::markdown_report(out.results);
  return 0;
}

}  // namespace

void add_eval(CLI::App& app, Run& run) {
  auto* e = app.add_subcommand("eval",
                               "Evaluate a model: `eval MODEL --tasks T1,T2` (lm-eval-style "
                               "tasks), `eval ppl`, `eval compare`");
  e->require_subcommand(0, 1);
  static TaskArgs direct, sub;
  add_task_options(e, direct, true);
  e->callback([e, &run] {
    if (!e->get_subcommands().empty()) return;
    run = [] { return run_tasks(direct); };
  });

  auto* r = e->add_subcommand("run", "Run evaluation tasks (the same as `eval MODEL --tasks ...`)");
  add_task_options(r, sub, true);
  r->callback([&run] { run = [] { return run_tasks(sub); }; });

  auto* t = e->add_subcommand("tasks", "List the built-in tasks and groups");
  t->callback([&run] {
    run = [] {
      for (const auto& [n, about] : eval::builtin_task_names())
        std::printf("%-20s %s\n", n.c_str(), about.c_str());
      return 0;
    };
  });

  auto* c = e->add_subcommand("compare", "Side-by-side table of two result files, with deltas");
  static std::string ca, cb, cout_path;
  c->add_option("A", ca, "results.json (baseline)")->required();
  c->add_option("B", cb, "results.json (compared)")->required();
  c->add_option("--out", cout_path, "also write the table to this Markdown file");
  c->callback([&run] {
    run = [] {
      const std::string md = eval::compare_report(read_json_file(ca), read_json_file(cb), "A", "B");
      const std::string text = "A: " + ca + "\nB: " + cb + "\n\n" + md;
      if (!cout_path.empty()) write_file_atomic(cout_path, text);
      std::cout << text;
      return 0;
    };
  });

  auto* p = e->add_subcommand(
      "ppl",
      "Perplexity per label token on held-out files (text: every token; sft: assistant tokens)");
  static std::string dir, format = "auto", device = "cpu", dtype = "float32";
  static std::vector<std::string> files;
  static int64_t seq_len = 256, batch_size = 8, batches = 16;
  static bool json = false;
  p->add_option("MODEL_DIR", dir, "model directory (HF format, with tokenizer.json)")->required();
  p->add_option("--data", files, ".jsonl ({\"text\"} / {\"messages\"}) or plain text files")
      ->required();
  p->add_option("--format", format, "text | sft | auto (per record)")->capture_default_str();
  p->add_option("--seq-len", seq_len, "tokens per row")->capture_default_str();
  p->add_option("--batch-size", batch_size, "rows per batch")->capture_default_str();
  p->add_option("--batches", batches,
                "batches to evaluate (the files are read in order and wrap around)")
      ->capture_default_str();
  p->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  p->add_option("--dtype", dtype,
                "float32 | bfloat16: the weights (int8 ones stay int8) and activations")
      ->capture_default_str();
  p->add_flag("--json", json, "print one JSON object");
  p->callback([&run] {
    run = [] {
      auto model = load_model(
          dir, {.dtype = dtype_from_string(dtype), .device = device_from_string(device)});
      const auto tok = Tokenizer::from_dir(dir);
      DataConfig dc;
      dc.files = files;
      dc.format = format;
      dc.seq_len = seq_len;
      dc.batch_size = batch_size;
      dc.shuffle = false;
      auto source = make_batch_source(dc, tok);
      EvalResult r;
      {
        Progress bar("eval", batches, "batch");
        r = evaluate_lm(model, *source, batches, [&](int64_t done) { bar.update(done); });
      }
      if (json) {
        std::cout << nlohmann::json{{"model", dir},   {"data", files}, {"dtype", dtype},
                                    {"loss", r.loss}, {"ppl", r.ppl},  {"tokens", r.tokens}}
                         .dump()
                  << "\n";
      } else {
        std::printf("loss %.4f  ppl %.3f  over %lld label tokens\n", r.loss, r.ppl,
                    static_cast<long long>(r.tokens));
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
