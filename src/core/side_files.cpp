#include "core/side_files.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/file_util.h"
#include "core/hf_remote_code.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

void copy_side_files(const std::string& from, const std::string& to, bool with_config) {
  namespace fs = std::filesystem;
  static const char* kFiles[] = {"generation_config.json", "tokenizer.json",
                                 "tokenizer_config.json",  "special_tokens_map.json",
                                 "vocab.json",             "merges.txt",
                                 "tokenizer.model",        "chat_template.jinja",
                                 "chat_template.json"};
  auto copy = [&](const char* name) {
    const fs::path src = fs::path(from) / name;
    if (!fs::exists(src)) return;
    std::ifstream in(src, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    if (!in && !in.eof()) throw_errno("cannot read", src.string());
    write_file_atomic((fs::path(to) / name).string(), bytes.str());
  };
  if (with_config) copy("config.json");
  for (const char* f : kFiles) copy(f);
  if (with_config)  // the config's auto_map points at them
    for (const HfRemoteCodeFile& f : hf_remote_code_files()) copy(f.name);
}

}  // namespace finmoe
