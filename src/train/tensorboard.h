#pragma once
// TensorBoard event files, written without TensorFlow or a protobuf library.
//
// An event file is a sequence of TFRecords:
//   uint64 length (little-endian), uint32 masked CRC32C of those 8 bytes,
//   `length` bytes of data, uint32 masked CRC32C of the data;
// each record's data is a serialized tensorflow.Event (event.proto):
//   double wall_time = 1; int64 step = 2; string file_version = 3;
//   Summary summary = 5 { repeated Value value = 1 { string tag = 1;
//   float simple_value = 2; } }; SessionLog session_log = 7 { status = 1 }.
// The first event carries file_version "brain.Event:2". Each writer starts
// with a SessionLog START at its first step, which makes TensorBoard drop the
// events of an earlier file at that step or later (a run resumed from an
// older checkpoint than the last step it logged).
//
// Errors never end training: a failed open or write prints one warning on
// stderr and turns the writer off.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace finmoe::tensorboard {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), continuing `crc`.
uint32_t crc32c(std::string_view data, uint32_t crc = 0);
// TFRecord's mask: rotate right by 15, add 0xa282ead8.
uint32_t masked_crc32c(std::string_view data);
// One TFRecord holding `data`.
std::string tfrecord(std::string_view data);

// Serialized Event messages.
std::string file_version_event(double wall_time);
std::string session_start_event(double wall_time, int64_t step);
std::string scalars_event(double wall_time, int64_t step,
                          const std::vector<std::pair<std::string, float>>& values);

// Appends events to DIR/events.out.tfevents.<seconds>.<host>.<pid>; the
// seconds are after those of any event file already in DIR, so that
// TensorBoard (which reads a directory's files in name order) reads this one
// last.
class EventWriter {
 public:
  // Creates `dir`, the file, its file_version and SessionLog START (at
  // `first_step`) events.
  EventWriter(const std::string& dir, int64_t first_step);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // Buffers one event of simple_value scalars; flush() writes them.
  void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
  void flush();
  bool ok() const { return file_ != nullptr; }
  const std::string& path() const { return path_; }

 private:
  void fail(const std::string& what);

  std::string path_;
  std::FILE* file_ = nullptr;
  std::string pending_;
};

}  // namespace finmoe::tensorboard
