// `finmoe corpus qa`: a small financial instruction task from real material.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "data/debian_package.h"
#include "data/package_sources.h"
#include "finmoe/config.h"
#include "finmoe/corpus.h"
#include "finmoe/error.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace {

std::string capitalize(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = char(s[0] - 'a' + 'A');
  return s;
}

std::string lower_ascii(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string with_period(std::string s) {
  if (!s.empty() && s.back() != '.' && s.back() != '?' && s.back() != '!') s.push_back('.');
  return s;
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

size_t word_count_ascii(std::string_view s) {
  size_t n = 0;
  bool in = false;
  for (char c : s) {
    if (c == ' ' || c == '\n') {
      in = false;
    } else if (!in) {
      in = true;
      ++n;
    }
  }
  return n;
}

// The first sentences of a text, at most ~max_chars code points.
std::string first_sentences(const std::string& s, size_t max_chars) {
  if (count_chars(s) <= max_chars) return s;
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t e = std::string::npos;
    for (std::string_view end : {". ", "? ", "! ", "\u3002"}) {
      size_t p = s.find(end, pos);
      if (p != std::string::npos && (e == std::string::npos || p < e)) e = p + (end.size() == 2 ? 1 : end.size());
    }
    std::string next = s.substr(pos, (e == std::string::npos ? s.size() : e) - pos);
    if (!out.empty() && count_chars(out) + count_chars(next) > max_chars) break;
    out += next;
    if (e == std::string::npos) break;
    pos = e;
    while (pos < s.size() && s[pos] == ' ') ++pos;
    if (count_chars(out) >= max_chars) break;
    out += " ";
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

bool is_function_name(std::string_view s) {
  if (s.size() < 2 || s.size() > 24 || !std::isupper(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isupper(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '.' ||
           c == '_';
  });
}

// A term worth asking about: a short name, not a command-line option or a
// single symbol, not a menu path.
bool is_good_term(const std::string& t) {
  if (t.empty() || count_chars(t) > 60 || word_count_ascii(t) > 6) return false;
  if (t[0] == '-' || t.find("\u2192") != std::string::npos || t.find('\n') != std::string::npos) return false;
  size_t letters = 0;
  for (char c : t) letters += std::isalpha(static_cast<unsigned char>(c)) != 0;
  return letters >= 3;
}

// "4.7.2 Command Directives" -> "Command Directives"; "1.2. What is X?" -> "What is X?".
std::string strip_section_number(const std::string& h) {
  size_t i = 0;
  while (i < h.size() && (std::isdigit(static_cast<unsigned char>(h[i])) || h[i] == '.')) ++i;
  if (i == 0 || i >= h.size() || h[i] != ' ') return h;
  return h.substr(i + 1);
}

// A definition without its trailing lead-in to an example ("... For example:"),
// or "" when nothing else is left.
std::string without_lead_in(std::string def) {
  while (!def.empty() && def.back() == ':') {
    size_t p = std::string::npos;
    for (std::string_view end : {". ", "? ", "! "}) {
      size_t q = def.rfind(end);
      if (q != std::string::npos && (p == std::string::npos || q > p)) p = q;
    }
    if (p == std::string::npos) return "";
    def.resize(p + 1);
  }
  return def;
}

}  // namespace

std::vector<QaItem> quiz_qa_items(const std::string& subject, const std::vector<std::string>& categories,
                                  const std::vector<QuizRecord>& records) {
  std::vector<QaItem> out;
  for (const auto& r : records) {
    if (r.patterns.size() < 2) continue;
    const std::string q = quiz_canonical(r.patterns[0]), a = quiz_canonical(r.patterns[1]);
    if (q.empty() || a.empty()) continue;
    if (subject == "ucc") {
      // Sections of the Uniform Commercial Code and their subjects, both ways.
      const std::string group = "ucc:" + q;
      out.push_back({"Which topic does section " + q + " of the Uniform Commercial Code (UCC) cover?",
                     with_period(capitalize(a)), "ucc-topic", "en", group});
      out.push_back({"Which section of the Uniform Commercial Code (UCC) covers " + a + "?", "Section " + q + ".",
                     "ucc-section", "en", group});
      continue;
    }
    const std::string cat = categories.size() >= 2 ? quiz_canonical(categories[1]) : "answer";
    out.push_back({"What is the " + cat + " of " + q + "?", with_period(capitalize(a)), "quiz-" + subject, "en",
                   "quiz-" + subject + ":" + q});
  }
  return out;
}

std::vector<QaItem> definition_qa_items(const std::vector<TextBlock>& blocks, const std::string& manual,
                                        const std::string& source) {
  std::vector<QaItem> out;
  std::string section;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const TextBlock& b = blocks[i];
    if (b.kind == BlockKind::heading) {
      section = strip_section_number(b.text);
      continue;
    }
    if (b.kind == BlockKind::question) {
      std::string q = b.text;
      while (i + 1 < blocks.size() && blocks[i + 1].kind == BlockKind::question) q += " " + blocks[++i].text;
      std::string a;
      while (i + 1 < blocks.size() && blocks[i + 1].kind == BlockKind::answer) {
        const std::string& t = blocks[++i].text;
        if (count_chars(a) + count_chars(t) > 1500) continue;
        a += (a.empty() ? "" : "\n\n") + t;
      }
      if (!a.empty()) out.push_back({q, a, source + "-faq", "en", source + "-faq:" + q});
      continue;
    }
    if (b.kind != BlockKind::term) continue;
    const std::string term = b.text;
    while (i + 1 < blocks.size() && blocks[i + 1].kind == BlockKind::term) ++i;  // synonyms: first term asks
    std::string def;
    while (i + 1 < blocks.size() && blocks[i + 1].kind == BlockKind::definition) {
      const std::string& t = blocks[++i].text;
      if (def.empty() && !starts_with(t, "See ") && !starts_with(t, "See also")) def = without_lead_in(t);
    }
    if (def.empty() || !is_good_term(term) || word_count_ascii(def) < 4 || def.find("UNDOCUMENTED") != std::string::npos)
      continue;
    std::string question;
    if (manual.empty()) {
      question = "What is " + term + "?";
    } else if (!section.empty() && section != term) {
      question = "In " + manual + " (" + section + "), what is \"" + term + "\"?";
    } else {
      question = "In " + manual + ", what is \"" + term + "\"?";
    }
    out.push_back({question, first_sentences(def, 600), source, "en", source + ":" + lower_ascii(term)});
  }
  return out;
}

std::vector<QaItem> function_qa_items(const std::vector<TextBlock>& blocks, const std::string& lang,
                                       const std::string& source) {
  std::vector<QaItem> out;
  for (size_t i = 0; i + 1 < blocks.size(); ++i) {
    if (blocks[i].kind != BlockKind::heading || !is_function_name(blocks[i].text)) continue;
    const std::string& name = blocks[i].text;
    const TextBlock& d = blocks[i + 1];
    if (d.kind != BlockKind::paragraph || count_chars(d.text) < 8) continue;
    std::string q = lang == "zh" ? "LibreOffice Calc \u4e2d\u7684 " + name +
                                       " \u51fd\u6570\u6709\u4ec0\u4e48\u4f5c\u7528\uff1f"  // 中的 … 函数有什么作用？
                                 : "What does the LibreOffice Calc function " + name + " do?";
    out.push_back({q, first_sentences(d.text, 600), source, lang, "calc:" + name});
  }
  return out;
}

std::vector<McItem> make_multiple_choice(const std::vector<QaItem>& test_items, const std::vector<QaItem>& pool,
                                         int n_choices) {
  if (n_choices < 2) throw Error("--choices must be at least 2, got " + std::to_string(n_choices));
  std::map<std::string, std::vector<std::string>> answers;  // source -> distinct answers
  for (const auto& it : pool) {
    auto& v = answers[it.source];
    if (std::find(v.begin(), v.end(), it.answer) == v.end()) v.push_back(it.answer);
  }
  std::vector<McItem> out;
  for (const auto& it : test_items) {
    std::vector<std::string> cands;
    for (const auto& a : answers[it.source])
      if (a != it.answer) cands.push_back(a);
    if (int(cands.size()) < n_choices - 1) continue;
    // Distractors and the answer's position depend only on the question.
    std::sort(cands.begin(), cands.end(), [&](const std::string& x, const std::string& y) {
      const uint64_t hx = text_hash(it.question + "\x1f" + x), hy = text_hash(it.question + "\x1f" + y);
      return hx != hy ? hx < hy : x < y;
    });
    cands.resize(size_t(n_choices - 1));
    McItem m;
    m.question = it.question;
    m.source = it.source;
    m.lang = it.lang;
    m.answer = int(text_hash(it.question) % uint64_t(n_choices));
    m.choices = cands;
    m.choices.insert(m.choices.begin() + m.answer, it.answer);
    out.push_back(std::move(m));
  }
  return out;
}

namespace {

// What `corpus qa` mines from each package it knows.
struct QaPackage {
  const char* name;
  bool is_default;
};
constexpr QaPackage kQaPackages[] = {{"bsdgames", true},
                                     {"kmymoney-common", true},
                                     {"libreoffice-help-en-us", true},
                                     {"libreoffice-help-zh-cn", true},
                                     {"ledger", true},
                                     {"gnucash-docs", false}};

std::vector<QaItem> mine_package(const QaOptions& o, const DebianPackage& deb) {
  const std::string& root = deb.root;
  auto read = [&](const std::string& rel) { return data::read_maybe_gzipped(root + "/" + rel); };
  auto need = [&](const std::string& rel) {
    std::error_code ec;
    if (!fs::is_regular_file(root + "/" + rel, ec))
      throw Error("Debian package '" + deb.name + "' has no " + rel + " (extracted in " + root + ")");
    return rel;
  };
  std::vector<QaItem> items;
  auto append = [&](std::vector<QaItem> v) { items.insert(items.end(), v.begin(), v.end()); };
  const std::string name = deb.name;
  if (name == "bsdgames") {
    const std::string quiz_dir = "usr/share/games/bsdgames/quiz";
    const std::string index_path = root + "/" + need(quiz_dir + "/index");
    const auto index = parse_quiz(read(quiz_dir + "/index"), index_path);
    for (const auto& subject : o.quiz_subjects) {
      const QuizRecord* entry = nullptr;
      for (const auto& r : index)
        if (!r.patterns.empty() && fs::path(r.patterns[0]).filename() == subject) entry = &r;
      if (!entry) throw Error("--quiz: no subject '" + subject + "' in " + index_path);
      const std::string rel = need(quiz_dir + "/" + subject);
      std::vector<std::string> categories(entry->patterns.begin() + 1, entry->patterns.end());
      append(quiz_qa_items(subject, categories, parse_quiz(read(rel), root + "/" + rel)));
    }
  } else if (name == "kmymoney-common") {
    const std::string dir = "usr/share/doc/HTML/en/kmymoney";
    for (const auto& f : data::list_files(root + "/" + dir))
      if (f.size() > 8 && f.substr(f.size() - 8) == ".docbook" && f != "credits.docbook")
        append(definition_qa_items(docbook_to_blocks(read(dir + "/" + f)), "KMyMoney", "kmymoney"));
  } else if (name == "libreoffice-help-en-us" || name == "libreoffice-help-zh-cn") {
    const bool zh = name == "libreoffice-help-zh-cn";
    const std::string dir = std::string("usr/share/libreoffice/help/") + (zh ? "zh-CN" : "en-US") + "/text/scalc/01/";
    for (const char* page : {"04060103.html", "04060118.html", "04060119.html"})
      append(function_qa_items(html_to_blocks(read(need(dir + page))), zh ? "zh" : "en", zh ? "calc-zh" : "calc-en"));
  } else if (name == "ledger") {
    append(definition_qa_items(html_to_blocks(read(need("usr/share/doc/ledger/ledger3.html"))), "Ledger", "ledger"));
  } else if (name == "gnucash-docs") {
    append(definition_qa_items(
        html_to_blocks(read(need("usr/share/doc/gnucash-docs/gnucash-guide-en/gnc-gloss.html"))), "",
        "gnucash-glossary"));
  }
  return items;
}

std::string messages_line(const QaItem& it) {
  nlohmann::json j = {{"messages",
                       {{{"role", "user"}, {"content", it.question}}, {{"role", "assistant"}, {"content", it.answer}}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

QaResult build_finance_qa(const QaOptions& o) {
  if (!(o.test_fraction > 0.0 && o.test_fraction < 1.0))
    throw Error("--test-fraction must be in (0, 1), got " + std::to_string(o.test_fraction));
  if (o.n_choices < 2) throw Error("--choices must be at least 2, got " + std::to_string(o.n_choices));
  const std::string cache = o.cache_dir.empty() ? default_cache_dir() : o.cache_dir;
  std::vector<std::string> defaults;
  for (const auto& p : kQaPackages)
    if (p.is_default) defaults.push_back(p.name);
  const std::vector<std::string> names = data::resolve_package_list(o.packages, defaults);
  for (const auto& n : names) {
    bool known = false;
    std::string list;
    for (const auto& p : kQaPackages) {
      known |= n == p.name;
      list += (list.empty() ? "" : ", ") + std::string(p.name);
    }
    if (!known) throw Error("--packages: 'corpus qa' mines no questions from '" + n + "'; known: " + list);
  }
  std::vector<QaItem> items;
  nlohmann::json debs = nlohmann::json::object();
  for (const auto& n : names) {
    DebianPackage deb = fetch_debian_package(n, cache, o.offline);
    if (o.log) o.log(n + ": " + (deb.downloaded ? "downloaded " : "cached ") + fs::path(deb.deb).filename().string());
    debs[n] = fs::path(deb.deb).filename().string();
    auto v = mine_package(o, deb);
    items.insert(items.end(), v.begin(), v.end());
  }
  // One item per question (the first).
  std::set<std::string> questions;
  std::vector<QaItem> unique;
  for (auto& it : items)
    if (questions.insert(it.question).second) unique.push_back(std::move(it));

  std::vector<QaItem> train, test;
  for (auto& it : unique) (in_test_split(it.group, o.test_fraction) ? test : train).push_back(it);
  const auto mc = make_multiple_choice(test, unique, o.n_choices);

  QaResult r;
  r.out_dir = o.out_dir;
  std::map<std::string, QaSourceCounts> per;
  for (const auto& it : train) ++per[it.source].train;
  for (const auto& it : test) ++per[it.source].test;
  for (const auto& m : mc) ++per[m.source].multiple_choice;
  std::string train_s, test_s, mc_s;
  for (const auto& it : train) train_s += messages_line(it);
  for (const auto& it : test) test_s += messages_line(it);
  for (const auto& m : mc)
    mc_s += nlohmann::json{{"question", m.question}, {"choices", m.choices}, {"answer", m.answer},
                           {"source", m.source}, {"lang", m.lang}}
                .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
            "\n";
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) throw Error("cannot create " + o.out_dir + ": " + ec.message());
  write_file_atomic(o.out_dir + "/train.jsonl", train_s);
  write_file_atomic(o.out_dir + "/test.jsonl", test_s);
  write_file_atomic(o.out_dir + "/test_mc.jsonl", mc_s);
  nlohmann::json sources = nlohmann::json::object();
  for (auto& [name, c] : per) {
    c.source = name;
    r.sources.push_back(c);
    sources[name] = {{"train", c.train}, {"test", c.test}, {"multiple_choice", c.multiple_choice}};
  }
  r.train = int64_t(train.size());
  r.test = int64_t(test.size());
  r.multiple_choice = int64_t(mc.size());
  write_json_file(o.out_dir + "/manifest.json",
                  {{"format", "finmoe-qa"},
                   {"version", 1},
                   {"test_fraction", o.test_fraction},
                   {"split", "test if text_hash(group) / 2^64 < test_fraction; a group holds the questions "
                             "about one record, term or function"},
                   {"choices", o.n_choices},
                   {"quiz_subjects", o.quiz_subjects},
                   {"packages", debs},
                   {"train", r.train},
                   {"test", r.test},
                   {"multiple_choice", r.multiple_choice},
                   {"sources", sources},
                   {"files", {{"train", "train.jsonl"}, {"test", "test.jsonl"}, {"multiple_choice", "test_mc.jsonl"}}}});
  return r;
}

}  // namespace finmoe
