// Best-checkpoint keeping (HF's metric_for_best_model, greater_is_better,
// load_best_model_at_end): a run whose eval loss falls, then rises (the
// training data changes its pattern half-way; the eval data keeps the
// first), records the checkpoint of the lowest eval loss in the metrics,
// keeps it through keep_checkpoints rotation and a resume, and hands its
// weights over at the end. Config errors name both keys.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "../expect_error.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;
using test::TempDir;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Rows of a cycle mod 7: next = current + 1 for the first `switch_at` batches
// (and always for eval data), next = current - 1 after.
class PhaseSource : public BatchSource {
 public:
  PhaseSource(const DataConfig& c, int64_t switch_at) : c_(c), switch_at_(switch_at) {}
  TrainBatch next() override {
    const int64_t B = c_.batch_size, T = c_.seq_len;
    const bool down = switch_at_ >= 0 && index_ >= switch_at_;
    auto tokens = torch::empty({B, T + 1}, torch::kInt64);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t <= T; ++t) {
        const int64_t r = index_ * B + b;
        tokens[b][t] = (down ? ((r - t) % 7 + 7) % 7 : (r + t) % 7) + 3;
      }
    TrainBatch batch;
    batch.tokens = tokens.narrow(1, 0, T).contiguous();
    batch.labels = tokens.narrow(1, 1, T).clone();
    ++index_;
    return batch;
  }
  nlohmann::json state() const override { return {{"index", index_}}; }
  void restore(const nlohmann::json& s) override { index_ = s.at("index").get<int64_t>(); }

 private:
  DataConfig c_;
  int64_t switch_at_;
  int64_t index_ = 0;
};

TrainerHooks phase_hooks(int64_t switch_at) {
  TrainerHooks h;
  h.progress = false;
  h.make_source = [=](const DataConfig& c) -> std::unique_ptr<BatchSource> {
    const bool eval = !c.files.empty() && c.files[0] == "eval";
    return std::make_unique<PhaseSource>(c, eval ? -1 : switch_at);
  };
  return h;
}

TrainConfig phase_config(const std::string& model, const std::string& out) {
  TrainConfig c = test::tiny_train_config(model, out);
  c.eval_data.files = {"eval"};
  c.eval_batches = 1;
  c.lr = 1e-2;
  c.schedule = "constant";
  c.warmup_steps = 0;
  c.max_steps = 8;
  c.eval_interval = 2;
  c.save_interval = 2;
  c.keep_checkpoints = 1;
  c.report_to = {"none"};
  return c;
}

std::map<std::string, torch::Tensor> params_of(Transformer& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [n, t] : m.named_parameters()) out[n] = t.detach().clone();
  return out;
}

std::vector<std::string> checkpoint_names(const std::string& out) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().starts_with("checkpoint-"))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The evaluated step with the lowest (or highest) eval_loss, from metrics.jsonl.
std::pair<int64_t, double> best_in_metrics(const std::string& out, bool greater) {
  std::ifstream in(out + "/metrics.jsonl");
  int64_t best_step = -1;
  double best = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("eval_loss")) continue;
    const double v = j["eval_loss"].get<double>();
    if (best_step < 0 || (greater ? v > best : v < best)) best_step = j["step"], best = v;
  }
  return {best_step, best};
}

TEST(BestCheckpoint, LoadBestModelAtEndHandsOverTheLowestEvalLossAndRotationKeepsIt) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 11);
  TrainConfig c = phase_config(model.str(), out.str());
  c.load_best_model_at_end = true;
  Trainer t(c, phase_hooks(/*switch_at=*/4));
  const TrainSummary s = t.run();
  const auto [step, loss] = best_in_metrics(out.str(), false);
  ASSERT_GT(step, 0);
  ASSERT_LT(step, 8) << "the data should make the eval loss rise after the switch";
  const std::string best = (fs::path(out.str()) / ("checkpoint-" + std::to_string(step))).string();
  EXPECT_EQ(s.best_checkpoint, best);
  EXPECT_EQ(s.best_step, step);
  EXPECT_DOUBLE_EQ(s.best_metric, loss);
  EXPECT_EQ(s.checkpoint, best);  // the run's model
  EXPECT_EQ(s.last_checkpoint, out.str() + "/checkpoint-8");
  // keep_checkpoints 1: the newest, and the best one
  EXPECT_EQ(checkpoint_names(out.str()),
            (std::vector<std::string>{"checkpoint-" + std::to_string(step), "checkpoint-8"}));
  EXPECT_EQ(slurp(out.str() + "/latest"), "checkpoint-8\n");
  // the model at the end holds the best checkpoint's weights, not the last's
  Transformer saved = load_model(best, {torch::kFloat32});
  Transformer last = load_model(out.str() + "/checkpoint-8", {torch::kFloat32});
  const auto now = params_of(t.model());
  const auto last_params = params_of(last);
  bool differs_from_last = false;
  for (auto& [n, p] : saved.named_parameters()) {
    EXPECT_TRUE(torch::equal(p, now.at(n))) << n;
    differs_from_last |= !torch::equal(p, last_params.at(n));
  }
  EXPECT_TRUE(differs_from_last);
  // recorded in the summary and in the last checkpoint's trainer state
  const auto summary = nlohmann::json::parse(slurp(out.str() + "/train_summary.json"));
  EXPECT_EQ(summary["best_checkpoint"], best);
  EXPECT_DOUBLE_EQ(summary["best_metric"].get<double>(), loss);
  EXPECT_EQ(summary["checkpoint"], best);
  const auto state = nlohmann::json::parse(slurp(out.str() + "/checkpoint-8/trainer_state.json"));
  EXPECT_EQ(state["best_checkpoint"], "checkpoint-" + std::to_string(step));
  EXPECT_EQ(state["best_step"], step);
  EXPECT_DOUBLE_EQ(state["best_metric"].get<double>(), loss);

  // resumed further on the second pattern: the best stays, rotation still keeps it
  c.max_steps = 12;
  c.resume = "auto";
  Trainer t2(c, phase_hooks(4));
  const TrainSummary s2 = t2.run();
  const auto [step2, loss2] = best_in_metrics(out.str(), false);
  EXPECT_EQ(s2.best_checkpoint,
            (fs::path(out.str()) / ("checkpoint-" + std::to_string(step2))).string());
  EXPECT_DOUBLE_EQ(s2.best_metric, loss2);
  EXPECT_TRUE(fs::exists(s2.best_checkpoint));
  // kept: the newest, the one resumed from and the best
  std::set<std::string> want = {"checkpoint-12", "checkpoint-8", "checkpoint-" + std::to_string(step2)};
  const auto names = checkpoint_names(out.str());
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), want);
}

TEST(BestCheckpoint, GreaterIsBetterAndWithoutLoadBestTheLastCheckpointIsTheModel) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 11);
  TrainConfig c = phase_config(model.str(), out.str());
  c.greater_is_better = true;
  Trainer t(c, phase_hooks(4));
  const TrainSummary s = t.run();
  const auto [step, v] = best_in_metrics(out.str(), true);
  EXPECT_EQ(s.best_step, step);
  EXPECT_DOUBLE_EQ(s.best_metric, v);
  EXPECT_EQ(s.checkpoint, out.str() + "/checkpoint-8");
  Transformer last = load_model(s.checkpoint, {torch::kFloat32});
  const auto now = params_of(t.model());
  for (auto& [n, p] : last.named_parameters()) EXPECT_TRUE(torch::equal(p, now.at(n))) << n;
}

TEST(BestCheckpoint, ConfigErrorsNameTheKeys) {
  const std::string base =
      "model: m\noutput_dir: o\ndata: {files: [a.jsonl]}\nmax_steps: 10\n"
      "eval_data: {files: [b.jsonl]}\nload_best_model_at_end: true\n";
  auto msg = message_of([&] { parse_train_config(base + "save_steps: 5\neval_steps: 2\n", "t.yaml"); });
  EXPECT_NE(msg.find("save_interval (save_steps)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("eval_interval (eval_steps)"), std::string::npos) << msg;
  msg = message_of([&] { parse_train_config(base + "save_steps: 4\n", "t.yaml"); });
  EXPECT_NE(msg.find("multiple of eval_interval"), std::string::npos) << msg;
  EXPECT_NO_THROW(parse_train_config(base + "save_steps: 4\neval_steps: 2\n", "t.yaml"));
  msg = message_of([&] {
    parse_train_config("model: m\noutput_dir: o\ndata: {files: [a.jsonl]}\nmax_steps: 10\n"
                       "load_best_model_at_end: true\n",
                       "t.yaml");
  });
  EXPECT_NE(msg.find("load_best_model_at_end needs eval_data.files"), std::string::npos) << msg;
  msg = message_of([&] { parse_train_config(base + "metric_for_best_model: accuracy\n", "t.yaml"); });
  EXPECT_NE(msg.find("metric_for_best_model"), std::string::npos) << msg;
  const TrainConfig hf = parse_train_config(base + "metric_for_best_model: loss\n", "t.yaml");
  EXPECT_EQ(hf.best_metric_field(), "eval_loss");
  // report_to and logging_dir (HF names)
  msg = message_of([&] { parse_train_config(base + "report_to: wandb\n", "t.yaml"); });
  EXPECT_NE(msg.find("report_to 'wandb'"), std::string::npos) << msg;
  EXPECT_TRUE(parse_train_config(base, "t.yaml").tensorboard());  // on by default
  EXPECT_FALSE(parse_train_config(base + "report_to: none\n", "t.yaml").tensorboard());
  EXPECT_TRUE(parse_train_config(base + "report_to: [all]\n", "t.yaml").tensorboard());
  EXPECT_EQ(parse_train_config(base + "logging_dir: tb\n", "t.yaml").logging_dir, "tb");
}

}  // namespace
}  // namespace finmoe
