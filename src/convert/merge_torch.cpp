// The libtorch path of `finmoe merge` (merge/merge_job.h): every method the
// fused kernel does not cover, on whole tensors or blocks of rows, and
// merge_models (finmoe/merge.h), the merge layer's engine with this path.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "convert/merge_methods.h"
#include "finmoe/error.h"
#include "finmoe/merge.h"
#include "merge/merge_job.h"
#include "merge/merge_vocab.h"
#include "model/torch_dtype.h"

namespace finmoe {

namespace {

using merging::dtype_named;
using merging::Job;
using merging::task_arithmetic_kind;

uint64_t fnv1a(const std::string& s, uint64_t h) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Rows [row0, row0 + rows) of an input (rows < 0: all) in the working dtype.
torch::Tensor read_input(const TensorView& v, const std::string& dtype, torch::ScalarType work,
                         int64_t row0, int64_t rows) {
  auto t = torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)));
  if (rows >= 0) t = t.narrow(0, row0, rows);
  if (!dtype.empty()) t = t.to(to_torch(dtype_named(dtype)));  // mergekit's `dtype`: round first
  return t.to(work);
}

// Whether the method is elementwise (no statistic over the whole tensor), so
// a big tensor can be merged a block of rows at a time.
bool elementwise(const MergeRecipe& r, const Job& j) {
  const std::string& m = r.merge_method;
  if (j.keep_rows_source >= 0 || j.vocab_rows) return false;
  if (m == "linear" || m == "passthrough") return true;
  return task_arithmetic_kind(m) && (j.how.sparsify == merge_math::Sparsify::None ||
                                     j.how.sparsify == merge_math::Sparsify::Random);
}

// Each input's vocabulary tensor with its rows at OUT's token ids
// (merge_vocab.h): its own row where it has the token (and no force), else
// the token's default row; rows past the vocabulary the mean of the others.
std::vector<torch::Tensor> map_vocab_rows(const std::vector<torch::Tensor>& xs, const RowMap& m) {
  std::vector<int64_t> shape = xs.at(0).sizes().vec();
  shape[0] = m.rows;
  const auto row_shape = std::vector<int64_t>(shape.begin() + 1, shape.end());
  const auto opts = xs[0].options();
  std::vector<torch::Tensor> defaults;
  for (const RowMap::Default& d : m.defaults) {
    torch::Tensor e = torch::zeros(row_shape, opts);
    for (const auto& [i, row] : d.mean_of) e = e + xs[size_t(i)][row];
    if (d.mean_of.size() > 1) e = e / double(d.mean_of.size());
    defaults.push_back(e);
  }
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < xs.size(); ++i) {
    auto y = torch::zeros(shape, opts);
    std::vector<int64_t> to, from;
    for (int64_t t = 0; t < m.vocab; ++t)
      if (m.own[i][size_t(t)] >= 0) {
        to.push_back(t);
        from.push_back(m.own[i][size_t(t)]);
      }
    if (!to.empty())
      y.index_copy_(0, torch::tensor(to, torch::kInt64),
                    xs[i].index_select(0, torch::tensor(from, torch::kInt64)));
    for (size_t k = 0; k < m.defaults.size(); ++k)
      if (m.own[i][size_t(m.defaults[k].id)] < 0) y[m.defaults[k].id].copy_(defaults[k]);
    if (m.rows > m.vocab)  // padding rows: the mean of the vocabulary's
      y.narrow(0, m.vocab, m.rows - m.vocab).copy_(y.narrow(0, 0, m.vocab).mean(0, true));
    out.push_back(y);
  }
  return out;
}

// The method on rows [row0, row0 + rows) of every input (rows < 0: whole tensors).
torch::Tensor merge_rows(const MergeRecipe& r, const Job& j, int64_t row0, int64_t rows,
                         at::Generator& gen, uint64_t* bytes_read) {
  std::vector<torch::Tensor> xs;
  const bool f64 = r.dtype == "float64";
  const auto work = f64 ? torch::kFloat64 : torch::kFloat32;
  for (size_t i = 0; i < j.models.size(); ++i) {
    const TensorView& v = *j.models[i]->find(j.inputs[i]);
    *bytes_read += rows < 0 ? v.nbytes : v.nbytes / size_t(v.shape[0]) * size_t(rows);
    xs.push_back(read_input(v, r.dtype, work, row0, rows));
  }
  if (j.vocab_rows) xs = map_vocab_rows(xs, *j.vocab_rows);
  torch::Tensor kept;  // the full tensor of the model whose rows are kept
  if (j.keep_rows_source >= 0) {
    kept = xs[size_t(j.keep_rows_source)];
    if (j.common_rows >= 0) xs[size_t(j.keep_rows_source)] = kept.narrow(0, 0, j.common_rows);
  }
  torch::Tensor base;
  std::vector<torch::Tensor> others;
  std::vector<merge_math::ModelParams> params;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (int(i) == j.base) {
      base = xs[i];
    } else {
      others.push_back(xs[i]);
      params.push_back(j.params[i]);
    }
  }
  const std::string& m = r.merge_method;
  torch::Tensor out;
  if (m == "linear") {
    std::vector<double> w;
    for (const auto& p : j.params) w.push_back(p.weight);
    out = merge_math::linear(xs, w, j.normalize);
  } else if (task_arithmetic_kind(m)) {
    out = merge_math::task_arithmetic(base, others, params, j.how, gen);
  } else if (m == "slerp") {
    out = merge_math::slerp(base, others.at(0), j.t);
  } else if (m == "nuslerp") {
    // t = w_1 / (w_0 + w_1); with a base, the task vectors are interpolated
    const double total = params.at(0).weight + params.at(1).weight;
    const double t = std::abs(total) < 1e-6 ? 0.5 : params[1].weight / total;
    out = base.defined() ? base + merge_math::nuslerp(others[0] - base, others[1] - base, t,
                                                      j.row_wise, j.flatten)
                         : merge_math::nuslerp(others[0], others[1], t, j.row_wise, j.flatten);
  } else if (m == "model_stock") {
    out = merge_math::model_stock(base, others, j.filter_wise);
  } else if (m == "sce") {
    out = merge_math::sce(base, others, j.select_topk);
  } else if (m == "varm") {
    out = merge_math::varm(base, others);
  } else if (m == "passthrough") {
    out = j.scale == 1.0 ? xs[0] : xs[0] * j.scale;
  } else {
    throw Error("internal: no kernel for merge_method " + m);
  }
  if (j.common_rows >= 0)  // [V_common, ...] + the kept model's rows past it
    out = torch::cat({out, kept.narrow(0, j.common_rows, kept.size(0) - j.common_rows)});
  if (j.keep_rows) {
    auto rows = torch::tensor(r.keep_rows, torch::kInt64);
    out = out.clone();
    out.index_copy_(0, rows, kept.index_select(0, rows));
  }
  return out;
}

// The merged tensor of a job. Elementwise methods merge a tensor bigger than
// chunk_elements a block of rows at a time into the output tensor, so memory
// holds the output and one block of every input.
torch::Tensor run_job(const MergeRecipe& r, const Job& j, uint64_t seed, int64_t chunk_elements,
                      uint64_t* bytes_read) {
  if (!j.floating) {  // integer buffers: the first input's, unmerged
    const TensorView& v = *j.models[0]->find(j.inputs[0]);
    *bytes_read += v.nbytes;
    return torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)))
        .clone();
  }
  auto gen =
      at::make_generator<at::CPUGeneratorImpl>(fnv1a(j.name, 14695981039346656037ull ^ seed));
  int64_t numel = 1;
  for (int64_t d : j.shape) numel *= d;
  if (!elementwise(r, j) || j.shape.empty() || j.shape[0] < 2 || numel <= chunk_elements)
    return merge_rows(r, j, 0, -1, gen, bytes_read);
  const int64_t row = numel / j.shape[0];
  const int64_t step = std::max<int64_t>(1, chunk_elements / std::max<int64_t>(row, 1));
  auto out = torch::empty(j.shape, torch::TensorOptions().dtype(to_torch(j.out_dtype)));
  for (int64_t r0 = 0; r0 < j.shape[0]; r0 += step) {
    const int64_t n = std::min(step, j.shape[0] - r0);
    out.narrow(0, r0, n).copy_(merge_rows(r, j, r0, n, gen, bytes_read));
  }
  return out;
}

void torch_merge_job(const MergeRecipe& r, const Job& j, uint64_t seed, int64_t chunk_elements,
                     uint64_t* bytes_read, const std::function<void(const void*, size_t)>& write) {
  torch::NoGradGuard no_grad;
  torch::Tensor t = run_job(r, j, seed, chunk_elements, bytes_read);
  t = t.to(to_torch(j.out_dtype)).contiguous();
  write(t.data_ptr(), size_t(t.numel()) * t.element_size());
}

}  // namespace

MergeReport merge_models(const MergeRecipe& recipe, const std::string& out_dir,
                         const MergeOptions& options) {
  return merging::merge_models_with(recipe, out_dir, options, torch_merge_job);
}

}  // namespace finmoe
