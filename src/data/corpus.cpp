// `finmoe corpus fetch`: Debian packages -> train/test JSONL per domain.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "core/progress.h"
#include "data/debian_package.h"
#include "data/package_sources.h"
#include "finmoe/config.h"
#include "finmoe/corpus.h"
#include "finmoe/error.h"
#include "finmoe/tokenizer.h"
#include "tokenizer/utf8.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace data {

std::vector<TextBlock> convert_file(const std::string& text, SourceFormat format) {
  const std::string valid = tok::utf8_lossy(text);
  switch (format) {
    case SourceFormat::html: return html_to_blocks(valid);
    case SourceFormat::docbook: return docbook_to_blocks(valid);
    case SourceFormat::info: return info_to_blocks(valid);
    case SourceFormat::text: return plain_text_to_blocks(valid);
  }
  return {};
}

const std::vector<PackageSpec>& package_specs() {
  static const std::vector<PackageSpec> specs = [] {
    std::vector<PackageSpec> s;
    auto add = [&](CorpusPackageInfo info, std::vector<SourceRule> rules, bool capped = false) {
      s.push_back({std::move(info), std::move(rules), capped});
    };
    const std::vector<std::string> calc = {"04060103.html", "04060118.html", "04060119.html"};
    add({"ledger", "fin", "Ledger 3 manual (ledger3.html)", true},
        {{"usr/share/doc/ledger", {"ledger3.html"}, "", {}, SourceFormat::html}});
    add({"hledger", "fin", "hledger manual (hledger.info.gz)", true},
        {{"usr/share/doc/hledger", {"hledger.info.gz"}, "", {}, SourceFormat::info}});
    add({"kmymoney-common", "fin", "KMyMoney handbook (DocBook)", true},
        {{"usr/share/doc/HTML/en/kmymoney", {}, ".docbook", {"credits.docbook"}, SourceFormat::docbook}});
    add({"libreoffice-help-en-us", "fin", "LibreOffice Calc financial functions (3 pages)", true},
        {{"usr/share/libreoffice/help/en-US/text/scalc/01", calc, "", {}, SourceFormat::html}});
    add({"gnucash-docs", "fin", "GnuCash Tutorial and Concepts Guide + Help, English (145 MB download)", false},
        {{"usr/share/doc/gnucash-docs/gnucash-guide-en", {}, ".html", {}, SourceFormat::html},
         {"usr/share/doc/gnucash-docs/gnucash-help-en", {}, ".html", {}, SourceFormat::html}});
    add({"debian-reference-en", "general", "Debian Reference (plain text)", true},
        {{"usr/share/debian-reference", {"debian-reference.en.txt.gz"}, "", {}, SourceFormat::text}});
    add({"debian-faq", "general", "Debian FAQ, English (plain text)", true},
        {{"usr/share/doc/debian/FAQ", {"debian-faq.en.txt.gz"}, "", {}, SourceFormat::text}});
    // The Calc financial pages first, then the rest of Calc, then everything
    // else, up to CorpusOptions::max_package_chars.
    add({"libreoffice-help-zh-cn", "zh", "LibreOffice help, Simplified Chinese (capped)", true},
        {{"usr/share/libreoffice/help/zh-CN/text/scalc/01", calc, "", {}, SourceFormat::html},
         {"usr/share/libreoffice/help/zh-CN/text/scalc", {}, ".html", {}, SourceFormat::html},
         {"usr/share/libreoffice/help/zh-CN", {}, ".html", {}, SourceFormat::html}},
        /*capped=*/true);
    add({"debian-faq-zh-cn", "zh", "Debian FAQ, Simplified Chinese (plain text)", true},
        {{"usr/share/doc/debian/FAQ", {"debian-faq.zh-cn.txt.gz"}, "", {}, SourceFormat::text}});
    return s;
  }();
  return specs;
}

std::vector<std::string> resolve_package_list(const std::vector<std::string>& given,
                                              const std::vector<std::string>& defaults) {
  std::vector<std::string> out;
  const bool extend = std::all_of(given.begin(), given.end(), [](const std::string& n) { return !n.empty() && n[0] == '+'; });
  if (extend) out = defaults;
  for (const auto& n : given) {
    if (!n.empty() && n[0] == '+') {
      if (!extend) throw Error("--packages: give either a list of packages or '+NAME' additions to the default set, not both");
      out.push_back(n.substr(1));
    } else {
      out.push_back(n);
    }
  }
  std::vector<std::string> unique;
  for (auto& n : out)
    if (std::find(unique.begin(), unique.end(), n) == unique.end()) unique.push_back(std::move(n));
  return unique;
}

const PackageSpec& package_spec(const std::string& name) {
  for (const auto& s : package_specs())
    if (s.info.name == name) return s;
  std::string known;
  for (const auto& s : package_specs()) known += (known.empty() ? "" : ", ") + s.info.name;
  throw Error("--packages: '" + name + "' is not a corpus package; known: " + known);
}

std::vector<SourceFile> source_files(const PackageSpec& spec, const std::string& root) {
  std::vector<SourceFile> out;
  std::unordered_set<std::string> taken;  // a file matched by an earlier rule keeps its place
  for (const auto& rule : spec.rules) {
    const std::string dir = root + "/" + rule.dir;
    std::vector<std::string> rels;
    if (!rule.names.empty()) {
      for (const auto& n : rule.names) {
        std::error_code ec;
        if (!fs::is_regular_file(dir + "/" + n, ec))
          throw Error("Debian package '" + spec.info.name + "' has no " + rule.dir + "/" + n + " (extracted in " +
                      root + "); a different version of the package?");
        rels.push_back(n);
      }
    } else {
      for (auto& r : list_files(dir)) {
        const std::string base = fs::path(r).filename().string();
        if (r.size() < rule.suffix.size() || r.compare(r.size() - rule.suffix.size(), rule.suffix.size(), rule.suffix) != 0)
          continue;
        if (std::find(rule.exclude.begin(), rule.exclude.end(), base) != rule.exclude.end()) continue;
        rels.push_back(r);
      }
    }
    for (const auto& r : rels) {
      const std::string rel = rule.dir + "/" + r;
      if (!taken.insert(rel).second) continue;
      out.push_back({root + "/" + rel, rel, rule.format});
    }
  }
  return out;
}

}  // namespace data

const std::vector<CorpusPackageInfo>& corpus_packages() {
  static const std::vector<CorpusPackageInfo> infos = [] {
    std::vector<CorpusPackageInfo> v;
    for (const auto& s : data::package_specs()) v.push_back(s.info);
    return v;
  }();
  return infos;
}

namespace {

constexpr const char* kDomains[] = {"fin", "general", "zh"};

// Token estimate without a tokenizer, fitted to the Qwen tokenizer on the
// default corpus (within ~5% per domain): 4.3 characters per token for
// Latin-script text, one token per Han character.
constexpr const char* kEstimateRule = "estimate: (characters - Han) / 4.3 + Han";

int64_t estimate_tokens(std::string_view text) {
  const double han = double(count_han(text));
  return int64_t(std::llround((double(count_chars(text)) - han) / 4.3 + han));
}

void add_counts(CorpusCounts& c, const std::string& doc, int64_t tokens) {
  c.documents += 1;
  c.characters += int64_t(count_chars(doc));
  c.words += int64_t(count_words(doc));
  c.tokens += tokens;
}

nlohmann::json counts_json(const CorpusCounts& c) {
  return {{"documents", c.documents}, {"characters", c.characters}, {"words", c.words}, {"tokens", c.tokens}};
}

std::string jsonl_line(const std::string& text) {
  return nlohmann::json{{"text", text}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

CorpusResult fetch_corpus(const CorpusOptions& o) {
  if (!(o.test_fraction >= 0.0 && o.test_fraction < 1.0))
    throw Error("--test-fraction must be in [0, 1), got " + std::to_string(o.test_fraction));
  if (o.documents.max_chars == 0 || o.documents.min_chars > o.documents.target_chars ||
      o.documents.target_chars > o.documents.max_chars)
    throw Error("--min-chars, --target-chars, --max-chars: need min <= target <= max and max > 0, got " +
                std::to_string(o.documents.min_chars) + ", " + std::to_string(o.documents.target_chars) + ", " +
                std::to_string(o.documents.max_chars));
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  const std::string cache = o.cache_dir.empty() ? default_cache_dir() : o.cache_dir;
  std::vector<std::string> defaults;
  for (const auto& p : corpus_packages())
    if (p.is_default) defaults.push_back(p.name);
  const std::vector<std::string> names = data::resolve_package_list(o.packages, defaults);
  std::vector<const data::PackageSpec*> specs;
  for (const auto& n : names) {
    const auto& s = data::package_spec(n);  // validates before any download
    if (std::find(specs.begin(), specs.end(), &s) == specs.end()) specs.push_back(&s);
  }

  std::unique_ptr<Tokenizer> tokenizer;
  if (!o.tokenizer_dir.empty()) tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_dir(o.tokenizer_dir));

  CorpusResult result;
  result.token_count = tokenizer ? "tokenizer " + o.tokenizer_dir : kEstimateRule;

  // Download and extract everything first: a network failure stops the run
  // before any output is written.
  std::vector<DebianPackage> debs;
  for (const auto* s : specs) {
    DebianPackage d = fetch_debian_package(s->info.name, cache, o.offline);
    log(s->info.name + ": " + (d.downloaded ? "downloaded " : "cached ") + fs::path(d.deb).filename().string() +
        (d.extracted ? ", extracted" : ""));
    result.downloads += d.downloaded;
    debs.push_back(std::move(d));
  }

  std::map<std::string, std::string> train_out, test_out;  // domain -> JSONL
  std::map<std::string, CorpusCounts> train_counts, test_counts;
  std::unordered_set<uint64_t> seen_docs;
  nlohmann::json manifest_packages = nlohmann::json::array();

  for (size_t k = 0; k < specs.size(); ++k) {
    const auto& spec = *specs[k];
    const auto files = data::source_files(spec, debs[k].root);
    CorpusPackageResult pr;
    pr.name = spec.info.name;
    pr.domain = spec.info.domain;
    pr.deb = fs::path(debs[k].deb).filename().string();
    nlohmann::json file_list = nlohmann::json::array();
    std::unordered_set<uint64_t> seen_paragraphs;  // repeated notes within a package
    Progress bar(spec.info.name, int64_t(files.size()), "files");
    for (size_t f = 0; f < files.size(); ++f) {
      bar.update(int64_t(f));
      if (spec.capped && pr.total.characters >= int64_t(o.max_package_chars)) {
        log(spec.info.name + ": stopped at " + std::to_string(o.max_package_chars) + " characters (--max-package-chars)");
        break;
      }
      const auto& file = files[f];
      auto paragraphs = blocks_to_paragraphs(data::convert_file(data::read_maybe_gzipped(file.path), file.format));
      std::vector<Paragraph> kept;
      for (auto& p : paragraphs)
        if (p.heading || count_chars(p.text) < 40 || seen_paragraphs.insert(text_hash(p.text)).second)
          kept.push_back(std::move(p));
      auto docs = paragraphs_to_documents(kept, o.documents);
      pr.duplicates += int64_t(remove_duplicates(docs, seen_docs));
      ++pr.files;
      CorpusCounts file_counts;
      for (const auto& d : docs) {
        const int64_t tokens = tokenizer ? int64_t(tokenizer->encode(d).size()) : estimate_tokens(d);
        const bool test = in_test_split(d, o.test_fraction);
        add_counts(pr.total, d, tokens);
        add_counts(test ? pr.test : pr.train, d, tokens);
        add_counts(test ? test_counts[pr.domain] : train_counts[pr.domain], d, tokens);
        add_counts(file_counts, d, tokens);
        (test ? test_out : train_out)[pr.domain] += jsonl_line(d);
      }
      file_list.push_back({{"path", file.rel}, {"documents", file_counts.documents}, {"characters", file_counts.characters}});
    }
    bar.finish();
    nlohmann::json pj = {{"name", pr.name},
                         {"domain", pr.domain},
                         {"deb", pr.deb},
                         {"description", spec.info.description},
                         {"files", file_list},
                         {"duplicates_dropped", pr.duplicates}};
    pj.update(counts_json(pr.total));
    pj["train"] = counts_json(pr.train);
    pj["test"] = counts_json(pr.test);
    manifest_packages.push_back(std::move(pj));
    log(pr.name + ": " + std::to_string(pr.files) + " files, " + std::to_string(pr.total.documents) + " documents");
    result.packages.push_back(std::move(pr));
  }

  // Outputs: one directory per domain that had packages; each file atomic.
  nlohmann::json domains = nlohmann::json::object();
  std::error_code ec;
  for (const char* d : kDomains) {
    const bool used = std::any_of(specs.begin(), specs.end(), [&](const auto* s) { return s->info.domain == d; });
    if (!used) continue;
    const std::string dir = o.out_dir + "/" + d;
    fs::create_directories(dir, ec);
    if (ec) throw Error("cannot create " + dir + ": " + ec.message());
    write_file_atomic(dir + "/train.jsonl", train_out[d]);
    write_file_atomic(dir + "/test.jsonl", test_out[d]);
    nlohmann::json dj;
    dj["train"] = counts_json(train_counts[d]);
    dj["train"]["path"] = std::string(d) + "/train.jsonl";
    dj["test"] = counts_json(test_counts[d]);
    dj["test"]["path"] = std::string(d) + "/test.jsonl";
    domains[d] = std::move(dj);
    result.domain_train.emplace_back(d, train_counts[d]);
    result.domain_test.emplace_back(d, test_counts[d]);
  }
  nlohmann::json manifest = {
      {"format", "finmoe-corpus"},
      {"version", 1},
      {"test_fraction", o.test_fraction},
      {"split", "test if text_hash(document) / 2^64 < test_fraction (FNV-1a 64 + splitmix64 finaliser)"},
      {"documents", {{"min_chars", o.documents.min_chars}, {"target_chars", o.documents.target_chars},
                     {"max_chars", o.documents.max_chars}}},
      {"max_package_chars", o.max_package_chars},
      {"characters", "Unicode code points"},
      {"token_count", result.token_count},
      {"domains", domains},
      {"packages", manifest_packages}};
  result.manifest_path = o.out_dir + "/manifest.json";
  write_json_file(result.manifest_path, manifest);
  return result;
}

}  // namespace finmoe
