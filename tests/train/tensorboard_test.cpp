// TensorBoard event files: CRC-32C against the standard check values, the
// TFRecord framing and Event encoding byte for byte against a file written
// by TensorBoard's own record writer and the protobuf library
// (tests/ref/make_tensorboard_reference.py), and the files a training run
// writes (a resumed run adds a file that TensorBoard reads after the first).
// tests/train/tensorboard_live.py reads a real run's files with TensorBoard.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "train/tensorboard.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
namespace tb = finmoe::tensorboard;
using test::TempDir;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(TensorBoard, Crc32cMatchesTheStandardCheckValues) {
  // the CRC catalogue's check value and RFC 3720 (iSCSI) appendix B.4
  EXPECT_EQ(tb::crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(tb::crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(tb::crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) up += char(i), down += char(31 - i);
  EXPECT_EQ(tb::crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(tb::crc32c(down), 0x113FDB5Cu);
  EXPECT_EQ(tb::crc32c(""), 0u);
  // continuing a CRC over a second part equals the CRC of the whole
  EXPECT_EQ(tb::crc32c("56789", tb::crc32c("1234")), 0xE3069283u);
}

TEST(TensorBoard, RecordsAndEventsEqualTensorBoardsOwnBytes) {
  // the events make_tensorboard_reference.py writes, in its order
  std::string mine;
  mine += tb::tfrecord(tb::file_version_event(1700000000.25));
  mine += tb::tfrecord(tb::session_start_event(1700000000.5, 7));
  mine += tb::tfrecord(tb::scalars_event(1700000001.75, 7, {{"train/loss", 2.5f}, {"eval/ppl", 12.25f}}));
  mine += tb::tfrecord(tb::scalars_event(1700000002.0, int64_t(1) << 40,
                                         {{std::string(200, 't'), -3.0e-7f}}));
  mine += tb::tfrecord(tb::scalars_event(1700000003.0, 0, {{"train/lr", 0.0f}}));
  const std::string ref = slurp(FINMOE_TEST_DATA_DIR "/tensorboard/reference.tfevents");
  ASSERT_FALSE(ref.empty());
  EXPECT_EQ(mine.size(), ref.size());
  for (size_t i = 0; i < std::min(mine.size(), ref.size()); ++i)
    if (mine[i] != ref[i]) {
      ADD_FAILURE() << "first difference at byte " << i;
      break;
    }
}

// The records of an event file: each one's framing checked (length CRC, data CRC).
std::vector<std::string> read_records(const std::string& path) {
  const std::string f = slurp(path);
  std::vector<std::string> out;
  size_t at = 0;
  auto u32 = [&](size_t p) {
    uint32_t v;
    std::memcpy(&v, f.data() + p, 4);
    return v;
  };
  while (at < f.size()) {
    EXPECT_LE(at + 12, f.size()) << path;
    if (at + 12 > f.size()) break;
    uint64_t n;
    std::memcpy(&n, f.data() + at, 8);
    EXPECT_EQ(u32(at + 8), tb::masked_crc32c(std::string_view(f.data() + at, 8)));
    EXPECT_LE(at + 12 + n + 4, f.size()) << path;
    if (at + 12 + n + 4 > f.size()) break;
    const std::string data = f.substr(at + 12, n);
    EXPECT_EQ(u32(at + 12 + n), tb::masked_crc32c(data));
    out.push_back(data);
    at += 12 + n + 4;
  }
  return out;
}

std::vector<std::string> event_files(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(TensorBoard, TrainingWritesAnEventPerStepAndAResumeAddsALaterFile) {
  TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 3);
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.max_steps = 3;
  c.log_interval = 2;
  c.eval_data.files = {"held-out"};
  c.eval_batches = 1;
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  const std::string runs = out.str() + "/runs";
  auto files = event_files(runs);
  ASSERT_EQ(files.size(), 1u);
  EXPECT_TRUE(files[0].starts_with("events.out.tfevents.")) << files[0];
  // file_version, SessionLog START at step 1, one scalars event per step
  auto records = read_records(runs + "/" + files[0]);
  ASSERT_EQ(records.size(), 2u + 3u);
  EXPECT_EQ(records[0].substr(9), tb::file_version_event(0).substr(9));  // after wall_time
  EXPECT_NE(records[1].find(std::string("\x3a\x02\x08\x01", 4)), std::string::npos);  // START
  EXPECT_NE(records[4].find("eval/loss"), std::string::npos);  // the last step evaluated
  EXPECT_EQ(records[3].find("eval/loss"), std::string::npos);

  c.max_steps = 5;
  c.resume = "auto";
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  files = event_files(runs);
  ASSERT_EQ(files.size(), 2u);  // the new one sorts after the first
  EXPECT_EQ(read_records(runs + "/" + files[1]).size(), 2u + 2u);

  // off: no directory; logging_dir elsewhere
  TempDir out2, logs;
  c.resume = "";
  c.output_dir = out2.str();
  c.report_to = {"none"};
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  EXPECT_FALSE(fs::exists(out2.path / "runs"));
  TempDir out3;
  c.output_dir = out3.str();
  c.report_to = {"tensorboard"};
  c.logging_dir = (logs.path / "tb").string();
  Trainer(c, test::synthetic_hooks(mc.vocab_size)).run();
  EXPECT_EQ(event_files(c.logging_dir).size(), 1u);
}

TEST(TensorBoard, AnUnwritableDirectoryIsAWarningNotAnError) {
  TempDir out;
  const std::string blocker = out.str() + "/file";
  std::ofstream(blocker) << "x";
  tb::EventWriter w(blocker + "/runs", 1);  // a directory under a regular file
  EXPECT_FALSE(w.ok());
  w.scalars(1, {{"train/loss", 1.0}});
  w.flush();
}

}  // namespace
}  // namespace finmoe
