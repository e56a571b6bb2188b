#include "data/markup.h"

#include <algorithm>
#include <cctype>

#include "tokenizer/utf8.h"

namespace finmoe::data {

// ---- Unicode -------------------------------------------------------------------

bool is_han(char32_t c) {
  return (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xF900 && c <= 0xFAFF) ||
         (c >= 0x20000 && c <= 0x2FA1F);
}

bool is_cjk_joining(char32_t c) {
  return is_han(c) || (c >= 0x2E80 && c <= 0x2FDF) || (c >= 0x3000 && c <= 0x31FF) ||
         (c >= 0xAC00 && c <= 0xD7AF) || (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFFEF);
}

static bool is_wide(char32_t c) {
  return (c >= 0x1100 && c <= 0x115F) || (c >= 0x2E80 && c <= 0xA4CF) || (c >= 0xAC00 && c <= 0xD7A3) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFE30 && c <= 0xFE4F) || (c >= 0xFF00 && c <= 0xFF60) ||
         (c >= 0xFFE0 && c <= 0xFFE6) || (c >= 0x20000 && c <= 0x3FFFD);
}

size_t display_width(std::string_view s) {
  size_t w = 0;
  for (size_t i = 0; i < s.size();) w += is_wide(tok::utf8_next(s, i)) ? 2 : 1;
  return w;
}

char32_t first_char(std::string_view s) {
  size_t i = 0;
  return s.empty() ? 0 : tok::utf8_next(s, i);
}

char32_t last_char(std::string_view s) {
  if (s.empty()) return 0;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return tok::utf8_next(s, i);
}

// ---- Character references ----------------------------------------------------------

const std::unordered_map<std::string, std::string>& html_entities() {
  static const std::unordered_map<std::string, std::string> table = [] {
    std::unordered_map<std::string, std::string> t;
    auto put = [&](const char* name, char32_t cp) {
      std::string s;
      tok::utf8_append(s, cp);
      t.emplace(name, s);
    };
    // U+00A0..U+00FF in code point order.
    static const char* latin1[] = {
        "nbsp",   "iexcl",  "cent",   "pound",  "curren", "yen",    "brvbar", "sect",   "uml",
        "copy",   "ordf",   "laquo",  "not",    "shy",    "reg",    "macr",   "deg",    "plusmn",
        "sup2",   "sup3",   "acute",  "micro",  "para",   "middot", "cedil",  "sup1",   "ordm",
        "raquo",  "frac14", "frac12", "frac34", "iquest", "Agrave", "Aacute", "Acirc",  "Atilde",
        "Auml",   "Aring",  "AElig",  "Ccedil", "Egrave", "Eacute", "Ecirc",  "Euml",   "Igrave",
        "Iacute", "Icirc",  "Iuml",   "ETH",    "Ntilde", "Ograve", "Oacute", "Ocirc",  "Otilde",
        "Ouml",   "times",  "Oslash", "Ugrave", "Uacute", "Ucirc",  "Uuml",   "Yacute", "THORN",
        "szlig",  "agrave", "aacute", "acirc",  "atilde", "auml",   "aring",  "aelig",  "ccedil",
        "egrave", "eacute", "ecirc",  "euml",   "igrave", "iacute", "icirc",  "iuml",   "eth",
        "ntilde", "ograve", "oacute", "ocirc",  "otilde", "ouml",   "divide", "oslash", "ugrave",
        "uacute", "ucirc",  "uuml",   "yacute", "thorn",  "yuml"};
    static_assert(sizeof(latin1) / sizeof(latin1[0]) == 96);
    for (int i = 0; i < 96; ++i) put(latin1[i], char32_t(0xA0 + i));
    // Greek capitals U+0391..U+03A9 (U+03A2 is unassigned) and small letters U+03B1..U+03C9.
    static const char* greek[] = {"Alpha", "Beta", "Gamma", "Delta",   "Epsilon", "Zeta", "Eta",
                                  "Theta", "Iota", "Kappa", "Lambda",  "Mu",      "Nu",   "Xi",
                                  "Omicron", "Pi", "Rho",   nullptr,   "Sigma",   "Tau",  "Upsilon",
                                  "Phi",   "Chi",  "Psi",   "Omega"};
    for (int i = 0; i < 25; ++i) {
      if (!greek[i]) continue;
      put(greek[i], char32_t(0x391 + i));
      std::string lower = greek[i];
      lower[0] = char(std::tolower(static_cast<unsigned char>(lower[0])));
      put(lower.c_str(), char32_t(0x3B1 + i));
    }
    put("sigmaf", 0x3C2);
    static const std::pair<const char*, char32_t> rest[] = {
        {"quot", 34},       {"amp", 38},        {"lt", 60},         {"gt", 62},         {"apos", 39},
        {"OElig", 338},     {"oelig", 339},     {"Scaron", 352},    {"scaron", 353},    {"Yuml", 376},
        {"circ", 710},      {"tilde", 732},     {"ensp", 8194},     {"emsp", 8195},     {"thinsp", 8201},
        {"zwnj", 8204},     {"zwj", 8205},      {"lrm", 8206},      {"rlm", 8207},      {"ndash", 8211},
        {"mdash", 8212},    {"lsquo", 8216},    {"rsquo", 8217},    {"sbquo", 8218},    {"ldquo", 8220},
        {"rdquo", 8221},    {"bdquo", 8222},    {"dagger", 8224},   {"Dagger", 8225},   {"permil", 8240},
        {"lsaquo", 8249},   {"rsaquo", 8250},   {"euro", 8364},     {"fnof", 402},      {"thetasym", 977},
        {"upsih", 978},     {"piv", 982},       {"bull", 8226},     {"hellip", 8230},   {"prime", 8242},
        {"Prime", 8243},    {"oline", 8254},    {"frasl", 8260},    {"weierp", 8472},   {"image", 8465},
        {"real", 8476},     {"trade", 8482},    {"alefsym", 8501},  {"larr", 8592},     {"uarr", 8593},
        {"rarr", 8594},     {"darr", 8595},     {"harr", 8596},     {"crarr", 8629},    {"lArr", 8656},
        {"uArr", 8657},     {"rArr", 8658},     {"dArr", 8659},     {"hArr", 8660},     {"forall", 8704},
        {"part", 8706},     {"exist", 8707},    {"empty", 8709},    {"nabla", 8711},    {"isin", 8712},
        {"notin", 8713},    {"ni", 8715},       {"prod", 8719},     {"sum", 8721},      {"minus", 8722},
        {"lowast", 8727},   {"radic", 8730},    {"prop", 8733},     {"infin", 8734},    {"ang", 8736},
        {"and", 8743},      {"or", 8744},       {"cap", 8745},      {"cup", 8746},      {"int", 8747},
        {"there4", 8756},   {"sim", 8764},      {"cong", 8773},     {"asymp", 8776},    {"ne", 8800},
        {"equiv", 8801},    {"le", 8804},       {"ge", 8805},       {"sub", 8834},      {"sup", 8835},
        {"nsub", 8836},     {"sube", 8838},     {"supe", 8839},     {"oplus", 8853},    {"otimes", 8855},
        {"perp", 8869},     {"sdot", 8901},     {"lceil", 8968},    {"rceil", 8969},    {"lfloor", 8970},
        {"rfloor", 8971},   {"lang", 9001},     {"rang", 9002},     {"loz", 9674},      {"spades", 9824},
        {"clubs", 9827},    {"hearts", 9829},   {"diams", 9830}};
    for (const auto& [name, cp] : rest) put(name, cp);
    return t;
  }();
  return table;
}

static bool valid_scalar(uint64_t cp) { return cp > 0 && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF); }

std::string decode_references(std::string_view s, const std::unordered_map<std::string, std::string>* extra,
                              bool keep_unknown) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const size_t amp = s.find('&', i);
    if (amp == std::string_view::npos) {
      out.append(s.substr(i));
      break;
    }
    out.append(s.substr(i, amp - i));
    // A reference is at most ~32 characters and ends with ';'.
    const size_t semi = s.find(';', amp + 1);
    if (semi == std::string_view::npos || semi - amp > 33 || semi == amp + 1) {
      out.push_back('&');
      i = amp + 1;
      continue;
    }
    const std::string_view body = s.substr(amp + 1, semi - amp - 1);
    if (body[0] == '#') {
      const bool hex = body.size() > 1 && (body[1] == 'x' || body[1] == 'X');
      const std::string_view digits = body.substr(hex ? 2 : 1);
      bool ok = !digits.empty();
      uint64_t cp = 0;
      for (char c : digits) {
        int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                : hex && std::isxdigit(static_cast<unsigned char>(c))
                    ? std::tolower(static_cast<unsigned char>(c)) - 'a' + 10
                    : -1;
        if (d < 0) {
          ok = false;
          break;
        }
        cp = std::min<uint64_t>(cp * (hex ? 16 : 10) + uint64_t(d), 0x110000);
      }
      if (!ok) {
        out.push_back('&');
        i = amp + 1;
        continue;
      }
      tok::utf8_append(out, valid_scalar(cp) ? char32_t(cp) : char32_t(0xFFFD));
      i = semi + 1;
      continue;
    }
    const bool name_ok = std::all_of(body.begin(), body.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
    });
    if (!name_ok) {
      out.push_back('&');
      i = amp + 1;
      continue;
    }
    const std::string name(body);
    const std::string* value = nullptr;
    if (extra) {
      auto it = extra->find(name);
      if (it != extra->end()) value = &it->second;
    }
    if (!value) {
      auto it = html_entities().find(name);
      if (it != html_entities().end()) value = &it->second;
    }
    if (value) {
      out.append(*value);
    } else if (keep_unknown) {
      out.append(s.substr(amp, semi - amp + 1));
    }
    i = semi + 1;
  }
  return out;
}

// ---- Tag lexer ---------------------------------------------------------------------

std::string MarkupToken::attr(std::string_view key) const {
  for (const auto& [k, v] : attrs)
    if (k == key) return v;
  return "";
}

static std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = char(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

static bool istarts_with(std::string_view s, size_t pos, std::string_view prefix) {
  if (s.size() - pos < prefix.size()) return false;
  for (size_t k = 0; k < prefix.size(); ++k)
    if (std::tolower(static_cast<unsigned char>(s[pos + k])) != std::tolower(static_cast<unsigned char>(prefix[k])))
      return false;
  return true;
}

static size_t ifind(std::string_view s, std::string_view needle, size_t from) {
  for (size_t p = s.find('<', from); p != std::string_view::npos; p = s.find('<', p + 1))
    if (istarts_with(s, p, needle)) return p;
  return std::string_view::npos;
}

static bool name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == ':' || c == '_' || c == '-' || c == '.';
}

bool MarkupLexer::next(MarkupToken& t) {
  t = MarkupToken{};
  if (pos_ >= src_.size()) return false;
  const std::string_view s = src_;
  if (!raw_text_end_.empty()) {
    size_t end = ifind(s, raw_text_end_, pos_);
    if (end == std::string_view::npos) end = s.size();
    raw_text_end_.clear();
    if (end > pos_) {
      t.type = MarkupToken::text;
      t.raw = s.substr(pos_, end - pos_);
      pos_ = end;
      return true;
    }
  }
  auto skip_to = [&](std::string_view terminator, size_t from) {
    size_t e = s.find(terminator, from);
    return e == std::string_view::npos ? s.size() : e + terminator.size();
  };
  if (s[pos_] != '<') {
    size_t e = s.find('<', pos_);
    if (e == std::string_view::npos) e = s.size();
    t.type = MarkupToken::text;
    t.raw = s.substr(pos_, e - pos_);
    pos_ = e;
    return true;
  }
  const size_t start = pos_;
  if (s.compare(pos_, 4, "<!--") == 0) {
    t.type = MarkupToken::comment;
    pos_ = skip_to("-->", pos_ + 4);
    t.raw = s.substr(start, pos_ - start);
    return true;
  }
  if (s.compare(pos_, 9, "<![CDATA[") == 0) {
    t.type = MarkupToken::cdata;
    size_t e = s.find("]]>", pos_ + 9);
    if (e == std::string_view::npos) e = s.size();
    t.raw = s.substr(pos_ + 9, e - pos_ - 9);
    pos_ = std::min(s.size(), e + 3);
    return true;
  }
  if (istarts_with(s, pos_, "<!doctype")) {
    // The internal subset [...] may hold '>' inside declarations and quotes.
    size_t p = pos_ + 9;
    char quote = 0;
    int bracket = 0;
    for (; p < s.size(); ++p) {
      char c = s[p];
      if (quote) {
        if (c == quote) quote = 0;
      } else if (c == '"' || c == '\'') {
        quote = c;
      } else if (c == '[') {
        ++bracket;
      } else if (c == ']') {
        --bracket;
      } else if (c == '>' && bracket <= 0) {
        break;
      }
    }
    t.type = MarkupToken::doctype;
    t.raw = s.substr(pos_ + 9, std::min(p, s.size()) - pos_ - 9);
    pos_ = std::min(s.size(), p + 1);
    return true;
  }
  if (s.compare(pos_, 2, "<!") == 0 || s.compare(pos_, 2, "<?") == 0) {
    t.type = MarkupToken::processing;
    pos_ = skip_to(">", pos_ + 2);
    t.raw = s.substr(start, pos_ - start);
    return true;
  }
  const bool end_tag = s.compare(pos_, 2, "</") == 0;
  size_t p = pos_ + (end_tag ? 2 : 1);
  if (p >= s.size() || !std::isalpha(static_cast<unsigned char>(s[p]))) {
    // A lone '<' is text.
    t.type = MarkupToken::text;
    t.raw = s.substr(pos_, 1);
    ++pos_;
    return true;
  }
  size_t n0 = p;
  while (p < s.size() && name_char(s[p])) ++p;
  t.name = lower(s.substr(n0, p - n0));
  t.type = end_tag ? MarkupToken::end_tag : MarkupToken::start_tag;
  // Attributes: name[=value], value quoted or bare.
  while (p < s.size() && s[p] != '>') {
    char c = s[p];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++p;
      continue;
    }
    if (c == '/') {
      if (p + 1 < s.size() && s[p + 1] == '>') t.self_closing = true;
      ++p;
      continue;
    }
    size_t a0 = p;
    while (p < s.size() && !std::isspace(static_cast<unsigned char>(s[p])) && s[p] != '=' && s[p] != '>' &&
           !(s[p] == '/' && p + 1 < s.size() && s[p + 1] == '>'))
      ++p;
    std::string key = lower(s.substr(a0, p - a0));
    if (key.empty()) {
      ++p;
      continue;
    }
    while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
    std::string value;
    if (p < s.size() && s[p] == '=') {
      ++p;
      while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
      if (p < s.size() && (s[p] == '"' || s[p] == '\'')) {
        char q = s[p++];
        size_t v0 = p;
        while (p < s.size() && s[p] != q) ++p;
        value = std::string(s.substr(v0, p - v0));
        if (p < s.size()) ++p;
      } else {
        size_t v0 = p;
        while (p < s.size() && !std::isspace(static_cast<unsigned char>(s[p])) && s[p] != '>') ++p;
        value = std::string(s.substr(v0, p - v0));
      }
    }
    if (!end_tag) t.attrs.emplace_back(std::move(key), std::move(value));
  }
  pos_ = std::min(s.size(), p + 1);
  t.raw = s.substr(start, pos_ - start);
  if (html_ && !end_tag && !t.self_closing &&
      (t.name == "script" || t.name == "style" || t.name == "textarea" || t.name == "title"))
    raw_text_end_ = "</" + t.name;
  return true;
}

// ---- Block builder -------------------------------------------------------------------

static constexpr char kLineBreak = '\x01';

std::string normalize_prose(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool space = false, newline = false;
  for (size_t i = 0; i < s.size();) {
    const size_t i0 = i;
    char32_t c;
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      c = static_cast<unsigned char>(s[i++]);
    } else if (tok::utf8_valid_len(s, i) == 0) {
      c = 0xFFFD;
      ++i;
    } else {
      c = tok::utf8_next(s, i);
    }
    if (c == char32_t(kLineBreak)) {
      newline = true;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == 0xA0) {
      space = true;
      continue;
    }
    if (c == 0xAD || c == 0x200B || c == 0xFEFF) continue;  // soft hyphen, zero-width space, BOM
    if (!out.empty()) {
      if (newline) {
        out.push_back('\n');
      } else if (space) {
        out.push_back(' ');
      }
    }
    space = newline = false;
    if (c == 0xFFFD && tok::utf8_valid_len(s, i0) == 0) {
      tok::utf8_append(out, c);
    } else {
      out.append(s.substr(i0, i - i0));
    }
  }
  return out;
}

std::string normalize_code(std::string_view s) {
  std::vector<std::string> lines;
  std::string line;
  auto end_line = [&] {
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.pop_back();
    lines.push_back(std::move(line));
    line.clear();
  };
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\r') continue;
    if (c == '\n' || c == kLineBreak) {
      end_line();
    } else if (c == '\xC2' && i + 1 < s.size() && s[i + 1] == '\xA0') {
      line.push_back(' ');
      ++i;
    } else {
      line.push_back(c);
    }
  }
  end_line();
  size_t b = 0, e = lines.size();
  while (b < e && lines[b].empty()) ++b;
  while (e > b && lines[e - 1].empty()) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) {
    if (k > b) out.push_back('\n');
    out += lines[k];
  }
  return tok::utf8_lossy(out);
}

BlockKind BlockBuilder::current_kind() const {
  for (auto it = stack_.rbegin(); it != stack_.rend(); ++it)
    if (!it->passive) return it->kind;
  return BlockKind::paragraph;
}

bool BlockBuilder::in_code() const {
  for (const auto& f : stack_)
    if (f.kind == BlockKind::code && !f.passive) return true;
  return false;
}

bool BlockBuilder::in_row() const {
  for (const auto& f : stack_)
    if (f.kind == BlockKind::table_row && !f.passive) return true;
  return false;
}

void BlockBuilder::flush() {
  if (buf_.empty()) return;
  TextBlock b;
  b.kind = current_kind();
  b.text = in_code() ? normalize_code(buf_) : normalize_prose(buf_);
  if (b.kind == BlockKind::heading) {
    for (auto it = stack_.rbegin(); it != stack_.rend(); ++it)
      if (!it->passive) {
        b.level = it->level;
        break;
      }
  }
  buf_.clear();
  if (!b.text.empty()) blocks_.push_back(std::move(b));
}

void BlockBuilder::open(BlockKind kind, int level) {
  if (in_row()) {
    stack_.push_back({kind, 0, /*passive=*/true});  // a block inside a table cell is part of the row
    return;
  }
  flush();
  if (kind == BlockKind::paragraph) {
    BlockKind k = current_kind();
    if (k == BlockKind::term || k == BlockKind::definition || k == BlockKind::list_item ||
        k == BlockKind::question || k == BlockKind::answer || k == BlockKind::heading)
      kind = k;
  }
  if (kind != BlockKind::heading) level = 0;
  stack_.push_back({kind, level, /*passive=*/false});
}

void BlockBuilder::close() {
  if (stack_.empty()) return;
  if (!stack_.back().passive) flush();
  stack_.pop_back();
}

void BlockBuilder::text(std::string_view decoded) { buf_.append(decoded); }

void BlockBuilder::line_break() { buf_.push_back(in_code() ? '\n' : kLineBreak); }

void BlockBuilder::cell() {
  if (!in_row()) return;
  size_t e = buf_.find_last_not_of(" \t\r\n");
  if (e != std::string::npos && buf_[e] != '|') buf_ += " | ";
}

std::vector<TextBlock> BlockBuilder::take() {
  while (!stack_.empty()) close();
  flush();
  return std::move(blocks_);
}

}  // namespace finmoe::data
