// TrainConfig: YAML parsing with dotted-key overrides, validation, JSON.
//
// Each section is one table of fields (key, member): the same table parses
// YAML and writes JSON, so a key is declared once.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/train_config.h"
#include "tokenizer/utf8.h"
#include "core/yaml_bounds.h"

namespace finmoe {

namespace {

constexpr std::array<std::pair<TrainMode, std::string_view>, 7> kModes = {{
    {TrainMode::Pretrain, "pretrain"},
    {TrainMode::Cpt, "cpt"},
    {TrainMode::Sft, "sft"},
    {TrainMode::Hybrid, "hybrid"},
    {TrainMode::Kd, "kd"},
    {TrainMode::Esft, "esft"},
    {TrainMode::Lora, "lora"},
}};

constexpr int64_t kMaxLoraRank = int64_t(1) << 16;

// "source:LINE: key" for messages about a value.
std::string where(const std::string& source, const YAML::Node& n, const std::string& key) {
  const YAML::Mark m = n.Mark();
  std::string s = source;
  if (!m.is_null() && m.line >= 0) s += ":" + std::to_string(m.line + 1);
  return s + ": " + key;
}

// A mapping key as text; keys that are lists or mappings name no field.
std::string key_text(const YAML::Node& key, const std::string& source) {
  if (!key.IsScalar())
    throw Error(where(source, key, "(key)") + ": expected a key name, got " +
                (key.IsSequence() ? "a list"
                 : key.IsMap()    ? "a mapping"
                                  : "nothing"));
  return key.Scalar();
}

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

template <class T>
T as(const YAML::Node& n, const std::string& what, const std::string& expected) {
  T v;
  try {
    if (!n.IsScalar()) throw YAML::Exception(YAML::Mark::null_mark(), "not a scalar");
    v = n.as<T>();
  } catch (const YAML::Exception&) {
    throw Error(what + ": expected " + expected + ", got " +
                (n.IsScalar() ? "'" + n.Scalar() + "'" : scalar_text(n)));
  }
  // yaml-cpp passes invalid UTF-8 (and escapes such as "\uD800") through;
  // the config is written back as JSON, which must be valid UTF-8
  if constexpr (std::is_same_v<T, std::string>) {
    if (const size_t bad = tok::utf8_first_invalid(v); bad != std::string::npos)
      throw Error(what + ": not valid UTF-8 (byte " + std::to_string(bad) + " of the value)");
  }
  return v;
}

// One key of a section: how to read it from YAML and write it to JSON.
template <class S>
struct Field {
  std::string key;
  std::function<void(S&, const YAML::Node&, const std::string&)> read;
  std::function<nlohmann::json(const S&)> write;
};

template <class S, class T>
Field<S> field(std::string key, T S::*member) {
  Field<S> f;
  f.key = key;
  f.read = [member](S& s, const YAML::Node& n, const std::string& what) {
    if constexpr (std::is_same_v<T, std::string>) {
      s.*member = n.IsNull() ? std::string() : as<std::string>(n, what, "a string");
    } else if constexpr (std::is_same_v<T, bool>) {
      s.*member = as<bool>(n, what, "true or false");
    } else if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, uint64_t>) {
      // integers may be written as 2e9 (num_tokens)
      const char* expected = std::is_same_v<T, int64_t> ? "an integer" : "a non-negative integer";
      if (n.IsScalar() && !(std::is_same_v<T, uint64_t> && n.Scalar().starts_with("-"))) {
        try {
          s.*member = n.as<T>();
          return;
        } catch (const YAML::Exception&) {
        }
      }
      const double v = as<double>(n, what, expected);
      if (v != std::floor(v) || std::abs(v) > 9.0e15 || (std::is_same_v<T, uint64_t> && v < 0))
        throw Error(what + ": expected " + expected + ", got '" + n.Scalar() + "'");
      s.*member = static_cast<T>(v);
    } else if constexpr (std::is_same_v<T, double>) {
      s.*member = as<double>(n, what, "a number");
    } else if constexpr (std::is_same_v<T, std::optional<double>>) {
      if (n.IsNull())
        s.*member = std::nullopt;
      else
        s.*member = as<double>(n, what, "a number");
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      std::vector<std::string> v;
      if (n.IsScalar()) {
        v.push_back(as<std::string>(n, what, "a string"));
      } else if (n.IsSequence()) {
        for (size_t i = 0; i < n.size(); ++i)
          v.push_back(as<std::string>(n[i], what + "[" + std::to_string(i) + "]", "a string"));
      } else if (!n.IsNull()) {
        throw Error(what + ": expected a file name or a list of them, got " + scalar_text(n));
      }
      s.*member = std::move(v);
    } else if constexpr (std::is_same_v<T, std::array<double, 2>>) {
      if (!n.IsSequence() || n.size() != 2)
        throw Error(what + ": expected a list of two numbers, e.g. [0.9, 0.95]");
      s.*member = {as<double>(n[0], what + "[0]", "a number"),
                   as<double>(n[1], what + "[1]", "a number")};
    } else if constexpr (std::is_same_v<T, TrainMode>) {
      try {
        s.*member = train_mode_from_string(as<std::string>(n, what, "a string"));
      } catch (const Error& e) {
        throw Error(what + ": " + e.what());
      }
    } else {
      static_assert(sizeof(T) == 0, "no reader for this field type");
    }
  };
  f.write = [member](const S& s) -> nlohmann::json {
    const T& v = s.*member;
    if constexpr (std::is_same_v<T, std::optional<double>>) {
      return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
    } else if constexpr (std::is_same_v<T, TrainMode>) {
      return std::string(to_string(v));
    } else {
      return v;
    }
  };
  return f;
}

const std::vector<Field<TrainConfig>>& top_fields() {
  using C = TrainConfig;
  static const std::vector<Field<C>> f = {
      field("mode", &C::mode),
      field("model", &C::model),
      field("init_preset", &C::init_preset),
      field("init_model_type", &C::init_model_type),
      field("init_vocab_size", &C::init_vocab_size),
      field("tokenizer", &C::tokenizer),
      field("output_dir", &C::output_dir),
      field("device", &C::device),
      field("precision", &C::precision),
      field("eval_interval", &C::eval_interval),
      field("eval_batches", &C::eval_batches),
      field("lr", &C::lr),
      field("min_lr", &C::min_lr),
      field("betas", &C::betas),
      field("eps", &C::eps),
      field("weight_decay", &C::weight_decay),
      field("schedule", &C::schedule),
      field("warmup_steps", &C::warmup_steps),
      field("warmup_ratio", &C::warmup_ratio),
      field("max_steps", &C::max_steps),
      field("epochs", &C::epochs),
      field("num_tokens", &C::num_tokens),
      field("grad_clip", &C::grad_clip),
      field("grad_accum", &C::grad_accum),
      field("moe_aux_loss_alpha", &C::moe_aux_loss_alpha),
      field("moe_aux_loss_type", &C::moe_aux_loss_type),
      field("seed", &C::seed),
      field("save_interval", &C::save_interval),
      field("keep_checkpoints", &C::keep_checkpoints),
      field("log_interval", &C::log_interval),
      field("resume", &C::resume),
      field("report_to", &C::report_to),
      field("logging_dir", &C::logging_dir),
      field("metric_for_best_model", &C::metric_for_best_model),
      field("greater_is_better", &C::greater_is_better),
      field("load_best_model_at_end", &C::load_best_model_at_end),
  };
  return f;
}

const std::vector<Field<DataConfig>>& data_fields() {
  using D = DataConfig;
  static const std::vector<Field<D>> f = {
      field("files", &D::files),
      field("format", &D::format),
      field("sft_format", &D::sft_format),
      field("instruction_files", &D::instruction_files),
      field("instruction_ratio", &D::instruction_ratio),
      field("seq_len", &D::seq_len),
      field("batch_size", &D::batch_size),
      field("document_mask", &D::document_mask),
      field("shuffle", &D::shuffle),
      field("seed", &D::seed),
      field("chat_template", &D::chat_template),
      field("text_documents", &D::text_documents),
      field("shuffle_buffer", &D::shuffle_buffer),
      field("text_block_bytes", &D::text_block_bytes),
  };
  return f;
}

const std::vector<Field<KdConfig>>& kd_fields() {
  static const std::vector<Field<KdConfig>> f = {
      field("teacher", &KdConfig::teacher),
      field("temperature", &KdConfig::temperature),
      field("alpha", &KdConfig::alpha),
  };
  return f;
}

const std::vector<Field<EsftTrainConfig>>& esft_fields() {
  static const std::vector<Field<EsftTrainConfig>> f = {
      field("expert_config", &EsftTrainConfig::expert_config),
  };
  return f;
}

const std::vector<Field<LoraConfig>>& lora_fields() {
  static const std::vector<Field<LoraConfig>> f = {
      field("r", &LoraConfig::r),
      field("alpha", &LoraConfig::alpha),
      field("dropout", &LoraConfig::dropout),
      field("target_modules", &LoraConfig::target_modules),
      field("use_rslora", &LoraConfig::use_rslora),
  };
  return f;
}

template <class S>
std::string known_keys(const std::vector<Field<S>>& fields, const std::string& extra = "") {
  std::string s;
  for (const auto& f : fields) s += (s.empty() ? "" : ", ") + f.key;
  return extra.empty() ? s : s + ", " + extra;
}

// Reads a mapping into `s`; returns the keys it set.
template <class S>
std::set<std::string> read_section(S& s, const YAML::Node& node,
                                   const std::vector<Field<S>>& fields, const std::string& source,
                                   const std::string& prefix) {
  if (!node.IsMap() && !node.IsNull())
    throw Error(
        where(source, node, prefix.empty() ? "(top level)" : prefix.substr(0, prefix.size() - 1)) +
        ": expected a mapping of keys, got " + scalar_text(node));
  std::set<std::string> seen;
  if (node.IsNull()) return seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = key_text(it->first, source);
    const Field<S>* f = nullptr;
    for (const auto& cand : fields)
      if (cand.key == key) f = &cand;
    if (!f)
      throw Error(where(source, it->first, prefix + key) +
                  ": unknown key (known: " + known_keys(fields) + ")");
    f->read(s, it->second, where(source, it->second, prefix + key));
    seen.insert(key);
  }
  return seen;
}

template <class S>
nlohmann::json write_section(const S& s, const std::vector<Field<S>>& fields) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& f : fields) j[f.key] = f.write(s);
  return j;
}

// Sets root[a][b]... = value for a dotted key, creating mappings on the way.
void set_path(YAML::Node node, const std::vector<std::string>& path, size_t i,
              const YAML::Node& value) {
  if (i + 1 == path.size()) {
    node[path[i]] = value;
    return;
  }
  if (!node[path[i]].IsMap()) node[path[i]] = YAML::Node(YAML::NodeType::Map);
  set_path(node[path[i]], path, i + 1, value);
}

std::string alias_names() {
  std::string s;
  for (const auto& a : kTrainConfigAliases) s += (s.empty() ? "" : ", ") + std::string(a.alias);
  return s;
}

const TrainConfigAlias* find_alias(std::string_view key) {
  for (const auto& a : kTrainConfigAliases)
    if (a.alias == key) return &a;
  return nullptr;
}

std::vector<std::string> split_key(std::string_view key) {
  std::vector<std::string> path;
  for (size_t start = 0;;) {
    const size_t dot = key.find('.', start);
    path.emplace_back(key.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) return path;
    start = dot + 1;
  }
}

// An alias's value as finmoe's key takes it: HF's constant_with_warmup is
// finmoe's constant (which warms up when warmup_steps/warmup_ratio say so).
YAML::Node alias_value(const TrainConfigAlias& a, const YAML::Node& v) {
  if (a.alias == "lr_scheduler_type" && v.IsScalar() && v.Scalar() == "constant_with_warmup")
    return YAML::Node("constant");
  return v;
}

// Equal as YAML scalars, as numbers (3e-4 and 0.0003), or as documents.
bool same_value(const YAML::Node& a, const YAML::Node& b) {
  if (a.IsScalar() && b.IsScalar()) {
    if (a.Scalar() == b.Scalar()) return true;
    try {
      return a.as<double>() == b.as<double>();
    } catch (const YAML::Exception&) {
      return false;
    }
  }
  return YAML::Dump(a) == YAML::Dump(b);
}

std::string shown(const YAML::Node& n) { return n.IsScalar() ? "'" + n.Scalar() + "'" : scalar_text(n); }

// root[path...] when it is given (and not null).
std::optional<YAML::Node> given(const YAML::Node& root, const std::vector<std::string>& path) {
  YAML::Node n = root;  // reset(), never =: assigning a Node writes into the tree
  for (const auto& part : path) {
    const YAML::Node& cn = n;
    if (!cn.IsMap() || !cn[part]) return std::nullopt;
    n.reset(cn[part]);
  }
  if (n.IsNull()) return std::nullopt;
  return n;
}

// Rewrites the HF names at the top level of `root` to finmoe's keys; an alias
// whose key is also given with another value is an error naming both.
void resolve_aliases(YAML::Node& root, const std::string& source) {
  std::vector<std::string> found;
  for (auto it = root.begin(); it != root.end(); ++it)
    if (it->first.IsScalar() && find_alias(it->first.Scalar())) found.push_back(it->first.Scalar());
  for (const std::string& key : found) {
    const TrainConfigAlias& a = *find_alias(key);
    const YAML::Node& croot = root;
    const YAML::Node original = croot[key];
    const YAML::Node value = alias_value(a, original);
    const std::vector<std::string> path = split_key(a.key);
    if (const auto existing = given(root, path); existing && !same_value(*existing, value))
      throw Error(where(source, original, key) + " " + shown(original) + " and " +
                  std::string(a.key) + " " + shown(*existing) +
                  " name the same setting with different values: give one of them");
    if (path.size() > 1) {
      const YAML::Node section = croot[path[0]];
      if (section.IsDefined() && !section.IsNull() && !section.IsMap())
        throw Error(where(source, section, path[0]) + ": expected a mapping of keys, got " +
                    scalar_text(section));
    }
    root.remove(key);
    set_path(root, path, 0, value);
  }
}

void apply_override(YAML::Node& root, const std::string& o) {
  const size_t eq = o.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("override '" + o + "': expected KEY=VALUE (e.g. lr=1e-4, data.seq_len=256)");
  std::vector<std::string> path;
  std::stringstream ks(o.substr(0, eq));
  for (std::string part; std::getline(ks, part, '.');) {
    if (part.empty()) throw Error("override '" + o + "': empty key part");
    path.push_back(part);
  }
  YAML::Node value;
  check_yaml_bounds(o.substr(eq + 1), "override '" + o + "'");
  try {
    value = YAML::Load(o.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw Error("override '" + o + "': the value is not valid YAML: " + e.msg);
  }
  if (const TrainConfigAlias* a = path.size() == 1 ? find_alias(path[0]) : nullptr) {
    value = alias_value(*a, value);  // an override of an HF name sets finmoe's key
    path = split_key(a->key);
  }
  set_path(root, path, 0, value);
}

}  // namespace

const std::array<TrainConfigAlias, 12> kTrainConfigAliases = {{
    {"learning_rate", "lr"},
    {"gradient_accumulation_steps", "grad_accum"},
    {"per_device_train_batch_size", "data.batch_size"},
    {"per_device_eval_batch_size", "eval_data.batch_size"},
    {"num_train_epochs", "epochs"},
    {"lr_scheduler_type", "schedule"},
    {"max_grad_norm", "grad_clip"},
    {"adam_epsilon", "eps"},
    {"save_steps", "save_interval"},
    {"save_total_limit", "keep_checkpoints"},
    {"logging_steps", "log_interval"},
    {"eval_steps", "eval_interval"},
}};

std::string_view to_string(TrainMode mode) {
  for (const auto& [m, name] : kModes)
    if (m == mode) return name;
  return "?";
}

TrainMode train_mode_from_string(std::string_view name) {
  std::string names;
  for (const auto& [m, n] : kModes) {
    if (n == name) return m;
    names += (names.empty() ? "" : ", ") + std::string(n);
  }
  throw Error("unknown mode '" + std::string(name) + "' (modes: " + names + ")");
}

bool TrainConfig::tensorboard() const {
  return std::any_of(report_to.begin(), report_to.end(),
                     [](const std::string& r) { return r == "tensorboard" || r == "all"; });
}

std::string TrainConfig::best_metric_field() const {
  if (metric_for_best_model == "loss" || metric_for_best_model == "eval_loss") return "eval_loss";
  if (metric_for_best_model == "ppl" || metric_for_best_model == "eval_ppl") return "eval_ppl";
  return "";
}

int64_t TrainConfig::total_steps() const {
  if (max_steps > 0) return max_steps;
  if (epochs > 0) return 0;  // from the data: epoch_steps()
  const int64_t per_step = grad_accum * data.batch_size * data.seq_len;
  return per_step > 0 ? (num_tokens + per_step - 1) / per_step : 0;
}

int64_t TrainConfig::epoch_steps(int64_t rows_per_epoch) const {
  const int64_t batches = (rows_per_epoch + data.batch_size - 1) / data.batch_size;
  const int64_t per_epoch = std::max<int64_t>(1, batches / grad_accum);
  return std::max<int64_t>(1, int64_t(std::ceil(epochs * double(per_epoch))));
}

void TrainConfig::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw Error("train config: " + msg);
  };
  need(!output_dir.empty(), "output_dir is required");
  need(model.empty() != init_preset.empty(),
       "exactly one of model (a directory) and init_preset (a preset name) is required");
  need(mode != TrainMode::Cpt || !model.empty(), "mode cpt continues a model: `model` is required");
  need(mode != TrainMode::Kd || !kd.teacher.empty(),
       "mode kd needs kd.teacher (a model directory)");
  need(mode != TrainMode::Hybrid || (!data.instruction_files.empty() &&
                                     data.instruction_ratio > 0 && data.instruction_ratio < 1),
       "mode hybrid (FinMoE §4.2) needs data.instruction_files and 0 < data.instruction_ratio < 1");
  need(!data.files.empty() || !data.instruction_files.empty(), "data.files is required");
  need(data.seq_len > 0, "data.seq_len must be positive");
  need(data.batch_size > 0, "data.batch_size must be positive");
  need(eval_data.seq_len > 0 && eval_data.batch_size > 0,
       "eval_data.seq_len and eval_data.batch_size must be positive");
  // Upper bounds far above any run on one process, so that nothing sized by
  // them (batches, buffers, step counts) can overflow or allocate unboundedly.
  for (const auto& [name, d] :
       {std::pair<const char*, const DataConfig&>{"data", data},
        std::pair<const char*, const DataConfig&>{"eval_data", eval_data}}) {
    const std::string key = name;
    need(d.seq_len <= kMaxSeqLen, key + ".seq_len must be at most " + std::to_string(kMaxSeqLen));
    need(d.batch_size <= kMaxBatchSize,
         key + ".batch_size must be at most " + std::to_string(kMaxBatchSize));
    need(d.seq_len * d.batch_size <= kMaxBatchTokens,
         key + ".seq_len x batch_size must be at most " + std::to_string(kMaxBatchTokens) +
             " tokens");
    need(d.shuffle_buffer <= kMaxBatchSize,
         key + ".shuffle_buffer must be at most " + std::to_string(kMaxBatchSize) + " rows");
    need(d.text_block_bytes <= kMaxTextBlockBytes,
         key + ".text_block_bytes must be at most " + std::to_string(kMaxTextBlockBytes));
  }
  need(init_vocab_size >= 0 && init_vocab_size <= kMaxVocabSize,
       "init_vocab_size must be in [0, " + std::to_string(kMaxVocabSize) + "]");
  need(eval_batches <= kMaxBatchSize,
       "eval_batches must be at most " + std::to_string(kMaxBatchSize));
  need(grad_accum <= kMaxBatchSize, "grad_accum must be at most " + std::to_string(kMaxBatchSize));
  need(lora.r <= kMaxLoraRank, "lora.r must be at most " + std::to_string(kMaxLoraRank));
  need(eval_interval >= 0, "eval_interval must be >= 0");
  need(eval_batches >= 1, "eval_batches must be >= 1");
  need(device == "cpu" || device == "cuda" || device.starts_with("cuda:"),
       "device must be cpu, cuda or cuda:N, got '" + device + "'");
  need(precision == "auto" || precision == "fp32" || precision == "bf16",
       "precision must be auto, fp32 or bf16, got '" + precision + "'");
  need(std::isfinite(lr) && lr > 0, "lr must be positive");
  need(min_lr >= 0 && min_lr <= lr, "min_lr must be in [0, lr]");
  need(betas[0] >= 0 && betas[0] < 1 && betas[1] >= 0 && betas[1] < 1, "betas must be in [0, 1)");
  need(eps >= 0, "eps must be >= 0");
  need(weight_decay >= 0, "weight_decay must be >= 0");
  need(schedule == "cosine" || schedule == "linear" || schedule == "constant",
       "schedule must be cosine, linear or constant, got '" + schedule + "'");
  need(warmup_steps >= 0, "warmup_steps must be >= 0");
  need(warmup_ratio >= 0 && warmup_ratio < 1, "warmup_ratio must be in [0, 1)");
  need(max_steps >= 0 && num_tokens >= 0, "max_steps and num_tokens must be >= 0");
  need(std::isfinite(epochs) && epochs >= 0 && epochs <= 1e6, "epochs must be in [0, 1e6]");
  need(max_steps > 0 || num_tokens > 0 || epochs > 0,
       "max_steps or num_tokens is required (or epochs, HF num_train_epochs)");
  need(max_steps > 0 || epochs == 0 || num_tokens == 0,
       "epochs and num_tokens both say how long to train: give one of them (or max_steps)");
  need(epochs == 0 || max_steps > 0 || mode != TrainMode::Hybrid,
       "epochs need one data stream; mode hybrid mixes two: give max_steps or num_tokens");
  need(grad_clip >= 0, "grad_clip must be >= 0 (0 = off)");
  need(grad_accum >= 1, "grad_accum must be >= 1");
  need(!moe_aux_loss_alpha || *moe_aux_loss_alpha >= 0, "moe_aux_loss_alpha must be >= 0");
  need(moe_aux_loss_type.empty() || moe_aux_loss_type == "sequence" || moe_aux_loss_type == "batch",
       "moe_aux_loss_type must be sequence or batch, got '" + moe_aux_loss_type + "'");
  need(kd.temperature > 0, "kd.temperature must be positive");
  need(kd.alpha >= 0 && kd.alpha <= 1, "kd.alpha must be in [0, 1]");
  need(mode != TrainMode::Esft || (!esft.expert_config.empty() && !model.empty()),
       "mode esft needs `model` and esft.expert_config (from `finmoe esft select`)");
  need(mode != TrainMode::Lora || !model.empty(), "mode lora adapts a model: `model` is required");
  need(lora.r >= 1, "lora.r must be >= 1");
  need(lora.alpha > 0, "lora.alpha must be positive");
  need(lora.dropout >= 0 && lora.dropout < 1, "lora.dropout must be in [0, 1)");
  need(!lora.target_modules.empty(), "lora.target_modules must name at least one module");
  need(save_interval >= 0 && keep_checkpoints >= 0 && log_interval >= 0,
       "save_interval, keep_checkpoints and log_interval must be >= 0");
  for (const std::string& r : report_to)
    need(r == "tensorboard" || r == "all" || r == "none",
         "report_to '" + r + "' is not an integration finmoe writes (tensorboard, all, none)");
  need(!best_metric_field().empty(),
       "metric_for_best_model must be eval_loss or eval_ppl (or HF's loss, ppl), got '" +
           metric_for_best_model + "'");
  need(!load_best_model_at_end || !eval_data.files.empty(),
       "load_best_model_at_end needs eval_data.files: the best checkpoint is chosen by "
       "evaluation");
  need(!load_best_model_at_end || save_interval == 0 ||
           (eval_interval > 0 && save_interval % eval_interval == 0),
       "load_best_model_at_end needs save_interval (save_steps) to be a multiple of "
       "eval_interval (eval_steps), so that every checkpoint is evaluated; got save_interval " +
           std::to_string(save_interval) + " and eval_interval " + std::to_string(eval_interval));
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j = write_section(*this, top_fields());
  j["data"] = write_section(data, data_fields());
  j["eval_data"] = write_section(eval_data, data_fields());
  j["kd"] = write_section(kd, kd_fields());
  j["esft"] = write_section(esft, esft_fields());
  j["lora"] = write_section(lora, lora_fields());
  return j;
}

TrainConfig parse_train_config(const std::string& yaml, const std::string& source,
                               const std::vector<std::string>& overrides) {
  YAML::Node root;
  check_yaml_bounds(yaml, source);
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw Error(source + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw Error(source + ": expected a mapping of keys at the top level");
  resolve_aliases(root, source);
  for (const auto& o : overrides) apply_override(root, o);

  TrainConfig c;
  // Top-level scalars first: sections take defaults from them (data.seed from
  // seed, data.format from mode, eval_data from data).
  YAML::Node data, eval_data, kd, esft, lora;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = key_text(it->first, source);
    if (key == "data")
      data.reset(it->second);
    else if (key == "eval_data")
      eval_data.reset(it->second);
    else if (key == "kd")
      kd.reset(it->second);
    else if (key == "esft")
      esft.reset(it->second);
    else if (key == "lora")
      lora.reset(it->second);
    else if (std::none_of(top_fields().begin(), top_fields().end(),
                          [&](const auto& f) { return f.key == key; }))
      throw Error(where(source, it->first, key) +
                  ": unknown key (known: " +
                  known_keys(top_fields(), "data, eval_data, kd, esft, lora") +
                  "; HF names: " + alias_names() + ")");
  }
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = key_text(it->first, source);
    if (key == "data" || key == "eval_data" || key == "kd" || key == "esft" || key == "lora")
      continue;
    for (const auto& f : top_fields())
      if (f.key == key) f.read(c, it->second, where(source, it->second, key));
  }

  c.data.seed = c.seed;
  if (c.mode == TrainMode::Sft) c.data.format = "sft";
  if (data) read_section(c.data, data, data_fields(), source, "data.");

  c.eval_data = c.data;
  c.eval_data.files.clear();
  c.eval_data.instruction_files.clear();
  c.eval_data.instruction_ratio = 0;
  c.eval_data.shuffle = false;
  if (eval_data) read_section(c.eval_data, eval_data, data_fields(), source, "eval_data.");
  if (kd) read_section(c.kd, kd, kd_fields(), source, "kd.");
  if (esft) read_section(c.esft, esft, esft_fields(), source, "esft.");
  if (lora) read_section(c.lora, lora, lora_fields(), source, "lora.");

  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(source + ": " + e.what());
  }
  return c;
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (path.empty()) return parse_train_config("", "command-line options", overrides);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read train config " + path);
  // at most one byte past the limit: enough for check_yaml_bounds to refuse it
  std::string text(kMaxYamlBytes + 1, '\0');
  in.read(text.data(), std::streamsize(text.size()));
  if (in.bad()) throw Error("cannot read train config " + path);
  text.resize(size_t(in.gcount()));
  return parse_train_config(text, path, overrides);
}

}  // namespace finmoe
