#pragma once
// Helpers for the trainer tests: deterministic in-memory batch sources and
// tiny models saved to temp directories.
#include <cstdint>
#include <memory>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "../model/test_util.h"
#include "finmoe/dataset.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/train.h"

namespace finmoe::test {

// An endless stream whose row r (counted over the whole stream) is a fixed
// function of r: a batch of B rows is rows [i*B, (i+1)*B) for the i-th call,
// so batch_size 2 x 1 micro-batch and batch_size 1 x 2 micro-batches see the
// same rows. Labels are the next token (last position ignored).
//   kind "cycle":  tokens (start + t) mod period + 3 (learnable: next = current + 1)
//   kind "random": a hash of (seed, r, t) mod vocab
// mask_rows_every > 0 ignores the labels of the first half of every such row
// (prompt-like), so micro-batches carry different numbers of label tokens.
class SyntheticSource : public BatchSource {
 public:
  SyntheticSource(const DataConfig& c, int64_t vocab, std::string kind = "random",
                  int64_t period = 7, int64_t mask_rows_every = 0)
      : c_(c),
        vocab_(vocab),
        kind_(std::move(kind)),
        period_(period),
        mask_every_(mask_rows_every) {}

  TrainBatch next() override {
    const int64_t B = c_.batch_size, T = c_.seq_len;
    auto tokens = torch::empty({B, T + 1}, torch::kInt64);
    auto* p = tokens.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const uint64_t row = uint64_t(index_ * B + b);
      for (int64_t t = 0; t <= T; ++t) {
        int64_t v;
        if (kind_ == "cycle") {
          v = int64_t((row + uint64_t(t)) % uint64_t(period_)) + 3;
        } else {
          uint64_t h = (c_.seed + 1) * 0x9E3779B97F4A7C15ull ^ (row * 0xBF58476D1CE4E5B9ull) ^
                       (uint64_t(t) * 0x94D049BB133111EBull);
          h ^= h >> 31;
          h *= 0xD6E8FEB86659FD93ull;
          h ^= h >> 32;
          v = int64_t(h % uint64_t(vocab_));
        }
        p[b * (T + 1) + t] = v;
      }
    }
    TrainBatch batch;
    batch.tokens = tokens.narrow(1, 0, T).contiguous();
    batch.labels = tokens.narrow(1, 1, T).clone();
    batch.labels.select(1, T - 1).fill_(-100);
    if (mask_every_ > 0)
      for (int64_t b = 0; b < B; ++b)
        if ((index_ * B + b) % mask_every_ == 0) batch.labels[b].narrow(0, 0, T / 2).fill_(-100);
    if (c_.document_mask) {
      // two documents per row
      batch.document_ids = torch::zeros({B, T}, torch::kInt64);
      batch.document_ids.narrow(1, T / 2, T - T / 2).fill_(1);
    }
    ++index_;
    return batch;
  }

  nlohmann::json state() const override { return {{"index", index_}, {"kind", kind_}}; }

  void restore(const nlohmann::json& s) override {
    if (s.value("kind", "") != kind_) throw Error("SyntheticSource: state of another kind");
    index_ = s.at("index").get<int64_t>();
  }

 private:
  DataConfig c_;
  int64_t vocab_;
  std::string kind_;
  int64_t period_;
  int64_t mask_every_;
  int64_t index_ = 0;
};

// Hooks that feed the trainer SyntheticSources (eval streams use another seed).
inline TrainerHooks synthetic_hooks(int64_t vocab, const std::string& kind = "random",
                                    int64_t mask_rows_every = 0) {
  TrainerHooks h;
  h.progress = false;
  h.make_source = [=](const DataConfig& c) -> std::unique_ptr<BatchSource> {
    return std::make_unique<SyntheticSource>(c, vocab, kind, 7, mask_rows_every);
  };
  return h;
}

// A random float32 model of `type` (tiny_config) saved into `dir`.
inline ModelConfig save_tiny_model(const std::string& type, const std::string& dir, uint64_t seed) {
  ModelConfig c = tiny_config(type);
  Transformer m(c);
  init_random(m, seed);
  save_model(m, dir);
  return c;
}

// A config for a short run on synthetic data.
inline TrainConfig tiny_train_config(const std::string& model_dir, const std::string& out_dir) {
  TrainConfig c;
  c.model = model_dir;
  c.output_dir = out_dir;
  c.data.files = {"synthetic"};
  c.data.seq_len = 12;
  c.data.batch_size = 2;
  c.eval_data = c.data;
  c.eval_data.files.clear();
  c.lr = 1e-3;
  c.warmup_steps = 2;
  c.max_steps = 6;
  c.log_interval = 0;
  return c;
}

}  // namespace finmoe::test
