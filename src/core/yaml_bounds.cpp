// The nesting depth of YAML text from its layout (src/core/yaml_bounds.h).
//
// Block collections are tracked as a stack of (column, kind): an entry `- `
// opens a sequence at its column, a `key:` (or `? `) a mapping at the key's
// column; a line closes whatever sits right of its indentation. A sequence
// may share its column with the mapping it is a value of (`key:\n- a`), the
// only case where two levels share a column. Flow collections count their
// open brackets. Where the layout is ambiguous the count errs high.
#include "core/yaml_bounds.h"

#include <algorithm>
#include <string>
#include <vector>

#include "finmoe/error.h"

namespace finmoe {

namespace {

constexpr size_t npos = std::string_view::npos;

bool blank(char c) { return c == ' ' || c == '\t'; }

size_t skip_blanks(std::string_view s, size_t i) {
  while (i < s.size() && blank(s[i])) ++i;
  return i;
}

class Layout {
 public:
  explicit Layout(int limit) : limit_(limit) {}

  // Reads one line (without its newline); false once the limit is passed.
  bool line(std::string_view s) {
    if (!s.empty() && s.back() == '\r') s.remove_suffix(1);
    const size_t indent = skip_blanks(s, 0);
    const bool empty = indent == s.size();
    if (block_scalar_ != npos) {  // content of a `|` or `>` scalar: more indented than its parent
      if (empty || indent > block_scalar_) return true;
      block_scalar_ = npos;
    }
    if (quote_ != 0 || flow_ > 0) {
      scan_flow(s, 0);
      return ok();
    }
    if (empty || s[indent] == '#') return true;
    if ((s.starts_with("---") || s.starts_with("...")) && (s.size() == 3 || blank(s[3]))) {
      blocks_.clear();  // a new document
      scan_block(s, 3);
      return ok();
    }
    while (!blocks_.empty() && blocks_.back().column > indent) blocks_.pop_back();
    scan_block(s, indent);
    return ok();
  }

  int deepest() const { return deepest_; }

 private:
  enum class Kind { Sequence, Mapping };
  struct Block {
    size_t column;
    Kind kind;
  };

  bool ok() const { return deepest_ <= limit_; }
  void note() { deepest_ = std::max(deepest_, int(blocks_.size()) + flow_); }

  // Makes the innermost open block collection a `kind` at `column`.
  void open(size_t column, Kind kind) {
    while (!blocks_.empty() && blocks_.back().column > column) blocks_.pop_back();
    if (!blocks_.empty() && blocks_.back().column == column) {
      if (blocks_.back().kind == kind) return;
      // a mapping key after the sequence that was the previous key's value
      if (kind == Kind::Mapping) {
        blocks_.pop_back();
        if (!blocks_.empty() && blocks_.back().column == column) return;
      }
    }
    blocks_.push_back({column, kind});
    note();
  }

  // From inside a quoted scalar (quote_ set) at `i`: the index after its
  // closing quote (quote_ cleared), or npos when it continues on the next line.
  size_t skip_quoted(std::string_view s, size_t i) {
    while (i < s.size()) {
      if (quote_ == '"' && s[i] == '\\') {
        i += 2;
      } else if (s[i] == quote_) {
        if (quote_ == '\'' && i + 1 < s.size() && s[i + 1] == '\'') {
          i += 2;  // '' is a quote inside a single-quoted scalar
          continue;
        }
        quote_ = 0;
        return i + 1;
      } else {
        ++i;
      }
    }
    return npos;
  }

  // Flow context (or a continuing quoted scalar) from `i` to the end of the line.
  void scan_flow(std::string_view s, size_t i) {
    bool scalar_start = true;  // a quote opens a scalar only where one may start
    while (i < s.size()) {
      const char c = s[i];
      if (quote_ != 0) {
        i = skip_quoted(s, i);
        if (i == npos) return;
        scalar_start = false;
        continue;
      }
      if ((c == '"' || c == '\'') && scalar_start) {
        quote_ = c;
        ++i;
        continue;
      }
      if (c == '#' && (i == 0 || blank(s[i - 1]))) return;
      if (c == '[' || c == '{') {
        ++flow_;
        note();
        if (!ok()) return;
      } else if ((c == ']' || c == '}') && flow_ > 0) {
        --flow_;
      }
      if (!blank(c)) scalar_start = c == '[' || c == '{' || c == ',' || c == ':' || c == '?';
      ++i;
    }
  }

  // Block context from `i`: entries, keys and the node that ends the line.
  void scan_block(std::string_view s, size_t i) {
    while (ok()) {
      i = skip_blanks(s, i);
      if (i >= s.size()) return;
      const char c = s[i];
      const bool indicator = i + 1 == s.size() || blank(s[i + 1]);
      if (c == '-' && indicator) {  // a sequence entry; its node follows on this line or below
        open(i, Kind::Sequence);
        ++i;
        continue;
      }
      if ((c == '?' || c == ':') && indicator) {  // an explicit key or its value
        open(i, Kind::Mapping);
        ++i;
        continue;
      }
      if (c == '#') return;
      if (c == '[' || c == '{') {
        scan_flow(s, i);
        return;
      }
      if (c == '|' || c == '>') {
        // content sits right of the innermost collection; with an explicit
        // indentation digit its extent is not followed here: scanned as structure
        const bool digit =
            std::any_of(s.begin() + i, s.end(), [](char d) { return d >= '1' && d <= '9'; });
        if (!digit) block_scalar_ = blocks_.empty() ? 0 : blocks_.back().column;
        return;
      }
      if (c == '&' || c == '!') {  // an anchor or a tag, then the node
        while (i < s.size() && !blank(s[i])) ++i;
        continue;
      }
      if (c == '*') return;  // an alias
      // a scalar, quoted or plain: a mapping key when `:` follows
      const size_t start = i;
      if (c == '"' || c == '\'') {
        quote_ = c;
        i = skip_quoted(s, i + 1);
        if (i == npos) return;  // continues on the next line
        i = skip_blanks(s, i);
        if (i >= s.size() || s[i] != ':') return;
      } else {
        while (i < s.size() && !(s[i] == ':' && (i + 1 == s.size() || blank(s[i + 1]))) &&
               !(s[i] == '#' && blank(s[i - 1])))
          ++i;
        if (i >= s.size() || s[i] == '#') return;  // a plain value
      }
      open(start, Kind::Mapping);
      ++i;  // past the `:`; the value follows
    }
  }

  int limit_;
  int deepest_ = 0;
  std::vector<Block> blocks_;   // open block collections, innermost last
  int flow_ = 0;                // open flow collections
  char quote_ = 0;              // the quote of a scalar continuing on the next line
  size_t block_scalar_ = npos;  // inside a block scalar: the column its lines must pass
};

}  // namespace

int yaml_depth(std::string_view text, int limit, size_t* line) {
  Layout layout(limit);
  size_t pos = 0, line_no = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == npos) end = text.size();
    ++line_no;
    if (!layout.line(text.substr(pos, end - pos))) {
      if (line) *line = line_no;
      return limit + 1;
    }
    pos = end + 1;
  }
  return layout.deepest();
}

void check_yaml_bounds(std::string_view text, std::string_view source) {
  if (text.size() > kMaxYamlBytes)
    throw Error(std::string(source) + ": " + std::to_string(text.size()) +
                " bytes, more than the " + std::to_string(kMaxYamlBytes) +
                " a YAML training config may have");
  size_t line = 0;
  if (yaml_depth(text, kMaxYamlDepth, &line) > kMaxYamlDepth)
    throw Error(std::string(source) + ":" + std::to_string(line) + ": YAML nested deeper than " +
                std::to_string(kMaxYamlDepth) + " levels");
}

}  // namespace finmoe
