// finmoe quantize: a float checkpoint into 8-bit weights (docs/formats/int8.md).
// Streams: the input stays memory-mapped, each output tensor is made from it
// (rows widened to float32 a chunk at a time) and handed to a
// CheckpointWriter before the next one is made.
#include "finmoe/quantize.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>

#include <torch/torch.h>

#include "core/file_util.h"
#include "core/progress.h"
#include "core/side_files.h"
#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "kernels/qlinear.h"
#include "kernels/thread_pool.h"
#include "model/torch_dtype.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace {

// Rows of a weight widened to float32 at a time: bounds the float copy (a
// 151936 x 896 embedding is widened 512 rows = 1.8 MB at a time).
constexpr int64_t kChunkRows = 512;

// Module names that stay in their dtype: MoE routers (`*.gate`, `*.shared_expert_gate`,
// finer_moe's `*.concat_gate`).
std::vector<std::string> router_modules(const ModelConfig& c) {
  std::vector<std::string> out;
  for (const TensorSpec& s : expected_tensors(c)) {
    if (!s.name.ends_with(".weight")) continue;
    const std::string module = s.name.substr(0, s.name.size() - 7);
    if (module.ends_with(".gate") || module.ends_with(".shared_expert_gate") ||
        module.ends_with(".concat_gate"))
      out.push_back(module);
  }
  return out;
}

// q, scales and error statistics of one [N, K] weight.
struct Quantized {
  std::vector<int8_t> q;
  std::vector<char> scale;
  double max_abs = 0, max_err = 0;
};

Quantized quantize_tensor(const TensorView& v, const std::string& file,
                          const kernels::Int8Format& f) {
  const int64_t N = v.shape[0], K = v.shape[1];
  Quantized out;
  const int64_t per_row = kernels::int8_scales_per_row(f, K);
  out.q.resize(size_t(N * K));
  out.scale.resize(size_t(N * per_row * kernels::elem_size(f.scale_t)));
  const auto src = torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)));
  const int64_t chunks = (N + kChunkRows - 1) / kChunkRows;
  std::vector<double> max_abs(size_t(chunks), 0.0), max_err(size_t(chunks), 0.0);
  std::vector<std::string> errors(static_cast<size_t>(chunks));
  kernels::ThreadPool::global().parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kChunkRows, rows = std::min(kChunkRows, N - r0);
      auto w = src.narrow(0, r0, rows).to(torch::kFloat32).contiguous();  // [rows, K]
      const float* wp = w.data_ptr<float>();
      try {
        kernels::quantize_int8(wp, rows, K, f, out.q.data() + r0 * K,
                               out.scale.data() + r0 * per_row * kernels::elem_size(f.scale_t));
      } catch (const Error& e) {
        errors[size_t(c)] = std::string(e.what()) + " (row " + std::to_string(r0) + " onwards)";
        continue;
      }
      std::vector<float> back(size_t(rows * K));
      kernels::dequantize_int8(out.q.data() + r0 * K,
                               out.scale.data() + r0 * per_row * kernels::elem_size(f.scale_t), f,
                               rows, K, back.data());
      for (int64_t i = 0; i < rows * K; ++i) {
        max_abs[size_t(c)] = std::max(max_abs[size_t(c)], double(std::fabs(wp[i])));
        max_err[size_t(c)] = std::max(max_err[size_t(c)], double(std::fabs(back[size_t(i)] - wp[i])));
      }
    }
  });
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(file + ": tensor '" + v.name + "': " + e);
  for (int64_t c = 0; c < chunks; ++c) {
    out.max_abs = std::max(out.max_abs, max_abs[size_t(c)]);
    out.max_err = std::max(out.max_err, max_err[size_t(c)]);
  }
  return out;
}

}  // namespace

nlohmann::json QuantizeReport::to_json() const {
  nlohmann::json t = nlohmann::json::array();
  for (const QuantizedTensor& q : tensors)
    t.push_back({{"name", q.name},
                 {"shape", q.shape},
                 {"dtype_in", q.dtype_in},
                 {"dtype_out", q.dtype_out},
                 {"bytes_in", q.bytes_in},
                 {"bytes_out", q.bytes_out},
                 {"max_abs", q.max_abs},
                 {"max_abs_error", q.max_abs_error}});
  return {{"quantization_config", config.to_json()},
          {"bytes_in", bytes_in},
          {"bytes_out", bytes_out},
          {"seconds", seconds},
          {"tensors", t}};
}

QuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                   const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (o.type != "int8") throw Error("quantize: --type '" + o.type + "' is not supported (supported: int8)");
  if (o.group_size != 0 && o.group_size != kernels::kInt8Group)
    throw Error("quantize: --group-size " + std::to_string(o.group_size) +
                " is not supported (0 = per output channel, or 32)");
  if (o.scale_dtype != "bfloat16" && o.scale_dtype != "float32")
    throw Error("quantize: --scale-dtype '" + o.scale_dtype + "' is not supported (bfloat16, float32)");
  if (is_esft_delta(in_dir))
    throw Error(in_dir + " is an ESFT delta, not a whole model: quantize its base model, or a "
                         "model trained in full");
  const ModelConfig config = ModelConfig::load(in_dir);
  const std::string config_path = (fs::path(in_dir) / "config.json").string();
  if (config.quantization)
    throw Error(config_path + ": the checkpoint is already quantized (quantization_config '" +
                config.quantization->quant_method + "'); quantize the float checkpoint it came from");
  std::error_code ec;
  if (fs::exists(out_dir) && fs::equivalent(out_dir, in_dir, ec))
    throw Error("OUT " + out_dir + " is the input directory; choose another");
  if (fs::exists(out_dir) && !(fs::is_directory(out_dir) && fs::is_empty(out_dir)))
    throw Error("OUT " + out_dir + " exists and is not an empty directory");

  QuantizeReport report;
  ModelConfig qc = config;
  report.config.group_size = o.group_size;
  report.config.scale_dtype = o.scale_dtype;
  report.config.ignore = router_modules(config);
  qc.quantization = report.config;
  const kernels::Int8Format f{o.group_size, o.scale_dtype == "float32" ? kernels::ElemType::kF32
                                                                      : kernels::ElemType::kBF16};

  // Input tensors by name, checked before anything is written.
  const CheckpointReader reader = CheckpointReader::open(in_dir);
  std::map<std::string, const TensorView*> in;
  const std::vector<TensorSpec> specs = expected_tensors(config);
  for (const TensorSpec& s : specs) {
    const TensorView& v = checked_tensor(reader, s, config);
    if (v.dtype != DType::F32 && v.dtype != DType::BF16 && v.dtype != DType::F16)
      throw Error(reader.file_of(s.name) + ": tensor '" + s.name + "' has dtype " +
                  std::string(dtype_name(v.dtype)) + "; quantize reads F32, BF16 and F16 weights");
    in[s.name] = &v;
  }
  check_no_extra_tensors(reader, specs, config);
  std::vector<PlannedTensor> plan;
  for (const TensorSpec& s : expected_tensors(qc))
    plan.push_back({s.name, s.dtype ? *s.dtype : in.at(s.name)->dtype, s.shape});

  const std::string parent = fs::absolute(out_dir).parent_path().string();
  fs::create_directories(parent);
  const std::string tmp = temp_path_for(fs::absolute(out_dir).string());
  try {
    {
      CheckpointWriter writer(tmp, plan, {{"format", "pt"}}, o.max_shard_bytes);
      std::optional<Progress> progress;
      if (o.progress) progress.emplace("quantize", int64_t(writer.total_bytes() >> 20), "MiB");
      for (size_t i = 0; i < plan.size(); ++i) {
        const PlannedTensor& p = plan[i];
        if (p.name.ends_with(".weight_scale")) continue;  // written with its weight
        const TensorView& v = *in.at(p.name);
        QuantizedTensor t{p.name, v.shape, std::string(dtype_name(v.dtype)),
                          std::string(dtype_name(p.dtype)), int64_t(v.nbytes), int64_t(v.nbytes)};
        if (p.dtype == DType::I8) {
          Quantized q = quantize_tensor(v, reader.file_of(p.name), f);
          writer.write(p.name, q.q.data(), q.q.size());
          writer.write(plan[i + 1].name, q.scale.data(), q.scale.size());
          t.bytes_out = int64_t(q.q.size() + q.scale.size());
          t.max_abs = q.max_abs;
          t.max_abs_error = q.max_err;
        } else {
          writer.write(p.name, v.data, v.nbytes);
        }
        report.bytes_in += t.bytes_in;
        report.bytes_out += t.bytes_out;
        report.tensors.push_back(std::move(t));
        if (progress) progress->update(int64_t(writer.bytes_written() >> 20));
      }
      writer.finish();
    }
    copy_side_files(in_dir, tmp, /*with_config=*/false);
    qc.save(tmp);
    if (fs::exists(out_dir)) fs::remove(out_dir);  // empty
    fs::rename(tmp, out_dir);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace finmoe
