#include "serve/openai_api.h"
#include "finmoe/chat_template.h"
#include "finmoe/config.h"
#include "serve/constraint.h"
#include "serve/tool_calls.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <cmath>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

namespace finmoe::serve {
namespace {

std::string default_type(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 500: return "internal_server_error";
    case 503: return "service_unavailable_error";
    default: return "invalid_request_error";
  }
}

json null_or(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

std::string type_name(const json& v) {
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  if (v.is_object()) return "object";
  return "null";
}

std::string num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

ApiError invalid(const std::string& param, const std::string& message, const std::string& code = "") {
  return ApiError(400, message, param, code);
}

ApiError wrong_type(const std::string& param, const std::string& expected, const json& got) {
  return invalid(param, "'" + param + "' must be " + expected + ", got " + type_name(got) + " (" +
                            dump_json(got).substr(0, 60) + ")");
}

// Reads the fields of one request object. Every name read is "known"; the
// rest are rejected as OpenAI does ("Unrecognized request argument").
class Fields {
 public:
  explicit Fields(const json& j) : j_(j) {}

  // The value of `name`, or nullptr when absent or null (OpenAI treats an
  // explicit null as "not given").
  const json* get(const std::string& name) {
    known_.insert(name);
    auto it = j_.find(name);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  std::optional<bool> boolean(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw wrong_type(name, "a boolean", *v);
    return v->get<bool>();
  }

  std::optional<std::string> string(const std::string& name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw wrong_type(name, "a string", *v);
    return v->get<std::string>();
  }

  // A number in [lo, hi] (open ends where asked).
  std::optional<double> number(const std::string& name, double lo, double hi, bool lo_open = false) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw wrong_type(name, "a number", *v);
    const double x = v->get<double>();
    if (!std::isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
      throw invalid(name, "'" + name + "' must be in " + (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) +
                              "], got " + num(x));
    return x;
  }

  // An integer in [lo, hi]; 3.0 counts as an integer, 3.5 does not.
  std::optional<int64_t> integer(const std::string& name, int64_t lo, int64_t hi) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    int64_t x = 0;
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      x = u > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(u);
    } else if (v->is_number_integer()) {
      x = v->get<int64_t>();
    } else if (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
               std::fabs(v->get<double>()) < 9e18) {
      x = int64_t(v->get<double>());
    } else {
      throw wrong_type(name, "an integer", *v);
    }
    if (x < lo || x > hi)
      throw invalid(name, "'" + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                              "], got " + std::to_string(x));
    return x;
  }

  // Fields accepted for compatibility and ignored (user, metadata, ...).
  void ignore(std::initializer_list<const char*> names) {
    for (const char* n : names) known_.insert(n);
  }

  // A vLLM field finmoe accepts and does not act on: its type is checked
  // (`expected` as type_name() spells it; "number" also takes integers), and
  // when given with a value other than vLLM's default it is recorded.
  void accept_ignored(const std::string& name, const std::string& expected, const json& default_value = nullptr) {
    const json* v = get(name);
    if (!v) return;
    const std::string got = type_name(*v);
    if (got != expected && !(expected == "number" && got == "integer"))
      throw wrong_type(name, (expected == "integer" || expected == "array" || expected == "object" ? "an " : "a ") +
                                 expected, *v);
    if (*v != default_value) ignored_.push_back(name);
  }
  const std::vector<std::string>& ignored() const { return ignored_; }

  // Options finmoe does not implement: accepted only as null / empty / off.
  void unsupported_unless_empty(const std::string& name) {
    const json* v = get(name);
    if (v && !v->empty()) throw invalid(name, "'" + name + "' is not supported by this server", "unsupported_parameter");
  }

  void reject_unknown() const {
    for (auto it = j_.begin(); it != j_.end(); ++it)
      if (!known_.count(it.key()))
        throw invalid(it.key(), "Unrecognized request argument supplied: " + it.key(), "unrecognized_argument");
  }

 private:
  const json& j_;
  std::set<std::string> known_;
  std::vector<std::string> ignored_;
};

json parse_body(std::string_view body) {
  json j;
  try {
    j = parse_json(body, "the request body");
  } catch (const JsonError& e) {
    throw ApiError(400,
                   "We could not parse the JSON body of your request: " + std::string(e.what()) +
                       ". The body must be one JSON object, nested at most " +
                       std::to_string(kMaxJsonDepth) + " levels.",
                   "", "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400, "The request body must be a JSON object, got " + type_name(j), "", "invalid_json");
  return j;
}

// A request over one of the server's RequestLimits.
ApiError over_limit(const std::string& param, const std::string& things, int64_t got, int64_t limit) {
  return invalid(param, "'" + param + "' holds " + std::to_string(got) + " " + things + "; this server accepts at most " +
                            std::to_string(limit) + " per request",
                 "limit_exceeded");
}

ApiError too_many_choices(const ApiRequest& r, int64_t limit) {
  return invalid("n", "The request asks for " + std::to_string(r.num_choices()) + " choices (" +
                          std::to_string(r.prompts.size()) + " prompt(s) x n = " + std::to_string(r.n) +
                          "); this server accepts at most " + std::to_string(limit) + " per request",
                 "limit_exceeded");
}

std::vector<std::string> parse_stop(Fields& f, const RequestLimits& limits) {
  const json* v = f.get("stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (int64_t(v->size()) > limits.max_stop) throw over_limit("stop", "strings", int64_t(v->size()), limits.max_stop);
    for (size_t i = 0; i < v->size(); ++i) {
      if (!(*v)[i].is_string()) throw wrong_type("stop[" + std::to_string(i) + "]", "a string", (*v)[i]);
      out.push_back((*v)[i].get<std::string>());
    }
  } else {
    throw wrong_type("stop", "a string or an array of strings", *v);
  }
  int64_t bytes = 0;
  for (const auto& s : out) {
    if (s.empty()) throw invalid("stop", "'stop' strings must not be empty");
    bytes += int64_t(s.size());
  }
  if (bytes > limits.max_stop_bytes)
    throw invalid("stop", "'stop' strings total " + std::to_string(bytes) + " bytes; this server accepts at most " +
                              std::to_string(limits.max_stop_bytes) + " per request",
                  "limit_exceeded");
  return out;
}

// {"token id": bias in [-100, 100]} (OpenAI's form: keys are strings).
std::vector<std::pair<int32_t, float>> parse_logit_bias(Fields& f, const ApiContext& ctx) {
  const json* v = f.get("logit_bias");
  if (!v) return {};
  if (!v->is_object()) throw wrong_type("logit_bias", "an object mapping token ids to biases", *v);
  if (int64_t(v->size()) > ctx.limits.max_logit_bias)
    throw over_limit("logit_bias", "entries", int64_t(v->size()), ctx.limits.max_logit_bias);
  std::vector<std::pair<int32_t, float>> out;
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::string& key = it.key();
    const bool digits = !key.empty() && key.size() <= 10 &&
                        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    const int64_t id = digits ? std::stoll(key) : -1;
    if (id < 0 || id >= ctx.vocab_size)
      throw invalid("logit_bias", "'logit_bias' keys must be token ids in [0, " + std::to_string(ctx.vocab_size) +
                                      "), got '" + key.substr(0, 40) + "'");
    if (!it->is_number()) throw wrong_type("logit_bias", "an object whose values are numbers", *it);
    const double bias = it->get<double>();
    if (!(bias >= -100 && bias <= 100))
      throw invalid("logit_bias", "'logit_bias' values must be in [-100, 100], got " + num(bias) + " for token " + key);
    out.emplace_back(int32_t(id), float(bias));
  }
  return out;
}

// Token ids of a JSON array of integers, or nullopt if it is not one.
std::optional<std::vector<int32_t>> as_ids(const json& v) {
  if (!v.is_array() || v.empty()) return std::nullopt;
  std::vector<int32_t> ids;
  for (const auto& e : v) {
    if (!e.is_number_integer() && !e.is_number_unsigned()) return std::nullopt;
    const int64_t x = e.is_number_unsigned() ? int64_t(std::min<uint64_t>(e.get<uint64_t>(), INT32_MAX)) : e.get<int64_t>();
    ids.push_back(int32_t(std::clamp<int64_t>(x, INT32_MIN, INT32_MAX)));
  }
  return ids;
}

void check_token_ids(const std::vector<int32_t>& ids, const ApiContext& ctx, const std::string& param) {
  for (int32_t id : ids)
    if (id < 0 || id >= ctx.vocab_size)
      throw invalid(param, "'" + param + "' holds token id " + std::to_string(id) + ", outside the vocabulary [0, " +
                               std::to_string(ctx.vocab_size) + ")");
}

// The model a request names: (its name, its serving adapter id; 0 = the base).
std::pair<std::string, int32_t> check_model(Fields& f, const ApiContext& ctx) {
  const auto m = f.string("model");
  if (!m || *m == ctx.model_name) return {ctx.model_name, 0};
  if (auto it = ctx.adapters.find(*m); it != ctx.adapters.end()) return {*m, it->second};
  std::string served = "`" + ctx.model_name + "`";
  for (const auto& [name, id] : ctx.adapters) served += ", `" + name + "`";
  throw ApiError(400, "The model `" + *m + "` does not exist. This server serves " + served + ".", "model",
                 "model_not_found");
}

// The fields both endpoints share, into `p` and `r`. `lp_top` is the number
// of top logprobs asked (or -1), set by the caller.
RequestParams parse_common(Fields& f, ApiRequest& r, const ApiContext& ctx) {
  int32_t adapter = 0;
  std::tie(r.model, adapter) = check_model(f, ctx);
  r.stream = f.boolean("stream").value_or(false);
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) throw wrong_type("stream_options", "an object", *so);
    if (!r.stream) throw invalid("stream_options", "'stream_options' is only allowed when 'stream' is true");
    for (auto it = so->begin(); it != so->end(); ++it) {
      if (it.key() == "include_usage") {
        if (it->is_null()) continue;
        if (!it->is_boolean()) throw wrong_type("stream_options.include_usage", "a boolean", *it);
        r.include_usage = it->get<bool>();
      } else if (it.key() == "continuous_usage_stats") {  // vLLM's: usage in every chunk
        if (it->is_null()) continue;
        if (!it->is_boolean()) throw wrong_type("stream_options.continuous_usage_stats", "a boolean", *it);
        r.continuous_usage = it->get<bool>();
      } else {
        throw invalid("stream_options." + it.key(), "Unrecognized stream option: " + it.key(),
                      "unrecognized_argument");
      }
    }
  }
  r.continuous_usage = r.continuous_usage && r.include_usage;  // vLLM: both are needed
  r.n = f.integer("n", 1, ctx.limits.max_n).value_or(1);

  RequestParams p;
  p.adapter = adapter;
  p.sampling = ctx.default_sampling;
  if (auto v = f.number("temperature", 0, 2)) p.sampling.temperature = *v;
  if (auto v = f.number("top_p", 0, 1, /*lo_open=*/true)) p.sampling.top_p = *v;
  if (auto v = f.integer("top_k", -1, INT32_MAX)) p.sampling.top_k = *v <= 0 ? 0 : *v;  // -1 / 0 = off (vLLM)
  if (auto v = f.number("min_p", 0, 1)) p.sampling.min_p = *v;
  if (auto v = f.number("repetition_penalty", 0, 1e6, /*lo_open=*/true)) p.sampling.repetition_penalty = *v;
  if (auto v = f.number("presence_penalty", -2, 2)) p.presence_penalty = *v;
  if (auto v = f.number("frequency_penalty", -2, 2)) p.frequency_penalty = *v;
  if (auto v = f.integer("seed", INT64_MIN, INT64_MAX)) {
    p.sampling.seed = uint64_t(*v);
    p.seed_given = true;
  }
  p.stop_strings = parse_stop(f, ctx.limits);
  p.include_stop_str_in_output = f.boolean("include_stop_str_in_output").value_or(false);
  if (!f.boolean("ignore_eos").value_or(false)) p.stop_token_ids = ctx.eos_token_ids;
  if (const json* v = f.get("stop_token_ids")) {  // vLLM's: stop tokens besides eos (even with ignore_eos)
    const auto ids = as_ids(*v);
    if (!ids && !(v->is_array() && v->empty())) throw wrong_type("stop_token_ids", "an array of token ids", *v);
    if (ids) {
      check_token_ids(*ids, ctx, "stop_token_ids");
      for (int32_t id : *ids)
        if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), id) == p.stop_token_ids.end())
          p.stop_token_ids.push_back(id);
    }
  }
  p.min_tokens = f.integer("min_tokens", 0, INT32_MAX).value_or(0);
  p.skip_special_tokens = f.boolean("skip_special_tokens").value_or(true);
  p.logit_bias = parse_logit_bias(f, ctx);
  f.ignore({"user", "metadata", "store", "service_tier"});
  // vLLM's other sampling and request fields: accepted, listed in the response's
  // X-Finmoe-Ignored-Fields header when given with a value other than vLLM's default
  f.accept_ignored("spaces_between_special_tokens", "boolean", true);
  f.accept_ignored("use_beam_search", "boolean", false);
  f.accept_ignored("length_penalty", "number", 1.0);
  f.accept_ignored("truncate_prompt_tokens", "integer");
  f.accept_ignored("prompt_logprobs", "integer");
  f.accept_ignored("allowed_token_ids", "array");
  f.accept_ignored("bad_words", "array");
  f.accept_ignored("priority", "integer", 0);
  f.accept_ignored("request_id", "string");
  f.accept_ignored("return_tokens_as_token_ids", "boolean", false);
  f.accept_ignored("return_token_ids", "boolean", false);
  f.accept_ignored("cache_salt", "string");
  f.accept_ignored("logits_processors", "array");
  f.accept_ignored("kv_transfer_params", "object");
  f.accept_ignored("vllm_xargs", "object");
  return p;
}

// Prompt length against the context, and max_tokens for this prompt.
RequestParams fit_prompt(const RequestParams& base, const std::vector<int32_t>& prompt,
                         std::optional<int64_t> max_tokens, const std::string& max_tokens_param,
                         int64_t default_max_tokens, const ApiContext& ctx, const std::string& prompt_param) {
  const auto P = int64_t(prompt.size());
  const int64_t L = ctx.max_model_len;
  const std::string what = prompt_param == "messages" ? "messages" : "prompt";
  if (P == 0) throw invalid(prompt_param, "'" + prompt_param + "' must not be empty");
  if (P >= L)
    throw invalid(prompt_param,
                  "This model's maximum context length is " + std::to_string(L) + " tokens. However, your " + what +
                      " resulted in " + std::to_string(P) + " tokens, which leaves no room for a completion. "
                      "Please reduce the length of the " + what + ".",
                  "context_length_exceeded");
  if (ctx.kv_cache_tokens > 0 && P >= ctx.kv_cache_tokens)
    throw invalid(prompt_param,
                  "The server's KV cache holds " + std::to_string(ctx.kv_cache_tokens) + " tokens. However, your " +
                      what + " resulted in " + std::to_string(P) + " tokens, which leaves no room for a completion. "
                      "Please reduce the length of the " + what + ".",
                  "context_length_exceeded");
  RequestParams p = base;
  if (max_tokens) {
    // the prompt fits: the completion's length is what is too long (vLLM names max_tokens too)
    if (P + *max_tokens > L)
      throw invalid(max_tokens_param,
                    "This model's maximum context length is " + std::to_string(L) + " tokens. However, you requested " +
                        std::to_string(P + *max_tokens) + " tokens (" + std::to_string(P) + " in the " + what + ", " +
                        std::to_string(*max_tokens) + " in the completion). Please reduce the length of the " + what +
                        " or completion.",
                    "context_length_exceeded");
    p.max_tokens = *max_tokens;
  } else {
    p.max_tokens = std::min(default_max_tokens, L - P);
  }
  if (p.min_tokens > p.max_tokens)
    throw invalid("min_tokens", "'min_tokens' (" + std::to_string(p.min_tokens) + ") must not exceed the completion's " +
                                    "max_tokens (" + std::to_string(p.max_tokens) + ")");
  return p;
}

std::string message_content(const json& m, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) throw wrong_type(where, "a string or an array of content parts", *it);
  // text parts joined by newlines (as vLLM)
  std::string out;
  for (size_t k = 0; k < it->size(); ++k) {
    const json& part = (*it)[k];
    const std::string pw = where + "[" + std::to_string(k) + "]";
    if (!part.is_object()) throw wrong_type(pw, "an object", part);
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) throw invalid(pw + ".type", "'" + pw + ".type' must be a string");
    if (*type != "text")
      throw invalid(pw + ".type", "content parts of type '" + type->get<std::string>() +
                                      "' are not supported (text only)", "unsupported_parameter");
    auto text = part.find("text");
    if (text == part.end() || !text->is_string()) throw invalid(pw + ".text", "'" + pw + ".text' must be a string");
    if (k) out += "\n";
    out += text->get<std::string>();
  }
  return out;
}

// The messages as plain turns (for the built-in templates) and as the JSON the
// model's own template sees (key order of the request kept, tool calls'
// argument strings parsed into objects as vLLM does).
struct ParsedMessages {
  std::vector<ChatMessage> plain;
  nlohmann::ordered_json templ = nlohmann::ordered_json::array();
  bool uses_tools = false;  // a tool turn or an assistant turn with tool_calls
};

void check_tool_calls(const json& calls, const std::string& where) {
  if (!calls.is_array()) throw wrong_type(where, "an array", calls);
  for (size_t k = 0; k < calls.size(); ++k) {
    const std::string w = where + "[" + std::to_string(k) + "]";
    const json& c = calls[k];
    if (!c.is_object()) throw wrong_type(w, "an object", c);
    auto fn = c.find("function");
    if (fn == c.end() || !fn->is_object()) throw invalid(w + ".function", "'" + w + ".function' must be an object");
    auto name = fn->find("name");
    if (name == fn->end() || !name->is_string())
      throw invalid(w + ".function.name", "'" + w + ".function.name' must be a string");
    auto args = fn->find("arguments");
    if (args != fn->end() && !args->is_string() && !args->is_object())
      throw wrong_type(w + ".function.arguments", "a JSON string or an object", *args);
  }
}

ParsedMessages parse_messages(Fields& f, const nlohmann::ordered_json& raw, const RequestLimits& limits) {
  const json* v = f.get("messages");
  if (!v) throw invalid("messages", "'messages' is required", "missing_required_parameter");
  if (!v->is_array()) throw wrong_type("messages", "an array", *v);
  if (v->empty()) throw invalid("messages", "'messages' must hold at least one message");
  if (int64_t(v->size()) > limits.max_messages)
    throw over_limit("messages", "messages", int64_t(v->size()), limits.max_messages);
  ParsedMessages out;
  for (size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw wrong_type(where, "an object", m);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      throw invalid(where + ".role", "'" + where + ".role' must be a string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r != "system" && r != "user" && r != "assistant" && r != "tool")
      throw invalid(where + ".role", "'" + where + ".role' must be one of system, developer, user, assistant, tool; got '" +
                                         role->get<std::string>() + "'");
    if (r == "tool") out.uses_tools = true;
    for (auto it = m.begin(); it != m.end(); ++it) {
      const std::string& k = it.key();
      if (k == "role" || k == "content" || k == "name") continue;
      if ((k == "tool_calls" || k == "function_call" || k == "refusal") && (it->is_null() || it->empty())) continue;
      if (k == "tool_calls" && r == "assistant") {
        check_tool_calls(*it, where + ".tool_calls");
        out.uses_tools = true;
        continue;
      }
      if (k == "tool_call_id" && r == "tool") {
        if (!it->is_string()) throw wrong_type(where + ".tool_call_id", "a string", *it);
        continue;
      }
      if ((k == "reasoning_content" || k == "reasoning") && r == "assistant" && (it->is_string() || it->is_null()))
        continue;
      throw invalid(where + "." + k, "'" + where + "." + k + "' is not supported by this server", "unsupported_parameter");
    }
    const std::string content = message_content(m, i);
    out.plain.push_back({r, content});
    // the template's copy: the request's keys in order, content flattened to text
    nlohmann::ordered_json t = raw.is_array() && i < raw.size() && raw[i].is_object() ? raw[i]
                                                                                      : nlohmann::ordered_json::object();
    t["role"] = r;
    auto c = m.find("content");
    t["content"] = (c == m.end() || c->is_null()) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(content);
    if (auto tc = t.find("tool_calls"); tc != t.end() && tc->is_array())
      for (auto& call : *tc)
        if (auto fn = call.find("function"); fn != call.end() && fn->is_object())
          if (auto args = fn->find("arguments"); args != fn->end() && args->is_string()) {
            auto parsed = nlohmann::ordered_json::parse(args->get<std::string>(), nullptr, false);
            if (!parsed.is_discarded() && parsed.is_object()) *args = std::move(parsed);
          }
    out.templ.push_back(std::move(t));
  }
  return out;
}

// tools: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]; returns the names.
std::vector<std::string> check_tools(const json& tools) {
  if (!tools.is_array()) throw wrong_type("tools", "an array", tools);
  std::vector<std::string> names;
  for (size_t k = 0; k < tools.size(); ++k) {
    const std::string w = "tools[" + std::to_string(k) + "]";
    const json& t = tools[k];
    if (!t.is_object()) throw wrong_type(w, "an object", t);
    auto type = t.find("type");
    if (type == t.end() || *type != "function") throw invalid(w + ".type", "'" + w + ".type' must be \"function\"");
    auto fn = t.find("function");
    if (fn == t.end() || !fn->is_object()) throw invalid(w + ".function", "'" + w + ".function' must be an object");
    auto name = fn->find("name");
    if (name == fn->end() || !name->is_string() || name->get<std::string>().empty())
      throw invalid(w + ".function.name", "'" + w + ".function.name' must be a non-empty string");
    if (auto p = fn->find("parameters"); p != fn->end() && !p->is_object() && !p->is_null())
      throw wrong_type(w + ".function.parameters", "an object (a JSON schema)", *p);
    names.push_back(name->get<std::string>());
  }
  return names;
}

// `field` (completions' "prompt", embeddings' "input"): a string, a list of
// strings, a list of token ids, or a list of such lists; at most
// limits.max_prompts of them.
std::vector<std::vector<int32_t>> parse_prompt(Fields& f, const ApiContext& ctx, const std::string& field = "prompt") {
  const bool add_special = f.boolean("add_special_tokens").value_or(true);  // vLLM's extension
  const json* v = f.get(field);
  if (!v) throw invalid(field, "'" + field + "' is required", "missing_required_parameter");
  auto encode = [&](const std::string& s, const std::string& where) {
    try {
      return ctx.tokenizer->encode(s, add_special);
    } catch (const Error& e) {
      throw invalid(where, "'" + where + "' cannot be tokenized: " + e.what());
    }
  };
  const std::string expected = "a string, an array of strings, an array of token ids or an array of such arrays";
  std::vector<std::vector<int32_t>> out;
  if (v->is_string()) {
    out.push_back(encode(v->get<std::string>(), field));
  } else if (auto ids = as_ids(*v)) {
    check_token_ids(*ids, ctx, field);
    out.push_back(*ids);
  } else if (v->is_array() && !v->empty()) {
    if (int64_t(v->size()) > ctx.limits.max_prompts)
      throw over_limit(field, field == "input" ? "inputs" : "prompts", int64_t(v->size()), ctx.limits.max_prompts);
    for (size_t i = 0; i < v->size(); ++i) {
      const json& e = (*v)[i];
      const std::string where = field + "[" + std::to_string(i) + "]";
      if (e.is_string()) {
        out.push_back(encode(e.get<std::string>(), where));
      } else if (auto sub = as_ids(e)) {
        check_token_ids(*sub, ctx, where);
        out.push_back(*sub);
      } else {
        throw wrong_type(where, "a string or an array of token ids", e);
      }
    }
  } else if (v->is_array()) {
    throw invalid(field, "'" + field + "' must not be empty");
  } else {
    throw wrong_type(field, expected, *v);
  }
  return out;
}


// ---- constrained decoding ------------------------------------------------

ConstraintFactory& constraint_factory(const ApiContext& ctx, const std::string& param) {
  if (!ctx.constraints)
    throw invalid(param, "'" + param + "' needs constrained decoding, which this server does not offer",
                  "unsupported_parameter");
  return *ctx.constraints;
}

// A constraint built by `build`, a failure reported as a 400 naming `param`
// (and, for a schema, the path inside it).
std::shared_ptr<const TokenConstraint> build_constraint(
    const ApiContext& ctx, const std::string& param, const std::string& key,
    const std::function<std::shared_ptr<const TokenConstraint>(std::shared_ptr<const TokenVocab>)>& build) {
  try {
    return constraint_factory(ctx, param).get(key, build);
  } catch (const constrain::SchemaError& e) {
    const std::string where = e.path().empty() ? param : param.empty() ? e.path() : param + "." + e.path();
    throw invalid(where, "'" + where + "': " + e.what());
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    throw invalid(param, "'" + param + "': " + e.what());
  }
}

std::shared_ptr<const TokenConstraint> schema_constraint(const ApiContext& ctx, const std::string& param,
                                                         const nlohmann::ordered_json& schema) {
  return build_constraint(ctx, param, "schema:" + schema.dump(),
                          [&](std::shared_ptr<const TokenVocab> v) { return json_schema_constraint(schema, v); });
}

// response_format, guided_json, guided_regex, guided_choice (vLLM's): at most
// one of them. `raw_doc` is the body with its key order (a schema's properties
// are generated in that order).
std::shared_ptr<const TokenConstraint> parse_constraint(Fields& f, const nlohmann::ordered_json& raw_doc,
                                                        const ApiContext& ctx, std::string& given) {
  std::shared_ptr<const TokenConstraint> out;
  auto raw = [&](const char* key) {
    auto it = raw_doc.is_object() ? raw_doc.find(key) : raw_doc.end();
    return it == raw_doc.end() ? nlohmann::ordered_json() : *it;
  };
  auto one = [&](const std::string& param) {
    if (!given.empty())
      throw invalid(param, "'" + param + "' cannot be combined with '" + given +
                               "': give one of response_format, guided_json, guided_regex, guided_choice");
    given = param;
  };
  if (const json* rf = f.get("response_format")) {
    if (!rf->is_object()) throw wrong_type("response_format", "an object", *rf);
    auto type = rf->find("type");
    if (type == rf->end() || !type->is_string())
      throw invalid("response_format.type", "'response_format.type' must be text, json_object or json_schema");
    const std::string t = type->get<std::string>();
    if (t == "json_object") {
      one("response_format");
      out = build_constraint(ctx, "response_format", "json_object",
                             [](std::shared_ptr<const TokenVocab> v) { return json_object_constraint(v); });
    } else if (t == "json_schema") {
      one("response_format");
      auto js = rf->find("json_schema");
      if (js == rf->end() || !js->is_object())
        throw invalid("response_format.json_schema", "'response_format.json_schema' must be an object");
      if (auto name = js->find("name"); name != js->end() && !name->is_string())
        throw wrong_type("response_format.json_schema.name", "a string", *name);
      if (auto strict = js->find("strict"); strict != js->end() && !strict->is_boolean() && !strict->is_null())
        throw wrong_type("response_format.json_schema.strict", "a boolean", *strict);
      const auto schema = raw("response_format")["json_schema"]["schema"];
      if (schema.is_null())
        throw invalid("response_format.json_schema.schema", "'response_format.json_schema.schema' is required");
      out = schema_constraint(ctx, "response_format.json_schema.schema", schema);
    } else if (t != "text") {
      throw invalid("response_format.type", "'response_format.type' must be text, json_object or json_schema, got '" +
                                                t + "'");
    }
  }
  if (const json* g = f.get("guided_json")) {
    one("guided_json");
    nlohmann::ordered_json schema = raw("guided_json");
    if (g->is_string()) {
      schema = nlohmann::ordered_json::parse(g->get<std::string>(), nullptr, false);
      if (schema.is_discarded()) throw invalid("guided_json", "'guided_json' is a string that is not valid JSON");
    } else if (!g->is_object() && !g->is_boolean()) {
      throw wrong_type("guided_json", "a JSON schema (an object or its JSON text)", *g);
    }
    out = schema_constraint(ctx, "guided_json", schema);
  }
  if (auto re = f.string("guided_regex")) {
    one("guided_regex");
    out = build_constraint(ctx, "guided_regex", "regex:" + *re,
                           [&](std::shared_ptr<const TokenVocab> v) { return regex_constraint(*re, v); });
  }
  if (const json* c = f.get("guided_choice")) {
    one("guided_choice");
    if (!c->is_array() || c->empty()) throw wrong_type("guided_choice", "a non-empty array of strings", *c);
    std::vector<std::string> choices;
    for (size_t i = 0; i < c->size(); ++i) {
      if (!(*c)[i].is_string()) throw wrong_type("guided_choice[" + std::to_string(i) + "]", "a string", (*c)[i]);
      choices.push_back((*c)[i].get<std::string>());
    }
    out = build_constraint(ctx, "guided_choice", "choice:" + c->dump(),
                           [&](std::shared_ptr<const TokenVocab> v) { return choice_constraint(choices, v); });
  }
  if (f.get("guided_grammar"))
    throw invalid("guided_grammar", "'guided_grammar' is not supported; use guided_json, guided_regex or guided_choice",
                  "unsupported_parameter");
  f.accept_ignored("guided_decoding_backend", "string");
  f.accept_ignored("guided_whitespace_pattern", "string");
  return out;
}

}  // namespace

// ---- errors --------------------------------------------------------------

ApiError::ApiError(int status, std::string message, std::string param, std::string code, std::string type)
    : Error(std::move(message)),
      status_(status),
      param_(std::move(param)),
      code_(std::move(code)),
      type_(type.empty() ? default_type(status) : std::move(type)) {}

json ApiError::body() const { return error_body(status_, what(), param_, code_, type_); }

json error_body(int status, const std::string& message, const std::string& param, const std::string& code,
                const std::string& type) {
  return {{"error",
           {{"message", message},
            {"type", type.empty() ? default_type(status) : type},
            {"param", null_or(param)},
            {"code", null_or(code)}}}};
}

// ---- parsing -------------------------------------------------------------

RequestParams ApiRequest::choice_params(int64_t c) const {
  RequestParams p = params.at(size_t(c / n));
  if (p.seed_given) p.sampling.seed += uint64_t(c % n);
  return p;
}

ApiRequest parse_completion_request(std::string_view body, const ApiContext& ctx) {
  const json j = parse_body(body);
  Fields f(j);
  ApiRequest r;
  r.endpoint = Endpoint::Completions;
  RequestParams base = parse_common(f, r, ctx);
  if (const json* lp = f.get("logprobs")) {
    // the legacy API: an integer count (a boolean is the chat API's form)
    if (lp->is_boolean()) throw wrong_type("logprobs", "an integer (top logprobs per token)", *lp);
    base.logprobs = int32_t(*f.integer("logprobs", 0, ctx.max_logprobs));
    r.logprobs = true;
  }
  if (f.boolean("echo").value_or(false)) throw invalid("echo", "'echo' is not supported by this server", "unsupported_parameter");
  if (auto s = f.string("suffix"); s && !s->empty())
    throw invalid("suffix", "'suffix' is not supported by this server", "unsupported_parameter");
  if (auto b = f.integer("best_of", 1, ctx.limits.max_n); b && *b != r.n)
    throw invalid("best_of", "'best_of' other than n is not supported by this server", "unsupported_parameter");
  const auto max_tokens = f.integer("max_tokens", 1, INT32_MAX);
  std::string constrained_by;
  base.sampling.constraint =
      parse_constraint(f, nlohmann::ordered_json::parse(body, nullptr, false), ctx, constrained_by);
  r.prompts = parse_prompt(f, ctx);
  f.reject_unknown();
  r.ignored_fields = f.ignored();
  if (r.num_choices() > ctx.limits.max_choices) throw too_many_choices(r, ctx.limits.max_choices);
  for (size_t i = 0; i < r.prompts.size(); ++i)
    r.params.push_back(fit_prompt(base, r.prompts[i], max_tokens, "max_tokens", /*OpenAI's default*/ 16, ctx,
                                  r.prompts.size() == 1 ? "prompt" : "prompt[" + std::to_string(i) + "]"));
  return r;
}

namespace {

// The prompt of a chat request: the fields that shape it (messages, tools,
// tool_choice, chat_template_kwargs, add_generation_prompt,
// add_special_tokens) read, the rest of the body rejected when unknown, the
// messages rendered through the template and tokenized.
struct ChatPrompt {
  std::vector<int32_t> ids;
  std::vector<std::string> tool_names;  // when the output is read back for tool calls
  // tool_choice required or a named function: the tools the output must call
  // (their raw definitions, key order kept), for the tool-call constraint
  std::vector<ToolSpec> forced_tools;
  bool parallel_tool_calls = true;
};

ChatPrompt chat_prompt(Fields& f, std::string_view body, const ApiContext& ctx) {
  f.unsupported_unless_empty("functions");
  if (auto s = f.get("function_call"); s && !(s->is_string() && *s == "none"))
    throw invalid("function_call", "'function_call' is not supported by this server; use 'tools'", "unsupported_parameter");
  std::vector<std::string> tool_names;
  if (const json* t = f.get("tools")) tool_names = check_tools(*t);
  std::string tool_choice = "auto", forced_name;
  if (const json* tc = f.get("tool_choice")) {
    if (!tc->is_string() && !tc->is_object()) throw wrong_type("tool_choice", "a string or an object", *tc);
    if (tc->is_string() && *tc != "none" && *tc != "auto" && *tc != "required")
      throw invalid("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", ...}");
    if (tc->is_object()) {
      auto type = tc->find("type");
      if (type == tc->end() || *type != "function")
        throw invalid("tool_choice.type", "'tool_choice.type' must be \"function\"");
      auto fn = tc->find("function");
      if (fn == tc->end() || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string())
        throw invalid("tool_choice.function.name", "'tool_choice.function.name' must be a string");
      forced_name = (*fn)["name"].get<std::string>();
      if (std::find(tool_names.begin(), tool_names.end(), forced_name) == tool_names.end())
        throw invalid("tool_choice.function.name", "'tool_choice.function.name' names '" + forced_name +
                                                       "', which is not one of 'tools'");
      tool_choice = "function";
    } else {
      tool_choice = tc->get<std::string>();
    }
    if (tool_choice == "required" && tool_names.empty())
      throw invalid("tool_choice", "'tool_choice' required needs 'tools'");
  }
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();
  // the original body once more, with its key order (tool schemas print as sent)
  const auto raw_doc = nlohmann::ordered_json::parse(body, nullptr, false);
  auto raw = [&](const char* key) {
    if (!raw_doc.is_object()) return nlohmann::ordered_json();
    auto it = raw_doc.find(key);
    return it == raw_doc.end() ? nlohmann::ordered_json() : *it;
  };
  if (const json* k = f.get("chat_template_kwargs")) {  // vLLM's extension (enable_thinking, ...)
    if (!k->is_object()) throw wrong_type("chat_template_kwargs", "an object", *k);
    kwargs = raw("chat_template_kwargs");
  }
  // with tool_choice required / named: one call, or one or more (OpenAI's default)
  const bool parallel_tool_calls = f.boolean("parallel_tool_calls").value_or(true);
  // vLLM's chat extensions: the template's generation prompt and the tokenizer's special tokens
  const bool add_generation_prompt = f.boolean("add_generation_prompt").value_or(true);
  const bool add_special_tokens = f.boolean("add_special_tokens").value_or(false);
  f.accept_ignored("continue_final_message", "boolean", false);
  f.accept_ignored("documents", "array");
  f.accept_ignored("chat_template", "string");
  f.accept_ignored("mm_processor_kwargs", "object");
  const auto messages = parse_messages(f, raw("messages"), ctx.limits);
  f.reject_unknown();
  const bool own_template = !ctx.chat_template;
  if (!own_template && (!tool_names.empty() || messages.uses_tools || !kwargs.empty()))
    throw invalid(!tool_names.empty() ? "tools" : !kwargs.empty() ? "chat_template_kwargs" : "messages",
                  "tools, tool turns and chat_template_kwargs need the model's own chat template; this server "
                  "runs a built-in one (--chat-template)",
                  "unsupported_parameter");
  std::string text;
  try {
    if (own_template) {
      ChatRequest cr;
      cr.messages = messages.templ;
      if (!tool_names.empty() && tool_choice != "none") cr.tools = raw("tools");
      cr.add_generation_prompt = add_generation_prompt;
      cr.kwargs = std::move(kwargs);
      text = ChatTemplate::from_tokenizer(*ctx.tokenizer).render(cr);
    } else {
      text = render_chat(*ctx.tokenizer, messages.plain, add_generation_prompt, ctx.chat_template);
    }
  } catch (const Error& e) {
    throw invalid("messages", std::string("cannot apply the chat template: ") + e.what());
  }
  ChatPrompt out;
  out.parallel_tool_calls = parallel_tool_calls;
  if (tool_choice == "required" || tool_choice == "function") {
    const auto tools = raw("tools");
    for (size_t k = 0; k < tool_names.size(); ++k) {
      if (tool_choice == "function" && tool_names[k] != forced_name) continue;
      ToolSpec spec;
      spec.name = tool_names[k];
      spec.where = "tools[" + std::to_string(k) + "].function.parameters";
      if (tools.is_array() && k < tools.size())
        if (auto fn = tools[k].find("function"); fn != tools[k].end() && fn->is_object())
          if (auto p = fn->find("parameters"); p != fn->end()) spec.parameters = *p;
      out.forced_tools.push_back(std::move(spec));
    }
  }
  if (!tool_names.empty() && tool_choice != "none") out.tool_names = std::move(tool_names);
  try {
    out.ids = ctx.tokenizer->encode(text, add_special_tokens);
  } catch (const Error& e) {
    throw invalid("messages", std::string("'messages' cannot be tokenized: ") + e.what());
  }
  return out;
}

}  // namespace

ApiRequest parse_chat_request(std::string_view body, const ApiContext& ctx) {
  const json j = parse_body(body);
  Fields f(j);
  ApiRequest r;
  r.endpoint = Endpoint::Chat;
  RequestParams base = parse_common(f, r, ctx);
  r.logprobs = f.boolean("logprobs").value_or(false);
  const auto top = f.integer("top_logprobs", 0, ctx.max_logprobs);
  if (top && !r.logprobs) throw invalid("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
  if (r.logprobs) base.logprobs = int32_t(top.value_or(0));
  auto max_tokens = f.integer("max_completion_tokens", 1, INT32_MAX);
  const std::string max_tokens_param = max_tokens ? "max_completion_tokens" : "max_tokens";
  if (auto legacy = f.integer("max_tokens", 1, INT32_MAX); !max_tokens) max_tokens = legacy;
  std::string constrained_by;
  base.sampling.constraint =
      parse_constraint(f, nlohmann::ordered_json::parse(body, nullptr, false), ctx, constrained_by);
  f.accept_ignored("echo", "boolean", false);
  ChatPrompt prompt = chat_prompt(f, body, ctx);
  if (!prompt.forced_tools.empty()) {
    // tool_choice required / a named function: the output is a call in the template's format
    constraint_factory(ctx, "tool_choice");
    if (!constrained_by.empty())
      throw invalid("tool_choice", "'tool_choice' required or a named function cannot be combined with '" +
                                       constrained_by + "'");
    const ToolCallFormat format = tool_call_format(ctx.tokenizer->config().chat_template);
    nlohmann::ordered_json key = nlohmann::ordered_json::array();
    for (const auto& t : prompt.forced_tools) key.push_back({t.name, t.parameters});
    std::vector<ToolSpec> specs = prompt.forced_tools;
    const bool several = prompt.parallel_tool_calls;
    base.sampling.constraint = build_constraint(
        ctx, "", "tools:" + std::to_string(int(format)) + (several ? "+" : "1") + key.dump(),
        [&](std::shared_ptr<const TokenVocab> v) { return tool_call_constraint(format, specs, v, several); });
  }
  r.ignored_fields = f.ignored();
  r.tool_names = std::move(prompt.tool_names);
  r.prompts.push_back(std::move(prompt.ids));
  if (r.num_choices() > ctx.limits.max_choices) throw too_many_choices(r, ctx.limits.max_choices);
  r.params.push_back(fit_prompt(base, r.prompts[0], max_tokens, max_tokens_param, ctx.max_model_len, ctx, "messages"));
  return r;
}

// ---- tokenizer routes ----------------------------------------------------

json tokenize(std::string_view body, const ApiContext& ctx) {
  const json j = parse_body(body);
  Fields f(j);
  check_model(f, ctx);
  const bool token_strs = f.boolean("return_token_strs").value_or(false);
  std::vector<int32_t> ids;
  if (auto m = j.find("messages"); m != j.end() && !m->is_null()) {
    ids = chat_prompt(f, body, ctx).ids;  // as /v1/chat/completions would prompt the model
  } else {
    const bool add_special = f.boolean("add_special_tokens").value_or(true);
    const auto prompt = f.string("prompt");
    f.reject_unknown();
    if (!prompt) throw invalid("prompt", "'prompt' (or 'messages') is required", "missing_required_parameter");
    try {
      ids = ctx.tokenizer->encode(*prompt, add_special);
    } catch (const Error& e) {
      throw invalid("prompt", std::string("'prompt' cannot be tokenized: ") + e.what());
    }
  }
  json out = {{"count", ids.size()}, {"max_model_len", ctx.max_model_len}, {"tokens", ids}};
  if (token_strs) {
    json strs = json::array();
    for (int32_t id : ids) strs.push_back(ctx.tokenizer->id_to_token(id));
    out["token_strs"] = std::move(strs);
  }
  return out;
}

json detokenize(std::string_view body, const ApiContext& ctx) {
  const json j = parse_body(body);
  Fields f(j);
  check_model(f, ctx);
  const json* v = f.get("tokens");
  f.reject_unknown();
  if (!v) throw invalid("tokens", "'tokens' is required", "missing_required_parameter");
  std::vector<int32_t> ids;
  if (auto given = as_ids(*v)) ids = std::move(*given);
  else if (!(v->is_array() && v->empty())) throw wrong_type("tokens", "an array of token ids", *v);
  check_token_ids(ids, ctx, "tokens");
  return {{"prompt", ctx.tokenizer->decode(ids)}};
}

// ---- embeddings ------------------------------------------------------------

EmbeddingRequest parse_embedding_request(std::string_view body, const ApiContext& ctx) {
  const json j = parse_body(body);
  Fields f(j);
  EmbeddingRequest r;
  std::tie(r.model, r.adapter) = check_model(f, ctx);
  r.inputs = parse_prompt(f, ctx, "input");
  if (auto fmt = f.string("encoding_format")) {
    if (*fmt != "float" && *fmt != "base64")
      throw invalid("encoding_format", "'encoding_format' must be 'float' or 'base64', got '" + *fmt + "'");
    r.base64 = *fmt == "base64";
  }
  if (auto d = f.integer("dimensions", 1, INT64_MAX); d && *d != ctx.hidden_size)
    throw invalid("dimensions",
                  "'dimensions' is " + std::to_string(*d) + ", but this model's embeddings have " +
                      std::to_string(ctx.hidden_size) +
                      " dimensions and it was not trained for shorter (Matryoshka) ones; leave 'dimensions' out "
                      "or send " + std::to_string(ctx.hidden_size),
                  "unsupported_parameter");
  f.ignore({"user"});
  f.reject_unknown();
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    const std::string where = r.inputs.size() == 1 ? "input" : "input[" + std::to_string(i) + "]";
    const auto P = int64_t(r.inputs[i].size());
    if (P == 0) throw invalid(where, "'" + where + "' has no tokens");
    check_token_ids(r.inputs[i], ctx, where);  // text too: a tokenizer may outgrow the model's vocabulary
    if (P > ctx.max_model_len)
      throw invalid(where,
                    "This model's maximum context length is " + std::to_string(ctx.max_model_len) +
                        " tokens. However, your input resulted in " + std::to_string(P) +
                        " tokens. Please reduce the length of the input.",
                    "context_length_exceeded");
  }
  return r;
}

std::string base64_float32(const std::vector<float>& values) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string bytes;
  bytes.reserve(values.size() * 4);
  for (float v : values) {
    uint32_t u = 0;
    std::memcpy(&u, &v, 4);
    for (int k = 0; k < 4; ++k) bytes.push_back(char((u >> (8 * k)) & 0xff));  // little-endian
  }
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    const size_t n = std::min<size_t>(3, bytes.size() - i);
    uint32_t w = 0;
    for (size_t k = 0; k < 3; ++k) w = (w << 8) | (k < n ? uint8_t(bytes[i + k]) : 0u);
    for (size_t k = 0; k < 4; ++k) out.push_back(k <= n ? alphabet[(w >> (18 - 6 * k)) & 63] : '=');
  }
  return out;
}

json embedding_response(const EmbeddingRequest& r, const std::vector<std::vector<float>>& embeddings,
                        const ApiContext& ctx) {
  if (embeddings.size() != r.inputs.size())
    throw Error("embedding_response: " + std::to_string(embeddings.size()) + " embeddings for " +
                std::to_string(r.inputs.size()) + " inputs");
  json data = json::array();
  int64_t tokens = 0;
  for (size_t i = 0; i < embeddings.size(); ++i) {
    tokens += int64_t(r.inputs[i].size());
    data.push_back({{"object", "embedding"},
                    {"index", i},
                    {"embedding", r.base64 ? json(base64_float32(embeddings[i])) : json(embeddings[i])}});
  }
  return {{"object", "list"},
          {"data", std::move(data)},
          {"model", r.model.empty() ? ctx.model_name : r.model},
          {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}}};
}

// ---- framing -------------------------------------------------------------

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

std::string make_response_id(Endpoint endpoint) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string id = endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += hex[rng() & 15];
  return id;
}

// ---- responses -----------------------------------------------------------

namespace {

// Characters (code points) in UTF-8 text, as Python's len() counts them.
int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

// JSON has no -inf: a token the model rules out reports -9999 (as vLLM).
double finite_logprob(float lp) { return std::isfinite(lp) ? double(lp) : -9999.0; }

}  // namespace

ResponseBuilder::ResponseBuilder(const ApiRequest& request, const ApiContext& ctx, std::string id, int64_t created)
    : request_(request), ctx_(ctx), id_(std::move(id)), created_(created), choices_(size_t(request.num_choices())) {}

json ResponseBuilder::chunk(json choices) const {
  json c = {{"id", id_},
            {"object", request_.endpoint == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", request_.model.empty() ? ctx_.model_name : request_.model},
            {"choices", std::move(choices)}};
  if (request_.include_usage) c["usage"] = request_.continuous_usage ? usage() : json(nullptr);
  return c;
}

std::string ResponseBuilder::stream_start() const {
  if (request_.endpoint != Endpoint::Chat) return "";
  std::string out;
  for (int64_t c = 0; c < request_.num_choices(); ++c)
    out += sse_event(chunk(json::array({{{"index", c},
                                         {"delta", {{"role", "assistant"}, {"content", ""}}},
                                         {"logprobs", nullptr},
                                         {"finish_reason", nullptr}}})));
  return out;
}

json ResponseBuilder::logprobs_delta(Choice& ch, const std::vector<TokenLogprob>& lps) {
  const Tokenizer& tok = *ctx_.tokenizer;
  auto piece = [&](int32_t id) { return tok.decode(std::span<const int32_t>(&id, 1)); };
  if (request_.endpoint == Endpoint::Chat) {
    json content = json::array();
    for (const auto& lp : lps) {
      const std::string s = piece(lp.token);
      json top = json::array();
      for (const auto& [id, l] : lp.top) {
        const std::string ts = piece(id);
        top.push_back({{"token", ts}, {"logprob", finite_logprob(l)}, {"bytes", bytes_of(ts)}});
      }
      json e = {{"token", s}, {"logprob", finite_logprob(lp.logprob)}, {"bytes", bytes_of(s)}, {"top_logprobs", top}};
      content.push_back(e);
      ch.logprobs_content.push_back(e);
    }
    return {{"content", content}, {"refusal", nullptr}};
  }
  json d = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
  for (const auto& lp : lps) {
    const std::string s = piece(lp.token);
    // the legacy format always includes the sampled token among the top ones
    json top = json::object();
    for (const auto& [id, l] : lp.top) top[piece(id)] = finite_logprob(l);
    if (!top.contains(s)) top[s] = finite_logprob(lp.logprob);
    d["tokens"].push_back(s);
    d["token_logprobs"].push_back(finite_logprob(lp.logprob));
    d["top_logprobs"].push_back(top);
    d["text_offset"].push_back(ch.text_offset);
    ch.text_offset += code_points(s);
  }
  ch.legacy_tokens.insert(ch.legacy_tokens.end(), d["tokens"].begin(), d["tokens"].end());
  ch.legacy_token_logprobs.insert(ch.legacy_token_logprobs.end(), d["token_logprobs"].begin(),
                                  d["token_logprobs"].end());
  ch.legacy_top_logprobs.insert(ch.legacy_top_logprobs.end(), d["top_logprobs"].begin(), d["top_logprobs"].end());
  ch.legacy_text_offset.insert(ch.legacy_text_offset.end(), d["text_offset"].begin(), d["text_offset"].end());
  return d;
}

std::string ResponseBuilder::add(int64_t choice, const RequestOutput& out) {
  Choice& ch = choices_.at(size_t(choice));
  ch.text += out.text;
  ch.completion_tokens = out.completion_tokens;
  ch.prompt_tokens = out.prompt_tokens;
  ch.cached_prompt_tokens = out.cached_prompt_tokens;
  if (out.finished) {
    ch.finished = true;
    ch.finish_reason = out.finish_reason;
  }
  json lp_delta = nullptr;
  if (request_.logprobs) {
    // A final stop token (eos) is not part of the text: OpenAI does not list it.
    std::vector<TokenLogprob> lps = out.logprobs;
    const auto& stops = request_.params.at(size_t(choice / request_.n)).stop_token_ids;
    if (out.finished && out.finish_reason == "stop" && !lps.empty() && !out.token_ids.empty() &&
        lps.size() == out.token_ids.size() &&
        std::find(stops.begin(), stops.end(), out.token_ids.back()) != stops.end())
      lps.pop_back();
    if (!lps.empty()) lp_delta = logprobs_delta(ch, lps);
  }
  if (!request_.stream) return "";
  const bool buffered = request_.endpoint == Endpoint::Chat && !request_.tool_names.empty();
  // tool calls are read from the whole text: the message waits for the end
  if (buffered && !out.finished) return "";
  if (out.text.empty() && lp_delta.is_null() && !out.finished) return "";
  json finish = out.finished ? json(out.finish_reason) : json(nullptr);
  json c;
  if (buffered) {
    std::string reason = out.finish_reason;
    json m = message(ch, reason);
    json delta = json::object();
    if (!m["content"].is_null()) delta["content"] = m["content"];
    if (m.contains("tool_calls")) {
      json calls = m["tool_calls"];
      for (size_t k = 0; k < calls.size(); ++k) calls[k]["index"] = k;
      delta["tool_calls"] = calls;
    }
    json lps = request_.logprobs ? json{{"content", ch.logprobs_content}, {"refusal", nullptr}} : json(nullptr);
    c = {{"index", choice}, {"delta", delta}, {"logprobs", lps}, {"finish_reason", reason}};
  } else if (request_.endpoint == Endpoint::Chat) {
    json delta = json::object();
    if (!out.text.empty()) delta["content"] = out.text;
    c = {{"index", choice}, {"delta", delta}, {"logprobs", lp_delta}, {"finish_reason", finish}};
  } else {
    c = {{"index", choice}, {"text", out.text}, {"logprobs", lp_delta}, {"finish_reason", finish}};
  }
  std::string sse = sse_event(chunk(json::array({c})));
  // the engine gave up on this choice (a failed step): say so in the stream, as vLLM does
  if (out.finished && out.finish_reason == "abort" && !out.error.empty())
    sse += sse_event(error_body(500, "The engine aborted this request: " + out.error, "", "engine_error"));
  return sse;
}

bool ResponseBuilder::all_finished() const {
  return std::all_of(choices_.begin(), choices_.end(), [](const Choice& c) { return c.finished; });
}

json ResponseBuilder::usage() const {
  int64_t prompt = 0, completion = 0;
  for (const auto& p : request_.prompts) prompt += int64_t(p.size());
  for (const auto& c : choices_) completion += c.completion_tokens;
  // prompt tokens the prefix cache served: the first choice of each prompt
  // (a prompt counts once, as in prompt_tokens)
  int64_t cached = 0;
  for (size_t i = 0; i < request_.prompts.size(); ++i) cached += choices_.at(i * size_t(request_.n)).cached_prompt_tokens;
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

std::string ResponseBuilder::stream_end() const {
  std::string out;
  if (request_.include_usage) {
    json c = chunk(json::array());
    c["usage"] = usage();
    out += sse_event(c);
  }
  return out + sse_done();
}

json ResponseBuilder::message(const Choice& ch, std::string& finish_reason) const {
  if (request_.tool_names.empty()) return {{"role", "assistant"}, {"content", ch.text}, {"refusal", nullptr}};
  ParsedToolCalls p = parse_tool_calls(ch.text, request_.tool_names);
  if (p.calls.empty()) return {{"role", "assistant"}, {"content", ch.text}, {"refusal", nullptr}};
  json calls = json::array();
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  for (const auto& c : p.calls) {
    char id[32];
    snprintf(id, sizeof id, "call_%016llx", static_cast<unsigned long long>(rng()));
    calls.push_back({{"id", id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  }
  if (finish_reason == "stop") finish_reason = "tool_calls";
  return {{"role", "assistant"},
          {"content", p.content.empty() ? json(nullptr) : json(p.content)},
          {"refusal", nullptr},
          {"tool_calls", calls}};
}

json ResponseBuilder::response() const {
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& ch = choices_[i];
    json finish = ch.finished ? json(ch.finish_reason) : json(nullptr);
    if (request_.endpoint == Endpoint::Chat) {
      json lp = request_.logprobs ? json{{"content", ch.logprobs_content}, {"refusal", nullptr}} : json(nullptr);
      std::string reason = ch.finish_reason;
      json msg = message(ch, reason);
      if (ch.finished) finish = reason;
      choices.push_back({{"index", i},
                         {"message", msg},
                         {"logprobs", lp},
                         {"finish_reason", finish}});
    } else {
      json lp = request_.logprobs ? json{{"tokens", ch.legacy_tokens},
                                         {"token_logprobs", ch.legacy_token_logprobs},
                                         {"top_logprobs", ch.legacy_top_logprobs},
                                         {"text_offset", ch.legacy_text_offset}}
                                  : json(nullptr);
      choices.push_back({{"index", i}, {"text", ch.text}, {"logprobs", lp}, {"finish_reason", finish}});
    }
  }
  return {{"id", id_},
          {"object", request_.endpoint == Endpoint::Chat ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", request_.model.empty() ? ctx_.model_name : request_.model},
          {"choices", choices},
          {"usage", usage()}};
}

}  // namespace finmoe::serve
