// `finmoe corpus`: the subcommands end to end, without network.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "../expect_error.h"
#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::run;
namespace fs = std::filesystem;

std::string fixture(const std::string& rel) { return std::string(FINMOE_TEST_DATA_DIR) + "/corpus/" + rel; }

TEST(CorpusCli, ListNamesPackagesDomainsAndDefaults) {
  const auto r = run("corpus list");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_CONTAINS(r.out, "ledger");
  EXPECT_CONTAINS(r.out, "libreoffice-help-zh-cn");
  EXPECT_CONTAINS(r.out, "gnucash-docs");
  EXPECT_CONTAINS(r.out, "opt-in");
}

TEST(CorpusCli, ConvertPrintsTheExtractedText) {
  const auto r = run("corpus convert " + fixture("page.html"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_CONTAINS(r.out, "Net Present Value\n\nThe net present value (NPV)");
  EXPECT_EQ(r.out.find("Footer"), std::string::npos);
  const auto info = run("corpus convert " + fixture("manual.info") + " --format info --documents");
  ASSERT_EQ(info.status, 0) << info.out;
  EXPECT_CONTAINS(info.out, "A journal is a list of dated transactions.");
}

TEST(CorpusCli, OfflineFetchWithAnEmptyCacheFailsNamingThePackage) {
  const std::string dir = (fs::temp_directory_path() / std::string("finmoe-corpus-cli-")).string() + std::to_string(::getpid());
  const auto r = run("corpus fetch --offline --cache " + dir + "/cache --out " + dir + "/out --packages ledger");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_CONTAINS(r.out, "finmoe: error:");
  EXPECT_CONTAINS(r.out, "'ledger' is not in the cache");
  EXPECT_FALSE(fs::exists(dir + "/out/manifest.json"));
  const auto unknown = run("corpus qa --offline --cache " + dir + "/cache --packages nosuch");
  EXPECT_EQ(unknown.status, 2);
  EXPECT_CONTAINS(unknown.out, "'nosuch'");
  finmoe::remove_tree(dir);
}

}  // namespace
