// The output vocabulary and row mapping of `finmoe merge` with a tokenizer
// source, and recipe chat templates (src/merge/merge_vocab.h).
#include "merge/merge_vocab.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "finmoe/error.h"

namespace finmoe {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

ojson read_ordered_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read");
  try {
    return ojson::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}

// A model's tokenizer.json, its config.json vocab_size, and its tokens below it.
struct TokenizerFile {
  std::string path;
  ojson json;
  int64_t vocab_size = 0;
  std::vector<std::pair<int64_t, std::string>> vocab;  // model.vocab by id
  std::vector<ojson> added;                            // added_tokens by id
  std::set<std::string> added_contents;
  ModelVocab ids;  // both, below vocab_size
};

std::optional<TokenizerFile> read_tokenizer(const std::string& dir) {
  const fs::path tj = fs::path(dir) / "tokenizer.json";
  if (!fs::exists(tj)) return std::nullopt;
  TokenizerFile f;
  f.path = tj.string();
  f.json = read_ordered_json(f.path);
  if (!f.json.is_object() || !f.json.contains("model") || !f.json["model"].is_object() ||
      !f.json["model"].contains("vocab") || !f.json["model"]["vocab"].is_object())
    throw Error(f.path +
                ": model.vocab: expected a mapping of token to id (finmoe merges BPE, "
                "WordPiece and WordLevel vocabularies)");
  for (const auto& [tok, id] : f.json["model"]["vocab"].items()) {
    if (!id.is_number_integer()) throw Error(f.path + ": model.vocab['" + tok + "']: expected an integer id");
    f.vocab.emplace_back(id.get<int64_t>(), tok);
  }
  std::sort(f.vocab.begin(), f.vocab.end());
  if (f.json.contains("added_tokens") && !f.json["added_tokens"].is_null()) {
    if (!f.json["added_tokens"].is_array()) throw Error(f.path + ": added_tokens: expected a list");
    for (const auto& t : f.json["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          !t.contains("content") || !t["content"].is_string())
        throw Error(f.path + ": added_tokens: each entry needs an integer id and a content string");
      f.added.push_back(t);
    }
    std::stable_sort(f.added.begin(), f.added.end(), [](const ojson& a, const ojson& b) {
      return a["id"].get<int64_t>() < b["id"].get<int64_t>();
    });
  }
  int64_t largest = -1;
  for (const auto& [id, tok] : f.vocab) largest = std::max(largest, id);
  for (const auto& t : f.added) largest = std::max(largest, t["id"].get<int64_t>());
  f.vocab_size = largest + 1;
  const fs::path cfg = fs::path(dir) / "config.json";
  if (fs::exists(cfg)) {
    const ojson c = read_ordered_json(cfg.string());
    if (c.is_object() && c.contains("vocab_size") && c["vocab_size"].is_number_integer())
      f.vocab_size = c["vocab_size"].get<int64_t>();
  }
  for (const auto& [id, tok] : f.vocab)
    if (id < f.vocab_size) f.ids.ids.emplace(tok, id);
  for (const auto& t : f.added) {
    const int64_t id = t["id"].get<int64_t>();
    if (id >= f.vocab_size) continue;
    f.added_contents.insert(t["content"].get<std::string>());
    f.ids.ids[t["content"].get<std::string>()] = id;
  }
  return f;
}

// An added token as transformers' add_tokens(str) adds it.
ojson plain_added_token(const std::string& content) {
  return ojson{{"id", 0},           {"content", content}, {"single_word", false},
               {"lstrip", false},   {"rstrip", false},    {"normalized", true},
               {"special", false}};
}

std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// ---- built-in chat templates (finmoe's own Jinja, rendering as mergekit's) ----

const char* const kChatML = R"J({%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%})J";

const char* const kLlama3 = R"J({%- for message in messages -%}
{%- if loop.first -%}{{- bos_token -}}{%- endif -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) + '<|eot_id|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%})J";

const char* const kAlpaca = R"J({%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] | trim -%}{%- endif -%}
{%- endfor -%}
{{- ns.system + '\n\n' -}}
{%- for message in messages -%}
{%- set header = {'user': '### Instruction:\n', 'assistant': '### Response:\n', 'user_context': '### Input:\n'} -%}
{%- if message['role'] in header -%}
{{- header[message['role']] + (message['content'] | trim) -}}
{%- if not loop.last -%}{{- '\n\n' -}}{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}{{- '### Response:\n' -}}{%- endif -%})J";

const char* const kMistral = R"J({%- set ns = namespace(system='', first=0) -%}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}{%- set ns.first = 1 -%}{%- endif -%}
{{- bos_token -}}
{%- for message in messages[ns.first:] -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('mistral chat template: after an optional system message the roles alternate user, assistant, user, ...') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if loop.first and ns.first == 1 -%}{{- ' [INST] ' + ns.system + '\n\n' + message['content'] + ' [/INST]' -}}
{%- else -%}{{- ' [INST] ' + message['content'] + ' [/INST]' -}}{%- endif -%}
{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'] + eos_token -}}
{%- else -%}{{- raise_exception('mistral chat template: only user and assistant messages follow the optional system message') -}}
{%- endif -%}
{%- endfor -%})J";

}  // namespace

const char* builtin_chat_template(const std::string& name) {
  if (name == "chatml") return kChatML;
  if (name == "llama3") return kLlama3;
  if (name == "alpaca") return kAlpaca;
  if (name == "mistral") return kMistral;
  return nullptr;
}

void check_chat_template(const std::string& value, const std::string& where) {
  if (value == "auto") return;
  const bool name_like = value.size() < 256 && value.find('\n') == std::string::npos &&
                         value.find('{') == std::string::npos;
  if (name_like && builtin_chat_template(value)) return;
  if (name_like && value == "exaone")
    throw Error(where + ": the built-in template 'exaone' is not one finmoe has (chatml, llama3, "
                        "alpaca, mistral); give the Jinja text instead");
  if (value.size() < 20 || value.find('{') == std::string::npos)
    throw Error(where + ": '" + value +
                "' is neither auto, a built-in template (chatml, llama3, alpaca, mistral) nor a "
                "Jinja template (at least 20 characters with a '{')");
}

std::optional<std::string> resolve_chat_template(const MergeRecipe& r,
                                                 const std::vector<std::string>& models) {
  if (r.chat_template.empty()) return std::nullopt;
  if (r.chat_template != "auto") {
    if (const char* b = builtin_chat_template(r.chat_template)) return std::string(b);
    return r.chat_template;
  }
  std::vector<std::pair<std::string, int>> counts;  // in first-seen order
  for (const std::string& m : models) {
    std::string tpl;
    const fs::path jinja = fs::path(m) / "chat_template.jinja";
    const fs::path cfg = fs::path(m) / "tokenizer_config.json";
    if (fs::exists(jinja)) {
      std::ifstream in(jinja, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      tpl = ss.str();
    } else if (fs::exists(cfg)) {
      const ojson c = read_ordered_json(cfg.string());
      if (c.is_object() && c.contains("chat_template")) {
        const ojson& t = c["chat_template"];
        if (t.is_string()) tpl = t.get<std::string>();
        if (t.is_array())  // [{name, template}]: the default one
          for (const auto& e : t)
            if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
                e["template"].is_string())
              tpl = e["template"].get<std::string>();
      }
    }
    tpl = strip(tpl);
    if (tpl.empty()) continue;
    auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == tpl; });
    if (it == counts.end()) counts.emplace_back(tpl, 1);
    else ++it->second;
  }
  if (counts.empty()) return std::nullopt;
  auto best = counts.begin();
  for (auto it = counts.begin(); it != counts.end(); ++it)
    if (it->second > best->second) best = it;
  return best->first;
}

OutputVocab build_output_vocab(const MergeRecipe& r, const std::string& base_in,
                               const std::vector<std::string>& models) {
  const std::string base = base_in.empty() ? models.at(0) : base_in;
  std::map<std::string, std::optional<TokenizerFile>> files;
  for (const std::string& m : models) files[m] = read_tokenizer(m);
  if (!files.count(base)) files[base] = read_tokenizer(base);
  if (!files[base])
    throw Error(r.source + ": tokenizer_source needs the tokenizer.json of base model '" + base +
                "' (" + (fs::path(base) / "tokenizer.json").string() + " does not exist)");
  const TokenizerFile& base_tok = *files[base];

  OutputVocab out;
  for (const std::string& m : models)
    out.models[m] = files[m] ? files[m]->ids : base_tok.ids;  // mergekit: "assume same as base"

  const std::string source = r.tokenizer_source.empty() ? "union" : r.tokenizer_source;
  const TokenizerFile* src = &base_tok;
  std::optional<TokenizerFile> own_src;
  if (source != "union" && source != "base") {
    if (files.count(source)) {
      if (!files[source])
        throw Error(r.source + ": tokenizer_source '" + source + "' has no tokenizer.json");
      src = &*files[source];
    } else {
      own_src = read_tokenizer(source);
      if (!own_src)
        throw Error(r.source + ": tokenizer_source '" + source + "' has no tokenizer.json");
      src = &*own_src;
    }
  }
  out.files_from = source == "union" || source == "base" ? base : source;
  const bool stripped = src == &base_tok;  // mergekit strips the base's tokens past vocab_size
  if (stripped)
    for (const auto& [id, tok] : src->vocab)
      if (id >= src->vocab_size)
        throw Error(src->path + ": token '" + tok + "' (id " + std::to_string(id) +
                    ") of model.vocab is past the model's vocab_size " +
                    std::to_string(src->vocab_size) + " (finmoe does not strip a vocabulary)");

  // the output tokenizer's token -> id and added tokens
  std::unordered_map<std::string, int64_t> ids;
  std::vector<ojson> added;
  std::set<std::string> added_set;
  int64_t next = 0;
  for (const auto& [id, tok] : src->vocab) {
    ids.emplace(tok, id);
    next = std::max(next, id + 1);
  }
  for (const auto& t : src->added) {
    const int64_t id = t["id"].get<int64_t>();
    if (stripped && id >= src->vocab_size) continue;
    const std::string c = t["content"].get<std::string>();
    ids[c] = id;
    if (added_set.insert(c).second) added.push_back(t);
    next = std::max(next, id + 1);
  }
  const std::unordered_map<std::string, int64_t> source_ids = ids;
  auto add = [&](ojson entry) {
    const std::string c = entry["content"].get<std::string>();
    auto it = ids.find(c);
    if (it != ids.end()) {  // an existing token becomes an added one with its id
      if (added_set.insert(c).second) {
        entry["id"] = it->second;
        added.push_back(entry);
      }
      return;
    }
    entry["id"] = next;
    ids.emplace(c, next++);
    added_set.insert(c);
    added.push_back(entry);
  };

  if (source == "union") {
    std::vector<std::string> order;  // model.vocab tokens, base first, each model's by id
    std::set<std::string> seen;
    std::vector<std::pair<std::string, ojson>> union_added;  // first settings win
    std::set<std::string> union_added_set;
    std::vector<std::string> ordered_models = {base};
    for (const std::string& m : models)
      if (m != base) ordered_models.push_back(m);
    for (const std::string& m : ordered_models) {
      const TokenizerFile* f = files[m] ? &*files[m] : nullptr;
      if (!f) continue;
      for (const auto& [id, tok] : f->vocab)
        if (id < f->vocab_size && !f->added_contents.count(tok) && seen.insert(tok).second)
          order.push_back(tok);
      for (const auto& t : f->added) {
        if (t["id"].get<int64_t>() >= f->vocab_size) continue;
        const std::string c = t["content"].get<std::string>();
        if (union_added_set.insert(c).second) union_added.emplace_back(c, t);
      }
    }
    for (const std::string& tok : order)
      if (!union_added_set.count(tok) && !source_ids.count(tok)) add(plain_added_token(tok));
    for (const auto& [c, t] : union_added) add(t);
  }
  for (const auto& [tok, cfg] : r.tokens)
    if (!ids.count(tok)) add(plain_added_token(tok));

  out.tokens.assign(size_t(next), std::string());
  std::vector<bool> filled(size_t(next), false);
  for (const auto& [tok, id] : ids) {
    out.tokens[size_t(id)] = tok;
    filled[size_t(id)] = true;
  }
  for (size_t i = 0; i < filled.size(); ++i)
    if (!filled[i])
      throw Error(src->path + ": no token has id " + std::to_string(i) +
                  " (the merged vocabulary must have consecutive ids)");
  out.rows = next;
  if (r.pad_to_multiple_of > 0 && out.rows % r.pad_to_multiple_of)
    out.rows = (out.rows / r.pad_to_multiple_of + 1) * r.pad_to_multiple_of;

  std::stable_sort(added.begin(), added.end(), [](const ojson& a, const ojson& b) {
    return a["id"].get<int64_t>() < b["id"].get<int64_t>();
  });
  out.tokenizer_json = src->json;
  out.tokenizer_json["added_tokens"] = added;
  const fs::path cfg = fs::path(out.files_from) / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    out.tokenizer_config = read_ordered_json(cfg.string());
    if (out.tokenizer_config.is_object() && out.tokenizer_config.contains("added_tokens_decoder")) {
      ojson dec = ojson::object();
      for (const ojson& t : added) {
        ojson e = t;
        e.erase("id");
        dec[std::to_string(t["id"].get<int64_t>())] = e;
      }
      out.tokenizer_config["added_tokens_decoder"] = dec;
    }
  }
  return out;
}

RowMap build_row_map(const MergeRecipe& r, const OutputVocab& vocab,
                     const std::vector<std::string>& inputs, const std::string& base,
                     const std::string& tensor, const std::vector<int64_t>& tensor_rows) {
  RowMap m;
  m.vocab = int64_t(vocab.tokens.size());
  m.rows = vocab.rows;
  const size_t n = inputs.size();
  m.own.assign(n, std::vector<int64_t>(size_t(m.vocab), -1));
  for (size_t i = 0; i < n; ++i) {
    const ModelVocab& mv = vocab.models.at(inputs[i]);
    for (int64_t t = 0; t < m.vocab; ++t) {
      auto it = mv.ids.find(vocab.tokens[size_t(t)]);
      if (it == mv.ids.end()) continue;
      if (it->second >= tensor_rows[i])
        throw Error("tensor '" + tensor + "' of model '" + inputs[i] + "' has " +
                    std::to_string(tensor_rows[i]) + " rows but its tokenizer gives token '" +
                    vocab.tokens[size_t(t)] + "' id " + std::to_string(it->second));
      m.own[i][size_t(t)] = it->second;
    }
  }
  int base_i = -1;
  for (size_t i = 0; i < n; ++i)
    if (!base.empty() && inputs[i] == base) base_i = int(i);
  std::unordered_map<std::string, const MergeRecipe::TokenSource*> configured;
  for (const auto& [tok, cfg] : r.tokens) configured.emplace(tok, &cfg);

  for (int64_t t = 0; t < m.vocab; ++t) {
    const std::string& tok = vocab.tokens[size_t(t)];
    auto c = configured.find(tok);
    const MergeRecipe::TokenSource* cfg = c == configured.end() ? nullptr : c->second;
    std::vector<int> present;
    for (size_t i = 0; i < n; ++i)
      if (m.own[i][size_t(t)] >= 0) present.push_back(int(i));
    const bool force = cfg && cfg->force;
    if (!force && present.size() == n) continue;
    RowMap::Default d;
    d.id = t;
    auto row_of = [&](const std::string& model, const std::string& what) {
      auto it = std::find(inputs.begin(), inputs.end(), model);
      if (it == inputs.end())
        throw Error(r.source + ": tokenizer.tokens['" + tok + "']: " + what + " model '" + model +
                    "' is not an input of tensor '" + tensor + "'");
      return int(it - inputs.begin());
    };
    if (cfg) {
      const std::string where = r.source + ": tokenizer.tokens['" + tok + "']";
      if (cfg->kind == "zero") {
      } else if (cfg->kind == "model") {
        const int i = row_of(cfg->model, "source");
        if (m.own[size_t(i)][size_t(t)] < 0)
          throw Error(where + ": source model '" + cfg->model + "' has no token '" + tok + "'");
        d.mean_of.emplace_back(i, m.own[size_t(i)][size_t(t)]);
      } else if (cfg->kind == "model_token") {
        const int i = row_of(cfg->model, "source");
        int64_t row = cfg->token_id;
        if (row < 0) {
          const ModelVocab& mv = vocab.models.at(cfg->model);
          auto it = mv.ids.find(cfg->token);
          if (it == mv.ids.end())
            throw Error(where + ": model '" + cfg->model + "' has no token '" + cfg->token + "'");
          row = it->second;
        }
        if (row >= tensor_rows[size_t(i)])
          throw Error(where + ": token id " + std::to_string(row) + " is outside tensor '" +
                      tensor + "' of model '" + cfg->model + "' (" +
                      std::to_string(tensor_rows[size_t(i)]) + " rows)");
        d.mean_of.emplace_back(i, row);
      } else {
        throw Error(where + ": a token entry needs a source");
      }
    } else if (present.size() == 1) {
      d.mean_of.emplace_back(present[0], m.own[size_t(present[0])][size_t(t)]);
    } else if (present.empty()) {
      // no model has it: a zero row
    } else if (base_i >= 0 && m.own[size_t(base_i)][size_t(t)] >= 0) {
      d.mean_of.emplace_back(base_i, m.own[size_t(base_i)][size_t(t)]);
    } else {
      for (int i : present) d.mean_of.emplace_back(i, m.own[size_t(i)][size_t(t)]);
    }
    if (force)
      for (size_t i = 0; i < n; ++i) m.own[i][size_t(t)] = -1;
    m.defaults.push_back(std::move(d));
  }
  return m;
}

bool row_map_is_identity(const RowMap& m, const std::vector<int64_t>& tensor_rows) {
  if (m.rows != m.vocab || !m.defaults.empty()) return false;
  for (size_t i = 0; i < m.own.size(); ++i) {
    if (tensor_rows[i] != m.rows) return false;
    for (int64_t t = 0; t < m.vocab; ++t)
      if (m.own[i][size_t(t)] != t) return false;
  }
  return true;
}

}  // namespace finmoe
