// bsdgames quiz(6) data files: records, categories and answer patterns.
#include <memory>

#include "finmoe/corpus.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

// pattern := alt;  alt := seq ('|' seq)*;  seq := (literal | '{' alt '}' | '[' alt ']')*
struct Alt;
struct Item {
  enum Type { literal, optional, group } type = literal;
  std::string text;           // literal
  std::shared_ptr<Alt> alt;   // optional / group
};
struct Alt {
  std::vector<std::vector<Item>> seqs;
};

class PatternParser {
 public:
  explicit PatternParser(std::string_view s) : s_(s) {}

  Alt parse() {
    Alt a = alt();
    if (pos_ < s_.size()) throw Error(std::string("unexpected '") + s_[pos_] + "' at column " + std::to_string(pos_ + 1));
    return a;
  }

 private:
  Alt alt() {
    Alt a;
    a.seqs.push_back(seq());
    while (pos_ < s_.size() && s_[pos_] == '|') {
      ++pos_;
      a.seqs.push_back(seq());
    }
    return a;
  }

  std::vector<Item> seq() {
    std::vector<Item> items;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '|' || c == '}' || c == ']') break;
      if (c == '{' || c == '[') {
        const size_t open = pos_++;
        Item it;
        it.type = c == '{' ? Item::optional : Item::group;
        it.alt = std::make_shared<Alt>(alt());
        const char want = c == '{' ? '}' : ']';
        if (pos_ >= s_.size() || s_[pos_] != want)
          throw Error(std::string("unbalanced '") + c + "' at column " + std::to_string(open + 1));
        ++pos_;
        items.push_back(std::move(it));
        continue;
      }
      if (items.empty() || items.back().type != Item::literal) items.push_back(Item{});
      if (c == '\\') {
        if (pos_ + 1 >= s_.size()) throw Error("'\\' at the end of a category quotes nothing");
        items.back().text.push_back(s_[pos_ + 1]);
        pos_ += 2;
      } else {
        items.back().text.push_back(c);
        ++pos_;
      }
    }
    return items;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

std::string canonical(const Alt& a);

std::string canonical_seq(const std::vector<Item>& seq) {
  std::string out;
  for (const auto& it : seq) out += it.type == Item::literal ? it.text : canonical(*it.alt);
  return out;
}

std::string canonical(const Alt& a) { return a.seqs.empty() ? std::string() : canonical_seq(a.seqs[0]); }

void expand(const Alt& a, size_t limit, std::vector<std::string>& out);

std::vector<std::string> expand_seq(const std::vector<Item>& seq, size_t limit) {
  std::vector<std::string> acc = {""};
  for (const auto& it : seq) {
    std::vector<std::string> parts;
    if (it.type == Item::literal) {
      parts = {it.text};
    } else {
      expand(*it.alt, limit, parts);
      if (it.type == Item::optional) parts.push_back("");
    }
    std::vector<std::string> next;
    for (const auto& a : acc)
      for (const auto& p : parts) {
        if (next.size() >= limit) break;
        next.push_back(a + p);
      }
    acc = std::move(next);
  }
  return acc;
}

void expand(const Alt& a, size_t limit, std::vector<std::string>& out) {
  for (const auto& seq : a.seqs)
    for (auto& s : expand_seq(seq, limit)) {
      if (out.size() >= limit) return;
      out.push_back(std::move(s));
    }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string quiz_canonical(std::string_view pattern) { return canonical(PatternParser(pattern).parse()); }

std::vector<std::string> quiz_expansions(std::string_view pattern, size_t limit) {
  std::vector<std::string> out;
  expand(PatternParser(pattern).parse(), limit, out);
  return out;
}

bool quiz_accepts(std::string_view pattern, std::string_view answer) {
  const std::string_view a = trim(answer);
  for (const auto& e : quiz_expansions(pattern, 1 << 16))
    if (e == a) return true;
  return false;
}

std::vector<QuizRecord> parse_quiz(std::string_view text, const std::string& name) {
  std::vector<QuizRecord> records;
  size_t pos = 0;
  int line_no = 0;
  while (pos < text.size()) {
    // One logical record: physical lines ending in an unquoted '\' continue.
    QuizRecord r;
    r.line = line_no + 1;
    std::string logical;
    bool continued = true;
    while (continued) {
      if (pos >= text.size()) throw Error(name + ":" + std::to_string(r.line) + ": the record's last line ends with '\\' (continuation) but the file ends");
      size_t e = text.find('\n', pos);
      if (e == std::string_view::npos) e = text.size();
      std::string_view line = text.substr(pos, e - pos);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      pos = std::min(text.size(), e + 1);
      ++line_no;
      size_t backslashes = 0;
      while (backslashes < line.size() && line[line.size() - 1 - backslashes] == '\\') ++backslashes;
      continued = backslashes % 2 == 1;
      logical.append(continued ? line.substr(0, line.size() - 1) : line);
      if (continued && pos >= text.size())
        throw Error(name + ":" + std::to_string(r.line) + ": the record's last line ends with '\\' (continuation) but the file ends");
    }
    if (trim(logical).empty()) continue;
    // Categories are separated by unquoted ':'.
    std::string field;
    for (size_t i = 0; i < logical.size(); ++i) {
      if (logical[i] == '\\' && i + 1 < logical.size()) {
        field += logical.substr(i, 2);
        ++i;
      } else if (logical[i] == ':') {
        r.patterns.push_back(std::move(field));
        field.clear();
      } else {
        field.push_back(logical[i]);
      }
    }
    r.patterns.push_back(std::move(field));
    for (size_t k = 0; k < r.patterns.size(); ++k) {
      try {
        PatternParser(r.patterns[k]).parse();
      } catch (const Error& e) {
        throw Error(name + ":" + std::to_string(r.line) + ": category " + std::to_string(k + 1) + " '" +
                    r.patterns[k] + "': " + e.what());
      }
    }
    records.push_back(std::move(r));
  }
  return records;
}

}  // namespace finmoe
