// The streamed merge engine of `finmoe merge` (include/finmoe/merge.h).
//
// Plan first, write second: every input is opened, every output tensor's
// sources, shapes and parameters are resolved and checked before OUT's
// temporary directory is created, so bad input leaves nothing behind.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <sys/mman.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/chunk_read.h"
#include "core/esft_files.h"
#include "core/file_util.h"
#include "core/hf_remote_code.h"
#include "core/progress.h"
#include "core/side_files.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/esft_delta.h"
#include "finmoe/merge.h"
#include "finmoe/safetensors.h"
#include "kernels/merge_kernels.h"
#include "merge/merge_job.h"
#include "merge/merge_plan.h"
#include "merge/merge_vocab.h"

namespace finmoe {

namespace fs = std::filesystem;

// ---- parameter evaluation ------------------------------------------------------

namespace {

std::optional<double> parse_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<bool> parse_bool(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  if (s == "true" || s == "yes" || s == "on" || s == "1") return true;
  if (s == "false" || s == "no" || s == "off" || s == "0") return false;
  return std::nullopt;
}

const MergeParam* first_match(const MergeParam& p, const std::string& tensor) {
  for (const auto& [filter, value] : p.filtered)
    if (filter.empty() || filter == "*" || tensor.find(filter) != std::string::npos) return &value;
  return nullptr;
}

}  // namespace

std::optional<double> eval_number(const MergeParam& p, const std::string& tensor, double t,
                                  const std::string& key) {
  auto number = [&](const std::string& s) {
    auto v = parse_number(s);
    if (!v) throw Error(key + ": '" + s + "' is not a number");
    return *v;
  };
  switch (p.kind) {
    case MergeParam::Kind::Scalar:
      return number(p.scalar);
    case MergeParam::Kind::Gradient: {
      const double scaled = t * double(p.gradient.size() - 1);
      const size_t i0 = std::min(size_t(scaled), p.gradient.size() - 1);
      const size_t i1 = std::min(p.gradient.size() - 1, i0 + 1);
      const double frac = scaled - double(i0);
      return (1 - frac) * number(p.gradient[i0]) + frac * number(p.gradient[i1]);
    }
    case MergeParam::Kind::Filtered: {
      const MergeParam* m = first_match(p, tensor);
      return m ? eval_number(*m, tensor, t, key) : std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<bool> eval_bool(const MergeParam& p, const std::string& tensor, double t,
                              const std::string& key) {
  auto boolean = [&](const std::string& s) {
    auto v = parse_bool(s);
    if (!v) throw Error(key + ": '" + s + "' is not true or false");
    return *v;
  };
  switch (p.kind) {
    case MergeParam::Kind::Scalar:
      return boolean(p.scalar);
    case MergeParam::Kind::Gradient:
      return boolean(p.gradient[size_t(t * double(p.gradient.size() - 1))]);
    case MergeParam::Kind::Filtered: {
      const MergeParam* m = first_match(p, tensor);
      return m ? eval_bool(*m, tensor, t, key) : std::nullopt;
    }
  }
  return std::nullopt;
}

// ---- inputs and jobs (merge/merge_job.h) ------------------------------------------

namespace merging {

std::unique_ptr<InputModel> InputModel::open(const std::string& name) {
  if (!fs::is_directory(name))
    throw Error("model '" + name +
                "': no such directory (finmoe merge reads local model directories)");
  auto m = std::make_unique<InputModel>();
  m->name = name;
  std::string weights = name;
  if (is_esft_delta(name)) {
    const EsftDeltaInfo info = read_esft_delta(name);
    weights = esft_delta_base(info);
    m->delta = SafetensorsFile::open((fs::path(name) / esft_files::kTensors).string());
  }
  const fs::path cfg = fs::path(name) / "config.json";
  if (!fs::exists(cfg)) throw Error("model '" + name + "': no config.json");
  m->config = read_json_file(cfg.string());
  if (!m->config.is_object() || !m->config.contains("num_hidden_layers") ||
      !m->config["num_hidden_layers"].is_number_integer())
    throw Error(cfg.string() + ": num_hidden_layers must be an integer");
  m->num_layers = m->config["num_hidden_layers"].get<int64_t>();
  m->reader = CheckpointReader::open(weights);
  if (m->delta)
    for (const TensorView& v : m->delta->tensors()) {
      if (!m->reader->has(v.name))
        throw Error(m->delta->path() + ": tensor '" + v.name + "' is not in its base model " +
                    weights);
      if (m->reader->get(v.name).shape != v.shape)
        throw Error(m->delta->path() + ": tensor '" + v.name +
                    "' has another shape than in its base model " + weights);
    }
  return m;
}

DType dtype_named(const std::string& d) {
  if (d == "float32") return DType::F32;
  if (d == "float16") return DType::F16;
  if (d == "bfloat16") return DType::BF16;
  return DType::F64;
}

// The sparsification, consensus and default flags of the task-arithmetic family.
std::optional<merge_math::TaskArithmetic> task_arithmetic_kind(const std::string& m) {
  using merge_math::Sparsify;
  merge_math::TaskArithmetic h;
  if (m == "task_arithmetic") {
  } else if (m == "ties") {
    h = {Sparsify::Magnitude, true, true, false, 1.0};
  } else if (m == "dare_linear") {
    h = {Sparsify::Random, false, false, true, 1.0};
  } else if (m == "dare_ties") {
    h = {Sparsify::Random, true, false, true, 1.0};
  } else if (m == "breadcrumbs") {
    h = {Sparsify::MagnitudeOutliers, false, false, false, 1.0};
  } else if (m == "breadcrumbs_ties") {
    h = {Sparsify::MagnitudeOutliers, true, false, false, 1.0};
  } else if (m == "della") {
    h = {Sparsify::DellaMagprune, true, true, true, 1.0};
  } else if (m == "della_linear") {
    h = {Sparsify::DellaMagprune, false, false, true, 1.0};
  } else {
    return std::nullopt;
  }
  return h;
}

}  // namespace merging

namespace {

using merging::dtype_named;
using merging::InputModel;
using merging::Job;
using merging::task_arithmetic_kind;

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// "model.layers.N.rest" -> (N, "rest"); (-1, "") for other names.
std::pair<int64_t, std::string> layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return {-1, ""};
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return {-1, ""};
  const std::string n = name.substr(prefix.size(), dot - prefix.size());
  if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) return {-1, ""};
  return {std::stoll(n), name.substr(dot + 1)};
}

std::string layer_name(int64_t layer, const std::string& rest) {
  return "model.layers." + std::to_string(layer) + "." + rest;
}

bool is_vocab_tensor(const std::string& name) {
  return name.find("embed_tokens") != std::string::npos ||
         name.find("lm_head") != std::string::npos;
}

std::string shape_error(const std::string& tensor, const TensorView& v, const std::string& model,
                        const TensorView& w, const std::string& other) {
  std::string msg = "tensor '" + tensor + "' has shape " + shape_text(v.shape) + " in model '" +
                    model + "' but " + shape_text(w.shape) + " in model '" + other + "'";
  if (is_vocab_tensor(tensor) && v.shape.size() == w.shape.size() && !v.shape.empty() &&
      v.shape[0] != w.shape[0])
    msg += ": the vocabularies differ in size (set tokenizer_source: union, base or a model, "
           "with each model's tokenizer.json, to map rows by token)";
  return msg;
}

// ---- the plan --------------------------------------------------------------------

bool is_float(DType d) {
  return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64;
}

class Planner {
 public:
  Planner(const MergeRecipe& r) : r_(r), info_(merge_method_info(r.merge_method, r.source)) {}

  std::vector<Job> plan() {
    open_models();
    check_architectures();
    plan_vocabulary();
    std::vector<Job> jobs;
    // non-layer tensors of the reference model: embeddings from the first
    // slice's sources, the rest (final norm, lm_head) from the last slice's
    for (const std::string& name : ref_->names()) {
      if (layer_of(name).first >= 0) continue;
      const MergeSlice& s = is_vocab_tensor(name) && name.find("lm_head") == std::string::npos
                                ? r_.slices.front()
                                : r_.slices.back();
      jobs.push_back(job(name, s, std::vector<std::string>(sources_of(s).size(), name), 0.0));
    }
    int64_t out_layer = 0;
    for (const MergeSlice& s : r_.slices) {
      const auto models = sources_of(s);
      const int64_t n = slice_length(s);
      // layer tensor names of the first source's first layer of the slice
      for (int64_t off = 0; off < n; ++off) {
        const double t = n > 1 ? double(off) / double(n - 1) : 1.0;
        const int64_t first_in = begin_of(s, 0) + off;
        for (const std::string& name : models[0]->names()) {
          auto [layer, rest] = layer_of(name);
          if (layer != first_in) continue;
          std::vector<std::string> inputs;
          for (size_t i = 0; i < models.size(); ++i)
            inputs.push_back(layer_name(begin_of(s, i) + off, rest));
          jobs.push_back(job(layer_name(out_layer, rest), s, inputs, t));
        }
        ++out_layer;
      }
    }
    out_layers_ = out_layer;
    check_complete(jobs);
    return jobs;
  }

  const InputModel& reference() const { return *ref_; }
  const OutputVocab* vocabulary() const { return vocab_ ? &*vocab_ : nullptr; }
  // every input, the base (else the reference) first, then in recipe order
  const std::vector<std::string>& model_order() const { return order_; }
  const InputModel& model(const std::string& name) const { return *models_.at(name); }
  int64_t out_layers() const { return out_layers_; }

 private:
  bool uses_base() const { return info_.needs_base || info_.optional_base; }

  std::string base_of(const MergeSlice& s) const {
    return s.base_model.empty() ? r_.base_model : s.base_model;
  }

  // The slice's inputs, the base appended (covering every layer) when the
  // method needs it and the recipe lists it only as base_model.
  std::vector<const InputModel*> sources_of(const MergeSlice& s) const {
    std::vector<const InputModel*> m;
    for (const auto& src : s.sources) m.push_back(models_.at(src.model).get());
    const std::string base = base_of(s);
    if (uses_base() && !base.empty() &&
        std::none_of(s.sources.begin(), s.sources.end(),
                     [&](const MergeSource& src) { return src.model == base; }))
      m.push_back(models_.at(base).get());
    return m;
  }

  int64_t begin_of(const MergeSlice& s, size_t i) const {
    return i < s.sources.size() ? s.sources[i].layer_begin : 0;
  }

  int64_t slice_length(const MergeSlice& s) const {
    const auto models = sources_of(s);
    int64_t n = -1;
    for (size_t i = 0; i < models.size(); ++i) {
      const bool listed = i < s.sources.size();
      int64_t b = listed ? s.sources[i].layer_begin : 0;
      int64_t e = listed ? s.sources[i].layer_end : -1;
      if (e < 0) e = models[i]->num_layers;
      if (e > models[i]->num_layers)
        throw Error(r_.source + ": layer_range [" + std::to_string(b) + ", " + std::to_string(e) +
                    "] of model '" + models[i]->name + "' is past its " +
                    std::to_string(models[i]->num_layers) + " layers");
      if (n >= 0 && e - b != n)
        throw Error(r_.source + ": model '" + models[i]->name + "' gives " +
                    std::to_string(e - b) + " layers where '" + models[0]->name + "' gives " +
                    std::to_string(n) + " (every input of a slice needs as many layers)");
      n = e - b;
    }
    return n;
  }

  void open_models() {
    auto add = [&](const std::string& name) {
      if (name.empty() || models_.count(name)) return;
      models_[name] = InputModel::open(name);
      order_.push_back(name);
    };
    add(r_.base_model);
    for (const auto& s : r_.slices) {
      add(s.base_model);
      for (const auto& src : s.sources) add(src.model);
    }
    if (!r_.keep_rows_model.empty()) add(r_.keep_rows_model);
    const std::string ref = !r_.base_model.empty() ? r_.base_model : r_.slices[0].sources[0].model;
    ref_ = models_.at(ref).get();
    for (size_t i = 0; i < r_.slices.size(); ++i) {
      const MergeSlice& s = r_.slices[i];
      const std::string where = r_.source + (r_.uses_slices ? ": slices[" + std::to_string(i) + "]" : "");
      int non_base = 0;
      const std::string base = base_of(s);
      for (const auto& src : s.sources) non_base += !(uses_base() && src.model == base);
      if (r_.uses_slices && uses_base() && !base.empty() && std::none_of(s.sources.begin(), s.sources.end(),
                                                             [&](const MergeSource& src) {
                                                               return src.model == base;
                                                             }))
        throw Error(where + ": base_model '" + base + "' is not among the slice's sources");
      const int total = int(s.sources.size());
      if (r_.merge_method == "passthrough" && total != 1)
        throw Error(where + ": passthrough takes exactly one model per slice, got " +
                    std::to_string(total));
      if (non_base < info_.min_models || (info_.max_models > 0 && non_base > info_.max_models))
        throw Error(where + ": merge_method " + r_.merge_method + " needs " +
                    (info_.max_models == info_.min_models
                         ? std::to_string(info_.min_models)
                         : "at least " + std::to_string(info_.min_models)) +
                    " model(s) besides the base, got " + std::to_string(non_base));
    }
  }

  // With a tokenizer source (mergekit's tokenizer_source / tokenizer), OUT's
  // vocabulary; every vocabulary tensor's rows are then mapped to it. `base`
  // or a model without tokenizer.json: the files are copied, rows kept.
  void plan_vocabulary() {
    const std::string& src = r_.tokenizer_source;
    if (src.empty() || !r_.keep_rows_model.empty() || !r_.map_vocabulary) return;
    const bool always = src == "union" || r_.tokenizer_block;
    const std::string dir = src == "base" ? ref_->name : src;
    if (!always && !fs::exists(fs::path(dir) / "tokenizer.json")) return;
    vocab_ = build_output_vocab(r_, ref_->name, order_);
  }

  void check_architectures() const {
    for (const auto& [name, m] : models_)
      if (m->model_type() != ref_->model_type())
        throw Error("model '" + name + "' is a " + m->model_type() + ", model '" + ref_->name +
                    "' a " + ref_->model_type() + ": finmoe merges models of one architecture");
  }

  // In a `models:` merge every input holds exactly the reference's tensors.
  void check_complete(const std::vector<Job>& jobs) const {
    if (r_.uses_slices) return;
    std::set<std::string> out;
    for (const Job& j : jobs) out.insert(j.name);
    for (const auto& [name, m] : models_)
      for (const std::string& t : m->names())
        if (!out.count(t))
          throw Error("tensor '" + t + "' of model '" + name + "' is missing from model '" +
                      ref_->name + "'");
  }

  // Evaluates `key` for a tensor: the source's parameters, then the slice's,
  // the module's, then the global ones (mergekit's order). nullopt when none sets it.
  template <class T, class F>
  std::optional<T> lookup(const std::string& key, const MergeSource* src, const MergeSlice& s,
                          const std::string& tensor, double t, F eval) const {
    const std::string where = r_.source + ": parameter '" + key + "' for tensor '" + tensor + "'";
    for (const MergeParams* p :
         {src ? &src->parameters : nullptr, &s.parameters, &r_.module_parameters, &r_.parameters}) {
      if (!p) continue;
      auto it = p->find(key);
      if (it == p->end()) continue;
      if (auto v = eval(it->second, tensor, t, where)) return v;
    }
    return std::nullopt;
  }
  double number(const std::string& key, const MergeSource* src, const MergeSlice& s,
                const std::string& tensor, double t, std::optional<double> dflt,
                const std::string& model) const {
    auto v = lookup<double>(key, src, s, tensor, t, eval_number);
    if (v) return *v;
    if (!dflt)
      throw Error(r_.source + ": parameter '" + key + "' is missing" +
                  (model.empty() ? "" : " for model '" + model + "'") + " (tensor '" + tensor +
                  "')");
    return *dflt;
  }
  bool flag(const std::string& key, const MergeSlice& s, const std::string& tensor, double t,
            bool dflt) const {
    auto v = lookup<bool>(key, nullptr, s, tensor, t, eval_bool);
    return v ? *v : dflt;
  }

  Job job(const std::string& out, const MergeSlice& s, const std::vector<std::string>& inputs,
          double t) {
    Job j;
    j.name = out;
    j.slice = &s;
    j.models = sources_of(s);
    j.inputs = inputs;
    const std::string base = base_of(s);
    // shapes and presence. With rows kept from one model (the chat vector's
    // instruct model) that model may have more vocabulary rows than the
    // others: the rows past theirs are its own.
    int keep = -1;
    if (!r_.keep_rows_model.empty() && is_vocab_tensor(out)) {
      for (size_t i = 0; i < j.models.size(); ++i)
        if (j.models[i]->name == r_.keep_rows_model) keep = int(i);
      if (keep < 0)
        throw Error("model '" + r_.keep_rows_model + "' whose rows are kept is not an input");
    }
    const TensorView* first = nullptr;  // the first input's, `keep` aside
    size_t first_i = 0;
    const bool remap = vocab_ && is_vocab_tensor(out);
    std::vector<int64_t> tensor_rows;
    for (size_t i = 0; i < j.models.size(); ++i) {
      const TensorView* v = j.models[i]->find(inputs[i]);
      if (!v)
        throw Error("tensor '" + inputs[i] + "' is missing from model '" + j.models[i]->name + "'");
      if (uses_base() && j.models[i]->name == base) j.base = int(i);
      if (int(i) == keep) continue;
      if (remap && !v->shape.empty()) tensor_rows.push_back(v->shape[0]);
      if (!first) {
        first = v;
        first_i = i;
      } else if (remap && v->shape.size() == first->shape.size() && !v->shape.empty() &&
                 std::equal(v->shape.begin() + 1, v->shape.end(), first->shape.begin() + 1)) {
        // rows differ with the vocabularies: mapped below
      } else if (v->shape != first->shape) {
        throw Error(shape_error(inputs[i], *v, j.models[i]->name, *first, j.models[first_i]->name));
      }
    }
    if (keep >= 0) {
      const TensorView* kv = j.models[size_t(keep)]->find(inputs[size_t(keep)]);
      if (!first) first = kv;
      if (kv->shape != first->shape) {
        const bool more_rows = kv->shape.size() == first->shape.size() && !kv->shape.empty() &&
                               kv->shape[0] > first->shape[0] &&
                               std::equal(kv->shape.begin() + 1, kv->shape.end(),
                                          first->shape.begin() + 1);
        if (!more_rows)
          throw Error(shape_error(inputs[size_t(keep)], *kv, j.models[size_t(keep)]->name, *first,
                                  j.models[first_i]->name));
        j.common_rows = first->shape[0];
      }
      j.keep_rows_source = keep;
      j.shape = kv->shape;
    } else {
      j.shape = first->shape;
    }
    if (remap && !first->shape.empty() && tensor_rows.size() == j.models.size()) {
      std::vector<std::string> names;
      for (const InputModel* m : j.models) names.push_back(m->name);
      auto rows = std::make_shared<RowMap>(build_row_map(r_, *vocab_, names, base, out, tensor_rows));
      if (!row_map_is_identity(*rows, tensor_rows)) {
        j.vocab_rows = rows;
        j.shape[0] = rows->rows;
      }
    }
    j.floating = is_float(first->dtype);
    const TensorView* ref = ref_->find(out);
    j.out_dtype = !r_.out_dtype.empty() ? dtype_named(r_.out_dtype)
                  : !r_.dtype.empty()   ? dtype_named(r_.dtype)
                                        : (ref ? ref->dtype : first->dtype);
    if (!j.floating) j.out_dtype = first->dtype;

    // parameters
    const std::string& m = r_.merge_method;
    for (size_t i = 0; i < j.models.size(); ++i) {
      const MergeSource* src = i < s.sources.size() ? &s.sources[i] : nullptr;
      merge_math::ModelParams p;
      const bool is_base = int(i) == j.base;
      const std::string& model = j.models[i]->name;
      if (!is_base && (m == "linear" || m == "nuslerp" || task_arithmetic_kind(m)))
        p.weight = number("weight", src, s, inputs[i], t, std::nullopt, model);
      if (!is_base && task_arithmetic_kind(m)) {
        p.density = number("density", src, s, inputs[i], t, 1.0, model);
        if (!(p.density > 0 && p.density <= 1))
          throw Error(r_.source + ": density " + std::to_string(p.density) + " for model '" +
                      model + "' (tensor '" + inputs[i] + "') is outside (0, 1]");
        p.gamma = number("gamma", src, s, inputs[i], t, 0.01, model);
        p.epsilon = number("epsilon", src, s, inputs[i], t, 0.15, model);
        if (p.gamma < 0 || p.gamma >= 1)
          throw Error(r_.source + ": gamma " + std::to_string(p.gamma) + " for model '" + model +
                      "' is outside [0, 1)");
        if (m.starts_with("della") && p.density < 1 &&
            (p.density - p.epsilon <= 0 || p.density + p.epsilon >= 1))
          throw Error(r_.source + ": epsilon " + std::to_string(p.epsilon) + " with density " +
                      std::to_string(p.density) + " for model '" + model +
                      "': density +- epsilon must lie in (0, 1)");
      }
      if (m == "passthrough") j.scale = number("scale", src, s, inputs[i], t, 1.0, model);
      j.params.push_back(p);
    }
    if (auto h = task_arithmetic_kind(m)) {
      j.how = *h;
      j.how.normalize = flag("normalize", s, out, t, h->normalize);
      j.how.rescale = flag("rescale", s, out, t, h->rescale);
      j.how.lambda = number("lambda", nullptr, s, out, t, 1.0, "");
      check_weight_sum(j, j.how.normalize);
    } else if (m == "linear") {
      j.normalize = flag("normalize", s, out, t, true);
      check_weight_sum(j, j.normalize);
    } else if (m == "slerp") {
      j.t = number("t", nullptr, s, out, t, std::nullopt, "");
    } else if (m == "nuslerp") {
      j.flatten = flag("nuslerp_flatten", s, out, t, true);
      j.row_wise = flag("nuslerp_row_wise", s, out, t, false);
    } else if (m == "model_stock") {
      j.filter_wise = flag("filter_wise", s, out, t, false);
    } else if (m == "sce") {
      j.select_topk = number("select_topk", nullptr, s, out, t, 1.0, "");
      if (!(j.select_topk > 0 && j.select_topk <= 1))
        throw Error(r_.source + ": select_topk " + std::to_string(j.select_topk) +
                    " (tensor '" + out + "') is outside (0, 1]");
    }
    if (j.keep_rows_source >= 0) {
      for (int64_t row : r_.keep_rows)
        if (row < 0 || j.shape.empty() || row >= j.shape[0])
          throw Error("token id " + std::to_string(row) + " of model '" + r_.keep_rows_model +
                      "' is outside tensor '" + out + "' (" + shape_text(j.shape) + ")");
      j.keep_rows = !r_.keep_rows.empty();
    }
    return j;
  }

  void check_weight_sum(const Job& j, bool normalize) const {
    if (!normalize) return;
    double sum = 0;
    std::string list;
    for (size_t i = 0; i < j.params.size(); ++i) {
      if (int(i) == j.base) continue;
      sum += j.params[i].weight;
      list += (list.empty() ? "" : ", ") + j.models[i]->name + " " +
              std::to_string(j.params[i].weight);
    }
    if (!list.empty() && std::abs(sum) < 1e-8)
      throw Error(r_.source + ": the weights of tensor '" + j.name + "' sum to 0 (" + list +
                  ") and normalize is on: set normalize: false or change a weight");
  }

  const MergeRecipe& r_;
  const MergeMethodInfo& info_;
  std::map<std::string, std::unique_ptr<InputModel>> models_;
  const InputModel* ref_ = nullptr;
  int64_t out_layers_ = 0;
  std::vector<std::string> order_;      // open_models' order: base (else reference) first
  std::optional<OutputVocab> vocab_;    // plan_vocabulary
};

// ---- execution ---------------------------------------------------------------------

// ---- the fused path (kernels/merge_kernels.h) ------------------------------------

std::optional<kernels::MergeType> merge_type(DType d) {
  switch (d) {
    case DType::F32: return kernels::MergeType::kF32;
    case DType::BF16: return kernels::MergeType::kBF16;
    case DType::F16: return kernels::MergeType::kF16;
    default: return std::nullopt;
  }
}

// The job as one fused kernel call, when its method and dtypes allow: linear,
// task_arithmetic and ties (without rescale) on bfloat16/float16/float32
// inputs and output, float32 math, no vocabulary rows mapped or kept. The
// kernel repeats the libtorch path's float32 operations (bit-identical
// results). nullopt: the libtorch path runs instead. Cheap: TIES's kept
// entries are add_magnitude_keep's.
std::optional<kernels::MergeCombine> fused_plan(const MergeRecipe& r, const Job& j) {
  using kernels::MergeCombine;
  if (!j.floating || j.vocab_rows || j.keep_rows_source >= 0) return std::nullopt;
  if (!r.dtype.empty() && r.dtype != "float32" && r.dtype != "bfloat16" && r.dtype != "float16")
    return std::nullopt;
  const auto out_type = merge_type(j.out_dtype);
  if (!out_type) return std::nullopt;
  MergeCombine a;
  const std::string& m = r.merge_method;
  const auto ta = task_arithmetic_kind(m);
  if (m == "linear") {
    a.method = MergeCombine::Method::kLinear;
    a.normalize = j.normalize;
  } else if (ta && j.base >= 0 &&
             (j.how.sparsify == merge_math::Sparsify::None ||
              (j.how.sparsify == merge_math::Sparsify::Magnitude && !j.how.rescale))) {
    a.method = MergeCombine::Method::kTaskArithmetic;
    a.normalize = j.how.normalize;
    a.consensus = j.how.consensus;
    a.lambda = j.how.lambda;
  } else {
    return std::nullopt;
  }
  a.n = 1;
  for (int64_t d : j.shape) a.n *= d;
  a.round_inputs = r.dtype == "bfloat16"  ? kernels::MergeType::kBF16
                   : r.dtype == "float16" ? kernels::MergeType::kF16
                                          : kernels::MergeType::kF32;
  a.out_type = *out_type;
  for (size_t i = 0; i < j.models.size(); ++i) {
    const TensorView& v = *j.models[i]->find(j.inputs[i]);
    const auto t = merge_type(v.dtype);
    if (!t) return std::nullopt;
    const kernels::MergeInput in{v.data, *t};
    if (int(i) == j.base) {
      a.base = in;
    } else {
      a.xs.push_back(in);
      a.weights.push_back(j.params[i].weight);
    }
  }
  if (a.xs.empty() || a.xs.size() > 64) return std::nullopt;
  return a;
}

// TIES on the fused path: per model, which of its entries are kept (its k
// largest |delta|), found by a pass over the inputs (fused_plan leaves it out).
void add_magnitude_keep(kernels::MergeCombine& a, const Job& j) {
  if (a.method != kernels::MergeCombine::Method::kTaskArithmetic ||
      j.how.sparsify != merge_math::Sparsify::Magnitude)
    return;
  size_t x = 0;
  for (size_t i = 0; i < j.params.size(); ++i) {
    if (int(i) == j.base) continue;
    const double density = j.params[i].density;
    kernels::MergeCombine::Keep keep{0, a.n};  // density 1: everything
    if (density < 1 && a.n > 0) {
      const int64_t k = std::max<int64_t>(1, int64_t(density * double(a.n)));
      keep = kernels::magnitude_keep(a.xs[x], a.base, a.n, k, a.round_inputs);
    }
    a.keep.push_back(keep);
    ++x;
  }
}

std::string dtype_config_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F64: return "float64";
    default: return "";
  }
}

std::string quoted(const std::string& s) { return nlohmann::json(s).dump(); }

void emit_params(std::ostringstream& y, const MergeParams& ps, const std::string& indent);

void emit_param(std::ostringstream& y, const MergeParam& p, const std::string& indent) {
  switch (p.kind) {
    case MergeParam::Kind::Scalar:
      y << " " << p.scalar << "\n";
      break;
    case MergeParam::Kind::Gradient: {
      y << " [";
      for (size_t i = 0; i < p.gradient.size(); ++i) y << (i ? ", " : "") << p.gradient[i];
      y << "]\n";
      break;
    }
    case MergeParam::Kind::Filtered:
      y << "\n";
      for (const auto& [f, v] : p.filtered) {
        y << indent << "- ";
        if (!f.empty()) y << "filter: " << quoted(f) << "\n" << indent << "  ";
        y << "value:";
        emit_param(y, v, indent + "    ");
      }
      break;
  }
}

void emit_params(std::ostringstream& y, const MergeParams& ps, const std::string& indent) {
  if (ps.empty()) return;
  y << indent << "parameters:\n";
  for (const auto& [k, v] : ps) {
    y << indent << "  " << k << ":";
    emit_param(y, v, indent + "    ");
  }
}

// A recipe built in code (the chat-vector preset) as mergekit YAML.
std::string recipe_yaml(const MergeRecipe& r) {
  std::ostringstream y;
  y << "merge_method: " << r.merge_method << "\n";
  if (!r.base_model.empty()) y << "base_model: " << quoted(r.base_model) << "\n";
  if (!r.dtype.empty()) y << "dtype: " << r.dtype << "\n";
  if (!r.out_dtype.empty()) y << "out_dtype: " << r.out_dtype << "\n";
  if (!r.tokenizer_source.empty()) y << "tokenizer_source: " << quoted(r.tokenizer_source) << "\n";
  emit_params(y, r.parameters, "");
  if (!r.uses_slices) {
    y << "models:\n";
    for (const auto& s : r.slices[0].sources) {
      y << "  - model: " << quoted(s.model) << "\n";
      emit_params(y, s.parameters, "    ");
    }
  } else {
    y << "slices:\n";
    for (const auto& sl : r.slices) {
      y << "  - sources:\n";
      for (const auto& s : sl.sources) {
        y << "      - model: " << quoted(s.model) << "\n        layer_range: [" << s.layer_begin
          << ", " << s.layer_end << "]\n";
        emit_params(y, s.parameters, "        ");
      }
      if (!sl.base_model.empty()) y << "    base_model: " << quoted(sl.base_model) << "\n";
      emit_params(y, sl.parameters, "    ");
    }
  }
  if (!r.keep_rows.empty())
    y << "# finmoe: rows of embed_tokens/lm_head kept from " << quoted(r.keep_rows_model) << ": "
      << r.keep_rows.size() << " special token(s)\n";
  return y.str();
}

std::string model_card(const MergeRecipe& r, const std::string& yaml,
                       const std::vector<std::string>& models) {
  std::ostringstream c;
  c << "---\n";
  if (!r.base_model.empty()) c << "base_model: " << quoted(r.base_model) << "\n";
  c << "tags:\n  - merge\n  - finmoe\n---\n\n# Merged model\n\n"
    << "Made with `finmoe merge`, method `" << r.merge_method << "`";
  if (!r.base_model.empty()) c << ", base model `" << r.base_model << "`";
  c << ".\n\n## Models\n\n";
  for (const auto& m : models) c << "- `" << m << "`\n";
  c << "\n## Recipe\n\n```yaml\n" << yaml << (yaml.ends_with("\n") ? "" : "\n") << "```\n";
  return c.str();
}

// Starts the kernel reading the inputs of the jobs ahead of the one being
// merged (MADV_WILLNEED: asynchronous readahead of those pages), up to
// kReadAheadBytes of input: inputs that are not in the page cache then come
// from the disk with many requests in flight, all files at once, instead of
// one page fault at a time. Cached inputs cost a walk of the page cache.
class InputReadAhead {
 public:
  // skip[i]: job i reads its inputs some other way (StreamedInputs)
  InputReadAhead(const std::vector<Job>& jobs, const std::vector<bool>& skip)
      : views_(jobs.size()), bytes_(jobs.size(), 0) {
    for (size_t i = 0; i < jobs.size(); ++i)
      for (size_t k = 0; k < jobs[i].models.size() && !skip[i]; ++k)
        if (const TensorView* v = jobs[i].models[k]->find(jobs[i].inputs[k])) {
          views_[i].push_back(v);
          bytes_[i] += v->nbytes;
        }
  }
  // Job i is about to be merged (called for i = 0, 1, 2, ... in order; the
  // window always holds job i, so next_ > i afterwards).
  void at(size_t i) {
    if (i > 0) ahead_ -= bytes_[i - 1];  // merged: out of the window
    for (; next_ < views_.size() && ahead_ < kReadAheadBytes; ++next_) {
      for (const TensorView* v : views_[next_]) will_need(*v);
      ahead_ += bytes_[next_];
    }
  }

 private:
  static constexpr size_t kReadAheadBytes = size_t(256) << 20;
  static void will_need(const TensorView& v) {
    if (v.nbytes == 0) return;
    static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t start = uintptr_t(v.data) & ~(page - 1);
    ::madvise(reinterpret_cast<void*>(start), uintptr_t(v.data) + v.nbytes - start, MADV_WILLNEED);
  }
  std::vector<std::vector<const TensorView*>> views_;  // each job's inputs
  std::vector<size_t> bytes_;                           // their bytes per job
  size_t next_ = 0;   // the first job not yet asked for
  size_t ahead_ = 0;  // input bytes asked for, of the jobs from the current one on
};

// Elements [first, first + n) of the fused plan `whole`: its inputs and the
// magnitude masks' tie cuts (element indices) moved to the piece; the output
// pointer is the caller's.
kernels::MergeCombine piece_of(const kernels::MergeCombine& whole, int64_t first, int64_t n) {
  kernels::MergeCombine a = whole;
  a.n = n;
  const auto at = [&](kernels::MergeInput& in) {
    if (in.data)
      in.data = static_cast<const uint8_t*>(in.data) + first * kernels::merge_type_size(in.type);
  };
  at(a.base);
  for (kernels::MergeInput& x : a.xs) at(x);
  for (kernels::MergeCombine::Keep& k : a.keep) k.tie_cut = std::max<int64_t>(-1, k.tie_cut - first);
  return a;
}

// TIES with a density below 1 selects each model's largest |delta| over the
// whole tensor (two passes): its inputs are read through the mapping.
bool needs_magnitude_keep(const Job& j) {
  if (j.how.sparsify != merge_math::Sparsify::Magnitude) return false;
  for (size_t i = 0; i < j.params.size(); ++i)
    if (int(i) != j.base && j.params[i].density < 1) return true;
  return false;
}

// The fused jobs' inputs read into buffers by reader threads (MergeOptions::io
// kRead, kDirect, or kAuto on inputs mostly not cached): chunk after chunk of
// MergeOptions::chunk_elements elements of every input of a job, in job order,
// ahead of the merge, with at most kReadAheadBytes in buffers. From the disk
// this beats the mapping (docs/PERFORMANCE.md: the merge never waits in a
// page fault, and each reader's preads are a sequential stream the kernel
// reads ahead of); from the page cache the mapping wins (no copy).
class StreamedInputs {
 public:
  struct Chunk {
    size_t job = 0;
    int64_t first = 0, n = 0;  // elements [first, first + n) of the job's tensors
  };

  // nullptr: every job reads through the mapping (io kMmap, no fused job, or
  // kAuto with at least half of the input bytes in the page cache).
  static std::unique_ptr<StreamedInputs> open(const MergeRecipe& r, const std::vector<Job>& jobs,
                                              const MergeOptions& o) {
    using Io = MergeOptions::Io;
    if (o.io == Io::kMmap || !o.fused) return nullptr;
    std::vector<std::pair<size_t, int64_t>> streamed;  // (job, its elements)
    double bytes = 0, cached = 0;
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Job& j = jobs[i];
      if (needs_magnitude_keep(j)) continue;
      const std::optional<kernels::MergeCombine> plan = fused_plan(r, j);
      if (!plan || plan->n == 0) continue;
      streamed.emplace_back(i, plan->n);
      for (size_t k = 0; k < j.models.size(); ++k) {
        const TensorView* v = j.models[k]->find(j.inputs[k]);
        bytes += double(v->nbytes);
        if (o.io == Io::kAuto)  // a sample per MiB, up to 16 per tensor
          cached += double(v->nbytes) *
                    resident_fraction(v->data, v->nbytes,
                                      int(std::clamp<size_t>(v->nbytes >> 20, 1, 16)));
      }
    }
    if (streamed.empty() || (o.io == Io::kAuto && cached * 2 >= bytes)) return nullptr;
    const bool direct = o.io == Io::kDirect;
    auto d = std::unique_ptr<StreamedInputs>(new StreamedInputs());
    d->streamed_.assign(jobs.size(), false);
    std::vector<ChunkReadQueue::Chunk> reads;
    size_t slot_bytes = 0;
    for (const auto& [i, n] : streamed) {
      const Job& j = jobs[i];
      d->streamed_[i] = true;
      struct Input {
        const ChunkFile* file;
        uint64_t offset;
        size_t element_size;
      };
      std::vector<Input> in;
      for (size_t k = 0; k < j.models.size(); ++k) {
        const SafetensorsFile& f = j.models[k]->file_of(j.inputs[k]);
        auto it = d->files_.find(f.path());
        if (it == d->files_.end()) {
          std::unique_ptr<ChunkFile> cf = ChunkFile::open(f.path(), direct);
          if (!cf)
            throw Error("--io direct: " + f.path() +
                        ": its file system does not take O_DIRECT reads (--io read reads "
                        "through the page cache)");
          it = d->files_.emplace(f.path(), std::move(cf)).first;
        }
        const TensorView* v = j.models[k]->find(j.inputs[k]);
        in.push_back({it->second.get(), uint64_t(v->data - f.mapped_data()),
                      size_t(dtype_size(v->dtype))});
        d->bytes_ += v->nbytes;
      }
      const int64_t chunk = std::max<int64_t>(1, o.chunk_elements);
      for (int64_t first = 0; first < n; first += chunk) {
        const int64_t m = std::min(chunk, n - first);
        d->chunks_.push_back({i, first, m});
        ChunkReadQueue::Chunk c;
        size_t sb = 0;
        for (const Input& x : in) {
          c.push_back({x.file, x.offset + uint64_t(first) * x.element_size,
                       size_t(m) * x.element_size});
          sb += ChunkFile::span(c.back().offset, c.back().size);
        }
        slot_bytes = std::max(slot_bytes, sb);
        reads.push_back(std::move(c));
      }
    }
    const int slots = int(std::clamp<size_t>(kReadAheadBytes / slot_bytes, 4, 64));
    d->queue_ = std::make_unique<ChunkReadQueue>(std::move(reads), slots, kReaders);
    return d;
  }

  bool streams(size_t job) const { return streamed_[job]; }
  const std::vector<bool>& streamed() const { return streamed_; }
  uint64_t bytes() const { return bytes_; }  // every streamed input byte

  // Waits for the next chunk, which must be elements [first, first + n) of
  // job `job` (the merge asks for the chunks in the order they are read), and
  // points the inputs of `a` (a piece_of that job's plan) into its buffers.
  // release() once merged.
  void take(size_t job, const Job& j, int64_t first, int64_t n, kernels::MergeCombine& a) {
    if (next_ >= chunks_.size() || chunks_[next_].job != job || chunks_[next_].first != first ||
        chunks_[next_].n != n)
      throw Error("internal: tensor '" + j.name + "' merged out of the order its inputs are read");
    const std::vector<const uint8_t*>& at = queue_->wait(next_);  // in the order of j.models
    for (size_t k = 0, x = 0; k < at.size(); ++k) {
      if (int(k) == j.base) {
        a.base.data = at[k];
      } else {
        a.xs[x++].data = at[k];
      }
    }
  }
  void release() { queue_->done(next_++); }

 private:
  // Buffers ahead of the merge, and reader threads. Measured on the
  // Qwen2-0.5B-shape merge from the disk (docs/PERFORMANCE.md): 3 readers
  // with 384-768 MiB ahead read fastest; 1-2 readers or 192 MiB were slower.
  static constexpr size_t kReadAheadBytes = size_t(512) << 20;
  static constexpr int kReaders = 3;

  StreamedInputs() = default;
  std::map<std::string, std::unique_ptr<ChunkFile>> files_;  // by path
  std::vector<bool> streamed_;                                // per job
  std::vector<Chunk> chunks_;
  std::unique_ptr<ChunkReadQueue> queue_;
  size_t next_ = 0;  // the next chunk to merge
  uint64_t bytes_ = 0;
};

// The output written by a thread of its own, piece by piece (a block of
// MergeOptions::chunk_elements elements of a tensor), so each piece's copy
// into the page cache (and the disk's writeback) overlaps the merge of the
// next ones. A ring of kSlots buffers, each as big as the largest piece: they
// are reused piece after piece, so they stay in cache and cost no page
// faults after the first round (fresh memory costs a fault and a zeroing per
// 4 KiB page: on a VM, 0.3 s for the two whole-tensor buffers of a
// Qwen2-0.5B merge, docs/PERFORMANCE.md).
class WriteBehind {
 public:
  struct WriteError : Error {
    using Error::Error;
  };
  explicit WriteBehind(CheckpointWriter& writer) : writer_(writer), thread_([this] { run(); }) {}
  ~WriteBehind() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // A buffer of at least nbytes to merge the next piece into; waits while
  // every slot is queued or being written.
  char* buffer(size_t nbytes) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return error_ || pending_ < kSlots; });
    rethrow();
    Buffer& b = buffers_[fill_];  // slots are filled and written in turn: this one is free
    if (b.size < nbytes) {
      b.data.reset();  // the old one first
      b.data = aligned_buffer(nbytes);
      b.size = nbytes;
    }
    return reinterpret_cast<char*>(b.data.get());
  }
  // Writes the buffer buffer() returned last as the next piece of tensor
  // `name` (CheckpointWriter::write_piece), in turn.
  void write(const std::string& name, size_t nbytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      rethrow();
      ++pending_;
      queue_.push_back({fill_, name, nbytes});
      fill_ = (fill_ + 1) % kSlots;
    }
    cv_.notify_all();
  }
  // Waits until every queued piece is written; rethrows a write's Error.
  void drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return error_ || pending_ == 0; });
    rethrow();
  }

 private:
  // 12: from the disk, 4 slots were within the noise of the whole-tensor
  // buffers but slower in two of three runs of 8 rounds (docs/PERFORMANCE.md)
  static constexpr int kSlots = 12;
  struct Buffer {
    AlignedBuffer data;
    size_t size = 0;
  };
  struct Pending {
    int buffer;
    std::string name;
    size_t nbytes;
  };
  void rethrow() {
    if (!error_) return;
    try {
      std::rethrow_exception(error_);
    } catch (const Error& e) {
      throw WriteError(e.what());  // it names its tensor
    }
  }
  void run() {
    for (;;) {
      Pending p;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;  // drained, or an exception unwinds the merge
        p = queue_.front();
        queue_.pop_front();
      }
      std::exception_ptr error;
      try {
        writer_.write_piece(p.name, buffers_[p.buffer].data.get(), p.nbytes);
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        --pending_;
        if (error && !error_) error_ = error;
        if (error_) {
          pending_ -= int(queue_.size());
          queue_.clear();
        }
      }
      cv_.notify_all();
    }
  }

  CheckpointWriter& writer_;
  Buffer buffers_[kSlots];
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;  // guarded by mu_, like the three below
  int pending_ = 0;            // pieces queued or being written
  bool stop_ = false;
  std::exception_ptr error_;
  int fill_ = 0;               // the slot the merge fills next (main thread)
  std::thread thread_;         // last: starts once the members above exist
};

}  // namespace

void check_new_output(const std::string& out_dir) {
  if (out_dir.empty()) throw Error("OUT: an output directory is required");
  std::error_code ec;
  if (fs::exists(out_dir, ec) || fs::is_symlink(out_dir, ec))
    throw Error("OUT " + out_dir + " exists: finmoe merge writes a new directory");
}

StagedOutput::StagedOutput(const std::string& out_dir) : out_dir_(out_dir) {
  fs::path out = fs::path(out_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();  // "OUT/"
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  out_dir_ = out.string();
  tmp_ = temp_path_for(out_dir_);
  fs::create_directories(tmp_);
}

StagedOutput::~StagedOutput() {
  if (!committed_) remove_tree(tmp_);
}

void StagedOutput::commit() {
  std::error_code ec;
  fs::rename(tmp_, out_dir_, ec);
  if (ec) throw Error("cannot rename " + tmp_ + " to " + out_dir_ + ": " + ec.message());
  committed_ = true;
}

namespace merging {

MergeReport merge_models_with(const MergeRecipe& recipe, const std::string& out_dir,
                              const MergeOptions& options, TorchMergeJob torch_job) {
  const auto t0 = std::chrono::steady_clock::now();
  check_new_output(out_dir);

  Planner planner(recipe);
  const std::vector<Job> jobs = planner.plan();

  std::vector<PlannedTensor> plan;
  for (const Job& j : jobs) plan.push_back({j.name, j.out_dtype, j.shape});
  if (!torch_job)
    for (const Job& j : jobs)
      if (!options.fused || !fused_plan(recipe, j)) throw NeedsLibtorch{j.name};

  // the tokenizer source
  std::string tok = recipe.tokenizer_source;
  if (tok.empty() || tok == "base" || tok == "union") {
    if (tok == "base" && recipe.base_model.empty())
      throw Error(recipe.source + ": tokenizer_source: base without a base_model");
    tok = planner.reference().name;
  } else if (!fs::is_directory(tok)) {
    throw Error(recipe.source + ": tokenizer_source '" + tok + "' is not a model directory");
  }

  // config.json: the reference's, with the output's layer count and dtype
  nlohmann::json config = planner.reference().config;
  if (recipe.uses_slices) {
    config["num_hidden_layers"] = planner.out_layers();
    // keys that say which layers are what: slices would make them wrong
    auto per_layer = [&](const char* key) {
      if (!config.contains(key)) return false;
      const nlohmann::json& v = config[key];
      if (std::string(key) == "first_k_dense_replace") return v.is_number() && v.get<double>() > 0;
      if (std::string(key) == "decoder_sparse_step") return v.is_number() && v.get<double>() > 1;
      return !v.is_null() && !(v.is_array() && v.empty());
    };
    for (const char* key :
         {"layer_types", "mlp_only_layers", "first_k_dense_replace", "decoder_sparse_step"})
      if (per_layer(key))
        throw Error(recipe.source + ": slices change the layers and config.json of '" +
                    planner.reference().name + "' sets '" + key +
                    "', a per-layer layout finmoe merge does not rewrite");
  }
  for (const Job& j : jobs)  // a vocabulary grown by the kept model's rows
    if (j.common_rows >= 0 && j.name.find("embed_tokens") != std::string::npos)
      config["vocab_size"] = j.shape[0];
  const OutputVocab* vocab = planner.vocabulary();
  if (vocab) config["vocab_size"] = vocab->rows;
  const std::optional<std::string> chat_template =
      resolve_chat_template(recipe, planner.model_order());
  std::set<DType> float_types;
  for (const Job& j : jobs)
    if (j.floating) float_types.insert(j.out_dtype);
  if (float_types.size() == 1) {
    const std::string name = dtype_config_name(*float_types.begin());
    config["torch_dtype"] = name;
    if (config.contains("dtype")) config["dtype"] = name;
  }
  const std::string yaml = recipe.text.empty() ? recipe_yaml(recipe) : recipe.text;
  std::vector<std::string> model_names;
  for (const auto& s : recipe.slices)
    for (const auto& src : s.sources)
      if (std::find(model_names.begin(), model_names.end(), src.model) == model_names.end())
        model_names.push_back(src.model);

  // everything is checked: write under a temporary name beside OUT
  StagedOutput staged(out_dir);
  const std::string& tmp = staged.dir();

  MergeReport report;
  {
    CheckpointWriter writer(tmp, plan, {{"format", "pt"}}, options.max_shard_bytes);
    std::optional<Progress> progress;
    if (options.progress) progress.emplace("merge", int64_t(jobs.size()), "tensors");
    WriteBehind behind(writer);  // the fused path's output
    std::unique_ptr<StreamedInputs> streamed = StreamedInputs::open(recipe, jobs, options);
    InputReadAhead read_ahead(jobs,
                              streamed ? streamed->streamed() : std::vector<bool>(jobs.size()));
    if (streamed) report.bytes_streamed = streamed->bytes();
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Job& j = jobs[i];
      read_ahead.at(i);
      try {
        std::optional<kernels::MergeCombine> fused;
        if (options.fused) fused = fused_plan(recipe, j);
        if (fused) {
          add_magnitude_keep(*fused, j);
          // piece by piece: the streamed reads' chunks, and the write-behind's
          const int64_t piece = std::max<int64_t>(1, options.chunk_elements);
          const int64_t out_size = kernels::merge_type_size(fused->out_type);
          const bool reads = streamed && streamed->streams(i);
          for (int64_t first = 0; first == 0 || first < fused->n; first += piece) {
            const int64_t m = std::min(piece, fused->n - first);
            kernels::MergeCombine a = piece_of(*fused, first, m);
            if (reads) streamed->take(i, j, first, m, a);
            a.out = behind.buffer(size_t(m * out_size));
            kernels::merge_combine(a);
            if (reads) streamed->release();
            behind.write(j.name, size_t(m * out_size));
          }
          for (size_t k = 0; k < j.models.size(); ++k)
            report.bytes_read += j.models[k]->find(j.inputs[k])->nbytes;
        } else {
          torch_job(recipe, j, options.seed, options.chunk_elements, &report.bytes_read,
                    [&](const void* data, size_t nbytes) {
                      behind.drain();  // in order, after the queued ones
                      writer.write(j.name, data, nbytes);
                    });
        }
      } catch (const WriteBehind::WriteError&) {
        throw;  // an earlier tensor's, named
      } catch (const Error& e) {
        throw Error("tensor '" + j.name + "': " + e.what());
      }
      if (progress) {
        char status[64];
        std::snprintf(status, sizeof(status), "%.0f MiB read", double(report.bytes_read) / 1048576.0);
        progress->update(int64_t(i + 1), status);
      }
    }
    behind.drain();
    writer.finish();
    if (progress) progress->finish();
    report.bytes_written = writer.bytes_written();
    report.num_shards = writer.num_shards();
  }
  add_hf_remote_code(tmp, config);  // finer_moe / finmoe_dense: modeling code + auto_map
  write_json_file((fs::path(tmp) / "config.json").string(), config);
  const fs::path tok_config = fs::path(tmp) / "tokenizer_config.json";
  if (vocab) {  // OUT's vocabulary: its tokenizer files, the rest from their source
    copy_side_files(vocab->files_from, tmp, /*with_config=*/false);
    write_file_atomic((fs::path(tmp) / "tokenizer.json").string(), vocab->tokenizer_json.dump(2));
    if (!vocab->tokenizer_config.is_null())
      write_file_atomic(tok_config.string(), vocab->tokenizer_config.dump(2));
  } else {
    copy_side_files(tok, tmp, /*with_config=*/false);
  }
  if (chat_template) {  // into tokenizer_config.json; a copied chat_template.jinja would win
    for (const char* f : {"chat_template.jinja", "chat_template.json"}) fs::remove(fs::path(tmp) / f);
    nlohmann::ordered_json c = nlohmann::ordered_json::object();
    if (fs::exists(tok_config)) {
      std::ifstream in(tok_config, std::ios::binary);
      c = nlohmann::ordered_json::parse(in);
    }
    c["chat_template"] = *chat_template;
    write_file_atomic(tok_config.string(), c.dump(2));
  }
  write_file_atomic((fs::path(tmp) / "mergekit_config.yml").string(), yaml);
  write_file_atomic((fs::path(tmp) / "README.md").string(), model_card(recipe, yaml, model_names));
  staged.commit();
  report.tensors = int64_t(jobs.size());
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace merging

MergeRecipe chat_vector_recipe(const ChatVectorOptions& o) {
  using Flag = std::pair<const char*, const std::string*>;
  for (const Flag& f : std::initializer_list<Flag>{
           {"--base", &o.base}, {"--domain", &o.domain}, {"--instruct", &o.instruct}})
    if (f.second->empty()) throw Error(std::string("chat vector: ") + f.first + " is required");
  MergeRecipe r;
  r.merge_method = "task_arithmetic";
  r.base_model = o.base;
  r.source = "chat-vector";
  r.tokenizer_source = o.instruct;
  r.map_vocabulary = false;  // the instruct model's tokenizer files; rows as they are
  r.parameters["normalize"] = MergeParam::boolean(false);
  MergeSlice s;
  MergeSource d{o.domain, 0, -1, {}}, i{o.instruct, 0, -1, {}};
  d.parameters["weight"] = MergeParam::number(o.domain_scale);
  i.parameters["weight"] = MergeParam::number(o.instruct_scale);
  if (o.domain == o.instruct)
    throw Error("chat vector: --domain and --instruct name the same model");
  if (o.domain == o.base) {
    s.sources = {i};  // no domain vector: BASE + s (INSTRUCT - BASE)
  } else {
    s.sources = {d, i};
  }
  r.slices.push_back(s);
  if (o.keep_special_rows) {
    const fs::path tj = fs::path(o.instruct) / "tokenizer.json";
    if (!fs::exists(tj))
      throw Error("chat vector: --keep-special-rows needs " + tj.string());
    const nlohmann::json j = read_json_file(tj.string());
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& t : j["added_tokens"])
        if (t.is_object() && t.value("special", false) && t.contains("id") &&
            t["id"].is_number_integer())
          r.keep_rows.push_back(t["id"].get<int64_t>());
    std::sort(r.keep_rows.begin(), r.keep_rows.end());
    r.keep_rows.erase(std::unique(r.keep_rows.begin(), r.keep_rows.end()), r.keep_rows.end());
    r.keep_rows_model = o.instruct;
  }
  r.text = recipe_yaml(r);
  return r;
}

}  // namespace finmoe
