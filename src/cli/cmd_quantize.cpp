// finmoe quantize
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "finmoe/quantize.h"

namespace finmoe::cli {

void add_quantize(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "quantize", "Write an 8-bit copy of a checkpoint: int8 weights with per-channel or "
                  "per-32 scales (docs/formats/int8.md)");
  static std::string in, out;
  static QuantizeOptions o;
  static bool json = false;
  c->add_option("DIR", in, "float checkpoint directory (HF format)")->required();
  c->add_option("OUT", out, "output directory (absent or empty)")->required();
  c->add_option("--type", o.type, "int8 (the only type)")->capture_default_str();
  c->add_option("--group-size", o.group_size,
                "0 = one scale per output channel, 32 = one per group of 32 inputs")
      ->capture_default_str();
  c->add_option("--scale-dtype", o.scale_dtype, "bfloat16 | float32")->capture_default_str();
  c->add_flag("--json", json, "print the per-tensor report as one JSON object");
  c->callback([&run] {
    run = [] {
      o.progress = !json;
      const QuantizeReport r = quantize_checkpoint(in, out, o);
      if (json) {
        auto j = r.to_json();
        j["model"] = in;
        j["out"] = out;
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      int64_t n_int8 = 0, weights = 0;
      std::vector<const QuantizedTensor*> worst;
      for (const auto& t : r.tensors) {
        if (t.dtype_out != "I8") continue;
        ++n_int8;
        weights += t.shape[0] * t.shape[1];
        worst.push_back(&t);
      }
      // the largest errors relative to the tensor's range (max |w| / 254 is half a scale at most)
      const auto rel = [](const QuantizedTensor* t) { return t->max_abs > 0 ? t->max_abs_error / t->max_abs : 0.0; };
      std::sort(worst.begin(), worst.end(), [&](auto* a, auto* b) { return rel(a) > rel(b); });
      std::printf("wrote %s: int8, %s, %s scales\n", out.c_str(),
                  o.group_size ? "a scale per group of 32 inputs" : "a scale per output channel",
                  o.scale_dtype.c_str());
      std::printf("  %lld of %zu tensors int8 (%lld weights); kept: norms, biases, %zu router gates\n",
                  static_cast<long long>(n_int8), r.tensors.size(), static_cast<long long>(weights),
                  r.config.ignore.size());
      std::printf("  %.1f MB -> %.1f MB (%.3fx) in %.1f s\n", double(r.bytes_in) / 1e6,
                  double(r.bytes_out) / 1e6, double(r.bytes_out) / double(std::max<int64_t>(r.bytes_in, 1)),
                  r.seconds);
      // half a scale: max|w| / 254 per channel, more by the rounding up of a bf16 scale (< 2^-7)
      std::printf("  largest max |s*q - w| / max |w| (per channel at most 1/254 = 0.0039%s):\n",
                  o.scale_dtype == "bfloat16" ? " x (1 + 2^-7) for bf16 scales" : "");
      for (size_t i = 0; i < std::min<size_t>(5, worst.size()); ++i)
        std::printf("    %-48s %.5f  (max |w| %.4g, max error %.3g)\n", worst[i]->name.c_str(),
                    rel(worst[i]), worst[i]->max_abs, worst[i]->max_abs_error);
      return 0;
    };
  });
}

}  // namespace finmoe::cli
