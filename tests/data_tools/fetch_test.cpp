// `corpus fetch` and `corpus qa` end to end on fake Debian packages built
// with dpkg-deb from the fixtures (no network), the cache, and errors.
// FINMOE_NETWORK_TESTS=1 also runs one real download.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>

#include <nlohmann/json.hpp>

#include "../expect_error.h"
#include "data/package_sources.h"
#include "data_test_util.h"
#include "finmoe/corpus.h"

namespace {

using namespace finmoe;
using namespace finmoe::datatest;
using finmoe::test::message_of;

// Small documents so that the tiny fixtures make several.
DocumentOptions small_docs() { return {.min_chars = 20, .target_chars = 60, .max_chars = 160}; }

void make_corpus_debs(const std::string& cache) {
  make_fake_deb(cache, "ledger", {{"usr/share/doc/ledger/ledger3.html", fixture("page.html")}});
  make_fake_deb(cache, "debian-faq", {{"usr/share/doc/debian/FAQ/debian-faq.en.txt.gz", fixture("dump.txt")}});
  make_fake_deb(cache, "hledger", {{"usr/share/doc/hledger/hledger.info.gz", fixture("manual.info")}});
}

CorpusOptions corpus_options(const TempDir& dir) {
  CorpusOptions o;
  o.out_dir = dir / "out";
  o.cache_dir = dir / "cache";
  o.packages = {"ledger", "hledger", "debian-faq"};
  o.offline = true;
  o.test_fraction = 0.3;
  o.documents = small_docs();
  return o;
}

TEST(DebianPackage, OfflineMissingPackageNamesPackageAndCache) {
  TempDir dir("missing");
  const std::string m = message_of([&] { fetch_debian_package("ledger", dir / "cache", /*offline=*/true); });
  EXPECT_CONTAINS(m, "'ledger'");
  EXPECT_CONTAINS(m, dir / "cache");
  EXPECT_CONTAINS(message_of([&] { fetch_debian_package("Bad Name", dir / "cache", true); }),
                  "not a Debian package name");
}

TEST(DebianPackage, MissingAptGetIsAClearErrorNamingThePackage) {
  TempDir dir("noapt");
  // With an empty PATH no apt-get can be found: no network is touched.
  const std::string saved = std::getenv("PATH") ? std::getenv("PATH") : "";
  ::setenv("PATH", (dir / "empty-bin").c_str(), 1);
  const std::string m = message_of([&] { fetch_debian_package("ledger", dir / "cache", /*offline=*/false); });
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_CONTAINS(m, "cannot download Debian package 'ledger'");
  EXPECT_CONTAINS(m, "apt-get is not installed");
  // Nothing half-downloaded is left in the cache.
  for (const auto& e : fs::directory_iterator(dir / "cache")) ADD_FAILURE() << e.path();
}

TEST(DebianPackage, ExtractsOnceAndReusesTheCache) {
  TempDir dir("extract");
  make_fake_deb(dir / "cache", "ledger", {{"usr/share/doc/ledger/ledger3.html", "<p>hello</p>"}});
  const DebianPackage first = fetch_debian_package("ledger", dir / "cache", true);
  EXPECT_FALSE(first.downloaded);
  EXPECT_TRUE(first.extracted);
  EXPECT_EQ(read_file(first.root + "/usr/share/doc/ledger/ledger3.html"), "<p>hello</p>");
  const DebianPackage second = fetch_debian_package("ledger", dir / "cache", true);
  EXPECT_FALSE(second.extracted);
  EXPECT_EQ(second.deb, first.deb);
  // No temporary directories are left behind.
  for (const auto& e : fs::directory_iterator(dir / "cache"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST(DebianPackage, CorruptDebIsAnErrorNamingThePackage) {
  TempDir dir("corrupt");
  write(dir / "cache/ledger_1.0_all.deb", "not an archive");
  const std::string m = message_of([&] { fetch_debian_package("ledger", dir / "cache", true); });
  EXPECT_CONTAINS(m, "cannot extract Debian package 'ledger'");
  EXPECT_CONTAINS(m, "dpkg-deb");
}

TEST(DebianPackage, ReadingAMissingFileNamesIt) {
  EXPECT_CONTAINS(message_of([] { data::read_maybe_gzipped("/nonexistent/finmoe/file.gz"); }),
                  "/nonexistent/finmoe/file.gz");
}

TEST(CorpusFetch, WritesSplitsAndManifestThatAgreeWithTheConverters) {
  TempDir dir("fetch");
  make_corpus_debs(dir / "cache");
  const CorpusOptions o = corpus_options(dir);
  const CorpusResult r = fetch_corpus(o);
  EXPECT_EQ(r.downloads, 0);
  ASSERT_EQ(r.packages.size(), 3u);

  // Expected documents, computed here from the fixtures the other way round:
  // convert -> paragraphs -> documents, then split by hash.
  std::set<std::string> fin, general;
  for (const auto& d : paragraphs_to_documents(blocks_to_paragraphs(html_to_blocks(fixture("page.html"))), o.documents))
    fin.insert(d);
  for (const auto& d : paragraphs_to_documents(blocks_to_paragraphs(info_to_blocks(fixture("manual.info"))), o.documents))
    fin.insert(d);
  for (const auto& d : paragraphs_to_documents(blocks_to_paragraphs(plain_text_to_blocks(fixture("dump.txt"))), o.documents))
    general.insert(d);
  ASSERT_GE(fin.size(), 6u);

  auto read_split = [&](const std::string& rel) {
    std::vector<std::string> docs;
    for (const auto& line : lines_of(o.out_dir + "/" + rel)) docs.push_back(nlohmann::json::parse(line).at("text"));
    return docs;
  };
  for (const auto& [domain, expected] : {std::pair{"fin", fin}, std::pair{"general", general}}) {
    const auto train = read_split(std::string(domain) + "/train.jsonl");
    const auto test = read_split(std::string(domain) + "/test.jsonl");
    std::set<std::string> all(train.begin(), train.end());
    for (const auto& d : test) EXPECT_TRUE(all.insert(d).second) << "in both splits: " << d;
    EXPECT_EQ(all, expected) << domain;
    for (const auto& d : train) EXPECT_FALSE(in_test_split(d, o.test_fraction));
    for (const auto& d : test) EXPECT_TRUE(in_test_split(d, o.test_fraction));
  }
  EXPECT_FALSE(fs::exists(o.out_dir + "/zh"));  // no Chinese package chosen

  const auto m = read_json_file(r.manifest_path);
  EXPECT_EQ(m.at("format"), "finmoe-corpus");
  int64_t fin_docs = 0;
  for (const auto& p : m.at("packages")) {
    EXPECT_EQ(p.at("documents").get<int64_t>(),
              p.at("train").at("documents").get<int64_t>() + p.at("test").at("documents").get<int64_t>());
    if (p.at("domain") == "fin") fin_docs += p.at("documents").get<int64_t>();
    EXPECT_EQ(p.at("files").size(), 1u);
  }
  EXPECT_EQ(fin_docs, int64_t(fin.size()));
  EXPECT_EQ(m.at("domains").at("fin").at("train").at("documents").get<size_t>(),
            lines_of(o.out_dir + "/fin/train.jsonl").size());
  int64_t chars = 0;
  for (const auto& d : read_split("general/test.jsonl")) chars += int64_t(count_chars(d));
  EXPECT_EQ(m.at("domains").at("general").at("test").at("characters").get<int64_t>(), chars);
}

TEST(CorpusFetch, SecondRunIsIdenticalAndUsesTheCache) {
  TempDir dir("again");
  make_corpus_debs(dir / "cache");
  const CorpusOptions o = corpus_options(dir);
  fetch_corpus(o);
  const std::string train = read_file(o.out_dir + "/fin/train.jsonl"), manifest = read_file(o.out_dir + "/manifest.json");
  const CorpusResult again = fetch_corpus(o);
  EXPECT_EQ(again.downloads, 0);
  EXPECT_EQ(read_file(o.out_dir + "/fin/train.jsonl"), train);
  EXPECT_EQ(read_file(o.out_dir + "/manifest.json"), manifest);
}

TEST(CorpusFetch, DuplicateDocumentsAcrossPackagesAreDroppedOnce) {
  TempDir dir("dedup");
  // The same page in two packages of one domain: the second adds nothing.
  make_fake_deb(dir / "cache", "ledger", {{"usr/share/doc/ledger/ledger3.html", fixture("page.html")}});
  make_fake_deb(dir / "cache", "libreoffice-help-en-us",
                {{"usr/share/libreoffice/help/en-US/text/scalc/01/04060103.html", fixture("page.html")},
                 {"usr/share/libreoffice/help/en-US/text/scalc/01/04060118.html", "<p>x</p>"},
                 {"usr/share/libreoffice/help/en-US/text/scalc/01/04060119.html", "<p>y</p>"}});
  CorpusOptions o = corpus_options(dir);
  o.packages = {"ledger", "libreoffice-help-en-us"};
  const CorpusResult r = fetch_corpus(o);
  ASSERT_EQ(r.packages.size(), 2u);
  EXPECT_GT(r.packages[0].total.documents, 0);
  EXPECT_EQ(r.packages[1].total.documents, 0);
  EXPECT_EQ(r.packages[1].duplicates, r.packages[0].total.documents);
}

TEST(CorpusFetch, ErrorsNameThePackageOrOption) {
  TempDir dir("errors");
  CorpusOptions o = corpus_options(dir);
  o.packages = {"no-such-package"};
  EXPECT_CONTAINS(message_of([&] { fetch_corpus(o); }), "'no-such-package' is not a corpus package");
  o.packages = {"ledger"};
  EXPECT_CONTAINS(message_of([&] { fetch_corpus(o); }), "'ledger' is not in the cache");
  make_fake_deb(dir / "cache", "ledger", {{"usr/share/doc/ledger/other.html", "<p>x</p>"}});
  const std::string m = message_of([&] { fetch_corpus(o); });
  EXPECT_CONTAINS(m, "'ledger'");
  EXPECT_CONTAINS(m, "usr/share/doc/ledger/ledger3.html");
  o.test_fraction = 1.5;
  EXPECT_CONTAINS(message_of([&] { fetch_corpus(o); }), "--test-fraction");
}

TEST(CorpusFetch, PackageListsReplaceOrExtendTheDefaults) {
  using data::resolve_package_list;
  const std::vector<std::string> defaults = {"a", "b"};
  EXPECT_EQ(resolve_package_list({}, defaults), defaults);
  EXPECT_EQ(resolve_package_list({"c", "a", "c"}, defaults), (std::vector<std::string>{"c", "a"}));
  EXPECT_EQ(resolve_package_list({"+c", "+a"}, defaults), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_CONTAINS(message_of([&] { resolve_package_list({"c", "+d"}, defaults); }), "not both");
}

TEST(CorpusFetch, KnownPackagesHaveDomainsAndADefaultSet) {
  std::set<std::string> domains, defaults;
  for (const auto& p : corpus_packages()) {
    domains.insert(p.domain);
    if (p.is_default) defaults.insert(p.name);
  }
  EXPECT_EQ(domains, (std::set<std::string>{"fin", "general", "zh"}));
  EXPECT_TRUE(defaults.count("ledger") && defaults.count("libreoffice-help-zh-cn") && defaults.count("debian-faq"));
  EXPECT_FALSE(defaults.count("gnucash-docs"));  // 145 MB: opt-in
}

void make_qa_debs(const std::string& cache, const std::string& ucc) {
  make_fake_deb(cache, "bsdgames",
                {{"usr/share/games/bsdgames/quiz/index", fixture("quiz/index")},
                 {"usr/share/games/bsdgames/quiz/ucc", ucc},
                 {"usr/share/games/bsdgames/quiz/pres", fixture("quiz/pres")}});
  const std::string page =
      "<h2>NPV</h2><p>Returns the net present value of an investment.</p>"
      "<h2>PV</h2><p>Returns the present value of an investment.</p>"
      "<h2>FV</h2><p>Returns the future value of an investment.</p>"
      "<h2>PMT</h2><p>Returns the periodic payment for an annuity.</p>";
  const std::string dir = "usr/share/libreoffice/help/en-US/text/scalc/01/";
  make_fake_deb(cache, "libreoffice-help-en-us",
                {{dir + "04060103.html", page}, {dir + "04060118.html", "<p>none</p>"}, {dir + "04060119.html", ""}});
}

TEST(CorpusQa, WritesSftPairsAndMultipleChoiceFromFakePackages) {
  TempDir dir("qa");
  make_qa_debs(dir / "cache", fixture("quiz/ucc"));
  QaOptions o;
  o.out_dir = dir / "qa";
  o.cache_dir = dir / "cache";
  o.packages = {"bsdgames", "libreoffice-help-en-us"};
  o.quiz_subjects = {"ucc", "pres"};
  o.offline = true;
  o.test_fraction = 0.5;
  const QaResult r = build_finance_qa(o);
  EXPECT_EQ(r.train + r.test, 10 + 4 + 4);  // UCC both ways, 4 presidents, 4 functions
  const auto train = lines_of(o.out_dir + "/train.jsonl"), test = lines_of(o.out_dir + "/test.jsonl");
  EXPECT_EQ(int64_t(train.size()), r.train);
  EXPECT_EQ(int64_t(test.size()), r.test);
  std::map<std::string, bool> group_split;  // UCC section -> in test
  for (const auto* split : {&train, &test}) {
    for (const auto& line : *split) {
      const auto j = nlohmann::json::parse(line);
      ASSERT_EQ(j.size(), 1u);  // {"messages": [...]} only
      const auto& msgs = j.at("messages");
      ASSERT_EQ(msgs.size(), 2u);
      EXPECT_EQ(msgs[0].at("role"), "user");
      EXPECT_EQ(msgs[1].at("role"), "assistant");
      const std::string q = msgs[0].at("content"), a = msgs[1].at("content");
      // Both directions of a UCC record land in the same split.
      std::string section;
      if (q.rfind("Which topic does section ", 0) == 0) section = q.substr(25, 5);
      if (a.rfind("Section ", 0) == 0) section = a.substr(8, 5);
      if (!section.empty()) {
        const bool in_test = split == &test;
        auto [it, fresh] = group_split.emplace(section, in_test);
        EXPECT_EQ(it->second, in_test) << section;
      }
    }
  }
  EXPECT_EQ(group_split.size(), 5u);
  const auto mc = lines_of(o.out_dir + "/test_mc.jsonl");
  EXPECT_EQ(int64_t(mc.size()), r.multiple_choice);
  EXPECT_GT(r.multiple_choice, 0);
  for (const auto& line : mc) {
    const auto j = nlohmann::json::parse(line);
    const auto choices = j.at("choices").get<std::vector<std::string>>();
    EXPECT_EQ(choices.size(), 4u);
    const int answer = j.at("answer");
    ASSERT_TRUE(answer >= 0 && answer < 4);
    bool found = false;  // the marked choice is the test pair's answer
    for (const auto& t : test) {
      const auto tj = nlohmann::json::parse(t);
      if (tj["messages"][0]["content"] == j["question"]) found = tj["messages"][1]["content"] == choices[size_t(answer)];
    }
    EXPECT_TRUE(found) << line;
  }
  const auto m = read_json_file(o.out_dir + "/manifest.json");
  EXPECT_EQ(m.at("train").get<int64_t>(), r.train);
  EXPECT_EQ(m.at("sources").at("ucc-topic").at("train").get<int64_t>() +
                m.at("sources").at("ucc-topic").at("test").get<int64_t>(),
            5);
}

TEST(CorpusQa, MalformedQuizLineIsAnErrorNamingFileAndLine) {
  TempDir dir("qa-bad");
  make_qa_debs(dir / "cache", "2-201:statute of frauds\n3-104:form {of negotiable\n");
  QaOptions o;
  o.out_dir = dir / "qa";
  o.cache_dir = dir / "cache";
  o.packages = {"bsdgames"};
  o.offline = true;
  const std::string m = message_of([&] { build_finance_qa(o); });
  EXPECT_CONTAINS(m, "usr/share/games/bsdgames/quiz/ucc:2:");
  EXPECT_CONTAINS(m, "unbalanced '{'");
  o.quiz_subjects = {"nosuch"};
  EXPECT_CONTAINS(message_of([&] { build_finance_qa(o); }), "--quiz: no subject 'nosuch'");
  o.packages = {"debian-faq"};
  EXPECT_CONTAINS(message_of([&] { build_finance_qa(o); }), "mines no questions from 'debian-faq'");
}

// Opt-in: a real `apt-get download` of a small package (170 kB).
TEST(Network, FetchesARealDebianPackage) {
  const char* on = std::getenv("FINMOE_NETWORK_TESTS");
  if (!on || std::string(on) != "1") GTEST_SKIP() << "set FINMOE_NETWORK_TESTS=1 to download from the Debian archive";
  TempDir dir("network");
  CorpusOptions o;
  o.out_dir = dir / "out";
  o.cache_dir = dir / "cache";
  o.packages = {"debian-faq-zh-cn"};
  const CorpusResult first = fetch_corpus(o);
  EXPECT_EQ(first.downloads, 1);
  ASSERT_EQ(first.packages.size(), 1u);
  EXPECT_GT(first.packages[0].total.documents, 50);
  EXPECT_GT(first.domain_train[0].second.documents, first.domain_test[0].second.documents);
  const CorpusResult second = fetch_corpus(o);
  EXPECT_EQ(second.downloads, 0);
  EXPECT_EQ(second.packages[0].total.documents, first.packages[0].total.documents);
  // A package the archive does not have: apt-get's complaint, and the name.
  const std::string m = message_of([&] { fetch_debian_package("finmoe-no-such-package", dir / "cache"); });
  EXPECT_CONTAINS(m, "cannot download Debian package 'finmoe-no-such-package'");
  EXPECT_CONTAINS(m, "apt-get download finmoe-no-such-package");
}

}  // namespace
