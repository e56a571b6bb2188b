// Constrained decoding: the regex DFA against std::regex (ECMAScript, full
// match), token bytes against the tokenizer, each state's token mask against
// a brute-force walk of every token through the DFA, and the output of a tiny
// random model under JSON-schema constraints (greedy and sampled, many
// sequences with different constraints in one running batch) parsed and
// validated against the schema by an independent validator; the OpenAI layer
// end to end: response_format, guided_*, tool_choice required / named.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>

#include "../model/test_util.h"
#include "finmoe/engine.h"
#include "serve/constraint.h"
#include "serve/json_schema.h"
#include "serve/openai_api.h"
#include "serve/regex_dfa.h"

namespace finmoe {
namespace {

using constrain::Dfa;
using ojson = nlohmann::ordered_json;

const Tokenizer& qwen3() {
  static Tokenizer t = Tokenizer::from_dir(std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3");
  return t;
}

// ---- regex DFA -------------------------------------------------------------

// Random strings over `alphabet`, and strings from random walks through the
// DFA over ASCII bytes (mostly in the language).
std::vector<std::string> samples(const Dfa& dfa, const std::string& alphabet, std::mt19937_64& rng,
                                 int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string s;
    const size_t len = rng() % 10;
    for (size_t k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
    out.push_back(s);
  }
  for (int i = 0; i < n / 2; ++i) {
    std::string s;
    int32_t st = dfa.start();
    for (int step = 0; step < 30; ++step) {
      if (dfa.accepting(st) && rng() % 3 == 0) break;
      std::vector<uint8_t> next;
      for (int b = 1; b < 128; ++b)
        if (dfa.next(st, uint8_t(b)) >= 0 && b != '\r') next.push_back(uint8_t(b));
      if (next.empty()) break;
      const uint8_t b = next[rng() % next.size()];
      s += char(b);
      st = dfa.next(st, b);
    }
    out.push_back(s);
  }
  return out;
}

TEST(RegexDfa, AgreesWithStdRegexOnRandomStrings) {
  const std::vector<std::string> patterns = {
      "abc",
      "a|b|cd",
      "(ab)*c?",
      "a+b{2,3}",
      "[a-c]{1,4}d",
      "[^a-c]x",
      "\\d{2,4}-\\w+",
      "(a|b)*abb",
      "x?y*z+",
      "(?:ab|ba){2}",
      "[\\-a]+",
      "a.b",
      "\\s+\\S",
      "(a|)+b",
      "[A-Z][a-z]{0,3}(_[0-9])?",
      "((a|b)(c|d))*",
      "a{3}",
      "a{2,}",
      "-?(0|[1-9][0-9]*)(\\.[0-9]+)?",
      "[^\"\\\\]*",
      "(a|ab)(c|bcd)(d*)",
      "[.]\\.",
      "\\W\\D",
      "(x|y|)z{0,2}",
      "^ab$",
      "a{0}b",
      "[a-]b",
      "\\x41\\u0042",
      "(?:a*)*b",
  };
  const std::string alphabet = "abcdxyzAZB_09-. \t\n\"\\]";
  std::mt19937_64 rng(7);
  int positives = 0;
  for (const auto& p : patterns) {
    SCOPED_TRACE(p);
    const Dfa dfa = constrain::compile_regex(p);
    const std::regex re(p, std::regex::ECMAScript);
    for (const auto& s : samples(dfa, alphabet, rng, 400)) {
      const bool want = std::regex_match(s, re);
      positives += want;
      ASSERT_EQ(dfa.matches(s), want) << "pattern /" << p << "/ on \"" << s << "\"";
    }
  }
  EXPECT_GT(positives, 3000);  // the walks do reach the languages
}

// Random patterns: each compiles or is a clean Error; where std::regex
// accepts the pattern too, the two agree on random strings.
TEST(RegexDfa, RandomPatternsCompileOrFailCleanlyAndAgreeWithStdRegex) {
  std::mt19937_64 rng(11);
  const std::string meta = "ab()[]{}|*+?.-^\\dw0123,";
  int compiled = 0, compared = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string p;
    const size_t len = 1 + rng() % 10;
    for (size_t k = 0; k < len; ++k) p += meta[rng() % meta.size()];
    std::optional<Dfa> dfa;
    try {
      dfa = constrain::compile_regex(p);
      ++compiled;
    } catch (const Error&) {
      continue;  // a clean rejection
    }
    std::regex re;
    try {
      re = std::regex(p, std::regex::ECMAScript);
    } catch (const std::regex_error&) {
      continue;
    }
    // ECMAScript corner cases finmoe reads differently by design: '^'/'$'
    // inside (finmoe rejects them), '[]' (empty in ECMAScript), '{' literals
    if (p.find("[]") != std::string::npos || p.find("[^]") != std::string::npos ||
        p.find('{') != std::string::npos)
      continue;
    for (const auto& s : samples(*dfa, "ab0123-,w", rng, 20)) {
      ASSERT_EQ(dfa->matches(s), std::regex_match(s, re))
          << "pattern /" << p << "/ on \"" << s << "\"";
      ++compared;
    }
  }
  EXPECT_GT(compiled, 500);
  EXPECT_GT(compared, 5000);
}

TEST(RegexDfa, WorksOnUtf8Bytes) {
  const Dfa dot = constrain::compile_regex("a.b");
  for (const char* s : {"aéb", "a€b", "a😀b", "axb"}) EXPECT_TRUE(dot.matches(s)) << s;
  EXPECT_FALSE(
      dot.matches("a\xC3"
                  "b"));  // half a character
  EXPECT_FALSE(dot.matches("a\nb"));
  EXPECT_FALSE(
      dot.matches("a\xED\xA0\x80"
                  "b"));  // an encoded surrogate is not UTF-8
  const Dfa neg = constrain::compile_regex("[^a]+");
  EXPECT_TRUE(neg.matches("€ü😀"));
  EXPECT_FALSE(neg.matches("€a"));
  const Dfa greek = constrain::compile_regex("[α-ω]{2}\\u20AC");
  EXPECT_TRUE(greek.matches("αω€"));
  EXPECT_FALSE(greek.matches("aω€"));
  EXPECT_FALSE(greek.matches("α€"));
  // every code point of a wide range, encoded, is accepted; its neighbours are not
  const Dfa wide = constrain::compile_regex("[\\u00e0-\\u30ff]");
  for (uint32_t c : {0xE0u, 0x7FFu, 0x800u, 0x1234u, 0x30FFu}) {
    std::string s;
    if (c < 0x800)
      s = {char(0xC0 | (c >> 6)), char(0x80 | (c & 0x3F))};
    else
      s = {char(0xE0 | (c >> 12)), char(0x80 | ((c >> 6) & 0x3F)), char(0x80 | (c & 0x3F))};
    EXPECT_TRUE(wide.matches(s)) << c;
  }
  EXPECT_FALSE(wide.matches("\xC3\x9F"));      // U+00DF
  EXPECT_FALSE(wide.matches("\xE3\x84\x80"));  // U+3100
}

TEST(RegexDfa, UnsupportedSyntaxAndOversizedPatternsAreClearErrors) {
  auto error_of = [](const std::string& p, constrain::AutomatonLimits l = {}) -> std::string {
    try {
      constrain::compile_regex(p, l);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of("(a)\\1").find("backreferences"), std::string::npos);
  EXPECT_NE(error_of("(?=a)b").find("(?:...)"), std::string::npos);
  EXPECT_NE(error_of("a\\b").find("word boundaries"), std::string::npos);
  EXPECT_NE(error_of("(ab").find("missing ')'"), std::string::npos);
  EXPECT_NE(error_of("ab)").find("unbalanced"), std::string::npos);
  EXPECT_NE(error_of("[b-a]").find("out of order"), std::string::npos);
  EXPECT_NE(error_of("*a").find("nothing to repeat"), std::string::npos);
  EXPECT_NE(error_of("a{3,1}").find("n < m"), std::string::npos);
  EXPECT_NE(error_of("[a-z]").find(""), std::string::npos);
  EXPECT_EQ(error_of("[a-z]"), "");
  constrain::AutomatonLimits small;
  small.max_dfa_states = 500;
  // the 12th symbol from the end: 2^12 DFA states
  EXPECT_NE(error_of("(a|b)*a(a|b){11}", small).find("more than 500 automaton states"),
            std::string::npos);
  EXPECT_EQ(error_of("(a|b)*a(a|b){5}", small), "");
}

TEST(RegexDfa, MinimizationMergesEquivalentStates) {
  // (a|b)*abb has a 4-state minimal DFA (the textbook example)
  EXPECT_EQ(constrain::compile_regex("(a|b)*abb").num_states(), 4);
  EXPECT_EQ(constrain::compile_regex("(aa|aa)*").num_states(), 2);
  const Dfa done = constrain::compile_regex("ab");
  const int32_t s = done.walk(done.start(), "ab");
  EXPECT_TRUE(done.finished(s));
  EXPECT_FALSE(done.finished(done.walk(done.start(), "a")));
}

// ---- token bytes and masks -------------------------------------------------

std::shared_ptr<const TokenVocab> full_vocab() {
  static auto v = std::make_shared<const TokenVocab>(qwen3().vocab_size(), qwen3());
  return v;
}

TEST(TokenVocab, TokenBytesConcatenateToTheText) {
  const auto& vocab = *full_vocab();
  for (const std::string text :
       {"{\"amount\": 12.5, \"currency\": \"EUR\"}", "价格上涨了 3%\n\t😀 ok",
        "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "  x  \r\n"}) {
    std::string joined;
    for (int32_t id : qwen3().encode(text)) {
      ASSERT_TRUE(vocab.bytes(id).has_value()) << id;
      joined += *vocab.bytes(id);
    }
    EXPECT_EQ(joined, text);
  }
  EXPECT_FALSE(
      vocab.bytes(*qwen3().eos_id()).has_value());  // special: never generated by a constraint
  EXPECT_EQ(*vocab.bytes(*qwen3().token_to_id("<tool_call>")),
            "<tool_call>");  // added, not special
}

// Llama-2 / Mistral style vocabularies: "▁" for a space and <0xHH> byte
// tokens; the text's first space is the one the normalizer prepends.
TEST(TokenVocab, MetaspaceAndByteFallbackTokensMapToTheirBytes) {
  for (const char* style : {"llama2_style", "metaspace_style"}) {
    SCOPED_TRACE(style);
    const auto tok = Tokenizer::from_dir(std::string(FINMOE_TEST_DATA_DIR) +
                                         "/tokenizer/byte_fallback/" + style);
    const TokenVocab vocab(tok.vocab_size(), tok);
    int byte_tokens = 0;
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      if (auto id = tok.token_to_id(name)) {
        ASSERT_TRUE(vocab.bytes(*id).has_value())
            << name << " decodes to "
            << nlohmann::json(tok.decode(std::vector<int32_t>{*id})).dump() << " special "
            << tok.is_special(*id);
        EXPECT_EQ(*vocab.bytes(*id), std::string(1, char(b))) << name;
        ++byte_tokens;
      }
    }
    EXPECT_EQ(byte_tokens, 256);
    for (const std::string text : {"hello world", "price: 12.5 €, 价格 😀", "{\"a\": [1, 2]}"}) {
      std::string joined;
      for (int32_t id : tok.encode(text)) joined += vocab.bytes(id).value_or("?");
      EXPECT_EQ(joined, " " + text);
    }
  }
}

ojson financial_schema() {
  return ojson::parse(R"({
    "type": "object",
    "properties": {
      "intent": {"enum": ["transfer", "balance", "pay_bill"]},
      "amount": {"type": "number", "minimum": 0},
      "currency": {"enum": ["USD", "EUR", "CNY"]},
      "account": {"type": "string", "pattern": "[A-Z]{2}[0-9]{6}"},
      "memo": {"type": "string", "maxLength": 12}
    },
    "required": ["intent", "amount", "currency", "account"]
  })");
}

TEST(TokenConstraint, MaskEqualsEveryTokenWalkedThroughTheDfa) {
  const auto vocab = full_vocab();
  const auto c = json_schema_constraint(financial_schema(), vocab);
  // states along a valid document and some random walks
  std::set<int32_t> states;
  const std::string doc =
      R"({"intent": "transfer", "amount": 12.5, "currency": "EUR", "account": "DE123456", "memo": "rent"})";
  for (size_t k = 0; k <= doc.size(); k += 3)
    states.insert(c->dfa().walk(c->start(), doc.substr(0, k)));
  ASSERT_FALSE(states.count(-1));
  std::mt19937_64 rng(3);
  for (int w = 0; w < 4; ++w) {
    int32_t s = c->start();
    for (int step = 0; step < 40; ++step) {
      std::vector<int32_t> next;
      for (int b = 0; b < 256; ++b)
        if (c->dfa().next(s, uint8_t(b)) >= 0) next.push_back(c->dfa().next(s, uint8_t(b)));
      if (next.empty()) break;
      s = next[rng() % next.size()];
      if (step % 7 == 0) states.insert(s);
    }
  }
  double total_ms = 0;
  int dense = 0, sparse = 0;
  for (int32_t s : states) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto mask = c->mask(s);
    total_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    (mask->bits.empty() ? sparse : dense) += 1;
    int64_t count = 0;
    for (int32_t id = 0; id < vocab->size(); ++id) {
      const auto& b = vocab->bytes(id);
      const bool brute = b && !b->empty() && c->dfa().walk(s, *b) >= 0;
      count += brute;
      ASSERT_EQ(mask->test(id), brute) << "state " << s << " token " << id;
    }
    EXPECT_EQ(mask->count, count);
  }
  EXPECT_GT(dense, 0);  // both forms of a mask were checked
  EXPECT_GT(sparse, 0);
  RecordProperty("mask_ms_per_state", std::to_string(total_ms / double(states.size())));
  std::printf("[ mask ] %zu states, %.2f ms per state (vocab %lld)\n", states.size(),
              total_ms / double(states.size()), static_cast<long long>(vocab->size()));

  // stop tokens pass only where the document is complete; the rest of the logits are masked
  const int32_t eos = *qwen3().eos_id();
  const int32_t mid = c->dfa().walk(c->start(), "{\"intent\": \"bal");
  std::vector<float> logits(size_t(vocab->size()) + 7, 1.0f);
  const int32_t stops[] = {eos};
  const int64_t left = c->apply(mid, logits, stops);
  EXPECT_EQ(left, c->mask(mid)->count);
  EXPECT_TRUE(std::isinf(logits[size_t(eos)]));
  EXPECT_TRUE(std::isinf(logits.back()));  // past the vocabulary
  EXPECT_EQ(logits[size_t(*qwen3().token_to_id("ance"))], 1.0f);
  const auto choice = choice_constraint({"yes", "no"}, vocab);
  const int32_t end = choice->dfa().walk(choice->start(), "yes");
  std::vector<float> z(size_t(vocab->size()), 1.0f);
  EXPECT_EQ(choice->apply(end, z, stops), 1);  // finished: only the stop token
  EXPECT_EQ(z[size_t(eos)], 1.0f);
  EXPECT_TRUE(choice->finished(end));
}

// ---- an independent validator ----------------------------------------------

int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

bool validate(const ojson& v, const ojson& s, const ojson& root, std::string& why);

bool validate_type(const ojson& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  // JSON Schema's integer is any number without a fraction (a 22-digit one parses as a double)
  if (t == "integer")
    return v.is_number_integer() || v.is_number_unsigned() ||
           (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "number") return v.is_number();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  return false;
}

bool validate(const ojson& v, const ojson& s, const ojson& root, std::string& why) {
  auto fail = [&](const std::string& w) {
    why = w + " at " + v.dump();
    return false;
  };
  if (s.is_boolean()) return s.get<bool>() || fail("false schema");
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    const std::string name = ref.substr(ref.rfind('/') + 1);
    return validate(
        v, ref.find("$defs") != std::string::npos ? root["$defs"][name] : root["definitions"][name],
        root, why);
  }
  if (s.contains("const") && v != s["const"]) return fail("const");
  if (s.contains("enum")) {
    bool any = false;
    for (const auto& e : s["enum"]) any = any || e == v;
    if (!any) return fail("enum");
  }
  if (s.contains("anyOf")) {
    bool any = false;
    for (const auto& sub : s["anyOf"]) {
      std::string w;
      any = any || validate(v, sub, root, w);
    }
    if (!any) return fail("anyOf");
  }
  if (s.contains("oneOf")) {
    int n = 0;
    for (const auto& sub : s["oneOf"]) {
      std::string w;
      n += validate(v, sub, root, w);
    }
    if (n != 1) return fail("oneOf matched " + std::to_string(n));
  }
  if (s.contains("type")) {
    bool ok = false;
    if (s["type"].is_string())
      ok = validate_type(v, s["type"]);
    else
      for (const auto& t : s["type"]) ok = ok || validate_type(v, t);
    if (!ok) return fail("type");
  }
  if (v.is_string()) {
    const std::string str = v.get<std::string>();
    if (s.contains("minLength") && code_points(str) < s["minLength"].get<int64_t>())
      return fail("minLength");
    if (s.contains("maxLength") && code_points(str) > s["maxLength"].get<int64_t>())
      return fail("maxLength");
    if (s.contains("pattern") &&
        !std::regex_match(str, std::regex(s["pattern"].get<std::string>())))
      return fail("pattern");
    if (s.value("format", "") == "date" &&
        !std::regex_match(str, std::regex("[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])")))
      return fail("format date");
  }
  if (v.is_number() && s.contains("minimum") && v.get<double>() < s["minimum"].get<double>())
    return fail("minimum");
  if (v.is_array()) {
    if (s.contains("minItems") && int64_t(v.size()) < s["minItems"].get<int64_t>())
      return fail("minItems");
    if (s.contains("maxItems") && int64_t(v.size()) > s["maxItems"].get<int64_t>())
      return fail("maxItems");
    if (s.contains("items"))
      for (const auto& e : v)
        if (!validate(e, s["items"], root, why)) return false;
  }
  if (v.is_object()) {
    if (s.contains("minProperties") && int64_t(v.size()) < s["minProperties"].get<int64_t>())
      return fail("minProperties");
    if (s.contains("maxProperties") && int64_t(v.size()) > s["maxProperties"].get<int64_t>())
      return fail("maxProperties");
    if (s.contains("required"))
      for (const auto& r : s["required"])
        if (!v.contains(r.get<std::string>())) return fail("required " + r.get<std::string>());
    const ojson props = s.value("properties", ojson::object());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (props.contains(it.key())) {
        if (!validate(*it, props[it.key()], root, why)) return false;
      } else if (s.contains("additionalProperties")) {
        if (!validate(*it, s["additionalProperties"], root, why)) return false;
      } else if (!props.empty()) {
        return fail("additional property " +
                    it.key());  // finmoe's default: additionalProperties false
      }
    }
  }
  return true;
}

// ---- generation under constraints ------------------------------------------

// tests/data/constraint/schemas.json: the slot-filling schema and 11 more
// (optional properties, arrays with bounds, lengths, anyOf / oneOf, $ref,
// type lists, formats, enums of mixed values, maps).
std::vector<ojson> test_schemas() {
  std::ifstream in(std::string(FINMOE_TEST_DATA_DIR) + "/constraint/schemas.json");
  std::vector<ojson> out;
  for (auto& s : ojson::parse(in)) out.push_back(s);
  return out;
}

Transformer tiny_model(int64_t vocab = 300, int64_t context = 128) {
  ModelConfig cfg = test::tiny_config("qwen2");
  cfg.vocab_size = vocab;
  cfg.max_position_embeddings = context;
  Transformer m(cfg, torch::kFloat32, torch::kCPU);
  init_random(m, 21);
  return m;
}

struct GenRun {
  std::vector<int32_t> tokens;
  std::string text, reason, error;
};

TEST(ConstrainedGeneration, EveryOutputIsValidJsonForItsSchemaInOneRunningBatch) {
  auto m = tiny_model();
  const Tokenizer& tok = qwen3();
  const auto vocab = std::make_shared<const TokenVocab>(300, tok);
  const auto schemas = test_schemas();
  ASSERT_GE(schemas.size(), 10u);
  EngineOptions o;
  o.kv_cache_bytes = 8192 * kv_cache_bytes_per_token(m.config(), 4);
  o.max_num_seqs = 64;
  Engine engine(m, &tok, o);
  std::map<uint64_t, GenRun> runs;
  std::map<uint64_t, size_t> schema_of;
  std::mutex mu;
  const int32_t quote = *tok.token_to_id("\"");
  // a stop token inside the tiny vocabulary, which is also an ordinary token:
  // it may end the output only where the output is complete
  constexpr int32_t kStop = 299;
  auto submit = [&](std::shared_ptr<const TokenConstraint> c, bool greedy, uint64_t seed,
                    size_t k) {
    RequestParams p;
    p.sampling.temperature = greedy ? 0.0 : 1.0;
    p.sampling.seed = seed;
    p.seed_given = true;
    p.sampling.constraint = std::move(c);
    p.max_tokens = 110;
    p.stop_token_ids = {kStop};
    if (!greedy) p.logit_bias = {{quote, 3.0f}};  // a random model closes strings rarely otherwise
    const auto id = engine.submit({1, 2, 3, int32_t(k % 7) + 4}, p, [&](const RequestOutput& out) {
      std::lock_guard lock(mu);
      GenRun& r = runs[out.request_id];
      r.tokens.insert(r.tokens.end(), out.token_ids.begin(), out.token_ids.end());
      r.text += out.text;
      if (out.finished) {
        r.reason = out.finish_reason;
        r.error = out.error;
      }
    });
    schema_of[id] = k;
  };
  for (size_t k = 0; k < schemas.size(); ++k) {
    const auto c = json_schema_constraint(schemas[k], vocab);
    submit(c, true, 0, k);
    for (uint64_t seed : {1, 2, 3}) submit(c, false, seed * 100 + k, k);
  }
  RequestParams free;  // an unconstrained neighbour
  free.max_tokens = 30;
  free.sampling.temperature = 1.0;
  const auto free_id = engine.submit({5, 6, 7}, free, {});
  engine.run_until_idle();
  ASSERT_EQ(runs.size(), schemas.size() * 4);
  EXPECT_GT(free_id, 0u);
  int complete = 0;
  for (const auto& [id, r] : runs) {
    const ojson& schema = schemas[schema_of[id]];
    SCOPED_TRACE(schema.dump() + "\noutput: " + r.text);
    ASSERT_NE(r.reason, "abort") << r.error;
    std::string bytes;
    for (size_t i = 0; i < r.tokens.size(); ++i)
      if (!(r.tokens[i] == kStop && i + 1 == r.tokens.size() && r.reason == "stop"))
        bytes += *vocab->bytes(r.tokens[i]);
    if (r.reason == "stop") EXPECT_EQ(bytes, r.text);  // the text is the constrained bytes
    // (a "length" end may cut a character: the text then ends in U+FFFD)
    const auto c = json_schema_constraint(schema, vocab);
    ASSERT_GE(c->dfa().walk(c->start(), r.text), 0);  // always a viable prefix
    if (r.reason == "length") continue;
    ++complete;
    const ojson v = ojson::parse(r.text, nullptr, false);
    ASSERT_FALSE(v.is_discarded()) << "not JSON";
    std::string why;
    EXPECT_TRUE(validate(v, schema, schema, why)) << why;
    if (v.is_object() && schema.contains("properties")) {  // properties in the schema's order
      std::vector<std::string> order;
      for (auto it = schema["properties"].begin(); it != schema["properties"].end(); ++it)
        if (v.contains(it.key())) order.push_back(it.key());
      std::vector<std::string> got;
      for (auto it = v.begin(); it != v.end(); ++it) got.push_back(it.key());
      EXPECT_EQ(got, order);
    }
  }
  EXPECT_GE(complete, int(runs.size() * 3 / 4));
}

// A constrained sequence preempted (its blocks freed, recomputed later)
// carries on from the same DFA state: the tokens equal those of a run with
// room for every sequence.
TEST(ConstrainedGeneration, PreemptionKeepsTheConstraintState) {
  auto m = tiny_model();
  const auto vocab = std::make_shared<const TokenVocab>(300, qwen3());
  const auto schemas = test_schemas();
  auto run = [&](int64_t cache_tokens, int64_t* preemptions) {
    EngineOptions o;
    o.block_size = 8;
    o.kv_cache_bytes = cache_tokens * kv_cache_bytes_per_token(m.config(), 4);
    Engine engine(m, &qwen3(), o);
    std::map<uint64_t, std::vector<int32_t>> out;
    for (size_t k = 0; k < 6; ++k) {
      RequestParams p;
      p.sampling.temperature = 1.0;
      p.sampling.seed = 40 + k;
      p.seed_given = true;
      p.sampling.constraint = json_schema_constraint(schemas[k], vocab);
      p.max_tokens = 60;
      p.logit_bias = {{*qwen3().token_to_id("\""), 3.0f}};
      engine.submit({1, 2, 3, int32_t(k) + 4}, p, [&out](const RequestOutput& r) {
        out[r.request_id].insert(out[r.request_id].end(), r.token_ids.begin(), r.token_ids.end());
      });
    }
    engine.run_until_idle();
    *preemptions = engine.stats().preemptions;
    return out;
  };
  int64_t roomy_preemptions = 0, tight_preemptions = 0;
  const auto roomy = run(4096, &roomy_preemptions);
  const auto tight = run(160, &tight_preemptions);
  EXPECT_EQ(roomy_preemptions, 0);
  EXPECT_GT(tight_preemptions, 0);
  EXPECT_EQ(tight, roomy);
}

TEST(ConstrainedGeneration, GeneratorHonoursTheConstraint) {
  auto m = tiny_model();
  const auto vocab = std::make_shared<const TokenVocab>(300, qwen3());
  Generator g(m, &qwen3());
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.sampling.constraint = regex_constraint("(buy|sell) [0-9]{1,3} [A-Z]{2,4}", vocab);
  o.max_new_tokens = 40;
  o.stop_token_ids = {*qwen3().eos_id()};
  const auto out = g.generate({{1, 2, 3}, {9, 8}}, o);
  const std::regex re("(buy|sell) [0-9]{1,3} [A-Z]{2,4}");
  for (const auto& r : out) {
    EXPECT_EQ(r.finish_reason, "stop") << r.text;
    EXPECT_TRUE(std::regex_match(r.text, re)) << r.text;
  }
}

TEST(JsonSchema, UnsupportedOrBadSchemasNameThePath) {
  const auto vocab = std::make_shared<const TokenVocab>(300, qwen3());
  auto path_of = [&](const char* schema) -> std::string {
    try {
      json_schema_constraint(ojson::parse(schema), vocab);
    } catch (const constrain::SchemaError& e) {
      return e.path();
    }
    return "(accepted)";
  };
  EXPECT_EQ(path_of(R"({"type": "object", "properties": {"x": {"type": "str"}}})"),
            "properties.x.type");
  EXPECT_EQ(path_of(R"({"type": "number", "maximum": 3})"), "maximum");
  EXPECT_EQ(
      path_of(R"j({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "(?=x)"}]})j"),
      "anyOf[1].pattern");
  EXPECT_EQ(
      path_of(
          R"({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"})"),
      "$defs.n.properties.next.$ref");
  EXPECT_EQ(path_of(R"({"$ref": "#/$defs/missing"})"), "$ref");
  EXPECT_EQ(path_of(R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})"),
            "required[0]");
  EXPECT_EQ(path_of(R"({"type": "string", "minLength": 3, "maxLength": 2})"), "maxLength");
  EXPECT_EQ(path_of(R"({"type": "string", "maxLength": 100000})"), "");  // over the state budget
  EXPECT_EQ(
      path_of(R"({"type": "string", "maxLength": 64, "description": "annotations are ignored"})"),
      "(accepted)");
}

TEST(JsonSchema, WhitespaceIsBoundedAndJsonObjectAcceptsNestedObjects) {
  const auto vocab = std::make_shared<const TokenVocab>(300, qwen3());
  const auto any = json_object_constraint(vocab);
  const Dfa& d = any->dfa();
  EXPECT_TRUE(d.matches(R"({"a": [1, {"b": null}], "c": "x"})"));
  EXPECT_TRUE(d.matches("{\n  \"a\": {\"b\": {\"c\": {}}}\n}"));  // 4 levels
  EXPECT_FALSE(d.matches(R"({"a": {"b": {"c": {"d": {}}}}})"));   // 5 levels: over the bound
  EXPECT_FALSE(d.matches(R"([1])"));                              // not an object
  EXPECT_FALSE(d.matches(R"({"a": 01})"));
  EXPECT_FALSE(
      d.matches("{\"a\":" + std::string(2, ' ') + "1}"));  // two spaces: one, or a newline + indent
  EXPECT_TRUE(d.matches("{\"a\":\n" + std::string(20, ' ') + "1}"));
  EXPECT_FALSE(d.matches("{\"a\":\n" + std::string(21, ' ') + "1}"));
  EXPECT_FALSE(d.matches(" {}"));  // none before the value
  const auto fin = json_schema_constraint(financial_schema(), vocab);
  EXPECT_TRUE(fin->dfa().matches(
      R"({"intent": "balance", "amount": 0, "currency": "CNY", "account": "AB000001"})"));
  EXPECT_FALSE(fin->dfa().matches(
      R"({"intent": "balance", "amount": -1, "currency": "CNY", "account": "AB000001"})"));
  EXPECT_FALSE(fin->dfa().matches(
      R"({"amount": 0, "intent": "balance", "currency": "CNY", "account": "AB000001"})"));
  EXPECT_FALSE(fin->dfa().matches(R"({"intent": "balance", "amount": 0, "currency": "CNY"})"));
  EXPECT_FALSE(fin->dfa().matches(
      R"({"intent": "balance", "amount": 0, "currency": "CNY", "account": "AB000001", "x": 1})"));
}

// Random documents valid against a schema, made without the compiler: the
// automaton must accept every one of them, compact and pretty-printed
// (completeness: the constraint does not forbid valid output within its
// documented bounds).
class Instances {
 public:
  Instances(const ojson& root, uint64_t seed) : root_(root), rng_(seed) {}

  ojson make(const ojson& s) {
    if (s.contains("$ref")) {
      const std::string ref = s["$ref"];
      return make(root_["$defs"][ref.substr(ref.rfind('/') + 1)]);
    }
    if (s.contains("const")) return s["const"];
    if (s.contains("enum")) return s["enum"][pick(s["enum"].size())];
    for (const char* k : {"anyOf", "oneOf"})
      if (s.contains(k)) return make(s[k][pick(s[k].size())]);
    std::string type = "any";
    if (s.contains("type"))
      type = s["type"].is_string() ? s["type"].get<std::string>()
                                   : s["type"][pick(s["type"].size())].get<std::string>();
    if (type == "any") {
      const char* kinds[] = {"string", "integer", "number", "boolean", "null"};
      type = kinds[pick(5)];
    }
    const bool nonneg = s.contains("minimum");
    if (type == "null") return nullptr;
    if (type == "boolean") return pick(2) == 0;
    if (type == "integer") {
      const int64_t v = int64_t(rng_() % 2000001) - 1000000;
      return nonneg ? std::abs(v) : v;
    }
    if (type == "number") {
      const double mags[] = {0.0, 1.5, 123.25, 1e-7, 6.02e23, 99999.875};
      const double v = mags[pick(6)] * (pick(2) && !nonneg ? -1 : 1);
      return v;
    }
    if (type == "string") return string(s);
    if (type == "array") {
      const size_t lo = s.value("minItems", 0), hi = s.value("maxItems", 4);
      ojson a = ojson::array();
      const size_t n = lo + pick(hi - lo + 1);
      for (size_t i = 0; i < n; ++i) a.push_back(make(s.value("items", ojson::object())));
      return a;
    }
    ojson o = ojson::object();
    if (s.contains("properties")) {
      std::set<std::string> req;
      for (const auto& r : s.value("required", ojson::array())) req.insert(r.get<std::string>());
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it)
        if (req.count(it.key()) || pick(2)) o[it.key()] = make(*it);
    } else {
      const size_t n = pick(size_t(s.value("maxProperties", 3)) + 1);
      for (size_t i = 0; i < n; ++i)
        o["k" + std::to_string(i) + "\"é\n"] =
            make(s.value("additionalProperties", ojson::object()));
    }
    return o;
  }

 private:
  size_t pick(size_t n) { return n ? size_t(rng_() % n) : 0; }

  ojson string(const ojson& s) {
    auto digits = [&](int n) {
      std::string d;
      for (int i = 0; i < n; ++i) d += char('0' + pick(10));
      return d;
    };
    auto upper = [&](int n) {
      std::string d;
      for (int i = 0; i < n; ++i) d += char('A' + pick(26));
      return d;
    };
    const std::string pattern = s.value("pattern", "");
    if (pattern == "[A-Z]{2}[0-9]{6}") return upper(2) + digits(6);
    if (pattern == "[A-Z]{1,5}") return upper(1 + int(pick(5)));
    if (pattern == "[a-f0-9]{4}") {
      std::string d;
      for (int i = 0; i < 4; ++i) d += "abcdef0123456789"[pick(16)];
      return d;
    }
    if (!pattern.empty()) throw std::runtime_error("no generator for pattern " + pattern);
    if (s.value("format", "") == "date")
      return digits(4) + "-" +
             (pick(2) ? "0" + std::to_string(1 + pick(9)) : "1" + std::to_string(pick(3))) + "-" +
             std::to_string(10 + pick(19));
    // characters a JSON string must escape, multi-byte ones and plain ASCII
    const char* pieces[] = {"a",  "Z",    "7", " ", "\"", "\\", "\n",
                            "\t", "\x01", "é", "€", "😀",  "/",  "{"};
    const size_t lo = s.value("minLength", 0), hi = s.value("maxLength", 8);
    const size_t n = lo + pick(hi - lo + 1);
    std::string out;
    for (size_t i = 0; i < n; ++i) out += pieces[pick(14)];
    return out;
  }

  const ojson& root_;
  std::mt19937_64 rng_;
};

TEST(JsonSchema, AcceptsEveryValidDocumentCompactOrPretty) {
  const auto vocab = std::make_shared<const TokenVocab>(300, qwen3());
  int checked = 0;
  for (const ojson& schema : test_schemas()) {
    const auto c = json_schema_constraint(schema, vocab);
    Instances gen(schema, 17);
    for (int i = 0; i < 40; ++i) {
      const ojson doc = gen.make(schema);
      std::string why;
      ASSERT_TRUE(validate(doc, schema, schema, why))
          << "the generator made an invalid document: " << why;
      for (const std::string& text : {doc.dump(), doc.dump(2), doc.dump(1, '\t')}) {
        EXPECT_TRUE(c->dfa().matches(text)) << schema.dump() << "\nrejected: " << text;
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 1000);
}

// Verdicts from tests/ref/make_constraint_reference.py on random valid
// documents of each schema and on mutations of them: Python's json + a
// validator ("valid") and xgrammar, vLLM's engine ("xgrammar"). finmoe must
// accept exactly the valid texts, so also every text xgrammar accepts (it
// rejects some valid ones: see the script).
TEST(JsonSchema, AgreesWithPythonAndXgrammar) {
  const auto vocab = std::make_shared<const TokenVocab>(300, qwen3());
  const auto schemas = test_schemas();
  std::vector<std::shared_ptr<const TokenConstraint>> cs;
  for (const auto& s : schemas) cs.push_back(json_schema_constraint(s, vocab));
  std::ifstream in(std::string(FINMOE_TEST_DATA_DIR) + "/constraint/xgrammar_ref.jsonl");
  std::string line;
  int lines = 0, valid = 0, invalid = 0, xgrammar_stricter = 0;
  while (std::getline(in, line)) {
    const auto r = nlohmann::json::parse(line);
    const size_t k = r["schema"];
    const std::string text = r["text"];
    const bool ok = r["valid"], xg = r["xgrammar"];
    const bool got = cs.at(k)->dfa().matches(text);
    EXPECT_EQ(got, ok) << schemas[k].dump() << "\ntext: " << text;
    if (xg) EXPECT_TRUE(got) << "xgrammar accepts, finmoe does not: " << text;
    ++lines;
    (ok ? valid : invalid) += 1;
    xgrammar_stricter += ok && !xg;
  }
  EXPECT_GT(valid, 300);
  EXPECT_GT(invalid, 200);
  std::printf("[ ref ] %d texts: %d valid, %d invalid; xgrammar rejects %d of the valid ones\n",
              lines, valid, invalid, xgrammar_stricter);
}

// ---- the OpenAI layer end to end -------------------------------------------

struct Served {
  Transformer model;
  Engine engine;
  serve::ApiContext ctx;
  Served()
      : model(tiny_model(qwen3().vocab_size(), 2048)), engine(model, &qwen3(), [&] {
          EngineOptions o;
          o.kv_cache_bytes = 8192 * kv_cache_bytes_per_token(model.config(), 4);
          return o;
        }()) {
    ctx.model_name = "tiny";
    ctx.tokenizer = &qwen3();
    ctx.eos_token_ids = {151645, 151643};
    ctx.max_model_len = 2048;
    ctx.vocab_size = qwen3().vocab_size();
    ctx.constraints = std::make_shared<ConstraintFactory>(qwen3().vocab_size(), &qwen3());
  }

  // The response body of a request run through the engine.
  nlohmann::json run(const std::string& body) {
    const auto req = serve::parse_chat_request(body, ctx);
    serve::ResponseBuilder b(req, ctx, "id", 1);
    for (int64_t c = 0; c < req.num_choices(); ++c)
      engine.submit(req.prompts[size_t(c / req.n)], req.choice_params(c),
                    [&b, c](const RequestOutput& out) { b.add(c, out); });
    engine.run_until_idle();
    EXPECT_TRUE(b.all_finished());
    return b.response();
  }
};

Served& served() {
  static Served s;
  return s;
}

std::string quote_bias() {  // the tiny random model rarely closes a string otherwise
  return "\"logit_bias\": {\"" + std::to_string(*qwen3().token_to_id("\"")) + "\": 8}";
}

TEST(ConstrainedApi, ResponseFormatJsonSchemaGivesValidJson) {
  const ojson schema = financial_schema();
  const std::string body =
      R"({"messages": [{"role": "user", "content": "Send 20 EUR to DE123456"}], "n": 3, "seed": 5, "max_tokens": 300, )" +
      quote_bias() +
      R"(, "response_format": {"type": "json_schema", "json_schema": {"name": "slots", "strict": true, "schema": )" +
      schema.dump() + "}}}";
  const auto resp = served().run(body);
  int ok = 0;
  for (const auto& ch : resp["choices"]) {
    const std::string text = ch["message"]["content"];
    SCOPED_TRACE(text);
    if (ch["finish_reason"] == "length") continue;
    EXPECT_EQ(ch["finish_reason"], "stop");
    const ojson v = ojson::parse(text, nullptr, false);
    ASSERT_FALSE(v.is_discarded());
    std::string why;
    EXPECT_TRUE(validate(v, schema, schema, why)) << why;
    ++ok;
  }
  EXPECT_GE(ok, 2);
}

TEST(ConstrainedApi, GuidedChoiceRegexAndJsonObject) {
  auto& s = served();
  const std::string msgs =
      R"("messages": [{"role": "user", "content": "Up or down?"}], "seed": 1, "max_tokens": 200, )";
  auto resp = s.run("{" + msgs + R"("n": 4, "guided_choice": ["up", "down", "flat"]})");
  for (const auto& ch : resp["choices"]) {
    const std::string t = ch["message"]["content"];
    EXPECT_TRUE(t == "up" || t == "down" || t == "flat") << t;
    EXPECT_EQ(ch["finish_reason"], "stop");
  }
  resp = s.run("{" + msgs + R"("n": 2, "guided_regex": "[A-Z]{3}/[A-Z]{3} [0-9]\\.[0-9]{4}"})");
  for (const auto& ch : resp["choices"])
    EXPECT_TRUE(std::regex_match(ch["message"]["content"].get<std::string>(),
                                 std::regex("[A-Z]{3}/[A-Z]{3} [0-9]\\.[0-9]{4}")))
        << ch["message"]["content"];
  resp =
      s.run("{" + msgs + quote_bias() + R"(, "n": 2, "response_format": {"type": "json_object"}})");
  int objects = 0;
  for (const auto& ch : resp["choices"]) {
    objects += ch["finish_reason"] == "stop";
    if (ch["finish_reason"] == "length") continue;
    const auto v =
        nlohmann::json::parse(ch["message"]["content"].get<std::string>(), nullptr, false);
    EXPECT_TRUE(v.is_object()) << ch["message"]["content"];
  }
  EXPECT_GE(objects, 1);
}

TEST(ConstrainedApi, ToolChoiceRequiredAndNamedGiveToolCalls) {
  auto& s = served();
  const ojson tools = ojson::parse(R"([
    {"type": "function", "function": {"name": "get_balance", "parameters": {"type": "object",
      "properties": {"account": {"type": "string", "pattern": "[A-Z]{2}[0-9]{4}"}}, "required": ["account"]}}},
    {"type": "function", "function": {"name": "convert", "parameters": {"type": "object",
      "properties": {"amount": {"type": "number"}, "to": {"enum": ["USD", "EUR"]}}, "required": ["amount", "to"]}}}
  ])");
  const std::string base =
      R"({"messages": [{"role": "user", "content": "Balance of AB1234?"}], "seed": 3, "max_tokens": 300, "tools": )" +
      tools.dump() + ", ";
  for (const std::string choice :
       {R"("required")", R"({"type": "function", "function": {"name": "convert"}})",
        R"("required", "parallel_tool_calls": false)"}) {
    SCOPED_TRACE(choice);
    const bool one = choice.find("parallel") != std::string::npos;
    const auto resp = s.run(base + R"("n": 3, "tool_choice": )" + choice + "}");
    int complete = 0;
    for (const auto& ch : resp["choices"]) complete += ch["finish_reason"] != "length";
    EXPECT_GE(complete, 1);
    for (const auto& ch : resp["choices"]) {
      const auto& msg = ch["message"];
      SCOPED_TRACE(msg.dump());
      if (ch["finish_reason"] == "length") continue;
      EXPECT_EQ(ch["finish_reason"], "tool_calls");
      ASSERT_GE(msg["tool_calls"].size(), 1u);
      if (one) EXPECT_EQ(msg["tool_calls"].size(), 1u);
      EXPECT_TRUE(msg["content"].is_null());  // nothing but calls
      for (const auto& call : msg["tool_calls"]) {
        const std::string name = call["function"]["name"];
        if (choice.find("convert") != std::string::npos) EXPECT_EQ(name, "convert");
        const ojson args = ojson::parse(call["function"]["arguments"].get<std::string>());
        const ojson& params = tools[name == "get_balance" ? 0 : 1]["function"]["parameters"];
        std::string why;
        EXPECT_TRUE(validate(args, params, params, why)) << why;
      }
    }
  }
}

TEST(ConstrainedApi, BadConstraintsAre400sNamingTheField) {
  auto& s = served();
  auto param_of = [&](const std::string& field) -> std::string {
    try {
      serve::parse_chat_request(
          R"({"messages": [{"role": "user", "content": "x"}], )" + field + "}", s.ctx);
    } catch (const serve::ApiError& e) {
      EXPECT_EQ(e.status(), 400);
      return e.param();
    }
    return "(accepted)";
  };
  EXPECT_EQ(
      param_of(
          R"("response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"x": {"type": "strng"}}}}})"),
      "response_format.json_schema.schema.properties.x.type");
  EXPECT_EQ(param_of(R"("response_format": {"type": "json_schema", "json_schema": {"name": "x"}})"),
            "response_format.json_schema.schema");
  EXPECT_EQ(param_of(R"("response_format": {"type": "yaml"})"), "response_format.type");
  EXPECT_EQ(param_of(R"("guided_regex": "(a")"), "guided_regex");
  EXPECT_EQ(param_of(R"("guided_json": "{not json")"), "guided_json");
  EXPECT_EQ(param_of(R"("guided_json": {"type": "integer", "multipleOf": 5})"),
            "guided_json.multipleOf");
  EXPECT_EQ(param_of(R"("guided_choice": [])"), "guided_choice");
  EXPECT_EQ(param_of(R"("guided_choice": ["a"], "guided_regex": "a")"),
            "guided_choice");  // the second one read
  EXPECT_EQ(
      param_of(
          R"("tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"not": {}}}}}}], "tool_choice": "required")"),
      "tools[0].function.parameters.properties.a.not");
  EXPECT_EQ(
      param_of(
          R"("tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}})"),
      "tool_choice.function.name");
  EXPECT_EQ(param_of(R"("tool_choice": "required")"), "tool_choice");
  EXPECT_EQ(param_of(R"("guided_json": {"type": "integer"})"), "(accepted)");
}

}  // namespace
}  // namespace finmoe
