// DocBook XML -> TextBlocks (docs/corpus.md).
#include <algorithm>
#include <set>

#include "data/markup.h"

namespace finmoe {

namespace {

using data::MarkupLexer;
using data::MarkupToken;
using Entities = std::unordered_map<std::string, std::string>;

// Values of KDE documentation's shared entities (kdoctools' general.entities),
// which a package does not ship; undeclared others are dropped.
const Entities& kde_entities() {
  static const Entities t = {
      {"kde", "KDE"},        {"kmymoney", "KMyMoney"},   {"gnucash", "GnuCash"},  {"Qt", "Qt"},
      {"Linux", "Linux"},    {"Windows", "Windows"},     {"MacOS", "macOS"},      {"ubuntu", "Ubuntu"},
      {"XML", "XML"},        {"HTML", "HTML"},           {"CSV", "CSV"},          {"PDF", "PDF"},
      {"URL", "URL"},        {"etc", "etc."},            {"eg", "e.g."},          {"ie", "i.e."},
      {"Ctrl", "Ctrl"},      {"Alt", "Alt"},             {"Shift", "Shift"},      {"Enter", "Enter"},
      {"Esc", "Esc"},        {"Tab", "Tab"},             {"Space", "Space"},      {"Ins", "Ins"},
      {"Del", "Del"},        {"Backspace", "Backspace"}, {"Up", "Up"},            {"Down", "Down"},
      {"Left", "Left"},      {"Right", "Right"},         {"PgUp", "PgUp"},        {"PgDn", "PgDn"},
      {"Home", "Home"},      {"End", "End"},             {"Meta", "Meta"},        {"LMB", "left mouse button"},
      {"RMB", "right mouse button"}, {"MMB", "middle mouse button"},
      {"systemsettings", "System Settings"}, {"konqueror", "Konqueror"}, {"plasma", "Plasma"}};
  return t;
}

// <!ENTITY name "value"> declarations of an internal DTD subset (parameter
// entities, <!ENTITY % ...>, are ignored).
Entities declared_entities(std::string_view doctype) {
  Entities out;
  size_t p = 0;
  while ((p = doctype.find("<!ENTITY", p)) != std::string_view::npos) {
    p += 8;
    while (p < doctype.size() && std::isspace(static_cast<unsigned char>(doctype[p]))) ++p;
    if (p < doctype.size() && doctype[p] == '%') continue;
    size_t n0 = p;
    while (p < doctype.size() && !std::isspace(static_cast<unsigned char>(doctype[p]))) ++p;
    std::string name(doctype.substr(n0, p - n0));
    while (p < doctype.size() && std::isspace(static_cast<unsigned char>(doctype[p]))) ++p;
    if (p >= doctype.size() || (doctype[p] != '"' && doctype[p] != '\'')) continue;  // SYSTEM/PUBLIC: external
    char q = doctype[p++];
    size_t v0 = p;
    while (p < doctype.size() && doctype[p] != q) ++p;
    out[name] = std::string(doctype.substr(v0, p - v0));
  }
  return out;
}

// Replaces references to declared entities by their values (which may hold
// markup), a few rounds for entities defined through others.
std::string expand_declared(std::string_view body, const Entities& declared) {
  std::string s(body);
  for (int round = 0; round < 4 && !declared.empty(); ++round) {
    std::string out;
    bool changed = false;
    size_t i = 0;
    while (i < s.size()) {
      size_t amp = s.find('&', i);
      if (amp == std::string::npos) {
        out.append(s, i, std::string::npos);
        break;
      }
      out.append(s, i, amp - i);
      size_t semi = s.find(';', amp);
      if (semi != std::string::npos && semi - amp <= 64) {
        auto it = declared.find(s.substr(amp + 1, semi - amp - 1));
        if (it != declared.end()) {
          out += it->second;
          i = semi + 1;
          changed = true;
          continue;
        }
      }
      out.push_back('&');
      i = amp + 1;
    }
    s = std::move(out);
    if (!changed) break;
  }
  return s;
}

const std::set<std::string, std::less<>> kSection = {
    "article",  "part",       "chapter",   "appendix",  "preface",   "sect1",  "sect2",
    "sect3",   "sect4",    "sect5",      "section",   "simplesect", "refentry", "refsect1", "refsect2",
    "refsect3", "refsection", "glossary", "glossdiv", "qandadiv",  "reference", "bibliography",
    "colophon", "dedication"};
const std::set<std::string, std::less<>> kSkip = {
    "bookinfo",   "articleinfo", "chapterinfo", "sectioninfo", "sect1info",   "sect2info",  "sect3info",
    "prefaceinfo", "appendixinfo", "partinfo",  "info",        "indexterm",   "remark",     "comment",
    "screenshot", "mediaobject", "inlinemediaobject", "imageobject", "authorgroup", "author",
    "othercredit", "legalnotice", "copyright",  "keywordset",  "subjectset",  "releaseinfo", "titleabbrev",
    "index",      "toc",         "lot",         "shortcut",    "glosssee",    "glossseealso", "graphic",
    "inlinegraphic"};
const std::set<std::string, std::less<>> kCode = {"programlisting", "screen", "literallayout", "synopsis",
                                                  "address"};
const std::set<std::string, std::less<>> kBlock = {
    "book",     "para",     "simpara",     "formalpara", "blockquote", "note",      "tip",         "warning",
    "important", "caution",    "example",    "informalexample", "figure", "table",     "informaltable",
    "tgroup",   "thead",       "tbody",      "tfoot",      "itemizedlist", "orderedlist", "variablelist",
    "glosslist", "simplelist", "procedure",  "segmentedlist", "qandaset", "qandaentry", "glossentry",
    "varlistentry", "epigraph", "sidebar",   "calloutlist", "abstract",  "attribution", "partintro",
    "cmdsynopsis", "funcsynopsis", "msgset"};

struct OpenElement {
  std::string name;
  bool block = false;
  int children = 0;  // keycombo / menuchoice: parts written so far
};

class DocBookWalker {
 public:
  std::vector<TextBlock> run(std::string_view xml) {
    // The DOCTYPE (if any) comes before the root element; its internal subset
    // declares entities used in the body.
    std::string expanded;
    std::string_view body = xml;
    {
      MarkupLexer head(xml, /*html=*/false);
      MarkupToken t;
      while (head.next(t)) {
        if (t.type == MarkupToken::doctype) {
          entities_ = declared_entities(t.raw);
          expanded = expand_declared(xml.substr(head.position()), entities_);
          body = expanded;
          break;
        }
        if (t.type == MarkupToken::start_tag) break;
      }
    }
    for (const auto& [k, v] : kde_entities()) entities_.emplace(k, v);

    MarkupLexer lex(body, /*html=*/false);
    MarkupToken t;
    while (lex.next(t)) {
      if (skip_.active()) {
        skip_.track(t);
        continue;
      }
      switch (t.type) {
        case MarkupToken::text:
          if (parent() == "keycombo") {
            // Each entity is one key: "&Ctrl;&Shift;<keycap>R</keycap>" -> "Ctrl+Shift+R".
            std::string_view raw = t.raw;
            while (!raw.empty()) {
              size_t end = raw[0] == '&' ? raw.find(';') : raw.find('&');
              end = end == std::string_view::npos ? raw.size() : end + (raw[0] == '&');
              text(data::decode_references(raw.substr(0, end), &entities_, /*keep_unknown=*/false));
              raw.remove_prefix(end);
            }
          } else {
            text(data::decode_references(t.raw, &entities_, /*keep_unknown=*/false));
          }
          break;
        case MarkupToken::cdata:
          text(std::string(t.raw));
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
  const std::string& parent() const {
    static const std::string none;
    return open_.empty() ? none : open_.back().name;
  }

  // Separators between the parts of key combinations and menu paths.
  void separate() {
    if (open_.empty()) return;
    OpenElement& p = open_.back();
    if (p.name == "keycombo" || p.name == "menuchoice") {
      if (p.children++ > 0) out_.text(p.name == "keycombo" ? "+" : " \u2192 ");
    }
  }

  void text(const std::string& s) {
    if (s.find_first_not_of(" \t\r\n") != std::string::npos) separate();
    out_.text(s);
  }

  void start(const MarkupToken& t) {
    const std::string& n = t.name;
    if (kSkip.count(n)) {
      skip_.begin(t);
      return;
    }
    separate();
    if (t.self_closing) return;
    const std::string& up = parent();
    bool block = true;
    if (kSection.count(n)) {
      ++depth_;
      out_.open(BlockKind::paragraph);
    } else if (n == "title" || n == "subtitle") {
      if (kSection.count(up))
        out_.open(BlockKind::heading, std::clamp(depth_, 1, 6));
      else
        out_.open(BlockKind::paragraph);
    } else if (kCode.count(n)) {
      out_.open(BlockKind::code);
    } else if (n == "listitem") {
      out_.open(up == "varlistentry" ? BlockKind::definition : BlockKind::list_item);
    } else if (n == "step" || n == "member" || n == "callout" || n == "seglistitem") {
      out_.open(BlockKind::list_item);
    } else if (n == "term" || (n == "glossterm" && up == "glossentry")) {
      out_.open(BlockKind::term);
    } else if (n == "glossdef") {
      out_.open(BlockKind::definition);
    } else if (n == "question") {
      out_.open(BlockKind::question);
    } else if (n == "answer") {
      out_.open(BlockKind::answer);
    } else if (n == "row") {
      out_.open(BlockKind::table_row);
    } else if (n == "entry") {
      out_.cell();
      block = false;
    } else if (kBlock.count(n)) {
      out_.open(BlockKind::paragraph);
    } else {
      block = false;
    }
    open_.push_back({n, block, 0});
  }

  void end(const std::string& name) {
    for (size_t k = open_.size(); k-- > 0;) {
      if (open_[k].name != name) continue;
      while (open_.size() > k) {
        if (open_.back().block) out_.close();
        if (kSection.count(open_.back().name)) --depth_;
        open_.pop_back();
      }
      return;
    }
  }

  Entities entities_;
  data::BlockBuilder out_;
  std::vector<OpenElement> open_;
  int depth_ = 0;
  data::SkippedElement skip_;
};

}  // namespace

std::vector<TextBlock> docbook_to_blocks(std::string_view xml) { return DocBookWalker().run(xml); }

}  // namespace finmoe
