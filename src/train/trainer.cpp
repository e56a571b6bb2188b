// The training loop: data -> forward -> losses -> backward (accumulated) ->
// clip -> AdamW; evaluation, metrics, checkpoints and exact resume.
#include <ATen/autocast_mode.h>

#include <torch/version.h>

#include <signal.h>
#include <unistd.h>
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <tuple>

#include "convert/svg.h"
#include "finmoe/config.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "finmoe/distributed.h"
#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/load_balance.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"
#include "finmoe/train.h"
#include "model/moe.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "train/peft_methods.h"
#include "train/dataset_size.h"
#include "train/schedule.h"
#include "train/tensorboard.h"

namespace finmoe {

namespace fs = std::filesystem;

// ---- what a mode trains ----------------------------------------------------

namespace {

// Every parameter; the checkpoint is a whole HF model directory.
class FullTraining : public TrainMethod {
 public:
  NamedTensors prepare(Transformer& model) override {
    NamedTensors params;
    for (auto& [name, t] : model.named_parameters()) {
      const bool trained = !gradient_free_parameter(name);
      t.requires_grad_(trained);
      if (trained) params.emplace_back(name, t);
    }
    return params;
  }

  void save(Transformer& model, const std::string& dir) override { save_model(model, dir); }

  void load(Transformer& model, const std::string& dir) override {
    auto reader = CheckpointReader::open(dir);
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : model.named_parameters()) {
      const TensorView& v = reader.get(name);
      if (v.shape != t.sizes().vec())
        throw Error(reader.file_of(name) + ": tensor '" + name +
                    "' has another shape than this run's model");
      if (v.dtype != DType::F32 && v.dtype != DType::F64 && v.dtype != DType::BF16 &&
          v.dtype != DType::F16)
        throw Error(reader.file_of(name) + ": tensor '" + name + "' is not floating point");
      const auto type = v.dtype == DType::F32    ? torch::kFloat32
                        : v.dtype == DType::F64  ? torch::kFloat64
                        : v.dtype == DType::BF16 ? torch::kBFloat16
                                                 : torch::kFloat16;
      t.copy_(torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(type)));
    }
  }
};

}  // namespace

std::unique_ptr<TrainMethod> make_train_method(const TrainConfig& config) {
  switch (config.mode) {
    case TrainMode::Pretrain:
    case TrainMode::Cpt:
    case TrainMode::Sft:
    case TrainMode::Hybrid:
    case TrainMode::Kd:
      return std::make_unique<FullTraining>();
    case TrainMode::Esft:
      return make_esft_method(config);
    case TrainMode::Lora:
      return make_lora_method(config);
  }
  throw Error("mode '" + std::string(to_string(config.mode)) + "' has no training method");
}

// ---- metrics -----------------------------------------------------------------

nlohmann::json StepMetrics::to_json() const {
  nlohmann::json j = {{"step", step},
                      {"loss", loss},
                      {"lm_loss", lm_loss},
                      {"aux_loss", aux_loss},
                      {"kd_loss", kd_loss},
                      {"lr", lr},
                      {"grad_norm", grad_norm},
                      {"tokens", tokens},
                      {"loss_tokens", loss_tokens},
                      {"tokens_per_second", tokens_per_second}};
  if (eval_loss) j["eval_loss"] = *eval_loss;
  if (eval_ppl) j["eval_ppl"] = *eval_ppl;
  return j;
}

StepMetrics StepMetrics::from_json(const nlohmann::json& j) {
  StepMetrics m;
  m.step = j.at("step").get<int64_t>();
  m.loss = j.at("loss").get<double>();
  m.lm_loss = j.at("lm_loss").get<double>();
  m.aux_loss = j.at("aux_loss").get<double>();
  m.kd_loss = j.at("kd_loss").get<double>();
  m.lr = j.at("lr").get<double>();
  m.grad_norm = j.at("grad_norm").get<double>();
  m.tokens = j.at("tokens").get<int64_t>();
  m.loss_tokens = j.at("loss_tokens").get<int64_t>();
  m.tokens_per_second = j.at("tokens_per_second").get<double>();
  if (j.contains("eval_loss")) m.eval_loss = j["eval_loss"].get<double>();
  if (j.contains("eval_ppl")) m.eval_ppl = j["eval_ppl"].get<double>();
  return m;
}

nlohmann::json TrainSummary::to_json() const {
  nlohmann::json j = {{"steps", steps},           {"tokens", tokens},
                      {"seconds", seconds},       {"tokens_per_second", tokens_per_second},
                      {"final_loss", final_loss}, {"checkpoint", checkpoint},
                      {"last_checkpoint", last_checkpoint},
                      {"trainable_params", trainable_params}, {"model_params", model_params},
                      {"checkpoint_bytes", checkpoint_bytes}};
  if (stopped_by_signal) j["stopped_by_signal"] = stopped_by_signal;
  if (!best_checkpoint.empty()) {
    j["best_checkpoint"] = best_checkpoint;
    j["best_step"] = best_step;
    j["best_metric"] = best_metric;
  }
  if (final_eval)
    j["final_eval"] = {
        {"loss", final_eval->loss}, {"ppl", final_eval->ppl}, {"tokens", final_eval->tokens}};
  return j;
}

namespace {

constexpr const char* kCsvHeader =
    "step,loss,lm_loss,aux_loss,kd_loss,lr,grad_norm,tokens,loss_tokens,tokens_per_second,"
    "eval_loss,eval_ppl\n";

std::string csv_row(const StepMetrics& m) {
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%lld,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%lld,%lld,%.6g,",
                static_cast<long long>(m.step), m.loss, m.lm_loss, m.aux_loss, m.kd_loss, m.lr,
                m.grad_norm, static_cast<long long>(m.tokens),
                static_cast<long long>(m.loss_tokens), m.tokens_per_second);
  std::string row = buf;
  if (m.eval_loss) {
    std::snprintf(buf, sizeof(buf), "%.9g,%.9g", *m.eval_loss, *m.eval_ppl);
    row += buf;
  } else {
    row += ",";
  }
  return row + "\n";
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2e", v);
  return buf;
}

// Train loss (line) and eval loss (dots) against the step.
std::string loss_curve_svg(const std::vector<StepMetrics>& rows, const std::string& title) {
  const double W = 720, H = 420, left = 70, right = 20, top = 40, bottom = 50;
  svg::Document doc(W, H);
  doc.text(W / 2, 22, title, 14, "middle");
  if (rows.empty()) {
    doc.text(W / 2, H / 2, "no steps", 12, "middle");
    return doc.str();
  }
  double x0 = double(rows.front().step), x1 = double(rows.back().step);
  double y0 = INFINITY, y1 = -INFINITY;
  for (const auto& r : rows) {
    for (double v : {r.loss, r.eval_loss.value_or(r.loss)}) {
      if (!std::isfinite(v)) continue;
      y0 = std::min(y0, v);
      y1 = std::max(y1, v);
    }
  }
  if (!std::isfinite(y0)) y0 = 0, y1 = 1;
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const double pw = W - left - right, ph = H - top - bottom;
  auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return top + (1.0 - (y - y0) / (y1 - y0)) * ph; };
  doc.line(left, top + ph, left + pw, top + ph);
  doc.line(left, top, left, top + ph);
  for (int i = 0; i <= 4; ++i) {
    const double fy = y0 + (y1 - y0) * i / 4.0, fx = x0 + (x1 - x0) * i / 4.0;
    doc.line(left - 4, Y(fy), left, Y(fy));
    doc.text(left - 6, Y(fy) + 4, svg::num(fy, 4), 10, "end");
    doc.line(X(fx), top + ph, X(fx), top + ph + 4);
    doc.text(X(fx), top + ph + 16, svg::num(std::round(fx), 6), 10, "middle");
  }
  doc.text(left + pw / 2, H - 12, "step", 11, "middle");
  doc.text(16, top + ph / 2, "loss", 11, "middle", -90);
  std::vector<std::pair<double, double>> pts;
  for (const auto& r : rows)
    if (std::isfinite(r.loss)) pts.emplace_back(X(double(r.step)), Y(r.loss));
  doc.polyline(pts, "#1f77b4", 1.5);
  for (const auto& r : rows)
    if (r.eval_loss && std::isfinite(*r.eval_loss))
      doc.circle(X(double(r.step)), Y(*r.eval_loss), 3.5, "#d62728",
                 "step " + std::to_string(r.step) + ": eval loss " + svg::num(*r.eval_loss, 5) +
                     ", ppl " + svg::num(*r.eval_ppl, 5));
  doc.line(left + pw - 150, top + 10, left + pw - 130, top + 10, "#1f77b4", 2);
  doc.text(left + pw - 125, top + 14, "train loss", 11);
  doc.circle(left + pw - 140, top + 28, 3.5, "#d62728");
  doc.text(left + pw - 125, top + 32, "eval loss", 11);
  return doc.str();
}

// Sets bf16 autocast for a device type for the guard's lifetime.
class AutocastGuard {
 public:
  AutocastGuard(torch::Device device, bool enabled) : cuda_(device.is_cuda()), on_(enabled) {
    if (!on_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    const auto type = cuda_ ? at::kCUDA : at::kCPU;
    prev_ = at::autocast::is_autocast_enabled(type);
    at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, true);
#else
    if (cuda_) {
      prev_ = at::autocast::is_enabled();
      at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
      at::autocast::set_enabled(true);
    } else {
      prev_ = at::autocast::is_cpu_enabled();
      at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::autocast::set_cpu_enabled(true);
    }
#endif
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, prev_);
#else
    if (cuda_)
      at::autocast::set_enabled(prev_);
    else
      at::autocast::set_cpu_enabled(prev_);
#endif
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool cuda_, on_, prev_ = false;
};

std::string to_hex(const torch::Tensor& bytes) {
  auto b = bytes.to(torch::kCPU).contiguous();
  const uint8_t* p = b.data_ptr<uint8_t>();
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(size_t(b.numel()) * 2);
  for (int64_t i = 0; i < b.numel(); ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

torch::Tensor from_hex(const std::string& s, const std::string& what) {
  if (s.size() % 2) throw Error(what + ": odd number of hex digits");
  auto t = torch::empty({int64_t(s.size() / 2)}, torch::kUInt8);
  uint8_t* p = t.data_ptr<uint8_t>();
  auto nib = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw Error(what + ": not a hex digit");
  };
  for (size_t i = 0; i < s.size(); i += 2) p[i / 2] = uint8_t(nib(s[i]) << 4 | nib(s[i + 1]));
  return t;
}

nlohmann::json rng_state(torch::Device device) {
  nlohmann::json j;
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    j["cpu"] = to_hex(gen.get_state());
  }
  if (device.is_cuda()) {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    j["cuda"] = to_hex(gen.get_state());
  }
  return j;
}

void restore_rng(const nlohmann::json& j, torch::Device device, const std::string& file) {
  if (j.contains("cpu")) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(from_hex(j["cpu"].get<std::string>(), file + ": rng.cpu"));
  }
  if (device.is_cuda() && j.contains("cuda")) {
    auto gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(from_hex(j["cuda"].get<std::string>(), file + ": rng.cuda"));
  }
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

constexpr int kStateVersion = 1;

}  // namespace

// ---- Trainer -----------------------------------------------------------------

struct Trainer::Impl {
  TrainConfig config;
  TrainerHooks hooks;
  torch::Device device = torch::kCPU;
  bool autocast = false;
  std::optional<Tokenizer> tokenizer;
  std::optional<Transformer> model;
  std::optional<Transformer> teacher;
  std::unique_ptr<TrainMethod> method;
  NamedTensors trainable;
  std::unique_ptr<AdamW> optimizer;
  LrSchedule schedule;
  std::unique_ptr<BatchSource> source;
  std::vector<TrainBatch> eval_batches;
  // Data parallel (distributed.h): one process unless torchrun's variables
  // say otherwise. Only rank 0 writes files and progress.
  std::unique_ptr<DistContext> dist;
  double aux_alpha = 0;
  LoadBalance aux_form = LoadBalance::Batch;
  int64_t step = 0;
  int64_t total_steps = 0;  // config.total_steps(), or counted from the data for epochs
  int64_t tokens = 0;
  std::vector<StepMetrics> history;
  std::string resumed_from;  // checkpoint directory this run started from; never pruned
  std::string last_checkpoint;
  int64_t last_checkpoint_step = -1;
  // The checkpoint with the best metric_for_best_model so far ("" = none).
  std::string best_checkpoint;
  int64_t best_step = 0;
  double best_metric = 0;
  std::ofstream jsonl, csv;
  std::unique_ptr<tensorboard::EventWriter> events;  // rank 0, report_to tensorboard

  std::string tokenizer_dir() const {
    return config.tokenizer.empty() ? config.model : config.tokenizer;
  }

  const Tokenizer& get_tokenizer() {
    if (!tokenizer) {
      const std::string dir = tokenizer_dir();
      if (dir.empty())
        throw Error(
            "train config: `tokenizer` (a directory with tokenizer.json) is required "
            "to read data when the model is a preset");
      tokenizer.emplace(Tokenizer::from_dir(dir));
    }
    return *tokenizer;
  }

  std::unique_ptr<BatchSource> make_source(const DataConfig& data) {
    if (hooks.make_source) return hooks.make_source(data);
    return make_batch_source(data, get_tokenizer());
  }

  void load_model() {
    if (!config.model.empty()) {
      model.emplace(finmoe::load_model(config.model, {torch::kFloat32, device}));
      require_float_weights(*model, "train: model " + config.model);
      return;
    }
    int64_t vocab = config.init_vocab_size;
    if (vocab == 0 && (!tokenizer_dir().empty() || !hooks.make_source))
      vocab = get_tokenizer().vocab_size();
    ModelConfig mc = preset_config(config.init_preset, config.init_model_type, vocab);
    mc.torch_dtype = "float32";
    model.emplace(mc, torch::kFloat32, device);
    init_random(*model, config.seed);
  }

  // Checks a batch from the data source against the model.
  void check_batch(const TrainBatch& b, const char* which) const {
    const int64_t V = model->config().vocab_size;
    auto bad = [&](const std::string& msg) { throw Error(std::string(which) + " batch: " + msg); };
    if (!b.tokens.defined() || b.tokens.dim() != 2) bad("tokens must be [B,T]");
    if (!b.labels.defined() || b.labels.sizes() != b.tokens.sizes())
      bad("labels must have the shape of tokens");
    if (b.document_ids.defined() && b.document_ids.sizes() != b.tokens.sizes())
      bad("document_ids must have the shape of tokens");
    if (b.tokens.numel() == 0) bad("empty");
    const int64_t lo = b.tokens.min().item<int64_t>(), hi = b.tokens.max().item<int64_t>();
    if (lo < 0 || hi >= V)
      bad("token id " + std::to_string(lo < 0 ? lo : hi) +
          " is outside the model's vocabulary of " + std::to_string(V) +
          " (do the tokenizer and the model belong together?)");
    auto labelled = b.labels.ne(kIgnoreLabel);
    if (labelled.any().item<bool>()) {
      auto l = b.labels.masked_select(labelled);
      if (l.min().item<int64_t>() < 0 || l.max().item<int64_t>() >= V)
        bad("a label is outside the model's vocabulary of " + std::to_string(V));
    }
  }

  torch::Tensor forward(Transformer& m, const TrainBatch& b, std::vector<RouterOutput>* routers) {
    ForwardOptions fo;
    if (b.document_ids.defined()) fo.document_ids = b.document_ids.to(device);
    fo.router_outputs = routers;
    AutocastGuard ac(device, autocast);
    return m.forward(b.tokens.to(device), fo);  // [B,T,V]
  }

  StepMetrics train_step() {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = schedule.at(step);
    std::vector<TrainBatch> window;
    int64_t label_tokens = 0, input_tokens = 0;
    for (int64_t i = 0; i < config.grad_accum; ++i) {
      // Every rank draws the same global batch and keeps its own rows.
      const TrainBatch global = source->next();
      check_batch(global, "training");
      label_tokens += global.loss_tokens();
      input_tokens += global.tokens.numel();
      window.push_back(dist->shard(global));
    }
    // Every label token of the window (over all ranks) weighs the same.
    const double denom = double(std::max<int64_t>(label_tokens, 1));
    const bool kd = teacher.has_value();
    const double a = config.kd.alpha;
    optimizer->zero_grad();
    double lm_sum = 0, kd_sum = 0, aux_sum = 0;
    for (const TrainBatch& b : window) {
      std::vector<RouterOutput> routers, concat_routers;  // the latter: router_mode separate
      torch::Tensor logits;                                 // [B,T,V]
      {
        ConcatRouterSink sink(aux_alpha > 0 ? &concat_routers : nullptr);
        logits = forward(*model, b, aux_alpha > 0 ? &routers : nullptr);
      }
      auto labels = b.labels.to(device);
      auto lm = lm_loss_sum(logits, labels);
      torch::Tensor objective = lm;
      if (kd) {
        // The teacher's parameters do not require grad, so no graph is built;
        // grad mode stays on so it runs the student's exact kernels (a student
        // equal to its teacher then has KL exactly 0).
        auto teacher_logits = forward(*teacher, b, nullptr).detach();
        auto kl = forward_kl_sum(logits, teacher_logits, labels, config.kd.temperature);
        objective = kl * a + lm * (1.0 - a);
        kd_sum += kl.item<double>();
      }
      torch::Tensor loss = objective / denom;
      if (!routers.empty()) {
        // each rank's aux loss is over its own tokens: the ranks' mean is optimised
        const auto padding = b.padding.defined() ? b.padding.to(device) : b.padding;
        auto aux = load_balancing_loss(routers, aux_alpha, aux_form, b.tokens.size(0), padding);
        if (!concat_routers.empty())
          aux = aux + concat_load_balancing_loss(concat_routers, aux_alpha, aux_form,
                                                 b.tokens.size(0), padding);
        aux = aux / double(config.grad_accum * dist->world_size());
        aux_sum += aux.item<double>();
        loss = loss + aux;
      }
      lm_sum += lm.item<double>();
      loss.backward();
    }
    // The ranks' gradients (and loss sums) add up to those of the global batch.
    std::vector<torch::Tensor> params;
    for (auto& [name, t] : trainable) params.push_back(t);
    dist->all_reduce_grads(params, /*mean=*/false);
    const std::vector<double> sums = dist->all_reduce_sum({lm_sum, kd_sum, aux_sum});
    lm_sum = sums[0], kd_sum = sums[1], aux_sum = sums[2];
    StepMetrics m;
    m.step = step + 1;
    m.lm_loss = lm_sum / denom;
    m.kd_loss = kd_sum / denom;
    m.aux_loss = aux_sum;
    m.loss = (kd ? a * m.kd_loss + (1 - a) * m.lm_loss : m.lm_loss) + m.aux_loss;
    if (!std::isfinite(m.loss))
      throw Error("step " + std::to_string(m.step) + ": the loss is not finite (lm " +
                  std::to_string(m.lm_loss) + ", kd " + std::to_string(m.kd_loss) + ", aux " +
                  std::to_string(m.aux_loss) + "); try a lower lr or check the data");
    m.grad_norm = clip_grad_norm(trainable, config.grad_clip);
    optimizer->step(lr);
    ++step;
    tokens += input_tokens;
    m.lr = lr;
    m.tokens = tokens;
    m.loss_tokens = label_tokens;
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    m.tokens_per_second = secs > 0 ? double(input_tokens) / secs : 0;
    return m;
  }

  EvalResult evaluate() {
    if (eval_batches.empty())
      throw Error("evaluate: no eval data (set eval_data.files in the train config)");
    torch::NoGradGuard no_grad;
    double sum = 0, n = 0;
    for (const TrainBatch& global : eval_batches) {
      // the ranks split a batch; one with fewer rows than ranks is rank 0's
      if (global.tokens.size(0) < dist->world_size() && !dist->is_main()) continue;
      const TrainBatch b = global.tokens.size(0) < dist->world_size() ? global : dist->shard(global);
      auto logits = forward(*model, b, nullptr);
      sum += lm_loss_sum(logits, b.labels.to(device)).item<double>();
      n += double(b.loss_tokens());
    }
    const std::vector<double> sums = dist->all_reduce_sum({sum, n});
    sum = sums[0], n = sums[1];
    EvalResult r;
    r.tokens = int64_t(n);
    r.loss = n > 0 ? sum / n : 0.0;
    r.ppl = std::exp(r.loss);
    return r;
  }

  void open_metrics(bool truncate) {
    const std::string out = config.output_dir;
    jsonl.close();
    csv.close();
    const auto mode = truncate ? std::ios::trunc : std::ios::app;
    jsonl.open(out + "/metrics.jsonl", std::ios::out | mode);
    csv.open(out + "/metrics.csv", std::ios::out | mode);
    if (!jsonl || !csv) throw Error("cannot write metrics files in " + out);
    if (truncate) {
      csv << kCsvHeader;
      for (const auto& m : history) {
        jsonl << m.to_json().dump() << "\n";
        csv << csv_row(m);
      }
      jsonl.flush();
      csv.flush();
    }
  }

  void record(const StepMetrics& m) {
    history.push_back(m);
    if (!jsonl.is_open()) return;  // not rank 0
    jsonl << m.to_json().dump() << "\n";
    csv << csv_row(m);
    jsonl.flush();
    csv.flush();
    if (events) {
      std::vector<std::pair<std::string, double>> v = {
          {"train/loss", m.loss},
          {"train/lm_loss", m.lm_loss},
          {"train/aux_loss", m.aux_loss},
          {"train/kd_loss", m.kd_loss},
          {"train/lr", m.lr},
          {"train/grad_norm", m.grad_norm},
          {"train/tokens", double(m.tokens)},
          {"train/loss_tokens", double(m.loss_tokens)},
          {"train/tokens_per_second", m.tokens_per_second}};
      if (m.eval_loss) v.emplace_back("eval/loss", *m.eval_loss);
      if (m.eval_ppl) v.emplace_back("eval/ppl", *m.eval_ppl);
      events->scalars(m.step, v);
      if (m.eval_loss || (config.log_interval > 0 && m.step % config.log_interval == 0))
        events->flush();
    }
  }

  // Counts the checkpoint of this step as the best one when this step
  // evaluated and its metric beats the best so far (ties keep the earlier).
  void consider_best(const std::string& dir) {
    if (history.empty() || history.back().step != step) return;
    const StepMetrics& m = history.back();
    const std::optional<double> v =
        config.best_metric_field() == "eval_ppl" ? m.eval_ppl : m.eval_loss;
    if (!v) return;
    if (!best_checkpoint.empty() &&
        !(config.greater_is_better ? *v > best_metric : *v < best_metric))
      return;
    best_checkpoint = dir;
    best_step = step;
    best_metric = *v;
  }

  void copy_tokenizer_files(const std::string& dir) {
    for (const std::string& src : {tokenizer_dir(), config.model}) {
      if (src.empty()) continue;
      for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                               "generation_config.json"}) {
        const fs::path from = fs::path(src) / name, to = fs::path(dir) / name;
        std::error_code ec;
        if (fs::exists(from) && !fs::exists(to)) fs::copy_file(from, to, ec);
        if (ec) throw Error("cannot copy " + from.string() + " into " + dir + ": " + ec.message());
      }
    }
  }

  std::string save_checkpoint() {
    const fs::path out(config.output_dir);
    const std::string name = "checkpoint-" + std::to_string(step);
    const fs::path final_dir = out / name;
    const std::tuple<std::string, int64_t, double> best_before = {best_checkpoint, best_step,
                                                                   best_metric};
    consider_best(final_dir.string());
    if (events) events->flush();
    if (!dist->is_main()) {  // rank 0 writes the checkpoint; the ranks' states are equal
      last_checkpoint = final_dir.string();
      last_checkpoint_step = step;
      return last_checkpoint;
    }
    remove_dead_runs_temp_dirs(out);
    const fs::path tmp = out / ("." + name + ".tmp-" + std::to_string(::getpid()));
    remove_tree(tmp.string());
    try {
      write_checkpoint(tmp);
    } catch (...) {  // e.g. a full disk: no half-written directory stays behind
      remove_tree(tmp.string());
      std::tie(best_checkpoint, best_step, best_metric) = best_before;
      throw;
    }
    // Swap the finished directory in: a reader sees the old one or the new one.
    std::error_code ec;
    if (fs::exists(final_dir)) {
      const fs::path old = out / ("." + name + ".old-" + std::to_string(::getpid()));
      fs::rename(final_dir, old, ec);
      if (ec) throw Error("cannot replace " + final_dir.string() + ": " + ec.message());
      fs::rename(tmp, final_dir, ec);
      remove_tree(old.string());
    } else {
      fs::rename(tmp, final_dir, ec);
    }
    if (ec)
      throw Error("cannot rename " + tmp.string() + " to " + final_dir.string() + ": " +
                  ec.message());
    write_file_atomic((out / "latest").string(), name + "\n");
    last_checkpoint = final_dir.string();
    last_checkpoint_step = step;
    prune_checkpoints();
    return last_checkpoint;
  }

  // The directories a save killed mid-way (SIGKILL, power loss) left behind:
  // `.checkpoint-N.tmp-PID` / `.old-PID` of a process that no longer runs.
  static void remove_dead_runs_temp_dirs(const fs::path& out) {
    for (const auto& e : fs::directory_iterator(out)) {
      const std::string n = e.path().filename().string();
      if (!e.is_directory() || !n.starts_with(".checkpoint-")) continue;
      const size_t dash = n.rfind('-');
      const bool temp = n.find(".tmp-") != std::string::npos || n.find(".old-") != std::string::npos;
      if (!temp || dash == std::string::npos) continue;
      const int pid = std::atoi(n.c_str() + dash + 1);
      if (pid > 0 && pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH)
        remove_tree(e.path().string());
    }
  }

  // Everything a checkpoint holds, into the fresh directory `tmp`.
  void write_checkpoint(const fs::path& tmp) {
    fs::create_directories(tmp);
    method->save(*model, tmp.string());
    copy_tokenizer_files(tmp.string());
    optimizer->save((tmp / "optimizer.safetensors").string());
    nlohmann::json state = {{"format", "finmoe-trainer-state"},
                            {"version", kStateVersion},
                            {"step", step},
                            {"tokens", tokens},
                            {"mode", std::string(to_string(config.mode))},
                            {"total_steps", total_steps},
                            {"next_lr", schedule.at(step)},
                            {"rng", rng_state(device)},
                            {"data", source->state()},
                            {"config", config.to_json()}};
    if (!best_checkpoint.empty()) {
      state["best_checkpoint"] = fs::path(best_checkpoint).filename().string();
      state["best_step"] = best_step;
      state["best_metric"] = best_metric;
      state["metric_for_best_model"] = config.best_metric_field();
    }
    write_json_file((tmp / "trainer_state.json").string(), state);
    std::string rows;
    for (const auto& m : history) rows += m.to_json().dump() + "\n";
    write_file_atomic((tmp / "metrics.jsonl").string(), rows);
  }

  // Keeps the newest keep_checkpoints checkpoint-* directories (and the one
  // this run resumed from and the best one, which may be older).
  void prune_checkpoints() {
    if (config.keep_checkpoints <= 0) return;
    std::vector<std::pair<int64_t, fs::path>> found;
    for (const auto& e : fs::directory_iterator(config.output_dir)) {
      const std::string n = e.path().filename().string();
      if (!e.is_directory() || !n.starts_with("checkpoint-")) continue;
      try {
        found.emplace_back(std::stoll(n.substr(11)), e.path());
      } catch (const std::exception&) {
      }
    }
    std::sort(found.begin(), found.end());
    const int64_t extra = int64_t(found.size()) - config.keep_checkpoints;
    std::error_code ec;
    for (int64_t i = 0; i < extra; ++i) {
      const auto& [n, dir] = found[size_t(i)];
      if (n == step) continue;
      if (!resumed_from.empty() && fs::equivalent(dir, resumed_from, ec)) continue;
      if (!best_checkpoint.empty() && fs::equivalent(dir, best_checkpoint, ec)) continue;
      remove_tree(dir.string());
    }
  }

  // The checkpoint directory config.resume names, or "" for a fresh start.
  std::string resume_dir() const {
    const fs::path out(config.output_dir);
    std::string dir = config.resume;
    if (dir.empty()) return "";
    if (dir == "auto") {
      if (!fs::exists(out / "latest")) return "";
      dir = config.output_dir;
    }
    // an output directory: follow its `latest` pointer
    if (!fs::exists(fs::path(dir) / "trainer_state.json") && fs::exists(fs::path(dir) / "latest"))
      dir = (fs::path(dir) / trim(read_text((fs::path(dir) / "latest").string()))).string();
    if (!fs::exists(fs::path(dir) / "trainer_state.json"))
      throw Error("resume: " + dir + " is not a training checkpoint (no trainer_state.json)");
    return dir;
  }

  void resume_from(const std::string& dir) {
    const std::string state_file = dir + "/trainer_state.json";
    const nlohmann::json state = read_json_file(state_file);
    try {
      read_state(state, state_file, dir);
    } catch (const nlohmann::json::exception& e) {  // a field missing or of the wrong type
      throw Error(state_file + ": " + e.what());
    }
  }

  void read_state(const nlohmann::json& state, const std::string& state_file,
                  const std::string& dir) {
    if (!state.is_object() || state.value("format", "") != "finmoe-trainer-state")
      throw Error(state_file + ": not a finmoe trainer state");
    if (state.value("version", 0) != kStateVersion)
      throw Error(state_file + ": trainer state version " +
                  state.value("version", nlohmann::json(0)).dump() +
                  " is not supported (this build reads version " + std::to_string(kStateVersion) +
                  ")");
    if (state.value("mode", "") != to_string(config.mode))
      throw Error(state_file + ": the checkpoint was trained in mode '" + state.value("mode", "") +
                  "', this run is '" + std::string(to_string(config.mode)) + "'");
    method->load(*model, dir);
    optimizer->load(dir + "/optimizer.safetensors");
    step = state.at("step").get<int64_t>();
    tokens = state.at("tokens").get<int64_t>();
    restore_rng(state.at("rng"), device, state_file);
    source->restore(state.at("data"));
    history.clear();
    const std::string metrics = dir + "/metrics.jsonl";
    std::ifstream in(metrics);
    int64_t n = 0;
    for (std::string line; std::getline(in, line);)
      if (++n, !line.empty())
        history.push_back(StepMetrics::from_json(parse_json(line, metrics + ":" + std::to_string(n))));
    last_checkpoint = dir;
    last_checkpoint_step = step;
    resumed_from = dir;
    // the best checkpoint, by the same metric, while it is still there
    best_checkpoint.clear();
    if (state.contains("best_checkpoint") &&
        state.value("metric_for_best_model", "") == config.best_metric_field()) {
      fs::path p = fs::path(dir).lexically_normal();
      if (p.filename().empty()) p = p.parent_path();
      const fs::path best = p.parent_path() / state.at("best_checkpoint").get<std::string>();
      if (fs::exists(best / "trainer_state.json")) {
        best_checkpoint = best.string();
        best_step = state.at("best_step").get<int64_t>();
        best_metric = state.at("best_metric").get<double>();
      }
    }
  }
};

Trainer::Trainer(TrainConfig config, TrainerHooks hooks) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  config.validate();
  s.config = std::move(config);
  s.hooks = std::move(hooks);
  const TrainConfig& c = s.config;
  s.device = device_from_string(c.device);
  // Data parallel: WORLD_SIZE > 1 (finmoe launch); rank r uses cuda:LOCAL_RANK for "cuda".
  const DistConfig dc = dist_config_from_env();
  if (dc.world_size > 1 && s.device.is_cuda() && !s.device.has_index())
    s.device = torch::Device(torch::kCUDA, int8_t(dc.local_rank));
  s.dist = std::make_unique<DistContext>(dc, s.device.is_cuda());
  s.dist->check_same("the train config", c.to_json().dump());
  s.autocast = c.precision == "bf16" || (c.precision == "auto" && s.device.is_cuda());
  torch::manual_seed(c.seed);
  fs::create_directories(c.output_dir);
  const std::string resume = s.resume_dir();
  if (resume.empty() && fs::exists(fs::path(c.output_dir) / "latest"))
    throw Error("output_dir " + c.output_dir +
                " already holds checkpoints: resume them (resume: auto) or choose another "
                "output_dir");

  s.method = make_train_method(c);
  s.load_model();
  s.trainable = s.method->prepare(*s.model);
  if (s.trainable.empty())
    throw Error("mode " + std::string(to_string(c.mode)) + " trains nothing");
  if (c.mode == TrainMode::Kd) {
    s.teacher.emplace(finmoe::load_model(c.kd.teacher, {torch::kFloat32, s.device}));
    if (s.teacher->config().vocab_size != s.model->config().vocab_size)
      throw Error("kd.teacher " + c.kd.teacher + ": vocabulary of " +
                  std::to_string(s.teacher->config().vocab_size) + " differs from the student's " +
                  std::to_string(s.model->config().vocab_size));
  }
  // With dense routing (finmoe_dense) every token uses every expert: f_i = 1
  // and the load-balancing loss is the constant alpha, so it is left out.
  const ModelConfig& mc = s.model->config();
  if (mc.is_moe() && mc.routing() != ModelConfig::Routing::Dense)
    s.aux_alpha = c.moe_aux_loss_alpha.value_or(mc.router_aux_loss_coef);
  s.aux_form = c.moe_aux_loss_type.empty() ? default_load_balance(mc)
                                           : parse_load_balance(c.moe_aux_loss_type, "moe_aux_loss_type");

  s.source = s.make_source(c.data);
  if (!c.eval_data.files.empty()) {
    auto eval_source = s.make_source(c.eval_data);
    for (int64_t i = 0; i < c.eval_batches; ++i) {
      s.eval_batches.push_back(eval_source->next());
      s.check_batch(s.eval_batches.back(), "eval");
    }
  }

  AdamWOptions o;
  o.beta1 = c.betas[0];
  o.beta2 = c.betas[1];
  o.eps = c.eps;
  o.weight_decay = c.weight_decay;
  s.optimizer = std::make_unique<AdamW>(s.trainable, o);
  s.schedule.type = c.schedule;
  s.schedule.lr = c.lr;
  s.schedule.min_lr = c.min_lr;
  s.total_steps = c.total_steps();
  if (s.total_steps == 0) {  // epochs: as many steps as passes over the data take
    if (s.hooks.make_source)
      throw Error("train config: epochs need the default data source (give max_steps)");
    const int64_t rows = rows_per_epoch(c.data, s.get_tokenizer());
    s.total_steps = c.epoch_steps(rows);
    if (s.hooks.progress && s.dist->is_main())
      std::cerr << "epochs " << c.epochs << ": " << rows << " rows of " << c.data.seq_len
                << " tokens per epoch, " << s.total_steps << " steps" << std::endl;
  }
  s.schedule.total_steps = s.total_steps;
  s.schedule.warmup_steps =
      c.warmup_steps > 0 ? c.warmup_steps
                         : int64_t(std::llround(c.warmup_ratio * double(s.schedule.total_steps)));

  if (!resume.empty()) {
    s.resume_from(resume);
    if (s.hooks.progress && s.dist->is_main()) {
      fs::path p = fs::path(resume).lexically_normal();
      if (p.filename().empty()) p = p.parent_path();
      std::cerr << "resuming from " << p.filename().string() << " at step " << s.step << " ("
                << resume << ")" << std::endl;
    }
  }
  // All ranks start from rank 0's weights (and trained tensors outside the
  // model's parameters, such as adapters) and agree on where they are.
  std::vector<torch::Tensor> params;
  std::set<const void*> seen;
  for (auto& [name, t] : s.model->named_parameters())
    if (seen.insert(t.unsafeGetTensorImpl()).second) params.push_back(t);
  for (auto& [name, t] : s.trainable)
    if (seen.insert(t.unsafeGetTensorImpl()).second) params.push_back(t);
  s.dist->broadcast(params);
  s.dist->check_same("the step to resume from", std::to_string(s.step));
  if (s.dist->is_main()) {
    nlohmann::json resolved = c.to_json();  // with the load-balancing form the run uses
    if (s.aux_alpha > 0) resolved["moe_aux_loss_type"] = load_balance_name(s.aux_form);
    write_json_file(c.output_dir + "/train_config.json", resolved);
    s.open_metrics(/*truncate=*/true);
    if (c.tensorboard()) {
      // a resumed run starts a new file whose SessionLog START drops the
      // steps an earlier file logged past the checkpoint
      s.events = std::make_unique<tensorboard::EventWriter>(
          c.logging_dir.empty() ? c.output_dir + "/runs" : c.logging_dir, s.step + 1);
      if (!s.events->ok()) s.events.reset();
    }
  }
}

Trainer::~Trainer() = default;

StepMetrics Trainer::step() {
  StepMetrics m = impl_->train_step();
  impl_->record(m);
  return m;
}

EvalResult Trainer::evaluate() { return impl_->evaluate(); }
std::string Trainer::save_checkpoint() { return impl_->save_checkpoint(); }
int64_t Trainer::step_count() const { return impl_->step; }
int64_t Trainer::total_steps() const { return impl_->total_steps; }
const TrainConfig& Trainer::config() const { return impl_->config; }
const std::vector<StepMetrics>& Trainer::history() const { return impl_->history; }
Transformer& Trainer::model() { return *impl_->model; }

namespace {

// SIGINT / SIGTERM while run() runs: the number of the first one. SA_RESETHAND
// puts the previous disposition back, so a second signal is not delayed.
volatile sig_atomic_t g_stop_signal = 0;
void on_stop_signal(int sig) { g_stop_signal = sig; }

class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

}  // namespace

TrainSummary Trainer::run() {
  Impl& s = *impl_;
  const TrainConfig& c = s.config;
  const int64_t total = s.total_steps;
  StopSignals stop_signals;
  int stopped_by = 0;
  const int64_t first = s.step;
  const int64_t tokens0 = s.tokens;
  std::optional<Progress> bar;
  if (s.hooks.progress && s.dist->is_main()) bar.emplace("train", total - first, "steps");
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<EvalResult> last_eval;
  while (s.step < total) {
    StepMetrics m = s.train_step();
    const bool final_step = s.step == total;
    if (!s.eval_batches.empty() &&
        (final_step || (c.eval_interval > 0 && s.step % c.eval_interval == 0))) {
      last_eval = s.evaluate();
      m.eval_loss = last_eval->loss;
      m.eval_ppl = last_eval->ppl;
    }
    s.record(m);
    if (bar) {
      bar->update(s.step - first, "loss " + fixed(m.loss, 4) + "  lr " + sci(m.lr) + "  " +
                                      fixed(m.tokens_per_second, 0) + " tok/s");
      if (c.log_interval > 0 && (s.step % c.log_interval == 0 || m.eval_loss || final_step)) {
        std::string line = "step " + std::to_string(s.step) + "/" + std::to_string(total) +
                           "  loss " + fixed(m.loss, 4) + "  lm " + fixed(m.lm_loss, 4);
        if (s.aux_alpha > 0) line += "  aux " + fixed(m.aux_loss, 5);
        if (s.teacher) line += "  kd " + fixed(m.kd_loss, 4);
        line += "  lr " + sci(m.lr) + "  gnorm " + fixed(m.grad_norm, 3) + "  " +
                fixed(m.tokens_per_second, 0) + " tok/s";
        if (m.eval_loss)
          line += "  eval loss " + fixed(*m.eval_loss, 4) + " ppl " + fixed(*m.eval_ppl, 3);
        bar->message(line);
      }
    }
    if (c.save_interval > 0 && s.step % c.save_interval == 0 && !final_step) s.save_checkpoint();
    // every rank stops at the same step when any of them got the signal
    int sig = int(g_stop_signal);
    if (s.dist->distributed()) sig = int(s.dist->all_reduce_sum(double(sig)) > 0 ? SIGTERM : 0);
    if (sig && !final_step) {
      stopped_by = g_stop_signal ? int(g_stop_signal) : sig;
      break;
    }
  }
  if (bar) bar->finish();
  if (stopped_by) {
    if (s.last_checkpoint_step != s.step) s.save_checkpoint();
    if (s.dist->is_main())
      std::cerr << "stopped by " << (stopped_by == SIGINT ? "SIGINT" : "SIGTERM") << " after step "
                << s.step << "/" << total << "; checkpoint " << s.last_checkpoint
                << " (continue with resume: auto)" << std::endl;
    TrainSummary sum;
    sum.steps = s.step;
    sum.tokens = s.tokens;
    sum.final_loss = s.history.empty() ? 0.0 : s.history.back().loss;
    sum.checkpoint = s.last_checkpoint;
    sum.last_checkpoint = s.last_checkpoint;
    sum.best_checkpoint = s.best_checkpoint;
    sum.best_step = s.best_step;
    sum.best_metric = s.best_metric;
    sum.stopped_by_signal = stopped_by;
    return sum;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!last_eval && !s.eval_batches.empty()) last_eval = s.evaluate();  // nothing left to train
  if (s.last_checkpoint_step != s.step) s.save_checkpoint();
  if (s.events) s.events->flush();
  const bool load_best = c.load_best_model_at_end && !s.best_checkpoint.empty();
  if (load_best && s.best_step != s.step) s.method->load(*s.model, s.best_checkpoint);
  if (load_best && s.hooks.progress && s.dist->is_main()) {
    auto name = [](const std::string& dir) { return fs::path(dir).filename().string(); };
    std::string line = "load_best_model_at_end: the model is " + name(s.best_checkpoint) + "'s (" +
                       c.best_metric_field() + " " + fixed(s.best_metric, 4) + " at step " +
                       std::to_string(s.best_step) + ")";
    if (s.best_step != s.step) line += "; the last checkpoint is " + name(s.last_checkpoint);
    std::cerr << line << std::endl;
  }

  TrainSummary sum;
  sum.steps = s.step;
  sum.tokens = s.tokens;
  sum.seconds = seconds;
  sum.tokens_per_second = seconds > 0 ? double(s.tokens - tokens0) / seconds : 0;
  sum.final_loss = s.history.empty() ? 0.0 : s.history.back().loss;
  sum.final_eval = last_eval;
  sum.checkpoint = load_best ? s.best_checkpoint : s.last_checkpoint;
  sum.last_checkpoint = s.last_checkpoint;
  sum.best_checkpoint = s.best_checkpoint;
  sum.best_step = s.best_step;
  sum.best_metric = s.best_metric;
  for (const auto& [name, t] : s.trainable) sum.trainable_params += t.numel();
  for (const auto& [name, t] : s.model->named_parameters()) sum.model_params += t.numel();
  if (!s.dist->is_main()) return sum;
  // the model part of the checkpoint: what the method saved, without the optimizer state
  for (const auto& e : fs::directory_iterator(sum.checkpoint))
    if (e.path().extension() == ".safetensors" && e.path().filename() != "optimizer.safetensors")
      sum.checkpoint_bytes += int64_t(e.file_size());
  write_file_atomic(c.output_dir + "/loss.svg",
                    loss_curve_svg(s.history, std::string(to_string(c.mode)) + ": loss by step"));
  write_json_file(c.output_dir + "/train_summary.json", sum.to_json());
  return sum;
}

}  // namespace finmoe
