#pragma once
// Streaming JSONL for the data tools (`finmoe data ...`): a reader that names
// file and line for every malformed record (and skips it only when asked),
// and a writer that refuses to overwrite and replaces its file atomically.
// Neither is thread-safe; each has one owner.
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/file_util.h"

namespace finmoe::data {

class JsonlReader {
 public:
  // Opens PATH (throws Error naming it when it cannot be read). With
  // `skip_bad`, a malformed line is counted, passed to `on_skip` (if set) and
  // skipped; without it, next() throws Error "PATH:LINE: ...".
  JsonlReader(std::string path, bool skip_bad);

  // The next record (any JSON value); false at the end of the file. Blank
  // lines are skipped silently.
  bool next(nlohmann::json& record);

  // A record that parsed but does not fit (a missing or mistyped field):
  // throws Error "PATH:LINE: what", or with skip_bad counts and reports it
  // like a malformed line and returns (the caller then drops the record).
  void bad_record(const std::string& what);

  const std::string& path() const { return path_; }
  const std::string& raw() const { return raw_; }  // the last record's line as read (no newline)
  int64_t line() const { return line_; }           // 1-based line of the last record
  std::string where() const { return path_ + ":" + std::to_string(line_); }
  int64_t bytes_read() const { return bytes_; }        // for progress
  int64_t line_offset() const { return line_start_; }  // byte offset of the last record's line
  int64_t size() const { return size_; }               // file size in bytes (0 if unknown)
  int64_t records() const { return records_; }         // records returned by next()
  int64_t skipped() const { return skipped_; }

  std::function<void(const std::string&)> on_skip;

 private:
  std::string path_;
  bool skip_bad_;
  std::ifstream in_;
  std::string raw_;
  int64_t line_ = 0;
  int64_t bytes_ = 0;
  int64_t line_start_ = 0;
  int64_t size_ = 0;
  int64_t records_ = 0;
  int64_t skipped_ = 0;
};

class JsonlWriter {
 public:
  // Refuses (Error) when PATH exists; the records go to a temp file in the
  // same directory that commit() renames to PATH. Destroyed without commit()
  // (an error), nothing is left behind.
  explicit JsonlWriter(const std::string& path,
                       std::string flag = "--out");  // flag: named in errors
  void write(const nlohmann::json& record);          // one line, UTF-8 (invalid bytes replaced)
  void write_line(std::string_view line);            // a record as read (JsonlReader::raw)
  void commit();
  int64_t written() const { return written_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string flag_;
  std::unique_ptr<AtomicFile> file_;
  std::string buffer_;
  int64_t written_ = 0;
};

// Throws Error when PATH exists: "PATH exists; refusing to overwrite it".
void refuse_existing(const std::string& path, const std::string& flag);

// Writes a whole JSON report atomically, refusing an existing PATH.
void write_new_json(const std::string& path, const nlohmann::json& j, const std::string& flag);

// The string field `field` of an object record, or "" with *ok = false when
// the record is not an object or the field is missing or not a string.
std::string string_field(const nlohmann::json& record, const std::string& field, bool* ok);

// The text of a record for text tools: `field` when given ("messages" joins
// every message's content with newlines); otherwise "text", else "messages",
// else "instruction"+"input"+"output", else "prompt"+"response"/"completion".
// *ok = false when none applies.
std::string record_text(const nlohmann::json& record, const std::string& field, bool* ok);

}  // namespace finmoe::data
