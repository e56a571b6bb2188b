// finmoe tokenize
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/tokenizer.h"

namespace finmoe::cli {

void add_tokenize(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("tokenize", "Token ids and strings of a text, or batch JSONL → ids");
  static std::string dir, text, file, jsonl;
  static bool special = false, json = false;
  c->add_option("DIR", dir, "directory with tokenizer.json")->required();
  auto* t = c->add_option("--text", text, "text to encode");
  auto* f = c->add_option("--file", file, "file whose whole content is encoded");
  auto* j = c->add_option("--jsonl", jsonl, "lines {\"text\": ...} -> lines {\"ids\": [...]} on stdout");
  t->excludes(f)->excludes(j);
  f->excludes(j);
  c->add_flag("--add-special-tokens", special, "add bos/eos as the tokenizer config says");
  c->add_flag("--json", json, "print ids and tokens as JSON");
  c->callback([&run] {
    run = [] {
      auto tok = Tokenizer::from_dir(dir);
      if (!jsonl.empty()) {
        std::ifstream in(jsonl);
        if (!in) throw Error(jsonl + ": cannot open");
        std::string line;
        int64_t n = 0;
        while (std::getline(in, line)) {
          ++n;
          if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
          const nlohmann::json rec = parse_json(line, jsonl + ":" + std::to_string(n));
          if (!rec.is_object() || !rec.contains("text") || !rec["text"].is_string())
            throw Error(jsonl + ":" + std::to_string(n) + ": expected an object with a string field 'text'");
          std::cout << nlohmann::json{{"ids", tok.encode(rec["text"].get<std::string>(), special)}}.dump()
                    << "\n";
        }
        return 0;
      }
      if (text.empty() == file.empty()) throw Error("give one of --text, --file, --jsonl");
      std::string input = text;
      if (!file.empty()) {
        std::ifstream in(file, std::ios::binary);
        if (!in) throw Error(file + ": cannot open");
        std::stringstream ss;
        ss << in.rdbuf();
        input = ss.str();
      }
      auto ids = tok.encode(input, special);
      if (json) {
        nlohmann::json tokens = nlohmann::json::array();
        for (int32_t id : ids) tokens.push_back(tok.id_to_token(id));
        std::cout << nlohmann::json{{"ids", ids}, {"tokens", tokens}, {"count", ids.size()},
                                    {"bytes", input.size()}}
                         .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                  << "\n";
        return 0;
      }
      for (int32_t id : ids)
        std::cout << id << "\t" << nlohmann::json(tok.id_to_token(id)).dump(-1, ' ', false,
                                                                          nlohmann::json::error_handler_t::replace)
                  << "\n";
      std::cout << "# " << ids.size() << " tokens, " << input.size() << " bytes ("
                << (ids.empty() ? 0.0 : double(input.size()) / double(ids.size())) << " bytes/token)\n";
      return 0;
    };
  });
}

}  // namespace finmoe::cli
