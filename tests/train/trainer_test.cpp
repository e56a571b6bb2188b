// The training loop on tiny models and synthetic data: learning a
// repetitive sequence, gradient accumulation == one larger batch,
// interrupted + resumed == uninterrupted, the load-balancing loss, KD, eval
// perplexity, the checkpoint layout, metrics files and errors.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../expect_error.h"
#include "finmoe/esft.h"
#include "finmoe/load_balance.h"
#include "finmoe/safetensors.h"
#include "model/moe.h"
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

std::map<std::string, torch::Tensor> params_of(Transformer& m) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [n, t] : m.named_parameters()) out[n] = t.detach().clone();
  return out;
}

TEST(Trainer, LearnsARepetitiveSequence) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("qwen2", model.str(), 1);
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.lr = 3e-3;
  c.max_steps = 120;
  c.warmup_steps = 10;
  c.data.batch_size = 4;
  c.data.seq_len = 16;
  c.eval_data = c.data;
  c.eval_data.files = {"held-out"};
  c.eval_data.seed = 99;
  c.eval_batches = 2;
  c.eval_interval = 40;
  Trainer t(c, test::synthetic_hooks(mc.vocab_size, "cycle"));
  const EvalResult before = t.evaluate();
  TrainSummary s = t.run();
  EXPECT_EQ(s.steps, 120);
  EXPECT_EQ(s.tokens, 120 * 4 * 16);
  const auto& h = t.history();
  ASSERT_EQ(h.size(), 120u);
  EXPECT_GT(h.front().lm_loss, 4.0);  // ~ln(300) at random init
  EXPECT_LT(h.back().lm_loss, 0.05);
  ASSERT_TRUE(s.final_eval.has_value());
  EXPECT_LT(s.final_eval->ppl, 1.1);
  EXPECT_GT(before.ppl, 50.0);
  // evaluations at 40, 80 and the end
  EXPECT_TRUE(h[39].eval_ppl.has_value());
  EXPECT_TRUE(h[79].eval_ppl.has_value());
  EXPECT_TRUE(h[119].eval_ppl.has_value());
  EXPECT_FALSE(h[40].eval_ppl.has_value());
  // the learning rate followed warmup + cosine to 0
  EXPECT_NEAR(h[0].lr, 3e-3 / 10, 1e-12);
  EXPECT_NEAR(h[9].lr, 3e-3, 1e-12);
  EXPECT_NEAR(h[119].lr, 0.0, 1e-12);
}

TEST(Trainer, AccumulatingTwoMicroBatchesEqualsOneBatchOfTwice) {
  TempDir model, out1, out2;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 2);
  // half of the rows have their first half masked: micro-batches differ in label tokens
  TrainConfig big = test::tiny_train_config(model.str(), out1.str());
  big.data.batch_size = 4;
  big.max_steps = 3;
  TrainConfig small = big;
  small.output_dir = out2.str();
  small.data.batch_size = 2;
  small.grad_accum = 2;
  Trainer a(big, test::synthetic_hooks(mc.vocab_size, "random", 4));
  Trainer b(small, test::synthetic_hooks(mc.vocab_size, "random", 4));
  for (int i = 0; i < 3; ++i) {
    StepMetrics ma = a.step(), mb = b.step();
    EXPECT_EQ(ma.loss_tokens, mb.loss_tokens);
    EXPECT_NEAR(ma.lm_loss, mb.lm_loss, 1e-5);
    EXPECT_NEAR(ma.grad_norm, mb.grad_norm, 1e-5 * ma.grad_norm);
    EXPECT_EQ(ma.tokens, mb.tokens);
  }
  auto pa = params_of(a.model()), pb = params_of(b.model());
  for (auto& [n, t] : pa) EXPECT_LT(test::max_abs_diff(t, pb.at(n)), 2e-6) << n;
  // the micro-batches did carry different label counts
  test::SyntheticSource probe(small.data, mc.vocab_size, "random", 7, 4);
  EXPECT_NE(probe.next().loss_tokens(), probe.next().loss_tokens());
}

TEST(Trainer, ResumedRunEqualsUninterruptedRun) {
  TempDir model, full, part;
  const ModelConfig mc = test::save_tiny_model("mixtral", model.str(), 3);
  TrainConfig c = test::tiny_train_config(model.str(), full.str());
  c.max_steps = 6;
  c.save_interval = 3;
  c.moe_aux_loss_alpha = 0.01;
  c.grad_accum = 2;
  Trainer uninterrupted(c, test::synthetic_hooks(mc.vocab_size));
  uninterrupted.run();

  TrainConfig c2 = c;
  c2.output_dir = part.str();
  {
    Trainer first(c2, test::synthetic_hooks(mc.vocab_size));
    for (int i = 0; i < 3; ++i) first.step();
    first.save_checkpoint();
  }  // "interrupted"
  c2.resume = "auto";
  Trainer second(c2, test::synthetic_hooks(mc.vocab_size));
  EXPECT_EQ(second.step_count(), 3);
  second.run();

  const auto& h1 = uninterrupted.history();
  const auto& h2 = second.history();
  ASSERT_EQ(h1.size(), 6u);
  ASSERT_EQ(h2.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(h1[i].loss, h2[i].loss) << "step " << i + 1;
    EXPECT_EQ(h1[i].aux_loss, h2[i].aux_loss) << "step " << i + 1;
    EXPECT_EQ(h1[i].grad_norm, h2[i].grad_norm) << "step " << i + 1;
    EXPECT_EQ(h1[i].lr, h2[i].lr);
  }
  auto p1 = params_of(uninterrupted.model()), p2 = params_of(second.model());
  for (auto& [n, t] : p1) EXPECT_TRUE(torch::equal(t, p2.at(n))) << n;

  // resuming from the uninterrupted run's mid checkpoint into a new directory works too
  TempDir other;
  TrainConfig c3 = c;
  c3.output_dir = other.str();
  c3.resume = full.str() + "/checkpoint-3";
  Trainer third(c3, test::synthetic_hooks(mc.vocab_size));
  third.run();
  auto p3 = params_of(third.model());
  for (auto& [n, t] : p1) EXPECT_TRUE(torch::equal(t, p3.at(n))) << n;
  // its metrics files hold all six steps
  const std::string jsonl = slurp(other.str() + "/metrics.jsonl");
  EXPECT_EQ(std::count(jsonl.begin(), jsonl.end(), '\n'), 6);
}

TEST(Trainer, WritesCheckpointsMetricsAndPlots) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("qwen2_moe", model.str(), 4);
  write_file_atomic(model.str() + "/generation_config.json", "{\"bos_token_id\": 1}\n");
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.max_steps = 4;
  c.save_interval = 2;
  c.keep_checkpoints = 1;
  c.eval_data.files = {"held-out"};
  c.eval_data.seed = 5;
  c.eval_batches = 1;
  Trainer t(c, test::synthetic_hooks(mc.vocab_size));
  TrainSummary s = t.run();
  const fs::path o(out.str());
  EXPECT_EQ(slurp((o / "latest").string()), "checkpoint-4\n");
  EXPECT_EQ(s.checkpoint, (o / "checkpoint-4").string());
  EXPECT_FALSE(fs::exists(o / "checkpoint-2"));  // keep_checkpoints: 1
  for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors",
                        "trainer_state.json", "metrics.jsonl", "generation_config.json"})
    EXPECT_TRUE(fs::exists(o / "checkpoint-4" / f)) << f;
  // no temp directories left behind
  for (const auto& e : fs::directory_iterator(o))
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << e.path();
  // the checkpoint is an HF model directory holding the trained weights
  Transformer saved = load_model((o / "checkpoint-4").string(), {torch::kFloat32});
  auto now = params_of(t.model());
  for (auto& [n, p] : saved.named_parameters()) EXPECT_TRUE(torch::equal(p, now.at(n))) << n;
  const auto state = nlohmann::json::parse(slurp((o / "checkpoint-4/trainer_state.json").string()));
  EXPECT_EQ(state["step"], 4);
  EXPECT_EQ(state["data"]["index"], 4);
  EXPECT_EQ(state["config"]["mode"], "pretrain");
  // optimizer state per parameter name
  auto opt = SafetensorsFile::open((o / "checkpoint-4/optimizer.safetensors").string());
  EXPECT_NE(opt->find("exp_avg.model.layers.1.mlp.gate.weight"), nullptr);
  EXPECT_NE(opt->find("exp_avg_sq.model.embed_tokens.weight"), nullptr);
  // metrics: a JSON line and a CSV row per step, eval at the end
  const std::string csv = slurp((o / "metrics.csv").string());
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
  EXPECT_TRUE(csv.starts_with("step,loss,lm_loss,aux_loss,kd_loss,lr,grad_norm,tokens"));
  std::ifstream jl((o / "metrics.jsonl").string());
  std::string line, last;
  while (std::getline(jl, line)) last = line;
  auto j = nlohmann::json::parse(last);
  EXPECT_EQ(j["step"], 4);
  EXPECT_TRUE(j.contains("eval_ppl"));
  EXPECT_NEAR(j["eval_ppl"].get<double>(), s.final_eval->ppl, 1e-9);
  EXPECT_NEAR(j["loss"].get<double>(), j["lm_loss"].get<double>() + j["aux_loss"].get<double>(),
              1e-9);
  const std::string svg = slurp((o / "loss.svg").string());
  EXPECT_TRUE(svg.starts_with("<svg"));
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_TRUE(fs::exists(o / "train_summary.json"));
  EXPECT_TRUE(fs::exists(o / "train_config.json"));
}

TEST(Trainer, LoadBalancingLossIsPartOfTheObjective) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("mixtral", model.str(), 5);
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.moe_aux_loss_alpha = 0.3;
  c.grad_accum = 2;
  auto hooks = test::synthetic_hooks(mc.vocab_size);
  // the expected value, computed here from the first window's routing at the initial weights
  Transformer m = load_model(model.str(), {torch::kFloat32});
  test::SyntheticSource src(c.data, mc.vocab_size);
  double expected = 0;
  for (int i = 0; i < 2; ++i) {
    std::vector<RouterOutput> routers;
    torch::NoGradGuard g;
    m.forward(src.next().tokens, {torch::Tensor(), &routers});
    ASSERT_EQ(routers.size(), 2u);
    for (const auto& r : routers) {
      // alpha * sum_i f_i P_i with f_i = N/(K T) * count_i, P_i = mean_t softmax(logits)_i
      const int64_t T = r.logits.size(0), N = r.logits.size(1), K = r.indices.size(1);
      auto P = torch::softmax(r.logits.to(torch::kFloat64), -1).mean(0);
      for (int64_t e = 0; e < N; ++e) {
        const double count = r.indices.eq(e).sum().item<double>();
        expected += 0.3 * (double(N) / double(K * T)) * count * P[e].item<double>() / 2;
      }
    }
  }
  Trainer t(c, hooks);
  StepMetrics s = t.step();
  EXPECT_NEAR(s.aux_loss, expected, 1e-6);
  EXPECT_NEAR(s.loss, s.lm_loss + s.aux_loss, 1e-9);
  // with alpha = 0 the same step has no auxiliary term and a different router update
  TempDir out0;
  c.output_dir = out0.str();
  c.moe_aux_loss_alpha = 0.0;
  Trainer t0(c, hooks);
  StepMetrics s0 = t0.step();
  EXPECT_EQ(s0.aux_loss, 0.0);
  EXPECT_NEAR(s0.lm_loss, s.lm_loss, 1e-6);
  const std::string router = "model.layers.0.block_sparse_moe.gate.weight";
  EXPECT_GT(test::max_abs_diff(params_of(t.model()).at(router), params_of(t0.model()).at(router)),
            1e-7);
}

TEST(Trainer, SeparateRoutersBothLearnAndBothAreBalanced) {
  // finer_moe with router_mode separate: one step moves both routers of every
  // layer, and the step's auxiliary loss is the expert routers' plus the
  // concatenation routers' balancing loss at the initial weights
  TempDir model, out, out0;
  auto j = test::tiny_config("finer_moe").to_json();
  j["router_mode"] = "separate";
  const ModelConfig mc = ModelConfig::from_json(j, "separate");
  {
    Transformer m(mc);
    init_random(m, 6);
    save_model(m, model.str());
  }
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.moe_aux_loss_alpha = 0.3;
  auto hooks = test::synthetic_hooks(mc.vocab_size);
  Transformer m = load_model(model.str(), {torch::kFloat32});
  const auto before = params_of(m);
  test::SyntheticSource src(c.data, mc.vocab_size);
  std::vector<RouterOutput> routers, concat;
  {
    torch::NoGradGuard g;
    ConcatRouterSink sink(&concat);
    m.forward(src.next().tokens, {torch::Tensor(), &routers});
  }
  ASSERT_EQ(concat.size(), 2u);
  const auto form = default_load_balance(mc);
  const double experts = load_balancing_loss(routers, 0.3, form, 2, {}).item<double>();
  const double concats = concat_load_balancing_loss(concat, 0.3, form, 2, {}).item<double>();
  EXPECT_GT(concats, 0.0);
  Trainer t(c, hooks);
  StepMetrics s = t.step();
  EXPECT_NEAR(s.aux_loss, experts + concats, 1e-6);
  c.output_dir = out0.str();
  c.moe_aux_loss_alpha = 0.0;  // the language-model loss alone
  Trainer t0(c, hooks);
  t0.step();
  for (Trainer* tr : {&t, &t0}) {
    const auto after = params_of(tr->model());
    for (int layer = 0; layer < 2; ++layer)
      for (const char* router : {"gate", "concat_gate"}) {
        const std::string n = "model.layers." + std::to_string(layer) + ".mlp." + router + ".weight";
        EXPECT_GT(test::max_abs_diff(after.at(n), before.at(n)), 1e-7) << n;
      }
  }
}

TEST(Trainer, DistillationFromItselfHasZeroKlAndLearnsFromATeacher) {
  TempDir student, teacher, out, out2;
  const ModelConfig mc = test::save_tiny_model("qwen2", student.str(), 6);
  test::save_tiny_model("qwen2", teacher.str(), 7);
  TrainConfig c = test::tiny_train_config(student.str(), out.str());
  c.mode = TrainMode::Kd;
  c.kd.teacher = student.str();  // teacher == student
  c.kd.temperature = 2.0;
  c.weight_decay = 0;
  {
    Trainer t(c, test::synthetic_hooks(mc.vocab_size));
    StepMetrics s = t.step();
    EXPECT_EQ(s.kd_loss, 0.0);
    EXPECT_LT(s.grad_norm, 1e-6);  // alpha = 1: nothing to learn
    EXPECT_NEAR(s.loss, 0.0, 1e-12);
  }
  c.output_dir = out2.str();
  c.kd.teacher = teacher.str();
  c.kd.alpha = 0.8;
  c.lr = 5e-3;
  c.max_steps = 30;
  c.warmup_steps = 0;
  Trainer t(c, test::synthetic_hooks(mc.vocab_size, "cycle"));
  t.run();
  const auto& h = t.history();
  EXPECT_GT(h.front().kd_loss, 0.0);
  EXPECT_LT(h.back().kd_loss, 0.5 * h.front().kd_loss);
  EXPECT_NEAR(h.back().loss, 0.8 * h.back().kd_loss + 0.2 * h.back().lm_loss, 1e-9);
}

// Full fine-tuning of a DeepSeek-V3 model moves every weight but the router's
// e_score_correction_bias, which no gradient reaches (it only chooses experts).
TEST(Trainer, FullTrainingOfDeepSeekKeepsTheCorrectionBias) {
  TempDir model, out;
  Transformer m(test::tiny_config("deepseek_v3"));
  init_random(m, 4);
  torch::Tensor bias;
  {
    torch::NoGradGuard no_grad;
    for (auto& [n, t] : m.named_parameters())
      if (gradient_free_parameter(n)) bias = t.uniform_(-0.2, 0.2).clone();
  }
  ASSERT_TRUE(bias.defined());
  save_model(m, model.str());
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.max_steps = 3;
  Trainer t(c, test::synthetic_hooks(m.config().vocab_size));
  t.run();
  bool shared_moved = false;
  for (const auto& [n, p] : t.model().named_parameters()) {
    if (gradient_free_parameter(n)) {
      EXPECT_FALSE(p.requires_grad()) << n;
      EXPECT_TRUE(torch::equal(p.detach().to(torch::kFloat32), bias)) << n << " moved";
    }
    if (n.find("shared_experts.down_proj") != std::string::npos) {
      const auto& want = m.named_parameters();
      for (const auto& [n0, p0] : want)
        if (n0 == n) shared_moved = !torch::equal(p.detach().to(torch::kFloat32), p0);
    }
  }
  EXPECT_TRUE(shared_moved);
}

TEST(Trainer, InitialisesAPresetModel) {
  TempDir out;
  TrainConfig c = test::tiny_train_config("", out.str());
  c.model.clear();
  c.init_preset = "tiny";
  c.init_vocab_size = 64;
  c.max_steps = 2;
  Trainer t(c, test::synthetic_hooks(64));
  EXPECT_EQ(t.model().config().vocab_size, 64);
  t.run();
  EXPECT_TRUE(fs::exists(out.str() + "/checkpoint-2/model.safetensors"));
}

TEST(Trainer, ErrorsNameTheProblem) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("qwen2", model.str(), 8);
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  // tokens beyond the model's vocabulary
  EXPECT_CONTAINS(message_of([&] {
                    Trainer t(c, test::synthetic_hooks(mc.vocab_size * 4));
                    t.step();
                  }),
                  "outside the model's vocabulary of 300");
  // a fresh run must not overwrite an earlier run's checkpoints
  {
    TrainConfig c1 = c;
    c1.max_steps = 1;
    Trainer(c1, test::synthetic_hooks(mc.vocab_size)).run();
  }
  EXPECT_CONTAINS(message_of([&] { Trainer t(c, test::synthetic_hooks(mc.vocab_size)); }),
                  "already holds checkpoints");
  TrainConfig r = c;
  r.resume = out.str() + "/nothing-here";
  EXPECT_CONTAINS(message_of([&] { Trainer t(r, test::synthetic_hooks(mc.vocab_size)); }),
                  "not a training checkpoint");
  // a teacher with another vocabulary
  TempDir teacher, out2;
  ModelConfig other = test::tiny_config("qwen2");
  other.vocab_size = 200;
  Transformer tm(other);
  save_model(tm, teacher.str());
  TrainConfig k = c;
  k.output_dir = out2.str();
  k.mode = TrainMode::Kd;
  k.kd.teacher = teacher.str();
  EXPECT_CONTAINS(message_of([&] { Trainer t(k, test::synthetic_hooks(mc.vocab_size)); }),
                  "vocabulary of 200");
  // the parameter-efficient modes check their settings against the model
  TrainConfig e = c;
  e.output_dir = out2.str();
  e.mode = TrainMode::Lora;
  e.lora.target_modules = {"w1"};  // a mixtral name on a qwen2 model
  EXPECT_CONTAINS(message_of([&] { Trainer t(e, test::synthetic_hooks(mc.vocab_size)); }),
                  "'w1' matches no linear layer");
}

// ---- interruption and checkpoint retention -----------------------------------------

// A synthetic stream that sends this process `sig` when it draws batch `at`
// (1-based), i.e. in the middle of that training step.
class SignallingSource : public test::SyntheticSource {
 public:
  SignallingSource(const DataConfig& c, int64_t vocab, int at, int sig)
      : SyntheticSource(c, vocab), at_(at), sig_(sig) {}
  TrainBatch next() override {
    if (++drawn_ == at_) ::raise(sig_);
    return SyntheticSource::next();
  }

 private:
  int at_, sig_, drawn_ = 0;
};

std::vector<std::string> checkpoint_names(const std::string& out) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().starts_with("checkpoint-"))
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Trainer, SigintOrSigtermFinishesTheStepThenCheckpointsAndStops) {
  TempDir model, full;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 5);
  TrainConfig c = test::tiny_train_config(model.str(), full.str());
  c.max_steps = 6;
  Trainer uninterrupted(c, test::synthetic_hooks(mc.vocab_size));
  uninterrupted.run();
  const auto want = params_of(uninterrupted.model());

  for (int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig == SIGINT ? "SIGINT" : "SIGTERM");
    TempDir out;
    c.output_dir = out.str();
    c.resume = "";
    TrainerHooks hooks = test::synthetic_hooks(mc.vocab_size);
    const int64_t vocab = mc.vocab_size;
    hooks.make_source = [vocab, sig](const DataConfig& d) -> std::unique_ptr<BatchSource> {
      return std::make_unique<SignallingSource>(d, vocab, 3, sig);
    };
    struct sigaction before {};
    ::sigaction(sig, nullptr, &before);
    TrainSummary s;
    {
      Trainer t(c, hooks);
      s = t.run();
    }
    EXPECT_EQ(s.stopped_by_signal, sig);
    EXPECT_EQ(s.steps, 3);  // the step the signal came in finished
    EXPECT_EQ(checkpoint_names(out.str()), std::vector<std::string>{"checkpoint-3"});
    EXPECT_EQ(slurp(out.str() + "/latest"), "checkpoint-3\n");
    EXPECT_FALSE(fs::exists(out.str() + "/train_summary.json"));  // the run is not over
    struct sigaction after {};
    ::sigaction(sig, nullptr, &after);
    EXPECT_EQ(after.sa_handler, before.sa_handler);  // run()'s handler is gone

    // resuming the checkpoint reaches the uninterrupted run's weights
    c.resume = "auto";
    Trainer resumed(c, test::synthetic_hooks(mc.vocab_size));
    EXPECT_EQ(resumed.step_count(), 3);
    EXPECT_EQ(resumed.run().stopped_by_signal, 0);
    const auto got = params_of(resumed.model());
    for (const auto& [n, t] : want) EXPECT_TRUE(torch::equal(t, got.at(n))) << n;
  }
}

TEST(Trainer, KeepCheckpointsKeepsTheNewestAndTheOneResumedFrom) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 6);
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.max_steps = 2;
  c.save_interval = 1;
  c.keep_checkpoints = 0;  // all
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  EXPECT_EQ(checkpoint_names(out.str()), (std::vector<std::string>{"checkpoint-1", "checkpoint-2"}));

  // from the older checkpoint, keeping one: the newest, and the start point
  c.max_steps = 5;
  c.keep_checkpoints = 1;
  c.resume = out.str() + "/checkpoint-1";
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  EXPECT_EQ(checkpoint_names(out.str()), (std::vector<std::string>{"checkpoint-1", "checkpoint-5"}));

  // resuming the newest (auto): older ones go, the start point stays
  c.max_steps = 7;
  c.keep_checkpoints = 2;
  c.resume = "auto";
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  EXPECT_EQ(checkpoint_names(out.str()),
            (std::vector<std::string>{"checkpoint-5", "checkpoint-6", "checkpoint-7"}));
}

}  // namespace
}  // namespace finmoe
