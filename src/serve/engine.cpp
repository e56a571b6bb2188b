// The serving engine: request bookkeeping, the model step and sampling around
// the scheduling policy in scheduler.h.
#include "finmoe/engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "finmoe/block_manager.h"
#include "finmoe/error.h"
#include "finmoe/serving_adapters.h"
#include "model/adapter_rows.h"
#include "serve/constraint.h"
#include "serve/host_logits.h"
#include "serve/sampleable_vocab.h"
#include "serve/scheduler.h"
#include "serve/text_stream.h"

namespace finmoe {

void RequestParams::validate() const {
  sampling.validate();
  if (!(presence_penalty >= -2 && presence_penalty <= 2))
    throw Error("presence_penalty must be in [-2, 2], got " + std::to_string(presence_penalty));
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    throw Error("frequency_penalty must be in [-2, 2], got " + std::to_string(frequency_penalty));
  if (max_tokens < 1) throw Error("max_tokens must be >= 1, got " + std::to_string(max_tokens));
  if (adapter < 0) throw Error("adapter must be >= 0 (0 = the base model), got " + std::to_string(adapter));
  if (logprobs < -1 || logprobs > 20)
    throw Error("logprobs must be in [0, 20] (-1 = off), got " + std::to_string(logprobs));
  if (min_tokens < 0 || min_tokens > max_tokens)
    throw Error("min_tokens must be in [0, max_tokens = " + std::to_string(max_tokens) + "], got " +
                std::to_string(min_tokens));
  for (size_t i = 0; i < stop_token_ids.size(); ++i)
    if (stop_token_ids[i] < 0)
      throw Error("stop_token_ids[" + std::to_string(i) + "] must be >= 0, got " +
                  std::to_string(stop_token_ids[i]));
  for (size_t i = 0; i < stop_strings.size(); ++i)
    if (stop_strings[i].empty()) throw Error("stop_strings[" + std::to_string(i) + "] is empty");
  for (size_t i = 0; i < logit_bias.size(); ++i) {
    const auto& [id, bias] = logit_bias[i];
    if (id < 0 || !(bias >= -100 && bias <= 100))
      throw Error("logit_bias[" + std::to_string(i) +
                  "] must be a token id >= 0 and a bias in [-100, 100], got (" +
                  std::to_string(id) + ", " + std::to_string(bias) + ")");
  }
}

namespace {

// One request as the stepping thread sees it.
struct Request {
  Request(uint64_t id, std::vector<int32_t> prompt, const RequestParams& p, OutputCallback cb,
          uint64_t seed, const Tokenizer* tok, int64_t max_len)
      : params(p),
        on_output(std::move(cb)),
        sampler(p.sampling, seed),
        constraint(p.sampling.constraint),
        text(tok, p.stop_strings, p.include_stop_str_in_output, p.skip_special_tokens),
        prompt_len(static_cast<int64_t>(prompt.size())),
        max_len(max_len) {
    seq.id = static_cast<int64_t>(id);
    seq.tokens = std::move(prompt);
    seq.cache_salt = static_cast<uint64_t>(p.adapter);
  }
  Sequence seq;  // prompt + generated; survives preemption
  RequestParams params;
  OutputCallback on_output;
  Sampler sampler;  // its RNG state carries across preemption
  ConstraintCursor constraint;  // its state carries across preemption too
  TextStream text;
  int64_t prompt_len;
  int64_t max_len;  // prompt + max_tokens, capped by max_model_len and the cache
  std::unordered_map<int32_t, int32_t> counts;  // generated token -> occurrences (penalties)
  bool penalized() const { return params.presence_penalty != 0 || params.frequency_penalty != 0; }
  bool adjusted() const { return !params.logit_bias.empty() || (penalized() && !counts.empty()); }
};

// An event waiting to be delivered after the step's bookkeeping is done.
struct Event {
  Request* request;
  RequestOutput out;
};

// log_softmax of the raw logits for `chosen`, plus the top `n` (best first,
// ties by lower id).
TokenLogprob token_logprob(std::span<const float> z, int32_t chosen, int32_t n) {
  const float zmax = *std::max_element(z.begin(), z.end());
  double sum = 0;
  for (float v : z) sum += std::exp(double(v) - zmax);
  const double lse = zmax + std::log(sum);
  TokenLogprob lp;
  lp.token = chosen;
  lp.logprob = float(z[size_t(chosen)] - lse);
  if (n > 0) {
    std::vector<int32_t> ids(z.size());
    std::iota(ids.begin(), ids.end(), 0);
    const auto top = ids.begin() + std::min<int64_t>(n, int64_t(ids.size()));
    std::partial_sort(ids.begin(), top, ids.end(), [&](int32_t a, int32_t b) {
      return z[size_t(a)] > z[size_t(b)] || (z[size_t(a)] == z[size_t(b)] && a < b);
    });
    for (auto it = ids.begin(); it != top; ++it)
      lp.top.emplace_back(*it, float(z[size_t(*it)] - lse));
  }
  return lp;
}

int64_t element_bytes(torch::Dtype dtype) { return int64_t(c10::elementSize(dtype)); }

// Validates the options and fills in max_model_len.
EngineOptions resolve(const Transformer& model, EngineOptions o) {
  auto positive = [](int64_t v, const char* name) {
    if (v <= 0)
      throw Error(std::string("EngineOptions.") + name + " must be > 0, got " + std::to_string(v));
  };
  positive(o.kv_cache_bytes, "kv_cache_bytes");
  positive(o.block_size, "block_size");
  positive(o.max_num_seqs, "max_num_seqs");
  positive(o.max_batched_tokens, "max_batched_tokens");
  const ModelConfig& c = model.config();
  const int64_t limit = c.max_position_embeddings;
  if (o.max_model_len < 0 || o.max_model_len > limit)
    throw Error("EngineOptions.max_model_len must be in [0, " + std::to_string(limit) +
                "] (the model's max_position_embeddings; 0 = that), got " +
                std::to_string(o.max_model_len));
  if (o.max_model_len == 0) o.max_model_len = limit;
  return o;
}

int64_t num_blocks_for(const Transformer& model, const EngineOptions& o) {
  const int64_t per_token = kv_cache_bytes_per_token(model.config(), element_bytes(model.dtype()));
  const int64_t n = blocks_for_budget(o.kv_cache_bytes, per_token, o.block_size);
  if (n < 1)
    throw Error("EngineOptions.kv_cache_bytes (" + std::to_string(o.kv_cache_bytes) +
                ") holds no block of " + std::to_string(o.block_size) + " tokens at " +
                std::to_string(per_token) + " bytes per token");
  return n;
}

}  // namespace

struct Engine::Impl {
  Impl(Transformer& m, const Tokenizer* tok, const EngineOptions& o)
      : model(m),
        tokenizer(tok),
        options(resolve(m, o)),
        num_blocks(num_blocks_for(m, options)),
        seq_cap(std::min(options.max_model_len, num_blocks * options.block_size)),
        sampleable(m.config().vocab_size, tok),
        cache(m, num_blocks, options.block_size),
        blocks(num_blocks, options.block_size, options.enable_prefix_caching),
        scheduler(blocks, options.max_num_seqs, options.max_batched_tokens),
        seed_rng(std::random_device{}()) {
    publish();
  }

  Transformer& model;
  const Tokenizer* tokenizer;
  const EngineOptions options;
  const int64_t num_blocks;
  const int64_t seq_cap;  // longest sequence: max_model_len, or the whole cache when smaller
  const SampleableVocab sampleable;  // ids with a token (the rest are never sampled)

  // ---- owned by the stepping thread (guarded by step_mu) ----
  KVCache cache;
  BlockManager blocks;
  Scheduler scheduler;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests;
  int64_t finished = 0, cancelled = 0, prompt_tokens = 0, generation_tokens = 0, steps = 0,
          max_running = 0;

  // ---- guarded by mu ----
  mutable std::mutex mu;
  std::condition_variable wake;
  std::vector<std::unique_ptr<Request>> inbox;  // submitted, not yet seen by a step
  std::vector<uint64_t> cancels;
  std::deque<std::function<void(Transformer&)>> tasks;  // submit_task(), not yet run
  std::unordered_set<uint64_t> live;  // submitted, final event not yet delivered
  uint64_t next_id = 1;
  std::mt19937_64 seed_rng;
  EngineStats snapshot;
  bool stop_requested = false;

  std::mutex step_mu;  // held for each step, by whichever thread steps
  std::thread worker;
  std::atomic<bool> worker_running{false};

  void check(const std::vector<int32_t>& prompt, const RequestParams& params) const;
  bool step_locked();
  void run_worker();
  void abort_all(const std::string& why);
  void take_inbox(std::vector<uint64_t>& cancel_ids);
  void sample(Request& r, std::span<const float> logits, RequestOutput& out);
  void end(Request& r, const char* reason, RequestOutput& out, const std::string& error = "");
  RequestOutput start_event(const Request& r) const;
  void deliver(std::vector<Event>& events);
  void publish();
};

void Engine::Impl::check(const std::vector<int32_t>& prompt, const RequestParams& params) const {
  if (prompt.empty()) throw Error("prompt is empty");
  const int64_t vocab = model.config().vocab_size;
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] < 0 || prompt[i] >= vocab)
      throw Error("prompt token " + std::to_string(i) + " (id " + std::to_string(prompt[i]) +
                  ") is outside the vocabulary (size " + std::to_string(vocab) + ")");
  params.validate();
  if (params.adapter != 0 && !has_serving_adapter(model, params.adapter))
    throw Error("adapter " + std::to_string(params.adapter) + " is not attached to this model");
  for (size_t i = 0; i < params.logit_bias.size(); ++i)
    if (params.logit_bias[i].first >= vocab)
      throw Error("logit_bias[" + std::to_string(i) + "] (token " +
                  std::to_string(params.logit_bias[i].first) +
                  ") is outside the vocabulary (size " + std::to_string(vocab) + ")");
  for (size_t i = 0; i < params.stop_token_ids.size(); ++i)
    if (params.stop_token_ids[i] >= vocab)
      throw Error("stop_token_ids[" + std::to_string(i) + "] (" +
                  std::to_string(params.stop_token_ids[i]) + ") is outside the vocabulary (size " +
                  std::to_string(vocab) + ")");
  if (!params.stop_strings.empty() && !tokenizer)
    throw Error("stop_strings need a tokenizer; this engine has none");
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n >= options.max_model_len)
    throw Error("prompt has " + std::to_string(n) + " tokens; max_model_len is " +
                std::to_string(options.max_model_len) + ", which leaves no room for a new token");
  if (n >= num_blocks * options.block_size)
    throw Error("prompt has " + std::to_string(n) + " tokens; the whole KV cache holds " +
                std::to_string(num_blocks * options.block_size) +
                " (kv_cache_bytes), which leaves no room for a new token");
}

RequestOutput Engine::Impl::start_event(const Request& r) const {
  RequestOutput out;
  out.request_id = static_cast<uint64_t>(r.seq.id);
  out.prompt_tokens = r.prompt_len;
  out.cached_prompt_tokens = std::max<int64_t>(r.seq.first_cached, 0);
  out.completion_tokens = static_cast<int64_t>(r.seq.tokens.size()) - r.prompt_len;
  return out;
}

void Engine::Impl::end(Request& r, const char* reason, RequestOutput& out,
                       const std::string& error) {
  scheduler.remove(&r.seq);  // frees its blocks
  r.text.finish();
  out.text += r.text.take();
  out.finished = true;
  out.finish_reason = reason;
  out.error = error;
  if (out.finish_reason == "abort")
    ++cancelled;
  else
    ++finished;
}

void Engine::Impl::sample(Request& r, std::span<const float> raw, RequestOutput& out) {
  std::vector<float> masked, adjusted;
  const std::span<const float> logits = sampleable.apply(raw, masked);  // [sampleable ids]
  // constraint mask, logit_bias and presence/frequency penalties go before the sampler's own warpers.
  std::span<const float> z = logits;
  // min_tokens: the stop tokens cannot be sampled before it is reached
  const bool hold_stops = static_cast<int64_t>(r.seq.tokens.size()) - r.prompt_len < r.params.min_tokens &&
                          !r.params.stop_token_ids.empty();
  if (r.adjusted() || hold_stops || r.constraint.active()) {
    adjusted.assign(logits.begin(), logits.end());
    if (r.constraint.active() &&
        r.constraint.constraint->apply(r.constraint.state, adjusted, r.params.stop_token_ids) == 0) {
      end(r, "abort", out, "no token of the vocabulary continues the constrained output");
      return;
    }
    for (const auto& [tok, bias] : r.params.logit_bias)
      if (size_t(tok) < adjusted.size()) adjusted[size_t(tok)] += bias;
    if (r.penalized())
      for (const auto& [tok, count] : r.counts) {
        adjusted[size_t(tok)] -= float(r.params.frequency_penalty * count);
        adjusted[size_t(tok)] -= float(r.params.presence_penalty);
      }
    if (hold_stops)
      for (int32_t tok : r.params.stop_token_ids)
        if (size_t(tok) < adjusted.size()) adjusted[size_t(tok)] = -std::numeric_limits<float>::infinity();
    z = adjusted;
  }
  const int32_t tok = r.sampler.sample(z, r.seq.tokens);
  if (r.params.logprobs >= 0) out.logprobs.push_back(token_logprob(logits, tok, r.params.logprobs));
  r.seq.tokens.push_back(tok);
  if (r.penalized()) ++r.counts[tok];
  ++generation_tokens;
  out.token_ids.push_back(tok);
  out.completion_tokens = static_cast<int64_t>(r.seq.tokens.size()) - r.prompt_len;

  const auto& stops = r.params.stop_token_ids;
  const bool stop_token = std::find(stops.begin(), stops.end(), tok) != stops.end();
  if (r.constraint.active() && !stop_token)
    r.constraint.state = r.constraint.constraint->advance(r.constraint.state, tok);
  if (stop_token) {
    end(r, "stop", out);
  } else if (r.text.push(tok)) {
    end(r, "stop", out);
  } else if (r.constraint.active() && r.constraint.state < 0) {
    // only when the sampler picked a masked token (every logit -inf)
    end(r, "abort", out, "the sampled token left the constrained language");
  } else if (r.constraint.active() && r.constraint.constraint->finished(r.constraint.state)) {
    end(r, "stop", out);  // the output is complete: nothing may follow
  } else if (static_cast<int64_t>(r.seq.tokens.size()) >= r.max_len) {
    end(r, "length", out);
  } else {
    out.text += r.text.take();
  }
}

void Engine::Impl::take_inbox(std::vector<uint64_t>& cancel_ids) {
  std::vector<std::unique_ptr<Request>> fresh;
  {
    std::lock_guard lock(mu);
    fresh.swap(inbox);
    cancel_ids.swap(cancels);
  }
  for (auto& r : fresh) {
    scheduler.add(&r->seq);
    const auto id = static_cast<uint64_t>(r->seq.id);
    requests.emplace(id, std::move(r));
  }
}

bool Engine::Impl::step_locked() {
  // One model task per step, before the batch: tasks and requests take turns.
  std::function<void(Transformer&)> task;
  {
    std::lock_guard lock(mu);
    if (!tasks.empty()) {
      task = std::move(tasks.front());
      tasks.pop_front();
    }
  }
  if (task) {
    try {
      task(model);
    } catch (...) {  // the task owns its errors (submit_task); a throwing one is dropped
    }
  }
  std::vector<uint64_t> cancel_ids;
  take_inbox(cancel_ids);
  std::vector<Event> events;
  for (uint64_t id : cancel_ids) {
    auto it = requests.find(id);
    if (it == requests.end() || it->second->seq.state == Sequence::State::Finished) continue;
    Request& r = *it->second;
    events.push_back({&r, start_event(r)});
    end(r, "abort", events.back().out);
  }
  const bool cancelled_some = !events.empty();

  const std::vector<ScheduledSeq> plan = scheduler.schedule();
  max_running = std::max(max_running, scheduler.num_running());
  if (plan.empty()) {
    deliver(events);
    publish();
    // A non-idle scheduler with nothing runnable would spin forever.
    if (!scheduler.idle())
      throw Error("Engine: scheduler stalled with " + std::to_string(scheduler.num_waiting()) +
                  " waiting and " + std::to_string(scheduler.num_running()) + " running");
    return cancelled_some || bool(task);
  }

  StepBatch batch;
  for (const auto& e : plan) {
    const Sequence& s = *e.seq;
    StepBatch::Seq q;
    q.q_start = static_cast<int64_t>(batch.tokens.size());
    q.q_len = e.num_tokens;
    q.context_len = s.num_computed + e.num_tokens;
    q.block_table = blocks.block_table(s.id);
    for (int64_t p = s.num_computed; p < q.context_len; ++p) {
      batch.tokens.push_back(s.tokens[size_t(p)]);
      batch.positions.push_back(int32_t(p));
    }
    batch.seqs.push_back(std::move(q));
  }
  // each token row runs its request's serving adapter (none: the base weights)
  std::vector<int32_t> row_adapter;
  for (const auto& e : plan)
    row_adapter.insert(row_adapter.end(), size_t(e.num_tokens),
                       requests.at(static_cast<uint64_t>(e.seq->id))->params.adapter);
  torch::Tensor logits;
  try {
    const AdapterRows rows(std::move(row_adapter), model.device());
    AdapterRowsScope scope(&rows);
    logits = logits_to_host(model.step(batch, cache));  // [S,V] float32
  } catch (const std::exception& ex) {
    for (const auto& e : plan) {
      Request& r = *requests.at(static_cast<uint64_t>(e.seq->id));
      events.push_back({&r, start_event(r)});
      end(r, "abort", events.back().out, std::string("model step failed: ") + ex.what());
    }
    deliver(events);
    publish();
    throw;
  }
  scheduler.computed(plan);
  ++steps;

  const auto V = static_cast<size_t>(logits.size(1));
  const float* rows = logits.data_ptr<float>();
  for (size_t m = 0; m < plan.size(); ++m) {
    const ScheduledSeq& e = plan[m];
    if (!e.decode) prompt_tokens += e.num_tokens;
    Request& r = *requests.at(static_cast<uint64_t>(e.seq->id));
    if (r.seq.num_computed < static_cast<int64_t>(r.seq.tokens.size())) continue;  // mid-prefill
    events.push_back({&r, start_event(r)});
    sample(r, {rows + m * V, V}, events.back().out);
  }
  deliver(events);
  publish();
  return true;
}

void Engine::Impl::deliver(std::vector<Event>& events) {
  if (events.empty()) return;
  {
    std::lock_guard lock(mu);
    for (const auto& ev : events)
      if (ev.out.finished) live.erase(ev.out.request_id);
  }
  for (const auto& ev : events) {
    if (!ev.request->on_output) continue;
    try {
      ev.request->on_output(ev.out);
    } catch (...) {
      // A callback that throws has lost its consumer: stop the request.
      if (!ev.out.finished) {
        std::lock_guard lock(mu);
        cancels.push_back(ev.out.request_id);
      }
    }
  }
  for (const auto& ev : events)
    if (ev.out.finished) requests.erase(ev.out.request_id);
  events.clear();
}

void Engine::Impl::publish() {
  EngineStats s;
  s.num_blocks = num_blocks;
  s.block_size = options.block_size;
  s.max_tokens_in_cache = num_blocks * options.block_size;
  s.max_full_length_seqs =
      sequences_that_fit(num_blocks, options.block_size, options.max_model_len);
  s.max_model_len = options.max_model_len;
  s.running = scheduler.num_running();
  s.waiting = scheduler.num_waiting();
  s.blocks_used = blocks.num_used_blocks();
  s.blocks_free = blocks.num_free_blocks();
  s.prefix_query_tokens = blocks.prefix_query_tokens();
  s.prefix_hit_tokens = blocks.prefix_hit_tokens();
  s.preemptions = scheduler.num_preemptions();
  s.requests_finished = finished;
  s.requests_cancelled = cancelled;
  s.prompt_tokens = prompt_tokens;
  s.generation_tokens = generation_tokens;
  s.steps = steps;
  s.max_running_seen = max_running;
  std::lock_guard lock(mu);
  snapshot = s;
}

void Engine::Impl::abort_all(const std::string& why) {
  std::lock_guard step_lock(step_mu);
  std::deque<std::function<void(Transformer&)>> dropped;  // destroyed unrun, outside mu
  {
    std::lock_guard lock(mu);
    dropped.swap(tasks);
  }
  std::vector<uint64_t> cancel_ids;  // moot: everything ends
  take_inbox(cancel_ids);
  std::vector<Event> events;
  for (Sequence* s : scheduler.all()) {
    Request& r = *requests.at(static_cast<uint64_t>(s->id));
    events.push_back({&r, start_event(r)});
    end(r, "abort", events.back().out, why);
  }
  deliver(events);
  publish();
}

void Engine::Impl::run_worker() {
  for (;;) {
    {
      std::unique_lock lock(mu);
      // scheduler is read here by its own (this) thread only
      wake.wait(lock, [&] {
        return stop_requested || !inbox.empty() || !cancels.empty() || !tasks.empty() || !scheduler.idle();
      });
      if (stop_requested) return;
    }
    std::lock_guard step_lock(step_mu);
    try {
      step_locked();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "finmoe engine: step failed: %s\n", e.what());
    }
  }
}

// ---- Engine ------------------------------------------------------------------

Engine::Engine(Transformer& model, const Tokenizer* tokenizer, const EngineOptions& options)
    : impl_(std::make_unique<Impl>(model, tokenizer, options)) {}

Engine::~Engine() { stop(); }

uint64_t Engine::submit(std::vector<int32_t> prompt, const RequestParams& params,
                        OutputCallback on_output) {
  Impl& m = *impl_;
  m.check(prompt, params);
  const int64_t max_len =
      std::min(static_cast<int64_t>(prompt.size()) + params.max_tokens, m.seq_cap);
  uint64_t id;
  {
    std::lock_guard lock(m.mu);
    id = m.next_id++;
    const uint64_t seed = params.seed_given ? params.sampling.seed : m.seed_rng();
    m.inbox.push_back(std::make_unique<Request>(id, std::move(prompt), params, std::move(on_output),
                                                seed, m.tokenizer, max_len));
    m.live.insert(id);
  }
  m.wake.notify_one();
  return id;
}

void Engine::submit_task(std::function<void(Transformer&)> task) {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    m.tasks.push_back(std::move(task));
  }
  m.wake.notify_one();
}

bool Engine::cancel(uint64_t request_id) {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    if (!m.live.count(request_id)) return false;
    m.cancels.push_back(request_id);
  }
  m.wake.notify_one();
  return true;
}

bool Engine::step() {
  Impl& m = *impl_;
  if (m.worker_running) throw Error("Engine::step: the background thread is stepping (start())");
  std::lock_guard step_lock(m.step_mu);
  return m.step_locked();
}

void Engine::run_until_idle() {
  while (step()) {
  }
}

void Engine::start() {
  Impl& m = *impl_;
  if (m.worker_running.exchange(true)) return;
  m.worker = std::thread([&m] { m.run_worker(); });
}

void Engine::stop() {
  Impl& m = *impl_;
  if (m.worker.joinable()) {
    {
      std::lock_guard lock(m.mu);
      m.stop_requested = true;
    }
    m.wake.notify_all();
    m.worker.join();
    {
      std::lock_guard lock(m.mu);
      m.stop_requested = false;
    }
    m.worker_running = false;
  }
  m.abort_all("engine stopped");
}

EngineStats Engine::stats() const {
  std::lock_guard lock(impl_->mu);
  EngineStats s = impl_->snapshot;
  s.waiting += static_cast<int64_t>(impl_->inbox.size());
  return s;
}

const EngineOptions& Engine::options() const { return impl_->options; }

}  // namespace finmoe
