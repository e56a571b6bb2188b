#include <algorithm>
#include <chrono>

#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "serve/constraint.h"
#include "serve/host_logits.h"
#include "serve/sampleable_vocab.h"
#include "serve/text_stream.h"

namespace finmoe {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Sequence {
  std::vector<int32_t> ids;  // prompt + generated
  int64_t prompt_len = 0;
  int64_t cached = 0;        // tokens whose K/V are in the cache
  std::vector<int32_t> blocks;
  Sampler sampler;
  TextStream text;
  ConstraintCursor constraint;
  bool done = false;
  std::string finish_reason;
};

}  // namespace

Generator::Generator(Transformer& model, const Tokenizer* tokenizer)
    : model_(model),
      tokenizer_(tokenizer),
      sampleable_(std::make_shared<const SampleableVocab>(model.config().vocab_size, tokenizer)) {}

std::vector<GenerationResult> Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                                  const GenerationOptions& opt,
                                                  const StreamCallback& on_text,
                                                  GenerationStats* stats) {
  opt.sampling.validate();
  if (opt.max_new_tokens < 0) throw Error("max_new_tokens must be >= 0");
  if (!opt.stop_strings.empty() && !tokenizer_)
    throw Error("stop strings need a tokenizer");
  const auto& cfg = model_.config();
  const int64_t ctx = cfg.max_position_embeddings;
  std::vector<float> masked;
  const int64_t bs = opt.block_size;

  // blocks: each sequence gets a fixed range sized for prompt + max_new_tokens
  std::vector<Sequence> seqs;
  int64_t total_blocks = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    if (p.empty()) throw Error("prompt " + std::to_string(i) + " is empty");
    for (int32_t id : p)
      if (id < 0 || id >= cfg.vocab_size)
        throw Error("prompt " + std::to_string(i) + ": token id " + std::to_string(id) +
                    " outside the vocabulary (size " + std::to_string(cfg.vocab_size) + ")");
    if (int64_t(p.size()) >= ctx)
      throw Error("prompt " + std::to_string(i) + " has " + std::to_string(p.size()) +
                  " tokens; the model's context is " + std::to_string(ctx));
    const int64_t len = std::min<int64_t>(int64_t(p.size()) + opt.max_new_tokens, ctx);
    Sequence s{p, int64_t(p.size()), 0, {}, Sampler(opt.sampling, opt.sampling.seed + i),
               TextStream(tokenizer_, opt.stop_strings), ConstraintCursor(opt.sampling.constraint), false, ""};
    const int64_t nb = (len + bs - 1) / bs;
    for (int64_t b = 0; b < nb; ++b) s.blocks.push_back(int32_t(total_blocks + b));
    total_blocks += nb;
    seqs.push_back(std::move(s));
  }
  if (!cache_ || cache_->num_blocks() < total_blocks || cache_->block_size() != bs)
    cache_.emplace(model_, std::max<int64_t>(total_blocks, 1), bs);

  GenerationStats st;
  const auto t0 = Clock::now();
  bool first_token = true;
  auto finish = [&](Sequence& s, const char* reason) {
    s.done = true;
    s.finish_reason = reason;
  };
  auto emit = [&](size_t i, int32_t token) {
    Sequence& s = seqs[i];
    s.ids.push_back(token);
    const int64_t generated = int64_t(s.ids.size()) - s.prompt_len;
    const bool stop_token = std::find(opt.stop_token_ids.begin(), opt.stop_token_ids.end(),
                                      token) != opt.stop_token_ids.end();
    if (s.constraint.active() && !stop_token)
      s.constraint.state = s.constraint.constraint->advance(s.constraint.state, token);
    if (stop_token) {
      s.text.finish();
      finish(s, "stop");
    } else if (s.text.push(token)) {
      finish(s, "stop");
    } else if (s.constraint.active() && (s.constraint.state < 0 || s.constraint.constraint->finished(s.constraint.state))) {
      // complete (nothing may follow), or a masked token sampled because every logit was -inf
      s.text.finish();
      finish(s, s.constraint.state < 0 ? "abort" : "stop");
    } else if (generated >= opt.max_new_tokens || int64_t(s.ids.size()) >= ctx) {
      s.text.finish();
      finish(s, "length");
    }
    if (on_text) {
      const std::string piece = s.text.take();
      if (!piece.empty()) on_text(i, piece);
    }
  };

  std::vector<float> row, constrained;
  while (true) {
    // Pack one step: every decode-ready sequence's next token, then prefill
    // chunks up to the token budget.
    StepBatch batch;
    std::vector<size_t> members;
    int64_t budget = std::max<int64_t>(opt.max_batched_tokens, 1);
    bool prefill_step = false;
    for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
      Sequence& s = seqs[i];
      if (s.done || opt.max_new_tokens == 0) continue;
      const int64_t pending = int64_t(s.ids.size()) - s.cached;
      const int64_t n = std::min(pending, budget);
      if (s.cached < s.prompt_len) prefill_step = true;
      StepBatch::Seq q;
      q.q_start = int64_t(batch.tokens.size());
      q.q_len = n;
      q.context_len = s.cached + n;
      q.block_table = s.blocks;
      for (int64_t k = 0; k < n; ++k) {
        batch.tokens.push_back(s.ids[size_t(s.cached + k)]);
        batch.positions.push_back(int32_t(s.cached + k));
      }
      batch.seqs.push_back(std::move(q));
      members.push_back(i);
      budget -= n;
    }
    if (members.empty()) break;
    const auto ts = Clock::now();
    auto logits = logits_to_host(model_.step(batch, *cache_));  // [S,V]
    int64_t step_prefill = 0;
    for (size_t m = 0; m < members.size(); ++m) {
      Sequence& s = seqs[members[m]];
      const int64_t n = batch.seqs[m].q_len;
      if (s.cached < s.prompt_len) step_prefill += n;
      s.cached += n;
      if (s.cached < int64_t(s.ids.size())) continue;  // prompt chunk, more to come
      const float* p = logits[int64_t(m)].data_ptr<float>();
      std::span<const float> z = sampleable_->apply({p, size_t(cfg.vocab_size)}, masked);
      if (s.constraint.active()) {
        constrained.assign(z.begin(), z.end());
        if (s.constraint.constraint->apply(s.constraint.state, constrained, opt.stop_token_ids) == 0) {
          s.text.finish();
          finish(s, "abort");  // no token of the vocabulary continues the output
          continue;
        }
        z = constrained;
      }
      const int32_t tok = s.sampler.sample(z, s.ids);
      emit(members[m], tok);
      if (first_token) {
        st.ttft_s = seconds_since(t0);
        first_token = false;
      }
    }
    const double dt = seconds_since(ts);
    if (prefill_step) {
      st.prefill_s += dt;
      st.prefill_tokens += step_prefill;
    } else {
      st.decode_s += dt;
      st.decode_tokens += int64_t(members.size());
    }
  }

  std::vector<GenerationResult> out;
  for (auto& s : seqs) {
    GenerationResult r;
    r.tokens.assign(s.ids.begin() + s.prompt_len, s.ids.end());
    r.text = s.text.text();
    r.finish_reason = s.finish_reason.empty() ? "length" : s.finish_reason;
    r.prompt_tokens = s.prompt_len;
    out.push_back(std::move(r));
  }
  if (stats) *stats = st;
  return out;
}

}  // namespace finmoe
