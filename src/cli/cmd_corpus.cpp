// finmoe corpus fetch | qa | list | convert
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "data/debian_package.h"
#include "data/package_sources.h"
#include "finmoe/corpus.h"
#include "finmoe/error.h"

namespace finmoe::cli {

namespace {

std::string human(int64_t n) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(n >= 10'000'000 ? 0 : 1);
  if (n >= 1'000'000) {
    s << double(n) / 1e6 << "M";
  } else if (n >= 10'000) {
    s << std::setprecision(0) << double(n) / 1e3 << "k";
  } else {
    s << n;
  }
  return s.str();
}

void print_row(const std::string& name, const std::string& domain, const CorpusCounts& c, int64_t train,
               int64_t test) {
  std::cout << std::left << std::setw(24) << name << std::setw(8) << domain << std::right << std::setw(7)
            << c.documents << std::setw(9) << human(c.characters) << std::setw(9) << human(c.words) << std::setw(9)
            << human(c.tokens) << std::setw(7) << train << std::setw(6) << test << "\n";
}

std::string guess_format(const std::string& path, const std::string& given) {
  if (!given.empty()) return given;
  std::string p = path;
  if (p.size() > 3 && p.substr(p.size() - 3) == ".gz") p.resize(p.size() - 3);
  auto ends = [&](const std::string& e) { return p.size() >= e.size() && p.compare(p.size() - e.size(), e.size(), e) == 0; };
  if (ends(".html") || ends(".htm") || ends(".xhtml")) return "html";
  if (ends(".docbook") || ends(".xml")) return "docbook";
  if (ends(".info")) return "info";
  return "text";
}

}  // namespace

void add_corpus(CLI::App& app, Run& run) {
  auto* corpus = app.add_subcommand("corpus", "Real-text corpora and a financial QA task from Debian packages");
  corpus->require_subcommand(1);

  // ---- fetch
  auto* f = corpus->add_subcommand(
      "fetch", "Download (apt-get download, cached), extract and convert manuals into train/test JSONL");
  f->footer(
      "Writes OUT/{fin,general,zh}/{train,test}.jsonl (lines {\"text\": ...}) and OUT/manifest.json.\n"
      "Packages are cached in --cache; a second run downloads nothing. `finmoe corpus list` names the packages.");
  static CorpusOptions fo;
  static std::string packages;
  static bool json = false;
  f->add_option("--out", fo.out_dir, "output directory")->capture_default_str();
  f->add_option("--cache", fo.cache_dir, "package cache (default: ~/.cache/finmoe/debs)");
  f->add_option("--packages", packages,
                "comma-separated packages (default: the default set; +NAME adds to it, e.g. +gnucash-docs)");
  f->add_option("--test-fraction", fo.test_fraction, "share of documents in test, per domain")->capture_default_str();
  f->add_option("--max-package-chars", fo.max_package_chars, "cap for the Chinese LibreOffice help (code points)")
      ->capture_default_str();
  f->add_option("--min-chars", fo.documents.min_chars, "shortest document")->capture_default_str();
  f->add_option("--target-chars", fo.documents.target_chars, "document length aimed at")->capture_default_str();
  f->add_option("--max-chars", fo.documents.max_chars, "longest document")->capture_default_str();
  f->add_option("--tokenizer", fo.tokenizer_dir, "directory with tokenizer.json: exact token counts (default: estimate)");
  f->add_flag("--offline", fo.offline, "use cached packages only; never run apt-get");
  f->add_flag("--json", json, "print the manifest path and totals as JSON");
  f->callback([&run] {
    run = [] {
      std::stringstream ss(packages);
      for (std::string p; std::getline(ss, p, ',');)
        if (!p.empty()) fo.packages.push_back(p);
      fo.log = [](const std::string& s) { std::cerr << "corpus: " << s << "\n"; };
      const CorpusResult r = fetch_corpus(fo);
      if (json) {
        nlohmann::json j = {{"manifest", r.manifest_path}, {"downloads", r.downloads}};
        for (size_t k = 0; k < r.domain_train.size(); ++k)
          j["domains"][r.domain_train[k].first] = {{"train_documents", r.domain_train[k].second.documents},
                                                   {"test_documents", r.domain_test[k].second.documents},
                                                   {"train_tokens", r.domain_train[k].second.tokens},
                                                   {"test_tokens", r.domain_test[k].second.tokens}};
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::cout << std::left << std::setw(24) << "package" << std::setw(8) << "domain" << std::right << std::setw(7)
                << "docs" << std::setw(9) << "chars" << std::setw(9) << "words" << std::setw(9) << "tokens"
                << std::setw(7) << "train" << std::setw(6) << "test" << "\n";
      for (const auto& p : r.packages) print_row(p.name, p.domain, p.total, p.train.documents, p.test.documents);
      std::cout << "\n";
      for (size_t k = 0; k < r.domain_train.size(); ++k) {
        CorpusCounts all = r.domain_train[k].second;
        const CorpusCounts& t = r.domain_test[k].second;
        all.documents += t.documents;
        all.characters += t.characters;
        all.words += t.words;
        all.tokens += t.tokens;
        print_row("[" + r.domain_train[k].first + "]", r.domain_train[k].first, all,
                  r.domain_train[k].second.documents, t.documents);
      }
      std::cout << "\ntokens: " << r.token_count << "\nmanifest: " << r.manifest_path << "\n";
      return 0;
    };
  });

  // ---- qa
  auto* q = corpus->add_subcommand("qa", "Financial QA pairs (SFT JSONL) and a multiple-choice test from the manuals");
  q->footer(
      "Sources: bsdgames quiz (UCC sections), KMyMoney DocBook terms and FAQ, LibreOffice Calc financial\n"
      "functions (English and Chinese), Ledger definition lists; gnucash-docs adds the GnuCash glossary.\n"
      "Writes OUT/train.jsonl, OUT/test.jsonl ({\"messages\": [...]}), OUT/test_mc.jsonl, OUT/manifest.json.");
  static QaOptions qo;
  static std::string qa_packages, quiz;
  q->add_option("--out", qo.out_dir, "output directory")->capture_default_str();
  q->add_option("--cache", qo.cache_dir, "package cache (default: ~/.cache/finmoe/debs)");
  q->add_option("--packages", qa_packages,
                "comma-separated (default: bsdgames,kmymoney-common,libreoffice-help-en-us,libreoffice-help-zh-cn,"
                "ledger; +NAME adds to it, e.g. +gnucash-docs)");
  q->add_option("--quiz", quiz, "comma-separated bsdgames quiz subjects (default: ucc)");
  q->add_option("--test-fraction", qo.test_fraction, "share of question groups in test")->capture_default_str();
  q->add_option("--choices", qo.n_choices, "choices per multiple-choice question")->capture_default_str();
  q->add_flag("--offline", qo.offline, "use cached packages only; never run apt-get");
  q->callback([&run] {
    run = [] {
      std::stringstream ss(qa_packages);
      for (std::string p; std::getline(ss, p, ',');)
        if (!p.empty()) qo.packages.push_back(p);
      if (!quiz.empty()) {
        qo.quiz_subjects.clear();
        std::stringstream qs(quiz);
        for (std::string p; std::getline(qs, p, ',');)
          if (!p.empty()) qo.quiz_subjects.push_back(p);
      }
      qo.log = [](const std::string& s) { std::cerr << "corpus qa: " << s << "\n"; };
      const QaResult r = build_finance_qa(qo);
      std::cout << std::left << std::setw(20) << "source" << std::right << std::setw(7) << "train" << std::setw(7)
                << "test" << std::setw(7) << "mc" << "\n";
      for (const auto& s : r.sources)
        std::cout << std::left << std::setw(20) << s.source << std::right << std::setw(7) << s.train << std::setw(7)
                  << s.test << std::setw(7) << s.multiple_choice << "\n";
      std::cout << std::left << std::setw(20) << "total" << std::right << std::setw(7) << r.train << std::setw(7)
                << r.test << std::setw(7) << r.multiple_choice << "\n"
                << "written to " << r.out_dir << "/{train,test,test_mc}.jsonl\n";
      return 0;
    };
  });

  // ---- list
  auto* l = corpus->add_subcommand("list", "The Debian packages `corpus fetch` knows");
  l->callback([&run] {
    run = [] {
      for (const auto& p : corpus_packages())
        std::cout << std::left << std::setw(24) << p.name << std::setw(9) << p.domain << std::setw(10)
                  << (p.is_default ? "default" : "opt-in") << p.description << "\n";
      return 0;
    };
  });

  // ---- convert
  auto* c = corpus->add_subcommand("convert", "Print the text `corpus fetch` extracts from one file");
  static std::string file, format;
  static bool documents = false;
  c->add_option("FILE", file, "HTML, DocBook, info or plain-text file (.gz read as is)")->required();
  c->add_option("--format", format, "html | docbook | info | text (default: by extension)");
  c->add_flag("--documents", documents, "print the documents (separated by a line ----) instead of the text");
  c->callback([&run] {
    run = [] {
      const std::string fmt = guess_format(file, format);
      data::SourceFormat sf;
      if (fmt == "html") sf = data::SourceFormat::html;
      else if (fmt == "docbook") sf = data::SourceFormat::docbook;
      else if (fmt == "info") sf = data::SourceFormat::info;
      else if (fmt == "text") sf = data::SourceFormat::text;
      else throw Error("--format: expected html, docbook, info or text, got '" + fmt + "'");
      const auto blocks = data::convert_file(data::read_maybe_gzipped(file), sf);
      if (!documents) {
        std::cout << blocks_to_text(blocks) << "\n";
        return 0;
      }
      for (const auto& d : paragraphs_to_documents(blocks_to_paragraphs(blocks)))
        std::cout << d << "\n----\n";
      return 0;
    };
  });
}

}  // namespace finmoe::cli
