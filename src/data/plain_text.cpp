// Plain-text dumps and GNU info -> TextBlocks (docs/corpus.md).
#include <algorithm>
#include <cctype>

#include "data/markup.h"
#include "tokenizer/utf8.h"

namespace finmoe {

namespace {

using data::display_width;

struct Line {
  std::string text;  // without the trailing newline, tabs expanded
  size_t indent = 0;
};

std::vector<Line> split_lines(std::string_view s) {
  std::vector<Line> lines;
  size_t i = 0;
  while (i <= s.size()) {
    size_t e = s.find('\n', i);
    if (e == std::string_view::npos) e = s.size();
    std::string t;
    const std::string_view raw = s.substr(i, e - i);
    for (size_t k = 0; k < raw.size(); ++k) {
      const char c = raw[k];
      if (c == '\r') continue;
      if (c == '\xC2' && k + 1 < raw.size() && raw[k + 1] == '\xA0') {  // no-break space (w3m indents with it)
        t.push_back(' ');
        ++k;
        continue;
      }
      if (c == '\t') {
        t.append(8 - t.size() % 8, ' ');
      } else {
        t.push_back(c);
      }
    }
    while (!t.empty() && t.back() == ' ') t.pop_back();
    Line l;
    l.indent = t.find_first_not_of(' ');
    if (l.indent == std::string::npos) l.indent = 0;
    l.text = std::move(t);
    lines.push_back(std::move(l));
    if (e == s.size()) break;
    i = e + 1;
  }
  return lines;
}

std::string_view trimmed(std::string_view s) {
  size_t b = s.find_first_not_of(' ');
  if (b == std::string_view::npos) return {};
  return s.substr(b);
}

bool is_rule(std::string_view line) {
  std::string_view t = trimmed(line);
  if (t.size() < 5) return false;
  return std::all_of(t.begin(), t.end(), [](char c) { return c == '-' || c == '=' || c == '_' || c == '*' || c == '~' || c == ' '; });
}

// "1.", "1.2.", "1.2.13." or "1.2" followed by a space: a section number.
size_t section_number_depth(std::string_view t) {
  size_t i = 0, depth = 0;
  while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) {
    while (i < t.size() && std::isdigit(static_cast<unsigned char>(t[i]))) ++i;
    ++depth;
    if (i < t.size() && t[i] == '.') {
      ++i;
    } else {
      break;
    }
  }
  if (depth == 0 || i >= t.size() || t[i] != ' ') return 0;
  return depth;
}

bool is_toc_line(std::string_view line) {
  std::string_view t = trimmed(line);
  if (section_number_depth(t) > 0) return true;
  for (std::string_view p : {"Chapter ", "Appendix ", "Table ", "Example ", "Figure "})
    if (t.substr(0, p.size()) == p) return true;
  return false;
}

std::string_view first_word(std::string_view line) {
  std::string_view t = trimmed(line);
  size_t e = t.find(' ');
  return e == std::string_view::npos ? t : t.substr(0, e);
}

// Whether the lines (as in the file) are text a formatter wrapped at `width`
// columns: every line but the last broke because its next word would not have fitted.
bool is_wrapped_prose(const std::vector<Line>& lines, size_t width) {
  if (lines.size() <= 1) return true;
  const std::string_view first = trimmed(lines[0].text);
  if (first.substr(0, 2) == "+-" || (!first.empty() && first[0] == '|')) return false;  // an ASCII table
  for (size_t k = 0; k + 1 < lines.size(); ++k) {
    const size_t w = display_width(lines[k].text);
    if (w + 1 + display_width(first_word(lines[k + 1].text)) + 3 < width) return false;
  }
  return true;
}

// Joins wrapped lines: with a space, except between CJK characters and after
// a break inside a path or hyphenated word ("GNU/" + "Linux").
std::string unwrap(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& raw : lines) {
    std::string_view l = trimmed(raw);
    if (l.empty()) continue;
    if (!out.empty()) {
      const char32_t a = data::last_char(out), b = data::first_char(l);
      // Between two CJK characters, or next to CJK punctuation, there is no space.
      auto punct = [](char32_t c) { return (c >= 0x3000 && c <= 0x303F) || (c >= 0xFF00 && c <= 0xFF0F) || (c >= 0xFF1A && c <= 0xFF20); };
      const bool cjk = (data::is_cjk_joining(a) && data::is_cjk_joining(b)) || punct(a) || punct(b);
      const bool broken_word = (a == '/' || (a == '-' && out.size() >= 2 && std::isalnum(static_cast<unsigned char>(out[out.size() - 2])))) &&
                               b < 0x80 && std::isalnum(static_cast<unsigned char>(b));
      // A URL broken across lines: "(https://www.debian.org/social_contract#" + "guidelines)".
      const size_t sp = out.rfind(' ');
      const std::string_view last_token = std::string_view(out).substr(sp == std::string::npos ? 0 : sp + 1);
      const bool broken_url = (last_token.find("://") != std::string_view::npos && a != ')' && a != '.' && a != ',') ||
                              (a == ':' && l.substr(0, 2) == "//");
      if (!cjk && !broken_word && !broken_url) out.push_back(' ');
    }
    out.append(l);
  }
  return out;
}

// Lines of one paragraph with their common indentation removed.
std::vector<std::string> dedent(const std::vector<Line>& para) {
  size_t common = std::string::npos;
  for (const auto& l : para) common = std::min(common, l.indent);
  std::vector<std::string> out;
  for (const auto& l : para) out.push_back(l.text.substr(std::min(common, l.text.size())));
  return out;
}

// "* ", "- ", "+ " (w3m's second level) or "o " starts a list item.
bool is_bullet(std::string_view t) {
  return t.size() > 2 && (t[0] == '*' || t[0] == '-' || t[0] == '+' || t[0] == 'o') && t[1] == ' ';
}

// Fill column of a file: the width after which the number of lines drops
// most steeply (wrapped prose piles up just below it; code is spread out).
size_t wrap_width(const std::vector<Line>& lines) {
  std::vector<size_t> count(202, 0);
  for (const auto& l : lines) count[std::min<size_t>(display_width(l.text), 201)] += 1;
  size_t best = 72;
  long best_drop = 0;
  for (size_t w = 40; w < 200; ++w) {
    const long drop = long(count[w]) - long(count[w + 1]);
    if (drop > best_drop) {
      best_drop = drop;
      best = w;
    }
  }
  return best;
}

// Emits one blank-line separated paragraph: a list (lines starting "* "),
// wrapped prose or code.
void emit_paragraph(const std::vector<Line>& para, size_t width, std::vector<TextBlock>& out,
                    std::string (*rewrite)(std::string)) {
  std::vector<std::string> lines = dedent(para);
  if (is_bullet(lines[0])) {
    // One item per bullet line; continuation lines are indented deeper.
    std::vector<std::string> item;
    auto flush = [&] {
      if (item.empty()) return;
      item[0] = item[0].substr(2);
      out.push_back({BlockKind::list_item, 0, data::normalize_prose(rewrite(unwrap(item)))});
      item.clear();
    };
    for (const auto& l : lines) {
      if (is_bullet(l)) flush();
      item.push_back(l);
    }
    flush();
    return;
  }
  auto prose = [&](const std::vector<std::string>& ls) {
    std::string t = data::normalize_prose(rewrite(unwrap(ls)));
    if (!t.empty()) out.push_back({BlockKind::paragraph, 0, std::move(t)});
  };
  const std::vector<Line> rest(para.begin() + 1, para.end());
  if (is_wrapped_prose(para, width)) {
    prose(lines);
  } else if (para.size() >= 3 && is_wrapped_prose(rest, width)) {
    // A term line directly followed by its wrapped description.
    prose({lines[0]});
    prose(std::vector<std::string>(lines.begin() + 1, lines.end()));
  } else {
    std::string code;
    for (const auto& l : lines) code += l + "\n";
    std::string t = data::normalize_code(code);
    if (!t.empty()) out.push_back({BlockKind::code, 0, std::move(t)});
  }
}

std::string identity(std::string s) { return s; }

// "*note Title::" -> "Title"; "*note Title: Node." -> "Title."
std::string rewrite_info_refs(std::string s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t p = s.find('*', i);
    if (p == std::string::npos || p + 6 > s.size() ||
        !(s.compare(p, 6, "*note ") == 0 || s.compare(p, 6, "*Note ") == 0)) {
      if (p == std::string::npos) {
        out.append(s, i, std::string::npos);
        break;
      }
      out.append(s, i, p - i + 1);
      i = p + 1;
      continue;
    }
    out.append(s, i, p - i);
    size_t colon = s.find(':', p + 6);
    if (colon == std::string::npos) {
      out.append(s, p, std::string::npos);
      break;
    }
    out.append(s, p + 6, colon - p - 6);
    if (colon + 1 < s.size() && s[colon + 1] == ':') {
      i = colon + 2;
    } else {
      size_t e = s.find_first_of(".,", colon + 1);
      if (e == std::string::npos) {
        i = s.size();
      } else {
        out.push_back(s[e]);
        i = e + 1;
      }
    }
  }
  return out;
}

int underline_level(std::string_view line, std::string_view title) {
  if (line.empty() || title.empty() || line.size() != display_width(title)) return 0;
  const char c = line[0];
  if (!std::all_of(line.begin(), line.end(), [c](char x) { return x == c; })) return 0;
  switch (c) {
    case '*': return 1;
    case '=': return 2;
    case '-': return 3;
    case '.': return 4;
    default: return 0;
  }
}

}  // namespace

std::vector<TextBlock> plain_text_to_blocks(std::string_view text) {
  const std::string valid = tok::utf8_lossy(text);
  std::vector<Line> lines = split_lines(valid);
  const size_t width = wrap_width(lines);
  // Body text is indented (4 columns in w3m dumps); headings start at column 0.
  std::vector<TextBlock> out;
  std::vector<Line> para;
  auto flush = [&] {
    if (para.empty()) return;
    const size_t toc = std::count_if(para.begin(), para.end(), [](const Line& l) { return is_toc_line(l.text); });
    const std::string first(trimmed(para[0].text));
    if (para.size() >= 3 && toc * 2 >= para.size()) {
      // a table of contents
    } else if (first == "Table of Contents" || first == "List of Tables" || first == "List of Figures") {
    } else if (para[0].indent == 0 && (first.rfind("Chapter ", 0) == 0 || first.rfind("Appendix ", 0) == 0) &&
               para.size() <= 2) {
      std::vector<std::string> ls;
      for (const auto& l : para) ls.push_back(l.text);
      out.push_back({BlockKind::heading, 1, unwrap(ls)});
    } else if (para[0].indent == 0 && section_number_depth(first) > 0 &&
               std::all_of(para.begin(), para.end(), [](const Line& l) { return l.indent == 0; })) {
      std::vector<std::string> ls;
      for (const auto& l : para) ls.push_back(l.text);
      out.push_back({BlockKind::heading, int(std::min<size_t>(section_number_depth(first), 6)), unwrap(ls)});
    } else {
      emit_paragraph(para, width, out, identity);
    }
    para.clear();
  };
  for (auto& l : lines) {
    if (l.text.empty() || is_rule(l.text)) {
      flush();
    } else {
      para.push_back(std::move(l));
    }
  }
  flush();
  return out;
}

std::vector<TextBlock> info_to_blocks(std::string_view info) {
  const std::string valid = tok::utf8_lossy(info);
  std::vector<TextBlock> out;
  // Nodes are separated by \037; what precedes the first is the preamble.
  std::vector<std::string_view> nodes;
  for (size_t i = valid.find('\x1f'); i != std::string::npos;) {
    size_t e = valid.find('\x1f', i + 1);
    nodes.push_back(std::string_view(valid).substr(i + 1, (e == std::string::npos ? valid.size() : e) - i - 1));
    i = e;
  }
  // One fill column for the whole file: a node's own lines may be mostly code.
  const size_t width = wrap_width(split_lines(valid));
  for (std::string_view node : nodes) {
    while (!node.empty() && (node[0] == '\n' || node[0] == '\r' || node[0] == '\f')) node.remove_prefix(1);
    if (node.substr(0, 10) == "Tag Table:" || node.substr(0, 13) == "End Tag Table" ||
        node.substr(0, 9) == "Indirect:" || node.substr(0, 16) == "Local Variables:")
      continue;
    if (node.substr(0, 5) == "File:") {
      size_t e = node.find('\n');
      node = e == std::string_view::npos ? std::string_view{} : node.substr(e + 1);
    }
    // The menu ends a node's text.
    size_t menu = node.find("\n* Menu:");
    if (node.substr(0, 7) == "* Menu:") menu = 0;
    if (menu != std::string_view::npos) node = node.substr(0, menu);

    std::vector<Line> lines = split_lines(node);
    std::vector<Line> para;
    auto flush = [&] {
      if (!para.empty()) emit_paragraph(para, width, out, rewrite_info_refs);
      para.clear();
    };
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k + 1 < lines.size()) {
        if (int level = underline_level(lines[k + 1].text, lines[k].text)) {
          flush();
          out.push_back({BlockKind::heading, level, std::string(trimmed(lines[k].text))});
          ++k;
          continue;
        }
      }
      if (lines[k].text.empty()) {
        flush();
        continue;
      }
      // A line indented less than the one before starts a new paragraph
      // ("     description" then "'--option'"), except after a paragraph's
      // first line, which makeinfo indents by 3.
      if (!para.empty() && lines[k].indent < para.back().indent &&
          !(para.size() == 1 && para[0].indent - lines[k].indent <= 3))
        flush();
      para.push_back(lines[k]);
    }
    flush();
  }
  return out;
}

}  // namespace finmoe
