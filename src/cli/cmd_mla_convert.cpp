// finmoe mla-convert: a dense GQA/MHA checkpoint into a deepseek_v3 (MLA)
// checkpoint (finmoe/mla_convert.h, docs/mla.md).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "finmoe/analysis.h"
#include "finmoe/error.h"
#include "finmoe/mla_convert.h"
#include "finmoe/tokenizer.h"

namespace finmoe::cli {
namespace {

// Calibration sequences of `seq_len` tokens, at most `samples`: a .jsonl file
// of {"ids": [...]} lines (e.g. `finmoe tokenize --jsonl` output) is taken as
// token ids; any other file is text for SRC's tokenizer.
std::vector<std::vector<int32_t>> calibration_sequences(const std::string& path,
                                                        const std::string& src, int64_t seq_len,
                                                        int64_t samples) {
  std::vector<std::vector<int32_t>> seqs;
  std::ifstream in(path);
  if (!in) throw Error("--calib " + path + ": cannot open");
  std::string line;
  bool ids = false;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) {
      ids = path.ends_with(".jsonl") && parse_json(line, path + ":1").contains("ids");
      break;
    }
  if (ids) {
    in.clear();
    in.seekg(0);
    std::vector<int32_t> stream;
    int64_t n = 0;
    while (int64_t(stream.size()) < samples * seq_len && std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const auto j = parse_json(line, path + ":" + std::to_string(n));
      if (!j.is_object() || !j.contains("ids") || !j["ids"].is_array())
        throw Error(path + ":" + std::to_string(n) + ": expected {\"ids\": [...]}");
      for (const auto& v : j["ids"]) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
          throw Error(path + ":" + std::to_string(n) + ": ids must be non-negative integers");
        stream.push_back(int32_t(v.get<int64_t>()));
      }
    }
    for (size_t off = 0; off + size_t(seq_len) <= stream.size() && int64_t(seqs.size()) < samples;
         off += size_t(seq_len))
      seqs.emplace_back(stream.begin() + long(off), stream.begin() + long(off + size_t(seq_len)));
  } else {
    const auto tok = Tokenizer::from_dir(src);
    for (const auto& ch :
         tokenize_corpus(path, tok, {.seq_len = seq_len, .max_tokens = samples * seq_len}))
      if (int64_t(ch.tokens.size()) == seq_len) seqs.push_back(ch.tokens);
  }
  if (int64_t(seqs.size()) < samples)
    throw Error("--calib " + path + ": " + std::to_string(seqs.size()) + " sequences of " +
                std::to_string(seq_len) + " tokens, --calib-samples asks for " +
                std::to_string(samples) + " (" + std::to_string(samples * seq_len) +
                " tokens); give more text or lower --calib-samples / --calib-seq-len");
  return seqs;
}

}  // namespace

void add_mla_convert(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "mla-convert",
      "Convert a dense llama/qwen2/mistral checkpoint to MLA (deepseek_v3): partial RoPE with "
      "FreqFold, joint low-rank K/V, layer-adaptive FreqFold search");
  c->footer(
      "Writes OUT (an HF deepseek_v3 directory) and OUT/mla_report/{report.json, layers.csv,\n"
      "probe.csv, trajectory.svg}. --freqfold auto decides the layers from the last to the\n"
      "first, each taking the FreqFold size that minimises calibration perplexity given the\n"
      "layers already converted (YouZhi Eq. 3); a number is the uniform TransMLA baseline.");
  static std::string src, out, calib, freqfold = "auto", dtype;
  static int64_t samples = 128, seq_len = 256, rope_dim = 0, kv_rank = 0, max_ff = 8,
                 eval_samples = 16;
  static double bkv = 1.0;
  static bool probe = false, json = false;
  c->add_option("SRC", src, "dense model directory (llama, qwen2, mistral) with tokenizer.json")
      ->required();
  c->add_option("OUT", out, "output directory (replaced atomically)")->required();
  auto* g = "Calibration";
  c->add_option("--calib", calib,
                "calibration text: .jsonl lines {\"text\"} (e.g. a `finmoe corpus fetch` split), "
                "{\"ids\": [...]} token ids, or plain text (default: the built-in corpus's "
                "general/train.jsonl cached by `finmoe demo` in ~/.cache/finmoe/demo/corpus)")
      ->group(g);
  c->add_option("--calib-samples", samples, "sequences of calibration text")
      ->capture_default_str()
      ->group(g);
  c->add_option("--calib-seq-len", seq_len, "tokens per calibration sequence")
      ->capture_default_str()
      ->group(g);
  c->add_option("--eval-samples", eval_samples,
                "calibration sequences whose perplexity drives --freqfold auto and the report")
      ->capture_default_str()
      ->group(g);
  auto* m = "Conversion";
  c->add_option("--freqfold", freqfold, "auto | N: FreqFold size (adjacent frequencies per PCA)")
      ->capture_default_str()
      ->group(m);
  c->add_option("--max-freqfold", max_ff, "largest size --freqfold auto and --probe try")
      ->capture_default_str()
      ->group(m);
  c->add_option("--rope-dim", rope_dim, "qk_rope_head_dim (0 = min(64, head_dim))")
      ->capture_default_str()
      ->group(m);
  c->add_option("--kv-lora-rank", kv_rank,
                "latent dims incl. 1 anchor (0 = min(512, largest that compresses))")
      ->capture_default_str()
      ->group(m);
  c->add_option("--bkv", bkv, "BKV: K_nope/V norm ratio to balance to (0 = off)")
      ->capture_default_str()
      ->group(m);
  c->add_flag("--probe", probe, "also convert one layer at a time per size (YouZhi Fig. 4)")
      ->group(m);
  c->add_option("--dtype", dtype, "float32 | bfloat16 | float16 (default: the source's)")->group(m);
  c->add_flag("--json", json, "print report.json instead of the summary");
  c->callback([&run] {
    run = [] {
      MlaConvertOptions o;
      if (freqfold != "auto") {
        try {
          size_t used = 0;
          o.freqfold = std::stoll(freqfold, &used);
          if (used != freqfold.size() || o.freqfold <= 0) throw std::invalid_argument(freqfold);
        } catch (const std::exception&) {
          throw Error("--freqfold '" + freqfold + "': expected 'auto' or a positive integer");
        }
      }
      o.max_freqfold = max_ff;
      o.rope_dim = rope_dim;
      o.kv_lora_rank = kv_rank;
      o.balance_kv = bkv;
      o.probe = probe;
      o.eval_sequences = eval_samples;
      o.dtype = dtype;
      o.progress = true;
      if (samples <= 0 || samples > (int64_t(1) << 20))
        throw Error("--calib-samples " + std::to_string(samples) + ": must be in [1, 1048576]");
      // every check that needs no calibration text, before reading it
      const ModelConfig source = ModelConfig::load(src);
      if (seq_len < 2 || seq_len > source.max_position_embeddings)
        throw Error("--calib-seq-len " + std::to_string(seq_len) + ": must be in [2, " +
                    std::to_string(source.max_position_embeddings) +
                    "] (the source's max_position_embeddings)");
      (void)resolve_mla_options(source, o);
      if (calib.empty()) {
        const char* home = std::getenv("HOME");
        const std::string cached =
            std::string(home ? home : ".") + "/.cache/finmoe/demo/corpus/general/train.jsonl";
        if (!std::filesystem::is_regular_file(cached))
          throw Error("--calib not given and the built-in corpus is not cached at " + cached +
                      " (run `finmoe corpus fetch --out DIR` and pass --calib "
                      "DIR/general/train.jsonl)");
        calib = cached;
      }
      const auto seqs = calibration_sequences(calib, src, seq_len, samples);
      const MlaConvertReport r = mla_convert(src, out, seqs, o);
      if (json) {
        std::cout << read_json_file(r.files.front()).dump(2) << "\n";
      } else {
        std::cout << format_mla_report(r);
        std::cout << "wrote " << out << " in " << r.seconds << " s\n";
        for (const auto& f : r.files) std::cout << "wrote " << f << "\n";
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
