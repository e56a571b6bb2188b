// HTML -> TextBlocks: a forgiving walk over the tag stream (docs/corpus.md).
#include <algorithm>
#include <set>
#include <sstream>

#include "data/markup.h"

namespace finmoe {

namespace {

using data::MarkupLexer;
using data::MarkupToken;

const std::set<std::string, std::less<>> kVoid = {"area", "base", "basefont", "br",   "col",   "embed",
                                                  "frame", "hr",  "img",      "input", "keygen", "link",
                                                  "meta", "param", "source",  "track", "wbr"};
const std::set<std::string, std::less<>> kSkip = {
    "head",   "script", "style",  "nav",      "header", "footer", "aside",  "noscript", "template",
    "svg",    "math",   "button", "select",   "textarea", "title", "iframe", "object",  "form"};
// Navigation, tables of contents and indexes of makeinfo and DocBook-XSL output.
const std::set<std::string, std::less<>> kSkipClass = {
    "header", "navheader", "navfooter", "toc",      "contents", "shortcontents", "copiable-anchor",
    "menu",   "index-cp",  "index-fn",  "index-vr", "index-ky", "index-pg",      "index-tp",
    "nav-panel", "section-toc", "mini-toc", "debug"};
const std::set<std::string, std::less<>> kBlock = {
    "p",      "div",      "blockquote", "section", "article", "main",  "center", "address", "figure",
    "figcaption", "caption", "table",   "thead",   "tbody",   "tfoot", "ul",     "ol",      "dl",
    "menu",   "body",     "html",       "fieldset", "details", "summary", "dir",  "legend",  "hgroup"};
// Start tags that end an open <p>.
const std::set<std::string, std::less<>> kClosesP = {
    "p",   "div", "ul",  "ol",  "dl", "table", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
    "section", "article", "address", "figure", "hr", "li", "dt", "dd", "fieldset", "main", "center",
    "details", "menu"};

bool has_skip_class(const MarkupToken& t) {
  std::istringstream classes(t.attr("class"));
  std::string c;
  while (classes >> c)
    if (kSkipClass.count(c)) return true;
  return false;
}

struct OpenElement {
  std::string name;
  bool block;  // BlockBuilder::open was called for it
};

class HtmlWalker {
 public:
  std::vector<TextBlock> run(std::string_view html) {
    MarkupLexer lex(html, /*html=*/true);
    MarkupToken t;
    while (lex.next(t)) {
      if (skip_.active()) {
        skip_.track(t);
        continue;
      }
      switch (t.type) {
        case MarkupToken::text:
        case MarkupToken::cdata:
          out_.text(data::decode_references(t.raw, nullptr, /*keep_unknown=*/true));
          break;
        case MarkupToken::start_tag:
          start(t);
          break;
        case MarkupToken::end_tag:
          end(t.name);
          break;
        default:
          break;
      }
    }
    return out_.take();
  }

 private:
  void start(const MarkupToken& t) {
    const std::string& n = t.name;
    if (n == "br") {
      out_.line_break();
      return;
    }
    if (kVoid.count(n)) {
      if (n == "hr") {
        out_.open(BlockKind::paragraph);
        out_.close();
      }
      return;
    }
    if (kSkip.count(n) || has_skip_class(t)) {
      skip_.begin(t);
      return;
    }
    if (kClosesP.count(n)) close_open_p();
    if (n == "li") close_item({"li"}, {"ul", "ol", "menu", "dir"});
    if (n == "dt" || n == "dd") close_item({"dt", "dd"}, {"dl"});
    if (n == "tr") close_item({"tr"}, {"table", "thead", "tbody", "tfoot"});
    if (n == "td" || n == "th") close_item({"td", "th"}, {"tr", "table"});
    if (t.self_closing) return;

    bool block = true;
    if (n.size() == 2 && n[0] == 'h' && n[1] >= '1' && n[1] <= '6') {
      out_.open(BlockKind::heading, n[1] - '0');
    } else if (n == "pre" || n == "listing" || n == "xmp") {
      out_.open(BlockKind::code);
    } else if (n == "li") {
      out_.open(BlockKind::list_item);
    } else if (n == "dt") {
      out_.open(BlockKind::term);
    } else if (n == "dd") {
      out_.open(BlockKind::definition);
    } else if (n == "tr") {
      out_.open(BlockKind::table_row);
    } else if (n == "td" || n == "th") {
      out_.cell();
      block = false;
    } else if (kBlock.count(n)) {
      out_.open(BlockKind::paragraph);
    } else {
      block = false;
    }
    open_.push_back({n, block});
  }

  void end(const std::string& name) {
    for (size_t k = open_.size(); k-- > 0;) {
      if (open_[k].name == name) {
        pop_to(k);
        return;
      }
    }
    if (name == "p") {
      // "</p>" with no open <p> still ends a paragraph.
      out_.open(BlockKind::paragraph);
      out_.close();
    }
  }

  // Pops open_[k] and everything above it.
  void pop_to(size_t k) {
    while (open_.size() > k) {
      if (open_.back().block) out_.close();
      open_.pop_back();
    }
  }

  void close_open_p() {
    for (size_t k = open_.size(); k-- > 0;) {
      if (open_[k].name == "p") {
        pop_to(k);
        return;
      }
      if (open_[k].block) return;
    }
  }

  // Implied end tags: an open item (li, dt/dd, tr, td/th) ends at the next
  // one, unless a container opened after it (a nested list) is in the way.
  void close_item(std::initializer_list<std::string_view> items, std::initializer_list<std::string_view> stops) {
    for (size_t k = open_.size(); k-- > 0;) {
      const std::string& n = open_[k].name;
      if (std::find(items.begin(), items.end(), n) != items.end()) {
        pop_to(k);
        return;
      }
      if (std::find(stops.begin(), stops.end(), n) != stops.end()) return;
    }
  }

  data::BlockBuilder out_;
  std::vector<OpenElement> open_;
  data::SkippedElement skip_;
};

}  // namespace

std::vector<TextBlock> html_to_blocks(std::string_view html) { return HtmlWalker().run(html); }

}  // namespace finmoe
