// The trainer on real data files through make_batch_source (dataset.h): a
// preset model sized to a small trained tokenizer, hybrid tuning over text
// and chat files, SFT's assistant-only labels, held-out perplexity, and an
// exact resume that includes the data position.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "../tokenizer/tokenizer_test_util.h"
#include "finmoe/tokenizer_trainer.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// A 400-token byte-level BPE tokenizer with the ChatML template, in `dir`.
void write_tokenizer(const std::string& dir) {
  TokenizerFilesOptions fo;
  BpeTrainerOptions o;
  o.vocab_size = 400;
  o.special_tokens = special_tokens_for(fo);
  BpeTrainer t(o);
  for (const auto& c : test::read_jsonl(test::tok_data("cases.jsonl")))
    t.feed(c["text"].get<std::string>());
  write_bpe_tokenizer(dir, t.train(), fo);
}

std::string write(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

class TrainerData : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_tokenizer(tok());
    std::string text, chat, held;
    const char* words[] = {"the",         "balance", "sheet", "lists", "assets", "and",
                           "liabilities", "cash",    "flow",  "of",    "the",    "bank"};
    for (int d = 0; d < 40; ++d) {
      std::string s = "report " + std::to_string(d);
      for (int w = 0; w < 25; ++w) s += std::string(" ") + words[(d * 7 + w * 3) % 12];
      (d < 32 ? text : held) += nlohmann::json{{"text", s}}.dump() + "\n";
      chat +=
          nlohmann::json{
              {"messages",
               {{{"role", "user"}, {"content", "What is " + std::to_string(d) + "?"}},
                {{"role", "assistant"}, {"content", "It is " + std::to_string(d) + " in cash."}}}}}
              .dump() +
          "\n";
    }
    write(path("text.jsonl"), text);
    write(path("chat.jsonl"), chat);
    write(path("held.jsonl"), held);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string path(const std::string& name) { return dir_->str() + "/" + name; }
  static std::string tok() { return path("tok"); }

  static TrainConfig config(const std::string& out) {
    TrainConfig c;
    c.mode = TrainMode::Hybrid;
    c.init_preset = "tiny";
    c.tokenizer = tok();
    c.output_dir = out;
    c.data.files = {path("text.jsonl")};
    c.data.instruction_files = {path("chat.jsonl")};
    c.data.instruction_ratio = 0.3;
    c.data.seq_len = 32;
    c.data.batch_size = 2;
    c.data.document_mask = true;
    c.eval_data = c.data;
    c.eval_data.files = {path("held.jsonl")};
    c.eval_data.instruction_files.clear();
    c.eval_data.instruction_ratio = 0;
    c.eval_data.shuffle = false;
    c.eval_batches = 2;
    c.lr = 3e-3;
    c.max_steps = 6;
    c.log_interval = 0;
    return c;
  }
  static TrainerHooks quiet() {
    TrainerHooks h;
    h.progress = false;
    return h;
  }
  static TempDir* dir_;
};
TempDir* TrainerData::dir_ = nullptr;

TEST_F(TrainerData, HybridTuningTrainsAPresetOnTextAndInstructions) {
  TempDir out;
  Trainer t(config(out.str()), quiet());
  EXPECT_EQ(t.model().config().vocab_size, 400);  // sized to the tokenizer
  const EvalResult before = t.evaluate();
  TrainSummary s = t.run();
  ASSERT_TRUE(s.final_eval.has_value());
  EXPECT_LT(s.final_eval->loss, before.loss);
  EXPECT_LT(t.history().back().lm_loss, t.history().front().lm_loss);
  // the checkpoint carries the tokenizer: it is a complete model directory
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "config.json"})
    EXPECT_TRUE(fs::exists(s.checkpoint + "/" + f)) << f;
  Tokenizer::from_dir(s.checkpoint);
}

TEST_F(TrainerData, SftLearnsOnlyAssistantTokens) {
  TempDir out;
  TrainConfig c = config(out.str());
  c.mode = TrainMode::Sft;
  c.data.format = "sft";
  c.data.files = {path("chat.jsonl")};
  c.data.instruction_files.clear();
  c.data.instruction_ratio = 0;
  c.eval_data.files.clear();
  c.max_steps = 2;
  Trainer t(c, quiet());
  StepMetrics m = t.step();
  EXPECT_GT(m.loss_tokens, 0);
  EXPECT_LT(m.loss_tokens, 2 * 32 / 2);  // prompts, headers and padding carry no label
}

TEST_F(TrainerData, ResumeContinuesTheDataStreamExactly) {
  TempDir full, part;
  TrainConfig c = config(full.str());
  c.save_interval = 3;
  Trainer a(c, quiet());
  a.run();
  c.output_dir = part.str();
  {
    Trainer b(c, quiet());
    for (int i = 0; i < 3; ++i) b.step();
    b.save_checkpoint();
  }
  c.resume = "auto";
  Trainer b(c, quiet());
  b.run();
  ASSERT_EQ(b.history().size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(a.history()[i].loss, b.history()[i].loss) << i;
    EXPECT_EQ(a.history()[i].loss_tokens, b.history()[i].loss_tokens) << i;
  }
  EXPECT_EQ(a.history().back().eval_loss, b.history().back().eval_loss);
}

TEST_F(TrainerData, EpochsCountTheirStepsFromTheData) {
  TempDir out;
  TrainConfig c = config(out.str());
  c.mode = TrainMode::Pretrain;
  c.data.instruction_files.clear();
  c.data.instruction_ratio = 0;
  c.eval_data.files.clear();
  c.max_steps = 0;
  c.epochs = 0.25;  // a fraction: a short run
  // one pass packs the documents' tokens (bos when the tokenizer adds it,
  // the text, eos) as one stream into rows of seq_len + 1
  const Tokenizer t = Tokenizer::from_dir(tok());
  int64_t n_tokens = 0;
  std::ifstream in(path("text.jsonl"));
  for (std::string line; std::getline(in, line);) {
    const std::string text = nlohmann::json::parse(line)["text"].get<std::string>();
    n_tokens += int64_t(t.encode(text).size()) + 1 + (t.config().add_bos_token && t.bos_id() ? 1 : 0);
  }
  const int64_t L = c.data.seq_len + 1;
  const int64_t rows = (n_tokens + L - 1) / L;
  const int64_t per_epoch = std::max<int64_t>(1, (rows + c.data.batch_size - 1) / c.data.batch_size);
  const int64_t want = int64_t(std::ceil(0.25 * double(per_epoch)));
  ASSERT_GT(want, 2);  // several batches per epoch: the count is not a floor of 1
  Trainer trainer(c, quiet());
  EXPECT_EQ(trainer.total_steps(), want) << n_tokens << " tokens, " << rows << " rows";
  EXPECT_EQ(trainer.run().steps, want);
  // max_steps wins over epochs, as in HF
  TempDir out2;
  c.output_dir = out2.str();
  c.max_steps = 2;
  EXPECT_EQ(Trainer(c, quiet()).total_steps(), 2);
}

}  // namespace
}  // namespace finmoe
