// finmoe demo: the headline pipeline on real text from Debian packages.
//
//   corpus -> tokenizer -> dense base (pretrained from scratch, cached)
//   -> upcycle (FineRMoE, copy) -> continual pretraining on financial text
//      (dense, FineRMoE, copy; same tokens) -> held-out perplexity
//   -> financial QA task: full fine-tuning vs ESFT on the FineRMoE model
//   -> table on stdout, results.json + SVG curves in the output directory.
//
// Every step is a `finmoe` subcommand run as a child process (the same
// commands a user would type; each prints its own progress), so the demo is
// also a worked example. The corpus, tokenizer and base model are cached
// across runs (--cache); every later step's output directory holds a marker
// with a key of its inputs (pipeline.h), so a killed demo run again with the
// same --out resumes at the step it was in, and a step whose inputs changed
// (other --scale, another base) reruns.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/pipeline.h"
#include "finmoe/config.h"
#include "convert/svg.h"
#include "core/file_util.h"
#include "finmoe/error.h"

namespace finmoe::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct DemoOptions {
  std::string out = "demo-out";
  std::string cache;       // default ~/.cache/finmoe/demo
  double scale = 1.0;      // multiplies every step count
  int64_t vocab = 4096;
  int64_t seq_len = 256;
  int64_t batch = 8;
  bool offline = false;
  bool skip_esft = false;
};

// bold on a terminal only: a redirected log carries no escape codes
void banner(const std::string& s) {
  static const bool tty = ::isatty(STDOUT_FILENO) == 1;
  std::cout << "\n" << (tty ? "\033[1m== " : "== ") << s << (tty ? "\033[0m\n" : "\n")
            << std::flush;
}

// Runs `finmoe ARGS...` (echoed first); stdout goes to `stdout_file` when
// given. Throws Error naming the step when the child fails.
void finmoe(const std::vector<std::string>& args, const std::string& stdout_file = "") {
  std::cout << "$ " << command_line(args) << "\n" << std::flush;
  const int status = run_finmoe(args, stdout_file);
  if (status != 0)
    throw Error("demo: step `finmoe " + args.front() + (args.size() > 1 ? " " + args[1] : "") +
                "` failed (exit status " + std::to_string(status) + ")");
}

std::string yaml_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + json(v[i]).dump();
  return s + "]";
}

class Demo {
 public:
  explicit Demo(DemoOptions o) : o_(std::move(o)) {
    if (o_.cache.empty()) {
      const char* home = std::getenv("HOME");
      o_.cache = std::string(home ? home : ".") + "/.cache/finmoe/demo";
    }
    fs::create_directories(o_.out);
    fs::create_directories(o_.cache);
    o_.out = fs::absolute(o_.out).string();
    o_.cache = fs::absolute(o_.cache).string();
  }

  int run() {
    const auto t0 = std::chrono::steady_clock::now();
    data();
    base();
    upcycle_and_cpt();
    task();
    report(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }

 private:
  int64_t steps(int64_t n) const { return std::max<int64_t>(2, std::llround(n * o_.scale)); }
  std::string corpus(const std::string& domain, const std::string& split) const {
    return o_.cache + "/corpus/" + domain + "/" + split + ".jsonl";
  }

  void data() {
    banner("1. real text from Debian packages (cached in " + o_.cache + ")");
    std::vector<std::string> offline;
    if (o_.offline) offline.push_back("--offline");
    if (!fs::exists(o_.cache + "/corpus/manifest.json")) {
      std::vector<std::string> a{"corpus", "fetch", "--out", o_.cache + "/corpus"};
      a.insert(a.end(), offline.begin(), offline.end());
      finmoe(a);
    }
    if (!fs::exists(o_.cache + "/qa/manifest.json")) {
      std::vector<std::string> a{"corpus", "qa", "--out", o_.cache + "/qa"};
      a.insert(a.end(), offline.begin(), offline.end());
      finmoe(a);
    }
    // Cached artefacts are keyed by the settings that shape them, so a run with
    // other settings trains its own instead of reusing a mismatched one.
    tokenizer_ = o_.cache + "/tokenizer-v" + std::to_string(o_.vocab);
    if (!fs::exists(tokenizer_ + "/tokenizer.json")) {
      banner("2. byte-level BPE tokenizer trained on the corpus");
      finmoe({"tokenizer", "train", "--vocab-size", std::to_string(o_.vocab),
              corpus("general", "train"), corpus("fin", "train"), corpus("zh", "train"), tokenizer_});
    }
  }

  // Runs `work`, which writes `dir`, unless dir holds the finished marker of
  // this step's key: `inputs` (its commands and configs) and the keys of the
  // earlier steps whose directories they name.
  void step(const std::string& what, const std::string& dir, const std::string& inputs,
            const std::function<void()>& work) {
    std::string text = "demo step\n" + inputs + "\n";
    for (const auto& [d, k] : keys_)
      if (inputs.find(d) != std::string::npos) text += "upstream " + k + "\n";
    const std::string key = hash_key(text);
    keys_.emplace_back(dir, key);
    const StepState state = step_state(dir, key);
    if (state == StepState::Cached) {
      std::cout << "  " << what << ": done in an earlier run (" << dir << ")\n";
      return;
    }
    if (state == StepState::Unfinished) std::cout << "  " << what << ": rerunning the unfinished " << dir << "\n";
    if (state == StepState::Stale) std::cout << "  " << what << ": inputs changed, rerunning " << dir << "\n";
    if (fs::exists(dir)) remove_tree(dir);
    work();
    fs::create_directories(dir);
    mark_step_finished(dir, key, {{"step", what}});
  }

  // `finmoe train` from a YAML written here (OUT/configs/NAME.yaml).
  void run_train(const std::string& name, const std::string& yaml) {
    const std::string cfg = o_.out + "/configs/" + name + ".yaml";
    fs::create_directories(o_.out + "/configs");
    write_text(cfg, yaml);
    finmoe({"train", "--config", cfg});
  }

  // A cached training step; returns the run's summary.
  json train(const std::string& name, const std::string& yaml, const std::string& run_dir) {
    step("train " + name, run_dir, "train\n" + yaml, [&] { run_train(name, yaml); });
    return read_json(run_dir + "/train_summary.json");
  }

  std::string common_yaml(const std::string& run_dir, int64_t n_steps, double lr) const {
    std::ostringstream y;
    y << "output_dir: " << json(run_dir).dump() << "\n"
      << "lr: " << lr << "\nmin_lr: " << lr / 10 << "\nwarmup_ratio: 0.05\n"
      << "max_steps: " << n_steps << "\nweight_decay: 0.1\ngrad_clip: 1.0\n"
      << "log_interval: 0\nsave_interval: 0\nseed: 1\n";
    return y.str();
  }

  std::string data_yaml(const std::vector<std::string>& files, const std::vector<std::string>& eval,
                        const std::string& format) const {
    std::ostringstream y;
    y << "data:\n  files: " << yaml_list(files) << "\n  format: " << format
      << "\n  seq_len: " << o_.seq_len << "\n  batch_size: " << o_.batch << "\n"
      << "eval_data:\n  files: " << yaml_list(eval) << "\n  format: " << format << "\n"
      << "eval_batches: 8\n";
    return y.str();
  }

  void base() {
    const int64_t n_steps = steps(300);
    base_run_ = o_.cache + "/base-v" + std::to_string(o_.vocab) + "-t" + std::to_string(o_.seq_len) +
                "-b" + std::to_string(o_.batch) + "-n" + std::to_string(n_steps);
    if (fs::exists(base_run_ + "/train_summary.json")) {
      banner("3. dense base model: cached (" + base_run_ + ")");
    } else {
      banner("3. a small dense Qwen2-style model pretrained from scratch on general English + Chinese");
      std::string y = "mode: pretrain\ninit_preset: small\ntokenizer: " + json(tokenizer_).dump() +
                      "\n" + common_yaml(base_run_, n_steps, 1.5e-3) +
                      "eval_interval: " + std::to_string(steps(75)) + "\n" +
                      data_yaml({corpus("general", "train"), corpus("zh", "train")},
                                {corpus("general", "test")}, "text");
      if (fs::exists(base_run_)) remove_tree(base_run_);
      run_train("base", y);
    }
    base_ = latest_checkpoint(base_run_);
    // what later steps read of the cache: a rebuilt base changes their keys
    keys_.emplace_back(base_run_, hash_key(read_text_file(base_run_ + "/train_summary.json")));
    keys_.emplace_back(o_.cache + "/qa", hash_key(read_text_file(o_.cache + "/qa/manifest.json")));
    keys_.emplace_back(o_.cache + "/corpus", hash_key(read_text_file(o_.cache + "/corpus/manifest.json")));
  }

  json eval_ppl(const std::string& model, const std::string& file, const std::string& format,
                const std::string& tag) {
    const std::string dir = o_.out + "/eval/" + tag, out = dir + "/eval.json";
    const std::vector<std::string> args{"eval", "ppl", model, "--data", file, "--format", format, "--seq-len",
                                        std::to_string(o_.seq_len), "--batch-size", std::to_string(o_.batch),
                                        "--batches", "8", "--json"};
    step("eval " + tag, dir, command_line(args), [&] {
      fs::create_directories(dir);
      finmoe(args, out);
    });
    return read_json(out);
  }

  void upcycle_and_cpt() {
    banner("4. upcycle the dense base: FineRMoE and the copy (C32A2-style) baseline");
    models_["dense"] = base_;
    for (const char* preset : {"finermoe", "copy"}) {
      const std::string dir = o_.out + "/upcycled-" + preset;
      const std::vector<std::string> args{"upcycle", base_, dir, "--preset", preset, "--seed", "1"};
      step(std::string("upcycle ") + preset, dir, command_line(args), [&] { finmoe(args); });
      models_[preset] = dir;
    }
    banner("5. continual pretraining on financial English, same tokens for each model");
    const std::map<std::string, const char*> label{
        {"dense", "dense"}, {"finermoe", "FineRMoE"}, {"copy", "copy"}};
    for (const std::string name : {"dense", "finermoe", "copy"}) {
      const std::string run_dir = o_.out + "/cpt-" + name;
      std::string y = "mode: cpt\nmodel: " + json(models_[name]).dump() + "\n" +
                      common_yaml(run_dir, steps(100), 5e-4) +
                      "eval_interval: " + std::to_string(steps(25)) + "\n" +
                      data_yaml({corpus("fin", "train")}, {corpus("fin", "test")}, "text");
      json summary = train("cpt-" + name, y, run_dir);
      json r;
      r["model"] = label.at(name);
      r["tokens"] = summary.value("tokens", 0);
      r["tokens_per_second"] = summary.value("tokens_per_second", 0.0);
      r["before"] = {{"fin_ppl", eval_ppl(models_[name], corpus("fin", "test"), "text",
                                          "before-" + name + "-fin")["ppl"]}};
      const std::string after = latest_checkpoint(run_dir);
      cpt_models_[name] = after;
      r["after"] = {
          {"fin_ppl", eval_ppl(after, corpus("fin", "test"), "text", name + "-fin")["ppl"]},
          {"general_ppl",
           eval_ppl(after, corpus("general", "test"), "text", name + "-general")["ppl"]}};
      cpt_[name] = r;
    }
    write_text(o_.out + "/cpt_loss.svg",
               plot_curves({read_curve(o_.out + "/cpt-dense", "dense", "#444444", "loss"),
                            read_curve(o_.out + "/cpt-finermoe", "FineRMoE", "#d62728", "loss"),
                            read_curve(o_.out + "/cpt-copy", "copy", "#1f77b4", "loss")},
                           "continual pretraining on financial text: train loss"));
  }

  // Each method gets its own learning rate, as in the ESFT paper (§4: FFT 3e-5,
  // ESFT 1e-5 at 16B scale after a per-method search); ESFT's few small experts
  // need a larger step than full fine-tuning at this model size.
  json task_run(const std::string& name, const std::string& mode_yaml, const std::string& model,
                double lr) {
    const std::string run_dir = o_.out + "/task-" + name;
    std::string y = mode_yaml + "model: " + json(model).dump() + "\n" +
                    common_yaml(run_dir, steps(60), lr) +
                    data_yaml({o_.cache + "/qa/train.jsonl"}, {o_.cache + "/qa/test.jsonl"}, "sft");
    json summary = train("task-" + name, y, run_dir);
    const std::string ckpt = latest_checkpoint(run_dir);
    json r;
    r["method"] = name;
    r["steps"] = summary.value("steps", 0);
    r["seconds"] = summary.value("seconds", 0.0);
    r["seconds_per_step"] = summary.value("seconds", 0.0) / std::max<double>(1, summary.value("steps", 1));
    r["checkpoint_bytes"] = summary.value("checkpoint_bytes", dir_bytes(ckpt));
    if (summary.contains("trainable_params")) r["trainable_parameters"] = summary["trainable_params"];
    r["task_loss"] = eval_ppl(ckpt, o_.cache + "/qa/test.jsonl", "sft", "task-" + name)["loss"];
    r["general_ppl"] =
        eval_ppl(ckpt, corpus("general", "test"), "text", "task-" + name + "-general")["ppl"];
    return r;
  }

  void task() {
    banner("6. financial QA task on the FineRMoE model: full fine-tuning vs ESFT");
    const std::string model = cpt_models_.at("finermoe");
    json before;
    before["method"] = "none (after CPT)";
    before["task_loss"] = eval_ppl(model, o_.cache + "/qa/test.jsonl", "sft", "task-before")["loss"];
    before["general_ppl"] = cpt_["finermoe"]["after"]["general_ppl"];
    task_.push_back(before);
    task_.push_back(task_run("fft", "mode: sft\n", model, 3e-4));
    if (!o_.skip_esft) {
      const std::string dir = o_.out + "/esft";
      const std::string scores = dir + "/scores.json", experts = dir + "/experts.json";
      const std::vector<std::string> score{"esft", "score", model, "--data", o_.cache + "/qa/train.jsonl",
                                           "--out", scores};
      const std::vector<std::string> select{"esft", "select", scores, "--score", "token", "--p", "0.2",
                                            "--out", experts};
      step("esft score + select", dir, command_line(score) + "\n" + command_line(select), [&] {
        fs::create_directories(dir);
        finmoe(score);
        finmoe(select);
      });
      task_.push_back(
          task_run("esft", "mode: esft\nesft:\n  expert_config: " + json(experts).dump() + "\n", model,
                   1e-3));
    }
    std::vector<Curve> curves{read_curve(o_.out + "/task-fft", "full FT", "#444444", "loss")};
    if (!o_.skip_esft) curves.push_back(read_curve(o_.out + "/task-esft", "ESFT", "#d62728", "loss"));
    write_text(o_.out + "/task_loss.svg", plot_curves(curves, "financial QA fine-tuning: train loss"));
  }

  void report(double seconds) {
    json results{{"corpus", read_json(o_.cache + "/corpus/manifest.json")},
                 {"base", read_json(base_run_ + "/train_summary.json")},
                 {"cpt", json::array()},
                 {"task", task_},
                 {"seconds", seconds}};
    for (const char* n : {"dense", "finermoe", "copy"}) results["cpt"].push_back(cpt_[n]);
    write_text(o_.out + "/results.json", results.dump(2) + "\n");

    std::ostringstream t;
    char buf[256];
    t << "\nContinual pretraining on financial text (held-out perplexity, lower is better)\n";
    std::snprintf(buf, sizeof buf, "| %-9s | %8s | %12s | %11s | %11s | %9s |\n", "model",
                  "tokens", "fin ppl before", "fin ppl after", "general ppl", "tok/s");
    t << buf << "|-----------|----------|----------------|---------------|-------------|-----------|\n";
    for (const char* n : {"dense", "finermoe", "copy"}) {
      const json& r = cpt_[n];
      std::snprintf(buf, sizeof buf, "| %-9s | %8lld | %14.2f | %13.2f | %11.2f | %9.0f |\n",
                    r["model"].get<std::string>().c_str(), (long long)r["tokens"].get<int64_t>(),
                    r["before"]["fin_ppl"].get<double>(), r["after"]["fin_ppl"].get<double>(),
                    r["after"]["general_ppl"].get<double>(), r["tokens_per_second"].get<double>());
      t << buf;
    }
    t << "\nFinancial QA task on the FineRMoE model (task loss on held-out questions)\n";
    std::snprintf(buf, sizeof buf, "| %-16s | %9s | %11s | %14s | %13s | %8s |\n", "method",
                  "task loss", "general ppl", "trainable", "saved weights", "s/step");
    t << buf << "|------------------|-----------|-------------|----------------|---------------|----------|\n";
    for (const json& r : task_) {
      const auto cell = [&](const char* k, const char* fmt) {
        char c[32] = "-";
        if (r.contains(k)) std::snprintf(c, sizeof c, fmt, r[k].get<double>());
        return std::string(c);
      };
      std::snprintf(buf, sizeof buf, "| %-16s | %9s | %11s | %14s | %13s | %8s |\n",
                    r["method"].get<std::string>().c_str(), cell("task_loss", "%.3f").c_str(),
                    cell("general_ppl", "%.2f").c_str(), cell("trainable_parameters", "%.0f").c_str(),
                    cell("checkpoint_bytes", "%.0f").c_str(), cell("seconds_per_step", "%.3f").c_str());
      t << buf;
    }
    std::snprintf(buf, sizeof buf, "\ntotal %.0f s; results in %s (results.json, cpt_loss.svg, task_loss.svg)\n",
                  seconds, o_.out.c_str());
    t << buf;
    write_text(o_.out + "/summary.md", t.str());
    std::cout << t.str();
  }

  DemoOptions o_;
  std::string tokenizer_, base_run_, base_;
  std::map<std::string, std::string> models_, cpt_models_;
  std::map<std::string, json> cpt_;
  json task_ = json::array();
  std::vector<std::pair<std::string, std::string>> keys_;  // step directory -> its key
};

}  // namespace

void add_demo(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "demo", "The headline pipeline on real Debian-packaged text: tokenizer, dense base, "
              "upcycling, continual pretraining, ESFT vs full fine-tuning; a results table");
  static DemoOptions o;
  c->add_option("--out", o.out, "results directory")->capture_default_str();
  c->add_option("--cache", o.cache, "downloads, corpus, tokenizer and base model (default ~/.cache/finmoe/demo)");
  c->add_option("--scale", o.scale, "multiplies every training step count (0.1 = a quick look)")
      ->capture_default_str();
  c->add_option("--vocab-size", o.vocab, "tokenizer vocabulary")->capture_default_str();
  c->add_option("--seq-len", o.seq_len, "training sequence length")->capture_default_str();
  c->add_option("--batch-size", o.batch, "sequences per step")->capture_default_str();
  c->add_flag("--offline", o.offline, "use cached Debian packages only");
  c->add_flag("--skip-esft", o.skip_esft, "full fine-tuning only");
  c->callback([&run] {
    run = [] { return Demo(o).run(); };
  });
}

}  // namespace finmoe::cli
