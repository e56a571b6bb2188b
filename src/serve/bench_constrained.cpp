// finmoe bench constrained: the cost of constrained decoding at batch 1.
#include <algorithm>
#include <chrono>
#include <random>

#include "finmoe/bench.h"
#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "serve/constraint.h"

namespace finmoe {
namespace {

// The slot-filling schema used unless the options name another.
const char* kSlotSchema = R"({"type": "object", "properties": {
  "intent": {"enum": ["transfer", "balance", "pay_bill", "exchange"]},
  "amount": {"type": "number", "minimum": 0},
  "currency": {"enum": ["USD", "EUR", "CNY", "GBP", "JPY"]},
  "account": {"type": "string", "pattern": "[A-Z]{2}[0-9]{6,10}"},
  "date": {"type": "string", "format": "date"},
  "memo": {"type": "string", "maxLength": 40}},
  "required": ["intent", "amount", "currency", "account"]})";

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

nlohmann::json ConstrainedBenchResult::to_json() const {
  auto run = [](const Run& r) {
    return nlohmann::json{{"decode_tokens_per_s", r.decode_tokens_per_s},
                          {"tokens", r.tokens},
                          {"finish_reason", r.finish_reason}};
  };
  const double u = unconstrained.decode_tokens_per_s;
  return {{"vocab_ids", vocab_ids},
          {"vocab_build_s", vocab_build_s},
          {"schema_compile_s", schema_compile_s},
          {"dfa_states", dfa_states},
          {"unconstrained", run(unconstrained)},
          {"constrained_cold", run(cold)},
          {"constrained_warm", run(warm)},
          {"cold_masks_computed", cold_masks_computed},
          {"cold_mask_s", cold_mask_s},
          {"ratio_cold", u > 0 ? cold.decode_tokens_per_s / u : 0},
          {"ratio_warm", u > 0 ? warm.decode_tokens_per_s / u : 0},
          {"constraint_ms_per_token_warm", constraint_ms_per_token},
          {"constraint_share_of_decode_step", u > 0 ? constraint_ms_per_token * u / 1e3 : 0},
          {"sampler_ms_raw", sampler_ms_raw},
          {"sampler_ms_masked", sampler_ms_masked},
          {"mask_states_timed", mask_states_timed},
          {"mask_ms_mean", mask_ms_mean},
          {"mask_ms_max", mask_ms_max},
          {"mask_ms_open_string", mask_ms_open_string},
          {"open_string_tokens_allowed", open_string_tokens_allowed},
          {"constrained_text", warm.text}};
}

ConstrainedBenchResult bench_constrained(Transformer& model, const Tokenizer& tokenizer,
                                         const ConstrainedBenchOptions& options) {
  if (options.tokens < 1 || options.repeats < 1 || options.mask_states < 1)
    throw Error("bench_constrained: tokens, repeats and mask_states must be >= 1");
  nlohmann::ordered_json schema;
  try {
    schema = nlohmann::ordered_json::parse(options.schema.empty() ? std::string(kSlotSchema)
                                                                  : options.schema);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("the schema is not valid JSON: ") + e.what());
  }
  auto t = std::chrono::steady_clock::now();
  auto vocab = std::make_shared<const TokenVocab>(model.config().vocab_size, tokenizer);
  const double vocab_s = seconds_since(t);
  auto compile = [&] {
    try {
      return json_schema_constraint(schema, vocab);
    } catch (const constrain::SchemaError& e) {
      throw Error("the schema" + (e.path().empty() ? "" : ": at " + e.path()) + ": " + e.what());
    }
  };
  t = std::chrono::steady_clock::now();
  auto constraint = compile();
  const double compile_s = seconds_since(t);

  Generator gen(model, &tokenizer);
  const std::vector<std::vector<int32_t>> ids = {tokenizer.encode(options.prompt)};
  GenerationOptions o;
  o.sampling.temperature = 1.0;  // sampled (seeded: every run the same) to visit many states
  o.sampling.seed = 1;
  o.max_new_tokens = options.tokens;
  o.stop_token_ids = options.stop_token_ids;
  struct Figure {
    double tokens_per_s = 0;
    int64_t tokens = 0;
    std::string finish, text;
    std::vector<int32_t> ids;
  };
  auto timed = [&](std::shared_ptr<const TokenConstraint> c, int64_t runs) {
    Figure best;
    for (int64_t r = 0; r < runs; ++r) {
      GenerationOptions oo = o;
      oo.sampling.constraint = c;
      if (!c) oo.stop_token_ids.clear();  // the plain runs decode every token
      GenerationStats st;
      const auto out = gen.generate(ids, oo, {}, &st);
      if (st.decode_tokens_per_s() > best.tokens_per_s) {
        best.tokens_per_s = st.decode_tokens_per_s();
        best.tokens = int64_t(out[0].tokens.size());
        best.finish = out[0].finish_reason;
        best.text = out[0].text;
        best.ids = out[0].tokens;
      }
    }
    return best;
  };
  timed(nullptr, 1);  // warm-up
  Figure plain = timed(nullptr, 1);
  const Figure cold = timed(constraint, 1);
  const int64_t cold_masks = constraint->masks_computed();
  const double cold_mask_s = constraint->mask_seconds();
  Figure warm = timed(constraint, 1);
  // the rest alternate, so that a busy machine slows both alike; best of each
  for (int64_t r = 1; r < options.repeats; ++r) {
    const Figure p = timed(nullptr, 1), w = timed(constraint, 1);
    if (p.tokens_per_s > plain.tokens_per_s) plain = p;
    if (w.tokens_per_s > warm.tokens_per_s) warm = w;
  }

  // the constraint's own work per token, replayed on the warm run's tokens:
  // the mask applied to a vocabulary of logits and the state advanced
  std::vector<float> logits(size_t(model.config().vocab_size));
  double replay_s = 0, sample_raw_s = 0, sample_masked_s = 0;
  int64_t replayed = 0;
  std::mt19937 noise(5);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::vector<float> raw(logits.size());
  for (float& v : raw) v = normal(noise);
  Sampler sampler(o.sampling, 1);
  for (int64_t r = 0; r < options.repeats; ++r) {
    int32_t st = constraint->start();
    for (int32_t id : warm.ids) {
      if (st < 0 ||
          std::find(o.stop_token_ids.begin(), o.stop_token_ids.end(), id) != o.stop_token_ids.end())
        break;
      std::copy(raw.begin(), raw.end(), logits.begin());
      t = std::chrono::steady_clock::now();
      constraint->apply(st, logits, o.stop_token_ids);
      st = constraint->advance(st, id);
      replay_s += seconds_since(t);
      ++replayed;
      // the sampler on the masked logits vs on the same logits unmasked
      t = std::chrono::steady_clock::now();
      sampler.sample(logits, warm.ids);
      sample_masked_s += seconds_since(t);
      t = std::chrono::steady_clock::now();
      sampler.sample(raw, warm.ids);
      sample_raw_s += seconds_since(t);
    }
  }
  const double per_token_ms = replayed ? replay_s * 1e3 / double(replayed) : 0;

  // masks of the first states in breadth-first order, each computed fresh
  auto fresh = compile();
  const auto& dfa = fresh->dfa();
  std::vector<int32_t> order{dfa.start()};
  std::vector<char> seen(size_t(dfa.num_states()), 0);
  seen[size_t(dfa.start())] = 1;
  for (size_t i = 0; i < order.size() && int64_t(order.size()) < options.mask_states; ++i)
    for (int byte = 0; byte < 256; ++byte) {
      const int32_t n = dfa.next(order[i], uint8_t(byte));
      if (n >= 0 && !seen[size_t(n)]) {
        seen[size_t(n)] = 1;
        order.push_back(n);
      }
    }
  if (int64_t(order.size()) > options.mask_states) order.resize(size_t(options.mask_states));
  double max_ms = 0, sum_ms = 0;
  for (int32_t st : order) {
    t = std::chrono::steady_clock::now();
    fresh->mask(st);
    const double ms = seconds_since(t) * 1e3;
    sum_ms += ms;
    max_ms = std::max(max_ms, ms);
  }
  // the costliest kind of state: inside a free string almost every token is allowed
  std::vector<double> open_ms;
  int64_t open_allowed = 0;
  for (int r = 0; r < 5; ++r) {
    const auto any = json_object_constraint(vocab);
    const int32_t st = any->dfa().walk(any->start(), "{\"");
    t = std::chrono::steady_clock::now();
    const auto m = any->mask(st);
    open_ms.push_back(seconds_since(t) * 1e3);
    open_allowed = m->count;
  }
  std::sort(open_ms.begin(), open_ms.end());
  const double open_string_ms = open_ms[open_ms.size() / 2];

  ConstrainedBenchResult res;
  res.vocab_ids = vocab->size();
  res.vocab_build_s = vocab_s;
  res.schema_compile_s = compile_s;
  res.dfa_states = constraint->dfa().num_states();
  auto as_run = [](const Figure& f) {
    return ConstrainedBenchResult::Run{f.tokens_per_s, f.tokens, f.finish, f.text};
  };
  res.unconstrained = as_run(plain);
  res.cold = as_run(cold);
  res.warm = as_run(warm);
  res.cold_masks_computed = cold_masks;
  res.cold_mask_s = cold_mask_s;
  res.constraint_ms_per_token = per_token_ms;
  res.sampler_ms_raw = replayed ? sample_raw_s * 1e3 / double(replayed) : 0;
  res.sampler_ms_masked = replayed ? sample_masked_s * 1e3 / double(replayed) : 0;
  res.mask_states_timed = int64_t(order.size());
  res.mask_ms_mean = sum_ms / double(order.size());
  res.mask_ms_max = max_ms;
  res.mask_ms_open_string = open_string_ms;
  res.open_string_tokens_allowed = open_allowed;
  return res;
}

}  // namespace finmoe
