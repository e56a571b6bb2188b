#include "serve/regex_dfa.h"

#include <algorithm>
#include <optional>
#include <unordered_map>

namespace finmoe::constrain {

// ---- code-point sets -------------------------------------------------------

namespace {

constexpr uint32_t kMaxCode = 0x10FFFF;
const CodeSet kSurrogates = {{0xD800, 0xDFFF}};

}  // namespace

CodeSet normalize(CodeSet s) {
  std::sort(s.begin(), s.end());
  CodeSet out;
  for (const auto& [lo, hi] : s) {
    if (lo > hi) continue;
    if (!out.empty() && lo <= out.back().second + 1)
      out.back().second = std::max(out.back().second, hi);
    else
      out.emplace_back(lo, hi);
  }
  return out;
}

CodeSet complement(const CodeSet& s) {
  const CodeSet n = normalize(s);
  CodeSet out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : n) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= kMaxCode) out.emplace_back(next, kMaxCode);
  return subtract(out, kSurrogates);
}

CodeSet subtract(const CodeSet& a, const CodeSet& b) {
  const CodeSet bn = normalize(b);
  CodeSet out;
  for (auto [lo, hi] : normalize(a)) {
    for (const auto& [blo, bhi] : bn) {
      if (bhi < lo || blo > hi) continue;
      if (blo > lo) out.emplace_back(lo, blo - 1);
      if (bhi >= hi) {
        lo = 1;
        hi = 0;  // consumed
        break;
      }
      lo = bhi + 1;
    }
    if (lo <= hi) out.emplace_back(lo, hi);
  }
  return normalize(out);
}

// ---- NFA -------------------------------------------------------------------

int32_t Nfa::add_state() {
  if (int64_t(edges_.size()) >= limits_.max_nfa_states)
    throw Error("the pattern needs more than " + std::to_string(limits_.max_nfa_states) +
                " automaton states; simplify it (smaller repetition counts, maxLength, maxItems or "
                "fewer alternatives)");
  edges_.emplace_back();
  eps_.emplace_back();
  return int32_t(edges_.size() - 1);
}

Frag Nfa::empty() {
  const int32_t s = add_state();
  return {s, s};
}

Frag Nfa::bytes(uint8_t lo, uint8_t hi) {
  Frag f{add_state(), add_state()};
  edge(f.in, lo, hi, f.out);
  return f;
}

Frag Nfa::literal(std::string_view utf8) {
  Frag f = empty();
  for (unsigned char c : utf8) f = cat(f, bytes(c, c));
  return f;
}

namespace {

int utf8_len(uint32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

void utf8_encode(uint32_t c, uint8_t* out) {
  switch (utf8_len(c)) {
    case 1:
      out[0] = uint8_t(c);
      break;
    case 2:
      out[0] = uint8_t(0xC0 | (c >> 6));
      out[1] = uint8_t(0x80 | (c & 0x3F));
      break;
    case 3:
      out[0] = uint8_t(0xE0 | (c >> 12));
      out[1] = uint8_t(0x80 | ((c >> 6) & 0x3F));
      out[2] = uint8_t(0x80 | (c & 0x3F));
      break;
    default:
      out[0] = uint8_t(0xF0 | (c >> 18));
      out[1] = uint8_t(0x80 | ((c >> 12) & 0x3F));
      out[2] = uint8_t(0x80 | ((c >> 6) & 0x3F));
      out[3] = uint8_t(0x80 | (c & 0x3F));
  }
}

// A code-point range as sequences of byte ranges: split until both ends encode
// to the same length and every continuation byte below the first differing
// one spans its whole range, so the range is a product of byte ranges.
void utf8_sequences(uint32_t lo, uint32_t hi,
                    std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  if (lo > hi) return;
  for (uint32_t edge : {0x7Fu, 0x7FFu, 0xFFFFu})
    if (lo <= edge && hi > edge) {
      utf8_sequences(lo, edge, out);
      utf8_sequences(edge + 1, hi, out);
      return;
    }
  const int n = utf8_len(lo);
  for (int i = 1; i < n; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  utf8_encode(lo, a);
  utf8_encode(hi, b);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int i = 0; i < n; ++i) seq.emplace_back(a[i], b[i]);
  out.push_back(std::move(seq));
}

}  // namespace

Frag Nfa::codes(const CodeSet& set) {
  Frag f{add_state(), add_state()};
  for (const auto& [lo, hi] : normalize(subtract(set, kSurrogates))) {
    std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
    utf8_sequences(lo, hi, seqs);
    for (const auto& seq : seqs) {
      int32_t at = f.in;
      for (size_t i = 0; i < seq.size(); ++i) {
        const int32_t to = i + 1 == seq.size() ? f.out : add_state();
        edge(at, seq[i].first, seq[i].second, to);
        at = to;
      }
    }
  }
  return f;
}

Frag Nfa::cat(Frag a, Frag b) {
  eps(a.out, b.in);
  return {a.in, b.out};
}

Frag Nfa::alt(const std::vector<Frag>& options) {
  Frag f{add_state(), add_state()};
  for (const Frag& o : options) {
    eps(f.in, o.in);
    eps(o.out, f.out);
  }
  return f;
}

Frag Nfa::opt(Frag a) {
  Frag f = alt({a});
  eps(f.in, f.out);
  return f;
}

Frag Nfa::repeat(const std::function<Frag()>& make, int64_t min, int64_t max) {
  Frag f = empty();
  for (int64_t i = 0; i < min; ++i) f = cat(f, make());
  if (max < 0) {
    Frag body = make();
    Frag loop{add_state(), add_state()};
    eps(loop.in, body.in);
    eps(body.out, loop.in);
    eps(loop.in, loop.out);
    return cat(f, loop);
  }
  // the optional copies nest so that each ends the repetition: a? (a (a ...)?)?
  Frag tail = empty();
  for (int64_t i = min; i < max; ++i) tail = opt(cat(make(), tail));
  return cat(f, tail);
}

Frag Nfa::sep_list(const std::function<Frag()>& elem, const std::function<Frag()>& sep, int64_t min,
                   int64_t max) {
  auto rest = [&] { return cat(sep(), elem()); };
  auto nonempty = [&](int64_t lo) {  // lo >= 1 elements, up to max
    if (max >= 0) return cat(elem(), repeat(rest, lo - 1, max - 1));
    // unbounded: lo - 1 "elem sep" copies, then one elem with a "sep" edge back to its start
    Frag f = empty();
    for (int64_t i = 1; i < lo; ++i) f = cat(f, cat(elem(), sep()));
    const Frag e = elem(), s = sep();
    eps(e.out, s.in);
    eps(s.out, e.in);
    return cat(f, Frag{e.in, e.out});
  };
  if (max == 0) return empty();
  if (min >= 1) return nonempty(min);
  return opt(nonempty(1));
}

// ---- regex parsing ---------------------------------------------------------

namespace {

using Node = Regex::Node;

Node set_node(CodeSet s) {
  Node n;
  n.kind = Node::Set;
  n.set = normalize(std::move(s));
  return n;
}

const CodeSet kDigit = {{'0', '9'}};
const CodeSet kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const CodeSet kSpace = {{'\t', '\r'},     {' ', ' '},       {0xA0, 0xA0},     {0x1680, 0x1680},
                        {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                        {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
const CodeSet kDot = complement({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}});

class Parser {
 public:
  explicit Parser(std::string_view p) : p_(p) {}

  Node parse() {
    if (peek('^')) ++i_;
    Node n = alternation();
    if (i_ < p_.size()) fail(p_[i_] == ')' ? "unbalanced ')'" : "unexpected character");
    return n;
  }

 private:
  std::string_view p_;
  size_t i_ = 0;
  int depth_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("regex: " + what + " at offset " + std::to_string(i_) + " of /" +
                std::string(p_.substr(0, 200)) + "/");
  }
  bool peek(char c) const { return i_ < p_.size() && p_[i_] == c; }

  Node alternation() {
    std::vector<Node> opts{sequence()};
    while (peek('|')) {
      ++i_;
      opts.push_back(sequence());
    }
    if (opts.size() == 1) return std::move(opts[0]);
    Node n;
    n.kind = Node::Alt;
    n.kids = std::move(opts);
    return n;
  }

  Node sequence() {
    Node n;
    n.kind = Node::Cat;
    while (i_ < p_.size() && p_[i_] != '|' && p_[i_] != ')') {
      if (p_[i_] == '$') {
        ++i_;
        if (i_ != p_.size() && !(depth_ == 0 && peek('|')))
          fail("'$' is supported only at the end of the pattern");
        continue;
      }
      if (p_[i_] == '^') fail("'^' is supported only at the start of the pattern");
      Node a = atom();
      n.kids.push_back(quantified(std::move(a)));
    }
    return n;
  }

  int64_t number() {
    const size_t start = i_;
    int64_t v = 0;
    while (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '9') {
      v = v * 10 + (p_[i_++] - '0');
      if (v > 100000) fail("repetition count too large");
    }
    if (i_ == start) fail("expected a number");
    return v;
  }

  Node quantified(Node a) {
    while (i_ < p_.size()) {
      int64_t lo, hi;
      const char c = p_[i_];
      if (c == '?')
        lo = 0, hi = 1;
      else if (c == '*')
        lo = 0, hi = -1;
      else if (c == '+')
        lo = 1, hi = -1;
      else if (c == '{') {
        const size_t save = i_;
        ++i_;
        if (i_ >= p_.size() || !(p_[i_] >= '0' && p_[i_] <= '9')) {
          i_ = save;  // a literal '{' (ECMAScript's annex B)
          return a;
        }
        lo = number();
        hi = lo;
        if (peek(',')) {
          ++i_;
          hi = peek('}') ? -1 : number();
        }
        if (!peek('}')) fail("expected '}' closing a repetition");
        if (hi >= 0 && hi < lo) fail("repetition {m,n} with n < m");
      } else {
        return a;
      }
      ++i_;
      if (peek('?')) ++i_;  // lazy: same language
      if (peek('+')) fail("possessive quantifiers are not supported");
      Node r;
      r.kind = Node::Repeat;
      r.min = lo;
      r.max = hi;
      r.kids.push_back(std::move(a));
      a = std::move(r);
    }
    return a;
  }

  uint32_t utf8_char() {  // the code point at i_ (UTF-8), advancing
    const auto b0 = static_cast<unsigned char>(p_[i_]);
    int n = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    if (n == 0 || i_ + size_t(n) > p_.size()) fail("invalid UTF-8");
    uint32_t c = n == 1 ? b0 : n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
    for (int k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(p_[i_ + size_t(k)]);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8");
      c = (c << 6) | (b & 0x3F);
    }
    i_ += size_t(n);
    return c;
  }

  uint32_t hex(int digits) {
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k, ++i_) {
      if (i_ >= p_.size()) fail("expected a hex digit");
      const char c = p_[i_];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) fail("expected a hex digit");
      v = v * 16 + uint32_t(d);
    }
    return v;
  }

  // After a backslash: a set (\d, \w, ...) or one code point.
  CodeSet escape(bool in_class) {
    if (i_ >= p_.size()) fail("trailing backslash");
    const char c = p_[i_++];
    switch (c) {
      case 'd':
        return kDigit;
      case 'D':
        return complement(kDigit);
      case 'w':
        return kWord;
      case 'W':
        return complement(kWord);
      case 's':
        return kSpace;
      case 'S':
        return complement(kSpace);
      case 'n':
        return {{'\n', '\n'}};
      case 't':
        return {{'\t', '\t'}};
      case 'r':
        return {{'\r', '\r'}};
      case 'f':
        return {{'\f', '\f'}};
      case 'v':
        return {{'\v', '\v'}};
      case '0':
        return {{0, 0}};
      case 'x': {
        const uint32_t v = hex(2);
        return {{v, v}};
      }
      case 'u': {
        if (peek('{')) fail("\\u{...} is not supported; use \\uHHHH");
        const uint32_t v = hex(4);
        return {{v, v}};
      }
      case 'b':
        if (in_class) return {{'\b', '\b'}};
        fail("word boundaries (\\b) are not supported");
      case 'B':
        fail("\\B is not supported");
      case 'k':
        fail("named backreferences are not supported");
      case 'p':
      case 'P':
        fail("Unicode property escapes are not supported");
      default:
        if (c >= '1' && c <= '9') fail("backreferences are not supported");
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
          fail(std::string("unknown escape \\") + c);
        --i_;
        const uint32_t v = utf8_char();
        return {{v, v}};
    }
  }

  Node char_class() {
    ++i_;  // '['
    bool negate = false;
    if (peek('^')) {
      negate = true;
      ++i_;
    }
    CodeSet set;
    bool first = true;
    while (true) {
      if (i_ >= p_.size()) fail("unterminated character class");
      if (p_[i_] == ']' && !first) break;
      first = false;
      auto one =
          [&](CodeSet& s) -> std::optional<uint32_t> {  // a single char, or nullopt for \d etc.
        if (p_[i_] == '\\') {
          ++i_;
          s = escape(/*in_class=*/true);
          if (s.size() == 1 && s[0].first == s[0].second) return s[0].first;
          return std::nullopt;
        }
        const uint32_t v = utf8_char();
        s = {{v, v}};
        return v;
      };
      CodeSet a;
      const auto lo = one(a);
      if (lo && peek('-') && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        CodeSet b;
        const auto hi = one(b);
        if (!hi) fail("a class escape cannot end a range");
        if (*hi < *lo) fail("range out of order in character class");
        set.emplace_back(*lo, *hi);
      } else {
        set.insert(set.end(), a.begin(), a.end());
      }
    }
    ++i_;  // ']'
    return set_node(negate ? complement(set) : set);
  }

  Node atom() {
    const char c = p_[i_];
    if (c == '(') {
      ++i_;
      if (peek('?')) {
        if (i_ + 1 < p_.size() && p_[i_ + 1] == ':')
          i_ += 2;
        else
          fail("only (?:...) groups are supported (no lookaround, named groups or flags)");
      }
      if (++depth_ > 200) fail("groups nested too deeply");
      Node n = alternation();
      --depth_;
      if (!peek(')')) fail("missing ')'");
      ++i_;
      return n;
    }
    if (c == '[') return char_class();
    if (c == '.') {
      ++i_;
      return set_node(kDot);
    }
    if (c == '\\') {
      ++i_;
      return set_node(escape(false));
    }
    if (c == '*' || c == '+' || c == '?') fail("nothing to repeat");
    if (c == '{' && i_ + 1 < p_.size() && p_[i_ + 1] >= '0' && p_[i_ + 1] <= '9')
      fail("nothing to repeat");
    const uint32_t v = utf8_char();
    return set_node({{v, v}});
  }
};

Frag compile_node(const Node& n, Nfa& nfa, const CodeSet& exclude) {
  switch (n.kind) {
    case Node::Set:
      return nfa.codes(exclude.empty() ? n.set : subtract(n.set, exclude));
    case Node::Cat: {
      Frag f = nfa.empty();
      for (const Node& k : n.kids) f = nfa.cat(f, compile_node(k, nfa, exclude));
      return f;
    }
    case Node::Alt: {
      std::vector<Frag> opts;
      for (const Node& k : n.kids) opts.push_back(compile_node(k, nfa, exclude));
      return nfa.alt(opts);
    }
    case Node::Repeat:
      return nfa.repeat([&] { return compile_node(n.kids[0], nfa, exclude); }, n.min, n.max);
  }
  return nfa.empty();
}

}  // namespace

Regex Regex::parse(std::string_view pattern) {
  Regex r;
  r.root_ = Parser(pattern).parse();
  return r;
}

Frag Regex::compile(Nfa& nfa, const CodeSet& exclude) const {
  return compile_node(root_, nfa, exclude);
}

// ---- DFA -------------------------------------------------------------------

namespace {

struct VecHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    size_t h = v.size();
    for (int32_t x : v) h = h * 1000003u ^ size_t(x);
    return h;
  }
};

void closure(const Nfa& nfa, std::vector<int32_t>& set, std::vector<uint32_t>& mark,
             uint32_t stamp) {
  std::vector<int32_t> stack(set.begin(), set.end());
  for (int32_t s : set) mark[size_t(s)] = stamp;
  while (!stack.empty()) {
    const int32_t s = stack.back();
    stack.pop_back();
    for (int32_t t : nfa.eps_of(s))
      if (mark[size_t(t)] != stamp) {
        mark[size_t(t)] = stamp;
        set.push_back(t);
        stack.push_back(t);
      }
  }
  std::sort(set.begin(), set.end());
}

}  // namespace

Dfa Dfa::build(const Nfa& nfa, Frag frag) {
  const int64_t max_states = nfa.limits().max_dfa_states;
  // byte classes: bytes no edge tells apart share a class
  std::vector<uint8_t> cut(257, 0);
  cut[0] = cut[256] = 1;
  for (size_t s = 0; s < nfa.size(); ++s)
    for (const auto& e : nfa.edges(int32_t(s))) cut[e.lo] = cut[size_t(e.hi) + 1] = 1;
  std::vector<int> cls(256);
  std::vector<uint8_t> rep;  // a byte of each class
  for (int b = 0, c = -1; b < 256; ++b) {
    if (cut[size_t(b)]) {
      ++c;
      rep.push_back(uint8_t(b));
    }
    cls[size_t(b)] = c;
  }
  const size_t C = rep.size();

  std::vector<uint32_t> mark(nfa.size(), 0);
  uint32_t stamp = 0;
  std::unordered_map<std::vector<int32_t>, int32_t, VecHash> ids;
  std::vector<std::vector<int32_t>> sets;
  std::vector<int32_t> trans;  // [state * C + class]
  auto intern = [&](std::vector<int32_t> set) {
    auto it = ids.find(set);
    if (it != ids.end()) return it->second;
    if (int64_t(sets.size()) >= max_states)
      throw Error("the pattern needs more than " + std::to_string(max_states) +
                  " automaton states; simplify it (smaller repetition counts, maxLength, maxItems, "
                  "fewer optional properties or alternatives)");
    const auto id = int32_t(sets.size());
    ids.emplace(set, id);
    sets.push_back(std::move(set));
    return id;
  };
  std::vector<int32_t> start{frag.in};
  closure(nfa, start, mark, ++stamp);
  intern(std::move(start));
  for (size_t d = 0; d < sets.size(); ++d) {
    trans.resize((d + 1) * C, -1);
    for (size_t c = 0; c < C; ++c) {
      const uint8_t b = rep[c];
      std::vector<int32_t> to;
      ++stamp;
      for (int32_t s : sets[d])
        for (const auto& e : nfa.edges(s))
          if (e.lo <= b && b <= e.hi && mark[size_t(e.to)] != stamp) {
            mark[size_t(e.to)] = stamp;
            to.push_back(e.to);
          }
      if (to.empty()) continue;
      closure(nfa, to, mark, ++stamp);
      const int32_t id = intern(std::move(to));
      trans[d * C + c] = id;
    }
  }
  const size_t N = sets.size();
  std::vector<uint8_t> acc(N, 0);
  for (size_t d = 0; d < N; ++d)
    acc[d] = std::binary_search(sets[d].begin(), sets[d].end(), frag.out);

  // states from which acceptance is reachable
  std::vector<std::vector<int32_t>> rev(N);
  for (size_t d = 0; d < N; ++d)
    for (size_t c = 0; c < C; ++c)
      if (trans[d * C + c] >= 0) rev[size_t(trans[d * C + c])].push_back(int32_t(d));
  std::vector<uint8_t> live(N, 0);
  std::vector<int32_t> stack;
  for (size_t d = 0; d < N; ++d)
    if (acc[d]) {
      live[d] = 1;
      stack.push_back(int32_t(d));
    }
  while (!stack.empty()) {
    const int32_t s = stack.back();
    stack.pop_back();
    for (int32_t p : rev[size_t(s)])
      if (!live[size_t(p)]) {
        live[size_t(p)] = 1;
        stack.push_back(p);
      }
  }
  if (!live[0]) throw Error("the pattern matches nothing");
  for (size_t d = 0; d < N; ++d)
    for (size_t c = 0; c < C; ++c)
      if (trans[d * C + c] >= 0 && !live[size_t(trans[d * C + c])]) trans[d * C + c] = -1;

  // Moore minimization over the live states (dead ones are unreachable now)
  std::vector<int32_t> block(N, -1);
  for (size_t d = 0; d < N; ++d)
    if (live[d]) block[d] = acc[d];
  int32_t num_blocks = 0;
  for (;;) {
    std::unordered_map<std::vector<int32_t>, int32_t, VecHash> sig_ids;
    std::vector<int32_t> next_block(N, -1);
    std::vector<int32_t> sig(C + 1);
    for (size_t d = 0; d < N; ++d) {
      if (!live[d]) continue;
      sig[0] = block[d];
      for (size_t c = 0; c < C; ++c) {
        const int32_t t = trans[d * C + c];
        sig[c + 1] = t < 0 ? -1 : block[size_t(t)];
      }
      auto [it, fresh] = sig_ids.emplace(sig, int32_t(sig_ids.size()));
      next_block[d] = it->second;
    }
    const auto n = int32_t(sig_ids.size());
    block.swap(next_block);
    if (n == num_blocks) break;
    num_blocks = n;
  }

  Dfa dfa;
  dfa.start_ = block[0];
  dfa.classes_ = int32_t(C);
  for (int b = 0; b < 256; ++b) dfa.class_of_[size_t(b)] = uint8_t(cls[size_t(b)]);
  dfa.next_.assign(size_t(num_blocks) * C, -1);
  dfa.accept_.assign(size_t(num_blocks), 0);
  dfa.has_next_.assign(size_t(num_blocks), 0);
  for (size_t d = 0; d < N; ++d) {
    if (!live[d]) continue;
    const auto q = size_t(block[d]);
    dfa.accept_[q] = acc[d];
    for (size_t c = 0; c < C; ++c) {
      const int32_t t = trans[d * C + c];
      if (t < 0) continue;
      dfa.next_[q * C + c] = block[size_t(t)];
      dfa.has_next_[q] = 1;
    }
  }
  return dfa;
}

int32_t Dfa::walk(int32_t s, std::string_view bytes) const {
  for (unsigned char b : bytes) {
    if (s < 0) return -1;
    s = next(s, b);
  }
  return s;
}

Dfa compile_regex(std::string_view pattern, AutomatonLimits limits) {
  const Regex re = Regex::parse(pattern);
  Nfa nfa(limits);
  const Frag f = re.compile(nfa);
  return Dfa::build(nfa, f);
}

}  // namespace finmoe::constrain
