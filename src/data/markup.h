#pragma once
// Internal helpers of the data layer: a tolerant tag lexer shared by the HTML
// and DocBook converters, character references, the block builder both
// converters feed, and small Unicode predicates.
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "finmoe/corpus.h"

namespace finmoe::data {

// ---- Unicode -----------------------------------------------------------------

// Han ideographs (CJK unified, extensions, compatibility).
bool is_han(char32_t cp);
// Characters after/before which a wrapped line joins without a space: Han,
// kana, hangul, CJK and full-width punctuation.
bool is_cjk_joining(char32_t cp);
// Display columns of a line (East Asian wide characters count 2).
size_t display_width(std::string_view line);
// First / last code point of s (0 when empty); s must be valid UTF-8.
char32_t first_char(std::string_view s);
char32_t last_char(std::string_view s);

// ---- Character references ------------------------------------------------------

// The HTML 4 named character references (amp, lt, nbsp, rsquo, euro, ...).
const std::unordered_map<std::string, std::string>& html_entities();

// Decodes &name; &#N; &#xH; in `s`. Named references are looked up in
// `extra` first, then the HTML table; an unknown one is kept literally when
// keep_unknown (HTML), else dropped (DocBook). Invalid code points -> U+FFFD.
std::string decode_references(std::string_view s,
                              const std::unordered_map<std::string, std::string>* extra,
                              bool keep_unknown);

// ---- Tag lexer ------------------------------------------------------------------

struct MarkupToken {
  enum Type { text, start_tag, end_tag, comment, doctype, cdata, processing };
  Type type = text;
  std::string_view raw;  // text: undecoded; doctype: everything between "<!DOCTYPE" and ">"
  std::string name;      // tags: lower-cased name
  std::vector<std::pair<std::string, std::string>> attrs;  // lower-cased names, raw values
  bool self_closing = false;

  std::string attr(std::string_view key) const;  // "" when absent
};

// Pull lexer over HTML or XML. Never throws: malformed markup becomes text
// ("a < b" stays text), an unterminated comment or tag runs to the end.
// In HTML mode the contents of script/style/textarea/title are one raw text token.
class MarkupLexer {
 public:
  MarkupLexer(std::string_view src, bool html) : src_(src), html_(html) {}
  bool next(MarkupToken& token);
  size_t position() const { return pos_; }  // byte offset of the next token

 private:
  std::string_view src_;
  bool html_;
  size_t pos_ = 0;
  std::string raw_text_end_;  // "</script" etc. while inside a raw text element
};

// The element a converter drops with everything inside it (<script>, a
// DocBook <remark>, ...). Nested elements of the same name are counted, so
// the matching end tag ends the skip.
class SkippedElement {
 public:
  bool active() const { return !name_.empty(); }
  void begin(const MarkupToken& start) {
    if (start.self_closing) return;
    name_ = start.name;
    depth_ = 1;
  }
  // Every token while active().
  void track(const MarkupToken& t) {
    if (t.name != name_) return;
    if (t.type == MarkupToken::start_tag && !t.self_closing) ++depth_;
    if (t.type == MarkupToken::end_tag && --depth_ == 0) name_.clear();
  }

 private:
  std::string name_;
  int depth_ = 0;
};

// ---- Block builder --------------------------------------------------------------

// Collects text into TextBlocks. Converters call open()/close() around block
// elements and add text in between. A paragraph opened inside a term,
// definition, list item, question or answer takes that kind. Inside a table
// row, nested blocks do not break the row: cells are joined with " | ".
class BlockBuilder {
 public:
  void open(BlockKind kind, int level = 0);
  void close();
  void text(std::string_view decoded);  // white space collapses outside code
  void line_break();                    // <br>
  void cell();                          // start of a table cell
  std::vector<TextBlock> take();

 private:
  struct Frame {
    BlockKind kind;
    int level;
    bool passive;  // opened inside a table row: part of the row, not a block
  };
  void flush();
  BlockKind current_kind() const;
  bool in_code() const;
  bool in_row() const;

  std::vector<Frame> stack_;
  std::string buf_;
  std::vector<TextBlock> blocks_;
};

// Trims and collapses white space of a prose block: runs of spaces, tabs,
// newlines and U+00A0 become one space, except that the '\n' of line_break()
// (kept as '\x01' while building) survives as a newline.
std::string normalize_prose(std::string_view s);
// Code: drops '\r', trailing spaces of each line and leading/trailing blank lines.
std::string normalize_code(std::string_view s);

}  // namespace finmoe::data
