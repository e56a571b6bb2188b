#pragma once
// Regular languages over bytes for constrained decoding: an NFA builder
// (Thompson fragments over byte ranges, code-point sets compiled to UTF-8), a
// regex parser for the subset users and JSON-schema compilation need, and a
// DFA (subset construction, dead states pruned, minimized) whose transitions
// a token mask walks byte by byte.
//
// Regex syntax (ECMAScript-like, always a full match of the whole output):
// literals (UTF-8), escapes \\ \. \n \t \r \f \v \0 \xHH \uHHHH \d \D \w \W \s
// \S, classes [...] with ranges, escapes and negation [^...], . (any code
// point but \n \r U+2028 U+2029), groups (...) and (?:...), alternation |,
// quantifiers ? * + {n} {n,} {n,m} (a lazy ? suffix is accepted: the language
// is the same), ^ at the start and $ at the end (ignored: the match is full).
// Not supported (an Error says so): backreferences, lookaround, \b, named
// groups, flags.
//
// Thread safety: a built Dfa is immutable.
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "finmoe/error.h"

namespace finmoe::constrain {

// Inclusive code-point ranges, sorted and disjoint after normalize().
using CodeSet = std::vector<std::pair<uint32_t, uint32_t>>;
CodeSet normalize(CodeSet s);
CodeSet complement(const CodeSet& s);  // within Unicode scalar values (no surrogates)
CodeSet subtract(const CodeSet& a, const CodeSet& b);

// Limits on automaton size; the defaults are the server's.
struct AutomatonLimits {
  int64_t max_nfa_states = 400000;
  int64_t max_dfa_states = 50000;  // during subset construction, before minimization
};

struct Frag {
  int32_t in = -1, out = -1;
};

class Nfa {
 public:
  explicit Nfa(AutomatonLimits limits = {}) : limits_(limits) {}
  int32_t add_state();
  void eps(int32_t from, int32_t to) { eps_[size_t(from)].push_back(to); }
  void edge(int32_t from, uint8_t lo, uint8_t hi, int32_t to) {
    edges_[size_t(from)].push_back({lo, hi, to});
  }

  // Fragments; each call makes fresh states.
  Frag empty();
  Frag bytes(uint8_t lo, uint8_t hi);
  Frag literal(std::string_view utf8);  // the bytes, in order
  Frag codes(const CodeSet& set);       // one code point of the set, as UTF-8
  Frag cat(Frag a, Frag b);
  Frag alt(const std::vector<Frag>& options);
  Frag opt(Frag a);
  // make() between min and max times (max < 0: unbounded); make is called
  // once per copy needed.
  Frag repeat(const std::function<Frag()>& make, int64_t min, int64_t max);
  // elem (sep elem)*, between min and max elements (max < 0: unbounded), or
  // nothing when min == 0. Unbounded lists share one copy of elem.
  Frag sep_list(const std::function<Frag()>& elem, const std::function<Frag()>& sep, int64_t min,
                int64_t max);

  struct Edge {
    uint8_t lo, hi;
    int32_t to;
  };
  size_t size() const { return edges_.size(); }
  const std::vector<Edge>& edges(int32_t s) const { return edges_[size_t(s)]; }
  const std::vector<int32_t>& eps_of(int32_t s) const { return eps_[size_t(s)]; }
  const AutomatonLimits& limits() const { return limits_; }

 private:
  AutomatonLimits limits_;
  std::vector<std::vector<Edge>> edges_;
  std::vector<std::vector<int32_t>> eps_;
};

// A parsed regex: compile() adds it to an NFA. `exclude` removes code points
// from every character the regex can match (a JSON string's content cannot
// hold a raw quote, backslash or control character).
class Regex {
 public:
  // Throws Error("<what>: ...at offset N") for syntax it does not support.
  static Regex parse(std::string_view pattern);
  Frag compile(Nfa& nfa, const CodeSet& exclude = {}) const;

  struct Node {
    enum Kind { Set, Cat, Alt, Repeat } kind = Cat;
    CodeSet set;
    std::vector<Node> kids;
    int64_t min = 0, max = 0;  // Repeat; max < 0 = unbounded
  };

 private:
  Node root_;
};

class Dfa {
 public:
  // Subset construction from nfa (start/accept = frag.in/out), states that
  // cannot reach acceptance removed, then minimized. Throws Error when it
  // would exceed limits.max_dfa_states, or when the language is empty.
  static Dfa build(const Nfa& nfa, Frag frag);

  int32_t start() const { return start_; }
  int32_t num_states() const { return int32_t(accept_.size()); }
  // Next state after byte b, or -1 (the output could no longer be completed).
  int32_t next(int32_t s, uint8_t b) const {
    return next_[size_t(s) * size_t(classes_) + class_of_[b]];
  }
  bool accepting(int32_t s) const { return accept_[size_t(s)] != 0; }
  // Accepting with no way on: the output is complete.
  bool finished(int32_t s) const { return accepting(s) && !has_next_[size_t(s)]; }
  // Runs bytes from s; -1 when they leave the language.
  int32_t walk(int32_t s, std::string_view bytes) const;
  bool matches(std::string_view bytes) const {
    const int32_t s = walk(start_, bytes);
    return s >= 0 && accepting(s);
  }

 private:
  int32_t start_ = 0;
  // bytes no transition tells apart share a class: next_ is [state * classes_ + class]
  int32_t classes_ = 1;
  std::array<uint8_t, 256> class_of_{};
  std::vector<int32_t> next_;
  std::vector<uint8_t> accept_, has_next_;
};

// Regex text -> Dfa (full match). Throws Error naming the problem.
Dfa compile_regex(std::string_view pattern, AutomatonLimits limits = {});

}  // namespace finmoe::constrain
