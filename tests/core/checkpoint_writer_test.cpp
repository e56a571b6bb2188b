// CheckpointWriter: a checkpoint streamed tensor by tensor from a plan.
#include <gtest/gtest.h>

#include <functional>

#include "core_test_util.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/safetensors.h"
#include "../expect_error.h"

namespace finmoe {
namespace {

using test::ScratchDir;

using test::message_of;

// Byte i of tensor k is (k * 31 + i) mod 251: distinct per tensor and offset.
std::vector<uint8_t> payload(size_t k, size_t n) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = uint8_t((k * 31 + i) % 251);
  return b;
}

// Shard files present in the directory, temp files included.
std::vector<std::string> safetensors_files(const ScratchDir& dir) {
  std::vector<std::string> out;
  for (const auto& n : dir.list())
    if (n.find(".safetensors") != std::string::npos) out.push_back(n);
  return out;
}

TEST(CheckpointWriter, CommitsEachShardWhenItsLastTensorArrives) {
  ScratchDir dir;
  // limit 100: [F32 x10 = 40, BF16 x20 = 40] [U8 x90] [F32 x 5 = 20]
  std::vector<PlannedTensor> plan = {{"a", DType::F32, {2, 5}},
                                     {"b", DType::BF16, {20}},
                                     {"c", DType::U8, {90}},
                                     {"d", DType::F32, {5}}};
  CheckpointWriter w(dir.str(), plan, {{"format", "pt"}}, 100);
  EXPECT_EQ(w.num_shards(), 3u);
  EXPECT_EQ(w.total_bytes(), 190u);
  EXPECT_TRUE(safetensors_files(dir).empty());

  std::vector<std::vector<uint8_t>> data;
  for (size_t k = 0; k < plan.size(); ++k) data.push_back(payload(k, plan[k].nbytes()));
  w.write("a", data[0].data(), data[0].size());
  // the first shard is open under a temp name, not yet at its final name
  for (const auto& f : safetensors_files(dir)) EXPECT_NE(f, "model-00001-of-00003.safetensors");
  w.write("b", data[1].data(), data[1].size());
  EXPECT_EQ(safetensors_files(dir), std::vector<std::string>{"model-00001-of-00003.safetensors"});
  w.write("c", data[2].data(), data[2].size());
  w.write("d", data[3].data(), data[3].size());
  EXPECT_EQ(w.bytes_written(), 190u);
  w.finish();

  EXPECT_EQ(dir.list(), (std::vector<std::string>{
                            "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  nlohmann::json index = read_json_file(dir / "model.safetensors.index.json");
  EXPECT_EQ(index["metadata"]["total_size"], 190);
  EXPECT_EQ(index["weight_map"]["b"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["c"], "model-00002-of-00003.safetensors");
  auto r = CheckpointReader::open(dir.str());
  for (size_t k = 0; k < plan.size(); ++k) {
    const TensorView& v = r.get(plan[k].name);
    EXPECT_EQ(v.dtype, plan[k].dtype);
    EXPECT_EQ(v.shape, plan[k].shape);
    ASSERT_EQ(v.nbytes, data[k].size());
    EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.nbytes), data[k]) << plan[k].name;
  }
  EXPECT_EQ(r.metadata().at("format"), "pt");
}

TEST(CheckpointWriter, WritesTheSameBytesAsWriteSafetensorsForOneShard) {
  ScratchDir dir;
  auto a = payload(0, 12), b = payload(1, 6);
  std::vector<TensorData> tensors = {{"x.weight", DType::F32, {3}, a.data(), 12},
                                     {"y.bias", DType::F16, {3}, b.data(), 6}};
  write_safetensors(dir / "reference.safetensors", tensors, {{"format", "pt"}});
  CheckpointWriter w(dir / "ckpt", {{"x.weight", DType::F32, {3}}, {"y.bias", DType::F16, {3}}},
                     {{"format", "pt"}});
  w.write("x.weight", a.data(), a.size());
  w.write("y.bias", b.data(), b.size());
  w.finish();
  EXPECT_EQ(test::read_bytes(dir / "ckpt/model.safetensors"),
            test::read_bytes(dir / "reference.safetensors"));
}

TEST(CheckpointWriter, RejectsOutOfOrderWrongSizeAndUnplannedTensors) {
  ScratchDir dir;
  CheckpointWriter w(dir.str(), {{"first", DType::U8, {4}}, {"second", DType::U8, {2}}});
  uint8_t bytes[4] = {1, 2, 3, 4};
  std::string msg = message_of([&] { w.write("second", bytes, 2); });
  EXPECT_CONTAINS(msg, "'second' written out of order, expected 'first'");
  msg = message_of([&] { w.write("first", bytes, 3); });
  EXPECT_CONTAINS(msg, "'first' has 3 bytes, planned 4");
  w.write("first", bytes, 4);
  msg = message_of([&] { w.finish(); });
  EXPECT_CONTAINS(msg, "tensor 'second' (and 0 more) never written");
  w.write("second", bytes, 2);
  msg = message_of([&] { w.write("third", bytes, 1); });
  EXPECT_CONTAINS(msg, "'third' is not in the plan");
  w.finish();
  EXPECT_EQ(dir.list(), std::vector<std::string>{"model.safetensors"});
}

TEST(CheckpointWriter, PiecesOfATensorMakeTheSameFilesAsWholeWrites) {
  ScratchDir dir;
  // limit 100: [F32 x10 = 40, empty, BF16 x20 = 40] [U8 x90] [F32 x5 = 20]
  std::vector<PlannedTensor> plan = {{"a", DType::F32, {2, 5}},
                                     {"empty", DType::F32, {0}},
                                     {"b", DType::BF16, {20}},
                                     {"c", DType::U8, {90}},
                                     {"d", DType::F32, {5}}};
  std::vector<std::vector<uint8_t>> data;
  for (size_t k = 0; k < plan.size(); ++k) data.push_back(payload(k, plan[k].nbytes()));
  {
    CheckpointWriter whole(dir / "whole", plan, {}, 100);
    for (size_t k = 0; k < plan.size(); ++k) whole.write(plan[k].name, data[k].data(), data[k].size());
    whole.finish();
  }
  CheckpointWriter w(dir / "pieces", plan, {}, 100);
  for (size_t k = 0; k < plan.size(); ++k) {
    // pieces of 7 bytes, the last one shorter; the empty tensor in one empty piece
    size_t at = 0;
    do {
      const size_t n = std::min<size_t>(7, data[k].size() - at);
      w.write_piece(plan[k].name, data[k].data() + at, n);
      at += n;
      if (at < data[k].size()) {
        // half written: another tensor, a whole write or finish() is refused
        const size_t next = (k + 1) % plan.size();
        EXPECT_CONTAINS(message_of([&] { w.write_piece(plan[next].name, data[next].data(), 1); }),
                        "written out of order, expected '" + plan[k].name + "'");
        EXPECT_CONTAINS(message_of([&] { w.write(plan[k].name, data[k].data(), data[k].size()); }),
                        "'" + plan[k].name + "' is half written");
        EXPECT_CONTAINS(message_of([&] { w.finish(); }),
                        "tensor '" + plan[k].name + "' is half written");
      }
    } while (at < data[k].size());
  }
  EXPECT_CONTAINS(message_of([&] { w.write_piece("d", data[4].data(), 1); }), "not in the plan");
  w.finish();
  for (const std::string f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                               "model-00003-of-00003.safetensors", "model.safetensors.index.json"})
    EXPECT_EQ(test::read_bytes(dir / ("pieces/" + f)), test::read_bytes(dir / ("whole/" + f))) << f;
}

TEST(CheckpointWriter, APieceMayNotPassItsTensorsPlannedSize) {
  ScratchDir dir;
  CheckpointWriter w(dir.str(), {{"t", DType::U8, {4}}, {"u", DType::U8, {2}}});
  uint8_t bytes[6] = {1, 2, 3, 4, 5, 6};
  w.write_piece("t", bytes, 3);
  EXPECT_CONTAINS(message_of([&] { w.write_piece("t", bytes, 2); }),
                  "'t' has more than its planned 4 bytes");
  w.write_piece("t", bytes + 3, 1);
  w.write_piece("u", bytes, 2);
  w.finish();
  auto r = CheckpointReader::open(dir.str());
  EXPECT_EQ(std::vector<uint8_t>(r.get("t").data, r.get("t").data + 4),
            (std::vector<uint8_t>{1, 2, 3, 4}));
}

TEST(CheckpointWriter, ValidatesThePlanBeforeTouchingTheDirectory) {
  ScratchDir dir;
  const std::string out = dir / "never";
  std::string msg = message_of([&] {
    CheckpointWriter w(out, {{"t", DType::F32, {2}}, {"t", DType::F32, {2}}});
  });
  EXPECT_CONTAINS(msg, "tensor 't' is given twice");
  msg = message_of([&] { CheckpointWriter w(out, {{"t", DType::F32, {-2}}}); });
  EXPECT_CONTAINS(msg, "negative dimension -2");
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CheckpointWriter, AbandonedShardLeavesNoFileBehind) {
  ScratchDir dir;
  {
    CheckpointWriter w(dir.str(), {{"a", DType::U8, {8}}, {"b", DType::U8, {8}}});
    uint8_t bytes[8] = {};
    w.write("a", bytes, 8);  // shard open under a temp name, then the writer dies
  }
  EXPECT_TRUE(dir.list().empty());
}

TEST(CheckpointWriter, FinishReplacesAnOlderCheckpointInTheDirectory) {
  ScratchDir dir;
  // an older sharded checkpoint with more shards than the new one
  std::vector<uint8_t> big(64, 7);
  std::vector<TensorData> old;
  for (int i = 0; i < 3; ++i)
    old.push_back({"old" + std::to_string(i), DType::U8, {64}, big.data(), 64});
  write_checkpoint(dir.str(), old, {}, 64);
  ASSERT_EQ(dir.list().size(), 4u);

  CheckpointWriter w(dir.str(), {{"new", DType::U8, {64}}});
  w.write("new", big.data(), 64);
  w.finish();
  EXPECT_EQ(dir.list(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(CheckpointReader::open(dir.str()).names(), std::vector<std::string>{"new"});
}

}  // namespace
}  // namespace finmoe
