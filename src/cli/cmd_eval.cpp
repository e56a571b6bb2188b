// finmoe eval: held-out perplexity of a model on text or SFT files.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "core/progress.h"
#include "finmoe/dataset.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/train.h"

namespace finmoe::cli {

void add_eval(CLI::App& app, Run& run) {
  auto* e = app.add_subcommand("eval", "Evaluate a model");
  e->require_subcommand(1);
  auto* p = e->add_subcommand(
      "ppl", "Perplexity per label token on held-out files (text: every token; sft: assistant tokens)");
  static std::string dir, format = "auto", device = "cpu", dtype = "float32";
  static std::vector<std::string> files;
  static int64_t seq_len = 256, batch_size = 8, batches = 16;
  static bool json = false;
  p->add_option("MODEL_DIR", dir, "model directory (HF format, with tokenizer.json)")->required();
  p->add_option("--data", files, ".jsonl ({\"text\"} / {\"messages\"}) or plain text files")
      ->required();
  p->add_option("--format", format, "text | sft | auto (per record)")->capture_default_str();
  p->add_option("--seq-len", seq_len, "tokens per row")->capture_default_str();
  p->add_option("--batch-size", batch_size, "rows per batch")->capture_default_str();
  p->add_option("--batches", batches,
                "batches to evaluate (the files are read in order and wrap around)")
      ->capture_default_str();
  p->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  p->add_option("--dtype", dtype,
                "float32 | bfloat16: the weights (int8 ones stay int8) and activations")
      ->capture_default_str();
  p->add_flag("--json", json, "print one JSON object");
  p->callback([&run] {
    run = [] {
      auto model =
          load_model(dir, {.dtype = dtype_from_string(dtype), .device = device_from_string(device)});
      const auto tok = Tokenizer::from_dir(dir);
      DataConfig dc;
      dc.files = files;
      dc.format = format;
      dc.seq_len = seq_len;
      dc.batch_size = batch_size;
      dc.shuffle = false;
      auto source = make_batch_source(dc, tok);
      EvalResult r;
      {
        Progress bar("eval", batches, "batch");
        r = evaluate_lm(model, *source, batches, [&](int64_t done) { bar.update(done); });
      }
      if (json) {
        std::cout << nlohmann::json{{"model", dir}, {"data", files}, {"dtype", dtype},
                                    {"loss", r.loss}, {"ppl", r.ppl}, {"tokens", r.tokens}}
                         .dump()
                  << "\n";
      } else {
        std::printf("loss %.4f  ppl %.3f  over %lld label tokens\n", r.loss, r.ppl,
                    static_cast<long long>(r.tokens));
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
