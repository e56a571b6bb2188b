// CheckpointReader / write_checkpoint: single file vs shards, index, errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>

#include "core_test_util.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/safetensors.h"
#include "../expect_error.h"

namespace finmoe {
namespace {

using test::ScratchDir;

// Tensor i holds bytes (i + 1) repeated; sizes chosen per test.
struct Tensors {
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<TensorData> data;
  void add(const std::string& name, size_t nbytes) {
    buffers.emplace_back(nbytes, uint8_t(buffers.size() + 1));
    data.push_back({name, DType::U8, {int64_t(nbytes)}, buffers.back().data(), nbytes});
  }
};

using test::message_of;

TEST(Checkpoint, SmallCheckpointIsOneFileAndReadsBack) {
  ScratchDir dir;
  Tensors t;
  t.add("b.weight", 10);
  t.add("a.weight", 20);
  write_checkpoint(dir.str(), t.data, {{"format", "pt"}}, 1000);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"model.safetensors"});
  auto r = CheckpointReader::open(dir.str());
  EXPECT_EQ(r.names(), (std::vector<std::string>{"a.weight", "b.weight"}));
  EXPECT_EQ(r.get("a.weight").nbytes, 20u);
  EXPECT_EQ(r.get("a.weight").data[19], 2);
  EXPECT_EQ(r.file_of("b.weight"), dir / "model.safetensors");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_TRUE(r.has("a.weight"));
  EXPECT_FALSE(r.has("c"));
  const std::string msg = message_of([&] { r.get("c"); });
  EXPECT_CONTAINS(msg, "tensor 'c' not found in checkpoint ");
  EXPECT_CONTAINS(msg, dir.str());
}

TEST(Checkpoint, ShardsGreedilyAndGivesOversizedTensorsTheirOwnShard) {
  ScratchDir dir;
  Tensors t;  // limit 64: [40] [40] [100 > limit] [8 8]
  t.add("l0", 40);
  t.add("l1", 40);
  t.add("big", 100);
  t.add("l2", 8);
  t.add("l3", 8);
  write_checkpoint(dir.str(), t.data, {{"format", "pt"}}, 64);
  EXPECT_EQ(dir.list(), (std::vector<std::string>{
                            "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                            "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                            "model.safetensors.index.json"}));
  nlohmann::json index = read_json_file(dir / "model.safetensors.index.json");
  EXPECT_EQ(index["metadata"]["total_size"], 196);
  EXPECT_EQ(index["weight_map"],
            nlohmann::json({{"l0", "model-00001-of-00004.safetensors"},
                            {"l1", "model-00002-of-00004.safetensors"},
                            {"big", "model-00003-of-00004.safetensors"},
                            {"l2", "model-00004-of-00004.safetensors"},
                            {"l3", "model-00004-of-00004.safetensors"}}));
  auto r = CheckpointReader::open(dir.str());
  EXPECT_EQ(r.names(), (std::vector<std::string>{"big", "l0", "l1", "l2", "l3"}));
  for (size_t i = 0; i < t.data.size(); ++i) {
    const TensorView& v = r.get(t.data[i].name);
    ASSERT_EQ(v.nbytes, t.data[i].nbytes);
    EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.nbytes), t.buffers[i]) << v.name;
  }
  EXPECT_EQ(r.file_of("l3"), dir / "model-00004-of-00004.safetensors");
  EXPECT_EQ(r.metadata().at("format"), "pt");  // every shard carries it
}

TEST(Checkpoint, RewritingSwitchesLayoutAndRemovesStaleFiles) {
  ScratchDir dir;
  Tensors many;
  for (const char* name : {"t0", "t1", "t2", "t3", "t4"}) many.add(name, 16);
  write_checkpoint(dir.str(), many.data, {}, 16);  // five shards
  EXPECT_EQ(dir.list().size(), 6u);

  Tensors few;
  few.add("x", 16);
  few.add("y", 16);
  write_checkpoint(dir.str(), few.data, {}, 16);  // two shards: 00001..5-of-00005 are stale
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                  "model-00002-of-00002.safetensors",
                                                  "model.safetensors.index.json"}));
  write_checkpoint(dir.str(), few.data, {}, 1000);  // single file: index and shards go
  EXPECT_EQ(dir.list(), std::vector<std::string>{"model.safetensors"});
  write_checkpoint(dir.str(), few.data, {}, 16);  // and back: the single file goes
  EXPECT_EQ(dir.list().size(), 3u);
  EXPECT_EQ(CheckpointReader::open(dir.str()).names(), (std::vector<std::string>{"x", "y"}));
  std::filesystem::create_directories(dir / "keep");  // unrelated entries are left alone
  write_checkpoint(dir.str(), few.data, {}, 1000);
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"keep", "model.safetensors"}));
}

TEST(Checkpoint, InvalidInputWritesNothing) {
  ScratchDir dir;
  Tensors t;
  t.add("a", 16);
  t.add("a", 16);
  EXPECT_CONTAINS(message_of([&] { write_checkpoint(dir.str(), t.data, {}, 16); }),
                  "tensor 'a' is given twice");
  EXPECT_TRUE(dir.list().empty());
}

TEST(Checkpoint, ReaderErrorsNameTheDirectoryFilesAndTensors) {
  ScratchDir dir;
  std::string msg = message_of([&] { CheckpointReader::open(dir.str()); });
  EXPECT_CONTAINS(msg, dir.str());
  EXPECT_CONTAINS(msg, ": expected model.safetensors or model.safetensors.index.json");

  Tensors t;
  t.add("a", 4);
  t.add("b", 4);
  write_safetensors(dir / "s1.safetensors", {t.data[0]});
  write_safetensors(dir / "s2.safetensors", {t.data[1]});
  const std::string index_path = dir / "model.safetensors.index.json";
  auto index = [&](nlohmann::json weight_map) {
    write_json_file(index_path, {{"metadata", {{"total_size", 8}}}, {"weight_map", weight_map}});
  };

  index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  EXPECT_EQ(CheckpointReader::open(dir.str()).file_of("b"), dir / "s2.safetensors");

  index({{"a", "s1.safetensors"}, {"b", "missing.safetensors"}});
  msg = message_of([&] { CheckpointReader::open(dir.str()); });
  EXPECT_CONTAINS(msg, index_path);
  EXPECT_CONTAINS(msg, "missing.safetensors");

  index({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}});  // b is really in s2
  msg = message_of([&] { CheckpointReader::open(dir.str()); });
  EXPECT_CONTAINS(msg, "tensor 'b'");
  EXPECT_CONTAINS(msg, dir / "s1.safetensors");

  write_safetensors(dir / "s2.safetensors", {t.data[0], t.data[1]});  // 'a' in both shards
  index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  msg = message_of([&] { CheckpointReader::open(dir.str()); });
  EXPECT_CONTAINS(msg, "tensor 'a' is in two shards");
  EXPECT_CONTAINS(msg, dir / "s1.safetensors");
  EXPECT_CONTAINS(msg, dir / "s2.safetensors");

  write_json_file(index_path, {{"weight_map", {{"a", 3}}}});
  EXPECT_CONTAINS(message_of([&] { CheckpointReader::open(dir.str()); }), "weight_map['a']");
  write_json_file(index_path, {{"metadata", {}}});
  EXPECT_CONTAINS(message_of([&] { CheckpointReader::open(dir.str()); }), "'weight_map'");
  test::write_bytes(index_path, "{\"weight_map\": {\n  \"a\": }");
  msg = message_of([&] { CheckpointReader::open(dir.str()); });
  EXPECT_CONTAINS(msg, index_path);
  EXPECT_CONTAINS(msg, "line 2");
}

// An index names shards inside its own directory: a path that leaves it is
// refused even when the file it points to exists and is a valid shard.
TEST(Checkpoint, IndexShardPathsMustStayInTheDirectory) {
  ScratchDir dir;
  const std::string model = dir / "model";
  const std::string outside = dir / "outside";
  std::filesystem::create_directories(model + "/sub");
  std::filesystem::create_directories(outside);
  Tensors t;
  t.add("a", 4);
  t.add("b", 4);
  write_safetensors(model + "/s1.safetensors", {t.data[0]});
  write_safetensors(outside + "/weights.bin", {t.data[1]});
  write_safetensors(model + "/sub/s2.safetensors", {t.data[1]});
  const std::string index_path = model + "/model.safetensors.index.json";
  for (const std::string& shard :
       {std::string("../outside/weights.bin"), std::string("../../outside/weights.bin"),
        outside + "/weights.bin", std::string("sub/s2.safetensors"),
        std::string("sub/../s1.safetensors"), std::string(".."), std::string("."), std::string(""),
        std::string("a\\b")}) {
    write_json_file(index_path, {{"weight_map", {{"a", "s1.safetensors"}, {"b", shard}}}});
    const std::string msg = message_of([&] { CheckpointReader::open(model); });
    EXPECT_CONTAINS(msg, index_path);
    EXPECT_CONTAINS(msg, "weight_map['b'] is '" + shard + "'");
    EXPECT_CONTAINS(msg, "a file name inside the checkpoint directory");
  }
  // the plain names keep working
  write_safetensors(model + "/s2.safetensors", {t.data[1]});
  write_json_file(index_path, {{"weight_map", {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}}}});
  EXPECT_EQ(CheckpointReader::open(model).file_of("b"), model + "/s2.safetensors");
}

}  // namespace
}  // namespace finmoe
