// JSON files: read with positioned errors, write pretty and atomically.
#include <fstream>
#include <sstream>

#include "core/file_util.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_errno("cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_errno("cannot read", path);
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() carries "line L, column C"; e.byte is the offset.
    throw Error(path + ": invalid JSON (byte " + std::to_string(e.byte) + "): " + e.what());
  }
}

void write_json_file(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

}  // namespace finmoe
