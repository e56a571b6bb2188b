// Training throughput: `finmoe train`'s step (forward, backward, clip, AdamW)
// against the same model, batch and optimizer in Python PyTorch
// (bench/train_torch.py, HF transformers), printed as a ratio.
//
//   bench_train [--preset small] [--arch qwen2] [--model DIR] [--batch 4] [--seq 256]
//               [--steps 10] [--warmup 2] [--threads N] [--python python3]
//               [--script bench/train_torch.py] [--json]
//
// Both sides see random tokens of the same shape, float32 weights, AdamW
// (0.9, 0.95, eps 1e-8, wd 0.1 on 2-D tensors), clipping at 1.0 and, for MoE
// models, the load-balancing loss. Run it on a quiet machine: the numbers
// are tokens/s of the timed steps after the warmup steps.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include <unistd.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "finmoe/dataset.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/train.h"

namespace fs = std::filesystem;
using namespace finmoe;

namespace {

// Uniform random tokens, next-token labels.
class RandomTokens : public BatchSource {
 public:
  RandomTokens(const DataConfig& c, int64_t vocab)
      : c_(c), vocab_(vocab), gen_(at::detail::createCPUGenerator(c.seed)) {}
  TrainBatch next() override {
    auto t = torch::randint(vocab_, {c_.batch_size, c_.seq_len + 1}, gen_, torch::kInt64);
    TrainBatch b;
    b.tokens = t.narrow(1, 0, c_.seq_len).contiguous();
    b.labels = t.narrow(1, 1, c_.seq_len).contiguous();
    return b;
  }
  nlohmann::json state() const override { return nlohmann::json::object(); }
  void restore(const nlohmann::json&) override {}

 private:
  DataConfig c_;
  int64_t vocab_;
  at::Generator gen_;
};

std::string arg(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == name) return argv[i + 1];
  return def;
}

bool flag(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i)
    if (argv[i] == name) return true;
  return false;
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw Error("cannot run: " + cmd);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  if (status != 0) throw Error("failed (" + std::to_string(status) + "): " + cmd + "\n" + out);
  return out;
}

std::string default_script() {
  for (const fs::path& p : {fs::path(__FILE__).parent_path() / "train_torch.py",
                            fs::path("bench/train_torch.py"), fs::path("../bench/train_torch.py")})
    if (fs::exists(p)) return p.string();
  return "bench/train_torch.py";
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string preset = arg(argc, argv, "--preset", "small");
  const std::string arch = arg(argc, argv, "--arch", "");
  const int64_t batch = std::stoll(arg(argc, argv, "--batch", "4"));
  const int64_t seq = std::stoll(arg(argc, argv, "--seq", "256"));
  const int64_t steps = std::stoll(arg(argc, argv, "--steps", "10"));
  const int64_t warmup = std::stoll(arg(argc, argv, "--warmup", "2"));
  const int threads = std::stoi(arg(argc, argv, "--threads", "0"));
  const char* env_py = std::getenv("FINMOE_PYTHON");
  const std::string python = arg(argc, argv, "--python", env_py ? env_py : "python3");
  const std::string script = arg(argc, argv, "--script", default_script());
  const bool json = flag(argc, argv, "--json");
  if (threads > 0) torch::set_num_threads(threads);
  else set_torch_threads_for(TorchWork::kTraining);

  const fs::path tmp =
      fs::temp_directory_path() / ("finmoe-bench-train-" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  struct Cleanup {
    fs::path p;
    ~Cleanup() { remove_tree(p.string()); }
  } cleanup{tmp};

  // the model both sides train, from the same directory: --model DIR (e.g. an
  // upcycled MoE) or a seeded preset
  std::string model_dir = arg(argc, argv, "--model", "");
  const std::string label = model_dir.empty() ? "preset " + preset : model_dir;
  ModelConfig mc;
  if (model_dir.empty()) {
    mc = preset_config(preset, arch);
    mc.torch_dtype = "float32";
    model_dir = (tmp / "model").string();
    Transformer m(mc);
    init_random(m, 0);
    save_model(m, model_dir);
  } else {
    mc = ModelConfig::load(model_dir);
  }

  TrainConfig c;
  c.model = model_dir;
  c.output_dir = (tmp / "out").string();
  c.data.files = {"random"};
  c.data.batch_size = batch;
  c.data.seq_len = seq;
  c.max_steps = warmup + steps;
  c.lr = 1e-4;
  c.schedule = "constant";
  c.log_interval = 0;
  TrainerHooks hooks;
  hooks.progress = false;
  const int64_t vocab = mc.vocab_size;
  hooks.make_source = [vocab](const DataConfig& d) -> std::unique_ptr<BatchSource> {
    return std::make_unique<RandomTokens>(d, vocab);
  };
  Trainer trainer(c, hooks);
  for (int64_t i = 0; i < warmup; ++i) trainer.step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) trainer.step();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double ours = double(steps * batch * seq) / secs;

  const std::string cmd = python + " " + script + " --model " + model_dir + " --batch " +
                          std::to_string(batch) + " --seq " + std::to_string(seq) + " --steps " +
                          std::to_string(steps) + " --warmup " + std::to_string(warmup) +
                          " --threads " + std::to_string(torch::get_num_threads()) + " 2>&1";
  const std::string out = run_capture(cmd);
  const size_t brace = out.rfind('{');
  if (brace == std::string::npos) throw Error("no JSON from " + script + ":\n" + out);
  const nlohmann::json py = nlohmann::json::parse(out.substr(brace));
  const double theirs = py.at("tokens_per_second").get<double>();

  nlohmann::json r = {{"model", label},
                      {"model_type", mc.model_type},
                      {"batch", batch},
                      {"seq_len", seq},
                      {"steps", steps},
                      {"threads", torch::get_num_threads()},
                      {"finmoe_tokens_per_second", ours},
                      {"torch_tokens_per_second", theirs},
                      {"torch_version", py.value("torch", "")},
                      {"ratio", ours / theirs}};
  if (json) {
    std::cout << r.dump(2) << "\n";
  } else {
    std::printf("train step, %s (%s), batch %lld x %lld, %d threads\n", label.c_str(),
                mc.model_type.c_str(), static_cast<long long>(batch), static_cast<long long>(seq),
                torch::get_num_threads());
    std::printf("  finmoe      %10.1f tokens/s\n", ours);
    std::printf("  pytorch %s %8.1f tokens/s\n", py.value("torch", "").c_str(), theirs);
    std::printf("  ratio       %10.3f (finmoe / pytorch)\n", ours / theirs);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_train: %s\n", e.what());
  return 1;
}
