#include "serve/constraint.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

namespace finmoe {

using constrain::Dfa;
using constrain::Frag;
using constrain::Nfa;

// ---- token bytes -----------------------------------------------------------

namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + size_t(n) > s.size()) return false;
    for (int k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + size_t(k)]) & 0xC0) != 0x80) return false;
    i += size_t(n);
  }
  return true;
}

// Code points of UTF-8 text (invalid bytes as themselves).
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + size_t(n) > s.size()) {
      out.push_back(c);
      ++i;
      continue;
    }
    uint32_t v = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k)
      v = (v << 6) | (static_cast<unsigned char>(s[i + size_t(k)]) & 0x3F);
    out.push_back(v);
    i += size_t(n);
  }
  return out;
}

// GPT-2's byte-level alphabet: code point -> byte (256 entries).
std::vector<int> byte_level_inverse() {
  std::vector<int> inv(512, -1);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    inv[size_t(printable ? b : 256 + extra++)] = b;
  }
  return inv;
}

// The bytes a token adds to the text. The vocabulary string is mapped back
// through the encodings tokenizer.json uses (byte-level alphabet; Metaspace
// with <0xHH> byte fallback), and the mapping is kept only when the
// tokenizer's own decode of the single token agrees; otherwise that decode.
std::optional<std::string> token_bytes(const Tokenizer& tok, int32_t id,
                                       const std::vector<int>& inv) {
  std::string piece;
  try {
    if (tok.is_special(id)) return std::nullopt;
    piece = tok.id_to_token(id);
  } catch (const Error&) {
    return std::nullopt;
  }
  const std::string decoded = tok.decode(std::span<const int32_t>(&id, 1), false);
  auto agrees = [&](const std::string& b) {
    if (b == decoded) return true;
    // Metaspace / Strip decoders drop the space a sequence starts with; inside the text it stays
    if (!b.empty() && b[0] == ' ' && decoded == b.substr(1)) return true;
    return !valid_utf8(b) && decoded.find(kReplacement) != std::string::npos;
  };
  // byte-level
  {
    std::string b;
    bool ok = true;
    for (uint32_t c : code_points(piece)) {
      if (c >= inv.size() || inv[c] < 0) {
        ok = false;
        break;
      }
      b.push_back(char(inv[c]));
    }
    if (ok && !b.empty() && agrees(b)) return b;
  }
  // Metaspace + byte fallback
  if (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece[5] == '>') {
    const std::string b(1, char(std::stoi(piece.substr(3, 2), nullptr, 16)));
    if (agrees(b)) return b;
  }
  {
    std::string b;
    const std::string meta = "\xE2\x96\x81";
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, meta.size(), meta) == 0) {
        b += ' ';
        i += meta.size();
      } else {
        b += piece[i++];
      }
    }
    if (!b.empty() && agrees(b)) return b;
  }
  if (decoded.empty()) return std::nullopt;
  return decoded;
}

}  // namespace

TokenVocab::TokenVocab(int64_t model_vocab, const Tokenizer& tokenizer) {
  const int64_t n = std::min(model_vocab, tokenizer.vocab_size());
  const auto inv = byte_level_inverse();
  bytes_.reserve(size_t(n));
  for (int32_t id = 0; id < n; ++id) bytes_.push_back(token_bytes(tokenizer, id, inv));
  build_trie();
}

TokenVocab::TokenVocab(std::vector<std::optional<std::string>> bytes) : bytes_(std::move(bytes)) {
  build_trie();
}

void TokenVocab::build_trie() {
  std::vector<int32_t> order;
  for (int32_t id = 0; id < int32_t(bytes_.size()); ++id)
    if (bytes_[size_t(id)] && !bytes_[size_t(id)]->empty()) order.push_back(id);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return *bytes_[size_t(a)] < *bytes_[size_t(b)]; });
  Trie& t = trie_;
  std::vector<int32_t> path;  // node index per depth - 1
  const std::string* prev = nullptr;
  for (int32_t id : order) {
    const std::string& s = *bytes_[size_t(id)];
    size_t common = 0;
    if (prev)
      while (common < prev->size() && common < s.size() && (*prev)[common] == s[common]) ++common;
    while (path.size() > common) {
      t.end[size_t(path.back())] = int32_t(t.byte.size());
      path.pop_back();
    }
    for (size_t d = common; d < s.size(); ++d) {
      path.push_back(int32_t(t.byte.size()));
      t.byte.push_back(uint8_t(s[d]));
      t.depth.push_back(uint16_t(std::min<size_t>(d + 1, 65535)));
      t.end.push_back(-1);
      t.tok_begin.push_back(int32_t(t.ids.size()));
    }
    // sorted order: the tokens of one node arrive together, before any descendant's
    t.ids.push_back(id);
    prev = &s;
  }
  while (!path.empty()) {
    t.end[size_t(path.back())] = int32_t(t.byte.size());
    path.pop_back();
  }
  // tok_begin[i] was set when node i was made; its tokens end where the next node's begin
  t.tok_begin.push_back(int32_t(t.ids.size()));
}

// ---- constraint ------------------------------------------------------------

TokenConstraint::TokenConstraint(Dfa dfa, std::shared_ptr<const TokenVocab> vocab,
                                 std::string description)
    : dfa_(std::move(dfa)),
      vocab_(std::move(vocab)),
      description_(std::move(description)),
      masks_(size_t(dfa_.num_states())) {}

int32_t TokenConstraint::advance(int32_t state, int32_t token) const {
  if (state < 0 || token < 0 || token >= vocab_->size()) return -1;
  const auto& b = vocab_->bytes(token);
  if (!b || b->empty()) return -1;
  return dfa_.walk(state, *b);
}

std::shared_ptr<const TokenMask> TokenConstraint::mask(int32_t state) const {
  {
    std::lock_guard lock(mu_);
    if (auto m = masks_.at(size_t(state))) return m;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto m = std::make_shared<TokenMask>();
  const auto V = size_t(vocab_->size());
  m->bits.assign((V + 63) / 64, 0);
  const TokenVocab::Trie& t = vocab_->trie();
  std::vector<int32_t> at(1, state);  // DFA state after depth d bytes
  const auto N = int32_t(t.byte.size());
  for (int32_t i = 0; i < N;) {
    const size_t d = t.depth[size_t(i)];
    const int32_t s = dfa_.next(at[d - 1], t.byte[size_t(i)]);
    if (s < 0) {
      i = t.end[size_t(i)];
      continue;
    }
    if (at.size() <= d) at.resize(d + 1);
    at[d] = s;
    for (int32_t k = t.tok_begin[size_t(i)]; k < t.tok_begin[size_t(i) + 1]; ++k) {
      const int32_t id = t.ids[size_t(k)];
      m->bits[size_t(id) >> 6] |= uint64_t(1) << (id & 63);
      ++m->count;
    }
    ++i;
  }
  if (m->count * 32 < int64_t(V)) {  // the id list is smaller than the bitset
    m->ids.reserve(size_t(m->count));
    for (size_t w = 0; w < m->bits.size(); ++w)
      for (uint64_t b = m->bits[w]; b; b &= b - 1)
        m->ids.push_back(int32_t(w * 64 + size_t(__builtin_ctzll(b))));
    m->bits = {};
  }
  masks_computed_ += 1;
  mask_ns_ +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  std::lock_guard lock(mu_);
  auto& slot = masks_.at(size_t(state));
  if (!slot) slot = std::move(m);
  return slot;
}

int64_t TokenConstraint::apply(int32_t state, std::span<float> logits,
                               std::span<const int32_t> stop_ids) const {
  const auto m = mask(state);
  const bool accept = dfa_.accepting(state);
  // a stop token ends the output: allowed exactly where the output is complete,
  // whatever its bytes (a stop token may also be an ordinary one, "\n" say)
  std::vector<std::pair<int32_t, float>> keep;
  for (int32_t id : stop_ids)
    if (id >= 0 && size_t(id) < logits.size())
      keep.emplace_back(id, accept ? logits[size_t(id)] : -INFINITY);
  const size_t n = std::min(logits.size(), size_t(vocab_->size()));
  const float ninf = -INFINITY;
  if (m->bits.empty()) {
    // sparse: keep the allowed values, mask everything, put them back
    std::vector<float> kept;
    kept.reserve(m->ids.size());
    for (int32_t id : m->ids) kept.push_back(size_t(id) < n ? logits[size_t(id)] : ninf);
    std::fill(logits.begin(), logits.end(), ninf);
    for (size_t k = 0; k < m->ids.size(); ++k)
      if (size_t(m->ids[k]) < n) logits[size_t(m->ids[k])] = kept[k];
  } else {
    for (size_t w = 0; w * 64 < n; ++w) {
      const uint64_t bits = m->bits[w];
      if (bits == ~uint64_t(0) && (w + 1) * 64 <= n) continue;
      const size_t hi = std::min(n, (w + 1) * 64);
      for (size_t i = w * 64; i < hi; ++i)
        if (!((bits >> (i & 63)) & 1)) logits[i] = ninf;
    }
    for (size_t i = n; i < logits.size(); ++i) logits[i] = ninf;
  }
  int64_t count = m->count;
  for (const auto& [id, v] : keep) {
    const bool in_mask = size_t(id) < n && m->test(id);
    if (accept && !in_mask) ++count;
    if (!accept && in_mask) --count;
    logits[size_t(id)] = v;
  }
  return count;
}

// ---- builders --------------------------------------------------------------

namespace {

std::shared_ptr<const TokenConstraint> finish(Nfa& nfa, Frag f,
                                              std::shared_ptr<const TokenVocab> vocab,
                                              std::string description) {
  if (!vocab) throw Error("constrained decoding needs a tokenizer");
  return std::make_shared<TokenConstraint>(Dfa::build(nfa, f), std::move(vocab),
                                           std::move(description));
}

}  // namespace

std::shared_ptr<const TokenConstraint> regex_constraint(const std::string& pattern,
                                                        std::shared_ptr<const TokenVocab> vocab,
                                                        constrain::AutomatonLimits limits) {
  Nfa nfa(limits);
  const Frag f = constrain::Regex::parse(pattern).compile(nfa);
  return finish(nfa, f, std::move(vocab), "regex");
}

std::shared_ptr<const TokenConstraint> json_schema_constraint(
    const nlohmann::ordered_json& schema, std::shared_ptr<const TokenVocab> vocab,
    constrain::SchemaOptions options, constrain::AutomatonLimits limits) {
  Nfa nfa(limits);
  const Frag f = constrain::compile_json_schema(nfa, schema, options);
  try {
    return finish(nfa, f, std::move(vocab), "json_schema");
  } catch (const constrain::SchemaError&) {
    throw;
  } catch (const Error& e) {
    throw constrain::SchemaError("", e.what());
  }
}

std::shared_ptr<const TokenConstraint> json_object_constraint(
    std::shared_ptr<const TokenVocab> vocab, constrain::SchemaOptions options,
    constrain::AutomatonLimits limits) {
  Nfa nfa(limits);
  const Frag f = constrain::compile_any_json_object(nfa, options);
  return finish(nfa, f, std::move(vocab), "json_object");
}

std::shared_ptr<const TokenConstraint> choice_constraint(const std::vector<std::string>& choices,
                                                         std::shared_ptr<const TokenVocab> vocab) {
  if (choices.empty()) throw Error("the list of choices is empty");
  Nfa nfa;
  std::vector<Frag> opts;
  for (const auto& c : choices) opts.push_back(nfa.literal(c));
  return finish(nfa, nfa.alt(opts), std::move(vocab), "choice");
}

ToolCallFormat tool_call_format(const std::string& chat_template) {
  if (chat_template.find("<tool_call>") != std::string::npos) return ToolCallFormat::Hermes;
  if (chat_template.find("[TOOL_CALLS]") != std::string::npos) return ToolCallFormat::Mistral;
  if (chat_template.find("<|python_tag|>") != std::string::npos ||
      chat_template.find("\"parameters\"") != std::string::npos)
    return ToolCallFormat::Llama3;
  return ToolCallFormat::Hermes;
}

std::shared_ptr<const TokenConstraint> tool_call_constraint(ToolCallFormat format,
                                                            const std::vector<ToolSpec>& tools,
                                                            std::shared_ptr<const TokenVocab> vocab,
                                                            bool several,
                                                            constrain::SchemaOptions options,
                                                            constrain::AutomatonLimits limits) {
  if (tools.empty()) throw Error("no tool to call");
  Nfa nfa(limits);
  auto one_call = [&] {
    const std::string args_key = format == ToolCallFormat::Llama3 ? "parameters" : "arguments";
    std::vector<Frag> calls;
    for (size_t i = 0; i < tools.size(); ++i) {
      const ToolSpec& t = tools[i];
      Frag args;
      try {
        args = t.parameters.is_null() ? constrain::compile_any_json_object(nfa, options)
                                      : constrain::compile_json_schema(nfa, t.parameters, options);
      } catch (const constrain::SchemaError& e) {
        const std::string where =
            t.where.empty() ? "tools[" + std::to_string(i) + "].function.parameters" : t.where;
        throw constrain::SchemaError(e.path().empty() ? where : where + "." + e.path(), e.what());
      }
      const std::string head =
          "{\"name\": " + nlohmann::json(t.name).dump() + ", \"" + args_key + "\": ";
      calls.push_back(nfa.cat(nfa.cat(nfa.literal(head), args), nfa.literal("}")));
    }
    Frag call = nfa.alt(calls);
    if (format == ToolCallFormat::Hermes)
      call = nfa.cat(nfa.cat(nfa.literal("<tool_call>\n"), call), nfa.literal("\n</tool_call>"));
    return call;
  };
  // several calls: one copy of a call in a loop (the parser reads each)
  const char* sep = format == ToolCallFormat::Hermes    ? "\n"
                    : format == ToolCallFormat::Mistral ? ", "
                                                        : "; ";
  Frag call = nfa.sep_list(
      one_call, [&] { return nfa.literal(sep); }, 1, several ? -1 : 1);
  if (format == ToolCallFormat::Mistral)
    call = nfa.cat(nfa.cat(nfa.literal("["), call), nfa.literal("]"));
  try {
    return finish(nfa, call, std::move(vocab), "tool_call");
  } catch (const constrain::SchemaError&) {
    throw;
  } catch (const Error& e) {
    throw constrain::SchemaError("tools", e.what());
  }
}

// ---- factory ---------------------------------------------------------------

ConstraintFactory::ConstraintFactory(int64_t model_vocab, const Tokenizer* tokenizer,
                                     size_t capacity)
    : model_vocab_(model_vocab), tokenizer_(tokenizer), capacity_(std::max<size_t>(capacity, 1)) {}

std::shared_ptr<const TokenVocab> ConstraintFactory::vocab() {
  std::lock_guard lock(vocab_mu_);
  if (!vocab_) {
    if (!tokenizer_) throw Error("constrained decoding needs a tokenizer");
    vocab_ = std::make_shared<const TokenVocab>(model_vocab_, *tokenizer_);
  }
  return vocab_;
}

std::shared_ptr<const TokenConstraint> ConstraintFactory::get(
    const std::string& key,
    const std::function<std::shared_ptr<const TokenConstraint>(std::shared_ptr<const TokenVocab>)>&
        build) {
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < recent_.size(); ++i)
      if (recent_[i].first == key) {
        auto hit = recent_[i];
        recent_.erase(recent_.begin() + long(i));
        recent_.push_back(hit);
        return hit.second;
      }
  }
  auto c = build(vocab());  // outside the lock: a large schema takes a while
  std::lock_guard lock(mu_);
  recent_.emplace_back(key, c);
  if (recent_.size() > capacity_) recent_.erase(recent_.begin());
  return c;
}

}  // namespace finmoe
