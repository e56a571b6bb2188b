#include "data/jsonl.h"

#include <sys/stat.h>

#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe::data {

JsonlReader::JsonlReader(std::string path, bool skip_bad)
    : path_(std::move(path)), skip_bad_(skip_bad), in_(path_, std::ios::binary) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) throw_errno("cannot read", path_);
  if (S_ISDIR(st.st_mode)) throw Error(path_ + ": is a directory, expected a JSONL file");
  if (!in_) throw Error(path_ + ": cannot open for reading");
  size_ = int64_t(st.st_size);
}

bool JsonlReader::next(nlohmann::json& record) {
  std::string s;
  while (std::getline(in_, s)) {
    ++line_;
    line_start_ = bytes_;
    bytes_ += int64_t(s.size()) + 1;
    if (!s.empty() && s.back() == '\r') s.pop_back();
    if (s.find_first_not_of(" \t") == std::string::npos) continue;
    try {
      record = parse_json(s, where());
    } catch (const Error& e) {
      if (!skip_bad_)
        throw Error(std::string(e.what()) + " (malformed JSONL line; --skip-bad skips such lines)");
      ++skipped_;
      if (on_skip) on_skip(e.what());
      continue;
    }
    ++records_;
    raw_ = std::move(s);
    return true;
  }
  if (in_.bad()) throw Error(path_ + ": read error after line " + std::to_string(line_));
  return false;
}

void JsonlReader::bad_record(const std::string& what) {
  const std::string msg = where() + ": " + what;
  if (!skip_bad_) throw Error(msg + " (--skip-bad skips such records)");
  ++skipped_;
  if (on_skip) on_skip(msg);
}

void refuse_existing(const std::string& path, const std::string& flag) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0)
    throw Error(flag + ": " + path +
                " exists; refusing to overwrite it (remove it or choose another path)");
}

JsonlWriter::JsonlWriter(const std::string& path, std::string flag)
    : path_(path), flag_(std::move(flag)) {
  refuse_existing(path, flag_);
  file_ = std::make_unique<AtomicFile>(path);
}

void JsonlWriter::write(const nlohmann::json& record) {
  write_line(record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void JsonlWriter::write_line(std::string_view line) {
  buffer_ += line;
  buffer_ += '\n';
  ++written_;
  if (buffer_.size() >= (1u << 20)) {
    file_->write(buffer_);
    buffer_.clear();
  }
}

void JsonlWriter::commit() {
  // the check at construction may be stale: another process may have made PATH
  refuse_existing(path_, flag_);
  if (!buffer_.empty()) file_->write(buffer_);
  buffer_.clear();
  file_->commit();
}

void write_new_json(const std::string& path, const nlohmann::json& j, const std::string& flag) {
  refuse_existing(path, flag);
  write_file_atomic(path, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

std::string string_field(const nlohmann::json& record, const std::string& field, bool* ok) {
  *ok = false;
  if (!record.is_object()) return "";
  auto it = record.find(field);
  if (it == record.end() || !it->is_string()) return "";
  *ok = true;
  return it->get<std::string>();
}

namespace {

std::string messages_text(const nlohmann::json& messages, bool* ok) {
  *ok = false;
  if (!messages.is_array() || messages.empty()) return "";
  std::string out;
  for (const auto& m : messages) {
    if (!m.is_object() || !m.contains("content") || !m["content"].is_string()) return "";
    if (!out.empty()) out += '\n';
    out += m["content"].get<std::string>();
  }
  *ok = true;
  return out;
}

}  // namespace

std::string record_text(const nlohmann::json& record, const std::string& field, bool* ok) {
  *ok = false;
  if (!record.is_object()) return "";
  if (!field.empty()) {
    auto it = record.find(field);
    if (it == record.end()) return "";
    if (it->is_string()) {
      *ok = true;
      return it->get<std::string>();
    }
    if (field == "messages") return messages_text(*it, ok);
    return "";
  }
  bool f = false;
  std::string t = string_field(record, "text", &f);
  if (f) return *ok = true, t;
  if (record.contains("messages")) return messages_text(record["messages"], ok);
  std::string ins = string_field(record, "instruction", &f);
  if (f) {
    bool g = false;
    std::string in = string_field(record, "input", &g);
    std::string out = string_field(record, "output", &g);
    *ok = true;
    return ins + (in.empty() ? "" : "\n" + in) + "\n" + out;
  }
  std::string p = string_field(record, "prompt", &f);
  if (f) {
    bool g = false;
    std::string r = string_field(record, "response", &g);
    if (!g) r = string_field(record, "completion", &g);
    if (g) return *ok = true, p + "\n" + r;
  }
  return "";
}

}  // namespace finmoe::data
