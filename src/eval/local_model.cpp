// The evaluation harness's local model: lm-eval's request kinds answered by
// a finmoe Transformer through its paged-KV-cache step, with context sharing.
#include <algorithm>
#include <map>

#include <torch/torch.h>

#include "finmoe/error.h"
#include "finmoe/eval_model.h"
#include "finmoe/engine.h"

namespace finmoe::eval {

namespace {

using Tokens = std::vector<int32_t>;

// Python's str.rstrip(): the count of trailing whitespace bytes (ASCII and
// the common Unicode spaces U+00A0, U+3000).
size_t trailing_space_bytes(const std::string& s) {
  size_t n = s.size();
  while (n > 0) {
    const unsigned char c = static_cast<unsigned char>(s[n - 1]);
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) {
      --n;
    } else if (n >= 2 && s.compare(n - 2, 2, "\xC2\xA0") == 0) {
      n -= 2;
    } else if (n >= 3 && s.compare(n - 3, 3, "\xE3\x80\x80") == 0) {
      n -= 3;
    } else {
      break;
    }
  }
  return s.size() - n;
}

struct TokRequest {
  Tokens context, continuation;
};

class LocalModel : public LanguageModel {
 public:
  LocalModel(Transformer& model, const Tokenizer& tok, const LocalModelOptions& o)
      : model_(model), tok_(tok), o_(o) {
    const int64_t model_max = model.config().max_position_embeddings;
    if (o.max_length < 0 || o.max_length > model_max)
      throw Error("--max-length " + std::to_string(o.max_length) + ": must be in [1, " +
                  std::to_string(model_max) +
                  "] (the model's max_position_embeddings), or 0 for that");
    max_len_ = o.max_length > 0 ? o.max_length : model_max;
    if (o_.batch_size < 1) throw Error("--batch-size must be at least 1");
    if (auto b = tok.bos_id())
      prefix_id_ = *b;
    else if (auto e = tok.eos_id())
      prefix_id_ = *e;
    else
      throw Error(
          "the tokenizer has neither a bos nor an eos token: an empty context has no prefix token");
  }

  std::string name() const override { return "local"; }

  std::vector<LlResult> loglikelihood(const std::vector<Request>& reqs,
                                      const std::function<void(int64_t)>& progress) override {
    std::vector<TokRequest> tr;
    tr.reserve(reqs.size());
    for (const auto& r : reqs) tr.push_back(encode_pair(r.context, r.continuation));
    return score(tr, progress);
  }

  std::vector<LlResult> loglikelihood_rolling(
      const std::vector<Request>& reqs, int64_t context_len,
      const std::function<void(int64_t)>& progress) override {
    std::vector<TokRequest> windows;
    std::vector<size_t> owner;
    for (size_t i = 0; i < reqs.size(); ++i)
      for (auto& [c, x] :
           rolling_windows(tok_encode(reqs[i].continuation), prefix_id_, max_len_, context_len)) {
        windows.push_back({std::move(c), std::move(x)});
        owner.push_back(i);
      }
    // progress in documents: a document is done when its last window is
    std::vector<size_t> last_window(reqs.size(), 0);
    for (size_t w = 0; w < owner.size(); ++w) last_window[owner[w]] = w;
    auto r = score(windows, [&](int64_t windows_done) {
      if (!progress) return;
      int64_t docs = 0;
      for (size_t i = 0; i < reqs.size(); ++i)
        docs += int64_t(last_window[i]) < windows_done || reqs[i].continuation.empty();
      progress(docs);
    });
    std::vector<LlResult> out(reqs.size(), LlResult{0, true, 0});
    for (size_t w = 0; w < owner.size(); ++w) {
      out[owner[w]].logprob += r[w].logprob;
      out[owner[w]].is_greedy = out[owner[w]].is_greedy && r[w].is_greedy;
      out[owner[w]].tokens += r[w].tokens;
    }
    return out;
  }

  // Greedy generation through the serving engine: continuous batching and
  // its prefix cache (the few-shot examples' blocks computed once).
  std::vector<std::string> generate_until(const std::vector<Request>& reqs,
                                          const std::function<void(int64_t)>& progress) override {
    std::vector<std::vector<int32_t>> prompts(reqs.size());
    int64_t longest = 1;
    for (size_t i = 0; i < reqs.size(); ++i) {
      prompts[i] = tok_encode(reqs[i].context);
      const int64_t keep = std::max<int64_t>(1, max_len_ - reqs[i].max_gen_toks);
      if (int64_t(prompts[i].size()) > keep)  // left truncation, as lm-eval
        prompts[i].erase(prompts[i].begin(), prompts[i].end() - keep);
      if (prompts[i].empty()) prompts[i].push_back(prefix_id_);
      longest = std::max<int64_t>(longest, int64_t(prompts[i].size()) + reqs[i].max_gen_toks);
    }
    if (!engine_) {
      EngineOptions eo;
      eo.block_size = o_.block_size;
      eo.max_num_seqs = o_.batch_size;
      eo.max_batched_tokens = std::max<int64_t>(512, std::min<int64_t>(max_len_, 4096));
      eo.max_model_len = max_len_;
      // room for every running sequence at full length, and then some for the prefix cache
      const int64_t per_token = kv_cache_bytes_per_token(model_.config(), model_.dtype() == torch::kFloat32 ? 4 : 2);
      eo.kv_cache_bytes = std::max<int64_t>(2 * o_.batch_size * max_len_ * per_token, int64_t(64) << 20);
      engine_ = std::make_unique<Engine>(model_, &tok_, eo);
    }
    std::vector<std::string> out(reqs.size());
    int64_t done = 0;
    std::string failed;  // the first aborted request (thrown after the engine is idle)
    for (size_t i = 0; i < reqs.size(); ++i) {
      RequestParams p;
      p.sampling.temperature = 0;
      p.seed_given = true;
      p.max_tokens = std::max<int64_t>(1, reqs[i].max_gen_toks);
      for (const auto& u : reqs[i].until)
        if (!u.empty()) p.stop_strings.push_back(u);
      if (auto e = tok_.eos_id()) p.stop_token_ids.push_back(*e);
      engine_->submit(prompts[i], p, [&out, &done, &progress, &failed, i](const RequestOutput& r) {
        out[i] += r.text;
        if (!r.finished) return;
        if (r.finish_reason == "abort" && failed.empty())
          failed = "generation of request " + std::to_string(i) + " aborted: " + r.error;
        ++done;
        if (progress) progress(done);
      });
    }
    engine_->run_until_idle();
    if (!failed.empty()) throw Error(failed);
    return out;
  }

 private:
  // lm-eval's tok_encode: the tokenizer's own special tokens, unless the
  // text already starts with the bos token.
  Tokens tok_encode(const std::string& s) const {
    const std::string& bos = tok_.config().bos_token;
    const bool has_bos = !bos.empty() && s.rfind(bos, 0) == 0;
    return tok_.encode(s, !has_bos);
  }

  // lm-eval's loglikelihood tokenization (api/model.py _encode_pair and the
  // empty-context rule).
  TokRequest encode_pair(std::string ctx, std::string cont) const {
    if (ctx.empty()) {
      Tokens c = tok_.encode(cont, false);
      if (c.empty()) return {{prefix_id_}, {}};
      if (c.front() != prefix_id_) return {{prefix_id_}, c};
      return {{c.front()}, Tokens(c.begin() + 1, c.end())};
    }
    const size_t n = trailing_space_bytes(ctx);
    if (n > 0) {
      cont = ctx.substr(ctx.size() - n) + cont;
      ctx.resize(ctx.size() - n);
    }
    Tokens whole = tok_encode(ctx + cont);
    Tokens c = tok_encode(ctx);
    const size_t k = std::min(c.size(), whole.size());
    return {std::move(c), Tokens(whole.begin() + int64_t(k), whole.end())};
  }

  struct Item {
    Tokens inp;    // (context + continuation)[-(max_len+1):][:-1]
    Tokens cont;   // the tokens scored: the last cont.size() positions of inp predict them
    size_t index;  // into the caller's list
  };

  void ensure_cache(int64_t blocks) {
    if (!cache_ || cache_->num_blocks() < blocks)
      cache_.emplace(model_, std::max<int64_t>(blocks, 64), o_.block_size);
  }

  std::vector<LlResult> score(const std::vector<TokRequest>& reqs,
                              const std::function<void(int64_t)>& progress) {
    torch::NoGradGuard no_grad;
    std::vector<LlResult> out(reqs.size());
    // group by the shared part of the input: everything before the first
    // scored position
    std::map<Tokens, std::vector<Item>> groups;
    int64_t done = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      const auto& r = reqs[i];
      if (r.continuation.empty()) {
        out[i] = {0.0, true, 0};
        ++done;
        continue;
      }
      Tokens full = r.context;
      full.insert(full.end(), r.continuation.begin(), r.continuation.end());
      const int64_t start = std::max<int64_t>(0, int64_t(full.size()) - 1 - max_len_);
      Item it{Tokens(full.begin() + start, full.end() - 1), r.continuation, i};
      if (it.cont.size() > it.inp.size())
        throw Error("a continuation of " + std::to_string(it.cont.size()) +
                    " tokens does not fit the model's context of " + std::to_string(max_len_));
      Tokens shared(it.inp.begin(), it.inp.end() - int64_t(it.cont.size()));
      groups[std::move(shared)].push_back(std::move(it));
    }
    if (progress && done) progress(done);
    // in token order (the map's): groups with a common prefix (the few-shot
    // examples) are neighbours, so a batch reuses the blocks the batch
    // before it left in the cache
    std::vector<std::pair<const Tokens*, std::vector<Item>*>> order;
    for (auto& [k, v] : groups) order.emplace_back(&k, &v);
    resident_tokens_.clear();  // a new call: the cache holds nothing we know
    resident_blocks_.clear();
    const int64_t bs = o_.block_size;
    const int64_t vocab = model_.config().vocab_size;
    const int64_t token_budget =
        std::max<int64_t>(1, o_.max_logit_floats / std::max<int64_t>(vocab, 1));
    // batches of whole groups: up to batch_size requests and the logits budget
    std::vector<std::pair<size_t, size_t>> batches;
    int64_t most_blocks = 0;  // the largest batch's blocks, the cache sized once for all
    for (size_t g = 0; g < order.size();) {
      size_t g_end = g;
      int64_t n_req = 0, n_tok = 0, blocks = 0;
      while (g_end < order.size()) {
        const auto& items = *order[g_end].second;
        const int64_t shared_full = int64_t(order[g_end].first->size()) / bs * bs;
        int64_t toks = 0, b = shared_full / bs;
        for (const auto& it : items) {
          toks += int64_t(it.inp.size()) - shared_full;
          b += (int64_t(it.inp.size()) + bs - 1) / bs;
        }
        if (g_end > g &&
            (n_req + int64_t(items.size()) > o_.batch_size || n_tok + toks > token_budget))
          break;
        n_req += int64_t(items.size());
        n_tok += toks;
        blocks += b;
        ++g_end;
      }
      batches.emplace_back(g, g_end);
      most_blocks = std::max(most_blocks, blocks);
      g = g_end;
    }
    // room for a batch beside the prefix the batch before it leaves
    ensure_cache(2 * most_blocks + 1);
    for (const auto& [g0, g1] : batches) {
      run_batch(order, g0, g1, out);
      for (size_t k = g0; k < g1; ++k) done += int64_t(order[k].second->size());
      if (progress) progress(done);
    }
    return out;
  }

  void run_batch(const std::vector<std::pair<const Tokens*, std::vector<Item>*>>& order, size_t g0,
                 size_t g1, std::vector<LlResult>& out) {
    const int64_t bs = o_.block_size;
    StepBatch common_step, prefix, body;
    std::vector<int64_t> rows, targets;                 // body rows to score, their target tokens
    std::vector<std::pair<size_t, int64_t>> row_owner;  // (request index, count)
    Tokens last_tokens;                                 // the batch's last shared prefix
    std::vector<int32_t> last_blocks;
    // Plans the batch's two steps. With `reuse`, each group's shared prefix
    // starts with the blocks of the resident prefix it has in common.
    auto plan = [&](bool reuse) -> int32_t {
      common_step = StepBatch{};
      prefix = StepBatch{};
      body = StepBatch{};
      body.all_logits = true;
      rows.clear(), targets.clear(), row_owner.clear();
      std::vector<char> taken;
      if (reuse)
        for (int32_t b : resident_blocks_) {
          if (size_t(b) >= taken.size()) taken.resize(size_t(b) + 1, 0);
          taken[size_t(b)] = 1;
        }
      int32_t next = 0, used = 0;
      auto alloc = [&] {
        while (size_t(next) < taken.size() && taken[size_t(next)]) ++next;
        used = std::max(used, next + 1);
        return next++;
      };
      for (int32_t b : reuse ? resident_blocks_ : std::vector<int32_t>{})
        used = std::max(used, b + 1);
      auto lcp = [&](const Tokens& a, const Tokens& b, int64_t lim) {
        int64_t k = 0;
        lim = std::min<int64_t>({lim, int64_t(a.size()), int64_t(b.size())});
        while (k < lim && a[size_t(k)] == b[size_t(k)]) ++k;
        return k / bs * bs;
      };
      // the batch's common prefix (the few-shot examples), whole blocks,
      // computed once in a step of its own, after what the cache holds
      const Tokens& first = *order[g0].first;
      int64_t C = int64_t(first.size());
      for (size_t g = g0 + 1; g < g1; ++g) C = lcp(first, *order[g].first, C);
      C = std::min<int64_t>(C, int64_t(first.size()) / bs * bs);
      if (g1 - g0 < 2) C = 0;  // one group: its own prefix step does it
      const int64_t rc = reuse ? lcp(resident_tokens_, first, C) : 0;
      std::vector<int32_t> common_blocks(resident_blocks_.begin(),
                                         resident_blocks_.begin() + rc / bs);
      for (int64_t b = rc / bs; b < C / bs; ++b) common_blocks.push_back(alloc());
      if (C > rc) {
        StepBatch::Seq s;
        s.q_start = 0;
        s.q_len = C - rc;
        s.context_len = C;
        s.block_table = common_blocks;
        for (int64_t p = rc; p < C; ++p) {
          common_step.tokens.push_back(first[size_t(p)]);
          common_step.positions.push_back(int32_t(p));
        }
        common_step.seqs.push_back(std::move(s));
      }
      for (size_t g = g0; g < g1; ++g) {
        const Tokens& shared = *order[g].first;
        const int64_t P = int64_t(shared.size()) / bs * bs;  // whole blocks computed once
        int64_t common = C;                                  // whole blocks already computed
        std::vector<int32_t> shared_blocks = common_blocks;
        if (reuse) {
          const int64_t l = lcp(resident_tokens_, shared, P);
          if (l > common) {
            common = l;
            shared_blocks.assign(resident_blocks_.begin(), resident_blocks_.begin() + l / bs);
          }
        }
        for (int64_t b = common / bs; b < P / bs; ++b) shared_blocks.push_back(alloc());
        if (P > common) {
          StepBatch::Seq s;
          s.q_start = int64_t(prefix.tokens.size());
          s.q_len = P - common;
          s.context_len = P;
          s.block_table = shared_blocks;
          for (int64_t p = common; p < P; ++p) {
            prefix.tokens.push_back(shared[size_t(p)]);
            prefix.positions.push_back(int32_t(p));
          }
          prefix.seqs.push_back(std::move(s));
        }
        for (const Item& it : *order[g].second) {
          const int64_t n = int64_t(it.inp.size());
          StepBatch::Seq s;
          s.q_start = int64_t(body.tokens.size());
          s.q_len = n - P;
          s.context_len = n;
          s.block_table = shared_blocks;
          for (int64_t b = P / bs; b < (n + bs - 1) / bs; ++b) s.block_table.push_back(alloc());
          for (int64_t p = P; p < n; ++p) {
            body.tokens.push_back(it.inp[size_t(p)]);
            body.positions.push_back(int32_t(p));
          }
          const int64_t c = int64_t(it.cont.size());
          for (int64_t k = 0; k < c; ++k) {
            rows.push_back(s.q_start + (n - P - c) + k);
            targets.push_back(it.cont[size_t(k)]);
          }
          row_owner.emplace_back(it.index, c);
          body.seqs.push_back(std::move(s));
        }
        last_tokens.assign(shared.begin(), shared.begin() + P);
        last_blocks = shared_blocks;
      }
      return used;
    };
    int32_t needed = plan(!resident_blocks_.empty());
    if (!cache_ || cache_->num_blocks() < needed) {
      // a new, larger cache holds no resident prefix
      resident_tokens_.clear();
      resident_blocks_.clear();
      needed = plan(false);
    }
    const int32_t next_block = needed;
    ensure_cache(next_block);
    if (o_.computed_tokens)
      *o_.computed_tokens +=
          int64_t(common_step.tokens.size() + prefix.tokens.size() + body.tokens.size());
    if (!common_step.seqs.empty()) model_.step(common_step, *cache_);
    if (!prefix.seqs.empty()) model_.step(prefix, *cache_);
    auto logits = model_.step(body, *cache_);  // [N,V] float32
    const auto dev = logits.device();
    auto lp = torch::log_softmax(
        logits.index_select(0, torch::tensor(rows, torch::kLong).to(dev)).to(torch::kFloat32),
        -1);                                                                           // [R,V]
    auto tgt = torch::tensor(targets, torch::kLong).to(dev);                           // [R]
    auto picked = lp.gather(1, tgt.unsqueeze(1)).squeeze(1).to(torch::kDouble).cpu();  // [R]
    auto greedy = lp.argmax(1).eq(tgt).cpu();                                          // [R]
    const double* pv = picked.data_ptr<double>();
    const bool* gv = greedy.data_ptr<bool>();
    resident_tokens_ = std::move(last_tokens);  // stays in the cache for the next batch
    resident_blocks_ = std::move(last_blocks);
    int64_t r = 0;
    for (const auto& [idx, c] : row_owner) {
      LlResult res{0.0, true, c};
      for (int64_t k = 0; k < c; ++k, ++r) {
        res.logprob += pv[r];
        res.is_greedy = res.is_greedy && gv[r];
      }
      out[idx] = res;
    }
  }

  Transformer& model_;
  const Tokenizer& tok_;
  LocalModelOptions o_;
  int64_t max_len_ = 0;
  int32_t prefix_id_ = 0;
  std::optional<KVCache> cache_;
  // The last batch's final shared prefix, whole blocks, still in cache_.
  Tokens resident_tokens_;
  std::vector<int32_t> resident_blocks_;
  std::unique_ptr<Engine> engine_;
};

}  // namespace

std::unique_ptr<LanguageModel> make_local_model(Transformer& model, const Tokenizer& tokenizer,
                                                const LocalModelOptions& options) {
  return std::make_unique<LocalModel>(model, tokenizer, options);
}

}  // namespace finmoe::eval
