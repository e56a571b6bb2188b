// finmoe export gguf
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "finmoe/gguf.h"

namespace finmoe::cli {

void add_export(CLI::App& app, Run& run) {
  auto* e = app.add_subcommand("export", "Write a checkpoint in another tool's format");
  e->require_subcommand(1);
  auto* c = e->add_subcommand(
      "gguf", "One GGUF file llama.cpp loads: weights, tokenizer and chat template "
              "(llama, mistral, mixtral, qwen2, qwen2_moe; docs/formats/gguf.md)");
  static std::string in, out;
  static GgufExportOptions o;
  static bool json = false;
  c->add_option("DIR", in, "checkpoint directory (HF format, with tokenizer.json)")->required();
  c->add_option("OUT", out, "the .gguf file to write (replaced atomically)")->required();
  c->add_option("--type", o.type, "f16 | bf16 | q8_0: 2-D weights; norms, biases and routers stay f32")
      ->capture_default_str();
  c->add_option("--pre", o.pre, "tokenizer.ggml.pre (llama.cpp's pre-tokenizer name); auto: from the regex")
      ->capture_default_str();
  c->add_flag("--json", json, "print the report as one JSON object");
  c->callback([&run] {
    run = [] {
      o.progress = !json;
      const GgufExportReport r = export_gguf(in, out, o);
      for (const auto& w : r.warnings) std::cerr << "finmoe export gguf: warning: " << w << "\n";
      if (json) {
        nlohmann::json j = {{"model", in}, {"out", out}, {"arch", r.arch}, {"type", o.type},
                            {"tensors", r.tensors}, {"metadata_keys", r.metadata_keys},
                            {"bytes", r.bytes}, {"seconds", r.seconds}, {"warnings", r.warnings}};
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::printf("wrote %s: arch %s, %s, %lld tensors, %lld metadata keys, %.1f MB in %.1f s\n",
                  out.c_str(), r.arch.c_str(), o.type.c_str(), static_cast<long long>(r.tensors),
                  static_cast<long long>(r.metadata_keys), double(r.bytes) / 1e6, r.seconds);
      return 0;
    };
  });
}

}  // namespace finmoe::cli
