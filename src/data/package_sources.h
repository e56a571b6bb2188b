#pragma once
// Internal: which files of each known Debian package are read, and how.
#include <string>
#include <vector>

#include "finmoe/corpus.h"

namespace finmoe::data {

enum class SourceFormat { html, docbook, info, text };

// Files under `dir` (relative to the package root): the listed `names`, or
// else every file (recursively) ending in `suffix` except `exclude`d names.
struct SourceRule {
  std::string dir;
  std::vector<std::string> names;
  std::string suffix;
  std::vector<std::string> exclude;
  SourceFormat format;
};

struct PackageSpec {
  CorpusPackageInfo info;
  std::vector<SourceRule> rules;  // in priority order; a file is taken once
  bool capped = false;            // stop at CorpusOptions::max_package_chars
};

struct SourceFile {
  std::string path;  // absolute
  std::string rel;   // relative to the package root
  SourceFormat format;
};

const std::vector<PackageSpec>& package_specs();
// The packages to use: `given`, or the defaults when it is empty or holds
// only "+NAME" additions (defaults + NAMEs); duplicates removed, order kept.
std::vector<std::string> resolve_package_list(const std::vector<std::string>& given,
                                              const std::vector<std::string>& defaults);
// Throws Error listing the known packages.
const PackageSpec& package_spec(const std::string& name);
// The files a package's rules select in its extracted tree; listed names that
// are missing are an error naming the package and path.
std::vector<SourceFile> source_files(const PackageSpec& spec, const std::string& root);
// Reads nothing: converts a file's text by its format (invalid UTF-8 replaced).
std::vector<TextBlock> convert_file(const std::string& text, SourceFormat format);

}  // namespace finmoe::data
