#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"
#include "finmoe/config.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace finmoe {

namespace {

using nlohmann::json;

json parse_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_json(ss.str(), path);
}

// A token field of tokenizer_config.json: "str", {"content": "str", ...} or null.
std::string token_field(const json& cfg, const char* key, const std::string& file) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  throw Error(file + ": " + key + ": expected a string or {\"content\": ...}");
}

TokenizerConfig parse_config(const json& cfg, const std::string& file) {
  if (!cfg.is_object()) throw Error(file + ": expected a JSON object");
  TokenizerConfig c;
  c.bos_token = token_field(cfg, "bos_token", file);
  c.eos_token = token_field(cfg, "eos_token", file);
  c.pad_token = token_field(cfg, "pad_token", file);
  auto flag = [&](const char* key, bool dflt) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) throw Error(file + ": " + key + ": expected true or false");
    return it->get<bool>();
  };
  c.add_bos_token = flag("add_bos_token", false);
  c.add_eos_token = flag("add_eos_token", false);
  c.clean_up_tokenization_spaces = flag("clean_up_tokenization_spaces", false);
  if (auto it = cfg.find("chat_template"); it != cfg.end() && !it->is_null()) {
    if (it->is_string()) {
      c.chat_template = it->get<std::string>();
    } else if (it->is_array()) {  // [{name, template}]: the "default" one, else the first
      for (const auto& t : *it) {
        if (!t.is_object() || !t.contains("template") || !t["template"].is_string() ||
            (t.contains("name") && !t["name"].is_string()))
          throw Error(file + ": chat_template: expected a string or a list of {name, template}");
        if (c.chat_template.empty() || t.value("name", "") == "default")
          c.chat_template = t["template"].get<std::string>();
      }
    } else {
      throw Error(file + ": chat_template: expected a string or a list of {name, template}");
    }
  }
  if (auto it = cfg.find("model_max_length"); it != cfg.end()) {
    // HF writes int(1e30) for "no limit", which does not fit: keep 0 (unknown).
    if (it->is_number_integer() && !it->is_number_unsigned()) c.model_max_length = it->get<int64_t>();
    else if (it->is_number_unsigned() &&
             it->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      c.model_max_length = static_cast<int64_t>(it->get<uint64_t>());
  }
  return c;
}

// `j[key]` when it is an object of the given type; else an error naming where.key.
const json& member(const json& j, const char* key, json::value_t type, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->type() != type)
    throw Error(where + "." + key + ": missing or not " +
                (type == json::value_t::array ? "an array" : "an object"));
  return *it;
}

// Special-token ids around the text in post_processor's TemplateProcessing "single".
bool template_processing(const json& pp, const std::string& where, std::vector<int32_t>& prefix,
                         std::vector<int32_t>& suffix) {
  if (pp.is_null()) return false;
  if (!pp.is_object()) throw Error(where + ": expected an object or null");
  auto t = pp.find("type");
  if (t == pp.end() || !t->is_string()) throw Error(where + ".type: missing or not a string");
  const std::string type = t->get<std::string>();
  if (type == "ByteLevel") return false;  // offsets only
  if (type == "Sequence") {
    bool any = false;
    const json& ps = member(pp, "processors", json::value_t::array, where);
    for (size_t i = 0; i < ps.size(); ++i)
      any = template_processing(ps[i], where + ".processors[" + std::to_string(i) + "]", prefix,
                                suffix) || any;
    return any;
  }
  if (type != "TemplateProcessing")
    throw Error(where + ".type '" + type +
                "' not supported (supported: ByteLevel, TemplateProcessing, Sequence)");
  const json& special = member(pp, "special_tokens", json::value_t::object, where);
  const json& single = member(pp, "single", json::value_t::array, where);
  bool after = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const json& piece = single[i];
    const std::string at = where + ".single[" + std::to_string(i) + "]";
    if (piece.is_object() && piece.contains("Sequence")) {
      after = true;
      continue;
    }
    const json* id = nullptr;
    if (piece.is_object() && piece.contains("SpecialToken") && piece["SpecialToken"].is_object())
      if (auto it = piece["SpecialToken"].find("id"); it != piece["SpecialToken"].end()) id = &*it;
    if (id == nullptr || !id->is_string())
      throw Error(at + ": expected {\"Sequence\": ...} or {\"SpecialToken\": {\"id\": name}}");
    const std::string name = id->get<std::string>();
    if (!special.contains(name))
      throw Error(at + ": special token '" + name + "' not in special_tokens");
    const std::string ids_at = where + ".special_tokens['" + name + "']";
    const json& ids = member(special[name], "ids", json::value_t::array, ids_at);
    for (size_t k = 0; k < ids.size(); ++k)
      (after ? suffix : prefix)
          .push_back(tok::token_id(ids[k], ids_at + ".ids[" + std::to_string(k) + "]"));
  }
  return true;
}

// An optional boolean of an added token (`where` names it).
bool added_flag(const json& t, const char* key, bool dflt, const std::string& where) {
  auto it = t.find(key);
  if (it == t.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) throw Error(where + "." + key + ": expected true or false");
  return it->get<bool>();
}

}  // namespace

std::string clean_up_tokenization(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},     {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"},   {" 's", "'s"},   {" 've", "'ve"}, {" 're", "'re"}};
  for (auto [from, to] : kRules) {
    std::string_view f(from);
    std::string out;
    size_t last = 0, pos;
    while ((pos = s.find(f, last)) != std::string::npos) {
      out.append(s, last, pos - last);
      out.append(to);
      last = pos + f.size();
    }
    if (last == 0) continue;
    out.append(s, last, std::string::npos);
    s.swap(out);
  }
  return s;
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  const std::string& file = tokenizer_json;
  impl->file = file;
  json j = parse_json_file(file);
  if (!j.is_object()) throw Error(file + ": expected a JSON object");

  // model
  if (!j.contains("model") || !j["model"].is_object()) throw Error(file + ": model: missing");
  const json& model = j["model"];
  if (model.contains("type") && !model["type"].is_string())
    throw Error(file + ": model.type: expected a string");
  std::string mtype = model.value("type", model.contains("merges") ? "BPE" : "");
  if (mtype != "BPE")
    throw Error(file + ": model.type '" + mtype + "' not supported (supported: BPE)");
  impl->bpe = std::make_unique<tok::Bpe>(model, file);
  j["model"] = nullptr;  // free the big vocab/merges early

  impl->normalizer = tok::make_normalizer(j.value("normalizer", json()), file + ": normalizer");
  impl->pre_tokenizer =
      tok::make_pre_tokenizer(j.value("pre_tokenizer", json()), file + ": pre_tokenizer");
  impl->decoder = tok::make_decoder(j.value("decoder", json()), file + ": decoder");

  // added tokens
  if (auto at = j.find("added_tokens"); at != j.end() && !at->is_null()) {
    if (!at->is_array()) throw Error(file + ": added_tokens: expected an array");
    for (size_t i = 0; i < at->size(); ++i) {
      const json& t = (*at)[i];
      const std::string where = file + ": added_tokens[" + std::to_string(i) + "]";
      if (!t.is_object() || !t.contains("id") || !t.contains("content") ||
          !t["content"].is_string())
        throw Error(where + ": expected {id, content, ...}");
      tok::AddedToken a;
      a.id = tok::token_id(t["id"], where + ".id");
      a.content = t["content"].get<std::string>();
      a.special = added_flag(t, "special", false, where);
      a.lstrip = added_flag(t, "lstrip", false, where);
      a.rstrip = added_flag(t, "rstrip", false, where);
      a.single_word = added_flag(t, "single_word", false, where);
      a.normalized = added_flag(t, "normalized", !a.special, where);
      impl->added.push_back(std::move(a));
    }
  }
  std::vector<tok::AddedToken> raw, norm;
  std::vector<std::string> raw_c, norm_c;
  for (const auto& a : impl->added) {
    impl->added_ids[a.content] = a.id;
    if (a.normalized && impl->normalizer) {
      std::string c = a.content;
      impl->normalizer->normalize(c);
      norm.push_back(a);
      norm_c.push_back(c);
    } else {
      raw.push_back(a);
      raw_c.push_back(a.content);
    }
  }
  impl->raw_matcher = tok::AddedTokenMatcher(raw, raw_c);
  impl->norm_matcher = tok::AddedTokenMatcher(norm, norm_c);

  // id -> token table, dense: ids far beyond the number of tokens are a
  // corrupt file, not a table of billions of empty entries
  int32_t max_id = -1;
  for (const auto& [s, id] : impl->bpe->vocab()) max_id = std::max(max_id, id);
  for (const auto& a : impl->added) max_id = std::max(max_id, a.id);
  const int64_t n_tokens = int64_t(impl->bpe->vocab().size() + impl->added.size());
  if (int64_t(max_id) >= n_tokens + tok::kMaxTokenIdSlack)
    throw Error(file + ": token id " + std::to_string(max_id) + " is more than " +
                std::to_string(tok::kMaxTokenIdSlack) + " past the " + std::to_string(n_tokens) +
                " tokens of model.vocab and added_tokens");
  impl->id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  impl->special.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [s, id] : impl->bpe->vocab())
    if (id >= 0) impl->id_to_token[id] = s;
  for (const auto& a : impl->added) {
    impl->id_to_token[a.id] = a.content;
    impl->special[a.id] = a.special;
  }

  // tokenizer_config.json beside it
  std::filesystem::path cfg_path = std::filesystem::path(file).parent_path() / "tokenizer_config.json";
  bool has_add_keys = false;
  if (std::filesystem::exists(cfg_path)) {
    json cfg = parse_json_file(cfg_path.string());
    impl->config = parse_config(cfg, cfg_path.string());
    has_add_keys = cfg.is_object() && (cfg.contains("add_bos_token") || cfg.contains("add_eos_token"));
  }
  // chat_template.jinja beside it (where transformers >= 4.43 saves the
  // template) wins over tokenizer_config.json's chat_template, as in HF
  const auto jinja_path = std::filesystem::path(file).parent_path() / "chat_template.jinja";
  if (std::filesystem::exists(jinja_path)) {
    std::ifstream in(jinja_path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in && !in.eof()) throw Error(jinja_path.string() + ": cannot read");
    std::string text = ss.str();
    if (tok::utf8_first_invalid(text) != std::string::npos)
      throw Error(jinja_path.string() + ": not valid UTF-8 at byte " + std::to_string(tok::utf8_first_invalid(text)));
    impl->config.chat_template = std::move(text);
  }
  Tokenizer t(std::move(impl));
  Impl& im = *t.impl_;
  TokenizerConfig& c = im.config;
  auto bos = t.bos_id();
  auto eos = t.eos_id();
  if (!c.bos_token.empty() && !bos)
    throw Error(cfg_path.string() + ": bos_token '" + c.bos_token + "' is not a token of " + file);
  if (!c.eos_token.empty() && !eos)
    throw Error(cfg_path.string() + ": eos_token '" + c.eos_token + "' is not a token of " + file);
  // Which special tokens encode(add_special_tokens=true) adds: the config's
  // add_bos/eos_token when present (transformers rewrites the post-processor
  // from them), else the post_processor's TemplateProcessing, else bos alone
  // (the default of HF's Llama tokenizers, e.g. Llama-3 files shipped
  // without a TemplateProcessing).
  std::vector<int32_t> pre, post;
  bool templ = template_processing(j.value("post_processor", json()), file + ": post_processor",
                                   pre, post);
  if (has_add_keys) {
    if (c.add_bos_token && bos) im.prefix_ids = {*bos};
    if (c.add_eos_token && eos) im.suffix_ids = {*eos};
  } else if (templ) {
    im.prefix_ids = pre;
    im.suffix_ids = post;
    c.add_bos_token = bos && std::find(pre.begin(), pre.end(), *bos) != pre.end();
    c.add_eos_token = eos && std::find(post.begin(), post.end(), *eos) != post.end();
  } else if (bos) {
    im.prefix_ids = {*bos};
    c.add_bos_token = true;
  }
  return t;
}

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  return from_file((std::filesystem::path(dir) / "tokenizer.json").string());
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

void Tokenizer::Impl::encode_into(std::string_view text, std::vector<int32_t>& ids) const {
  std::vector<tok::Segment> segs, sub;
  raw_matcher.split(text, segs);
  std::vector<tok::Piece> pieces;
  for (const auto& seg : segs) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
      continue;
    }
    std::string s(text.substr(seg.begin, seg.end - seg.begin));
    if (normalizer) normalizer->normalize(s);
    sub.clear();
    if (norm_matcher.empty()) sub.push_back({0, s.size(), -1});
    else norm_matcher.split(s, sub);
    for (const auto& ss : sub) {
      if (ss.id >= 0) {
        ids.push_back(ss.id);
        continue;
      }
      pieces.clear();
      pieces.push_back({s.substr(ss.begin, ss.end - ss.begin), seg.begin == 0 && ss.begin == 0});
      if (pre_tokenizer) pre_tokenizer->apply(pieces);
      for (const auto& p : pieces) bpe->tokenize(p.text, ids);
    }
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (size_t bad = tok::utf8_first_invalid(text); bad != std::string_view::npos)
    throw Error("Tokenizer::encode: text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = impl_->prefix_ids;
  impl_->encode_into(text, ids);
  if (add_special_tokens) ids.insert(ids.end(), impl_->suffix_ids.begin(), impl_->suffix_ids.end());
  return ids;
}

std::string Tokenizer::Impl::decode_raw(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    // Ids without a token (e.g. a model's padded vocab rows) are dropped, as HF does.
    if (id < 0 || static_cast<size_t>(id) >= id_to_token.size() || id_to_token[id].empty()) continue;
    if (skip_special && special[id]) continue;
    tokens.push_back(id_to_token[id]);
  }
  if (decoder) {
    decoder->decode_chain(tokens);
  } else if (tokens.size() > 1) {  // HF joins with spaces when there is no decoder
    std::string all = tokens[0];
    for (size_t i = 1; i < tokens.size(); ++i) all += " " + tokens[i];
    tokens.assign(1, all);
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return tok::utf8_lossy(out);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::string s = impl_->decode_raw(ids, skip_special_tokens);
  if (impl_->config.clean_up_tokenization_spaces) s = clean_up_tokenization(std::move(s));
  return s;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_token.size() ||
      impl_->id_to_token[id].empty())
    throw Error(impl_->file + ": no token has id " + std::to_string(id) + " (vocab_size " +
                std::to_string(vocab_size()) + ")");
  return impl_->id_to_token[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->bpe->vocab().find(token); it != impl_->bpe->vocab().end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id];
}

const TokenizerConfig& Tokenizer::config() const { return impl_->config; }

std::optional<int32_t> Tokenizer::bos_id() const {
  if (impl_->config.bos_token.empty()) return std::nullopt;
  return token_to_id(impl_->config.bos_token);
}

std::optional<int32_t> Tokenizer::eos_id() const {
  if (impl_->config.eos_token.empty()) return std::nullopt;
  return token_to_id(impl_->config.eos_token);
}

}  // namespace finmoe
