// The YAML nesting bound (src/core/yaml_bounds.h): the layout scan never
// reports less than the depth yaml-cpp builds, and a training config that
// nests too deep, is too large or holds invalid UTF-8 is refused naming the
// file and line before (or instead of) a crash.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <random>
#include <string>

#include "../expect_error.h"
#include "finmoe/train.h"
#include "core/yaml_bounds.h"

namespace finmoe {
namespace {

using test::message_of;

// The depth of the tree yaml-cpp builds: 0 for a scalar, 1 + the deepest
// child for a collection (keys included).
int tree_depth(const YAML::Node& n) {
  if (!n.IsSequence() && !n.IsMap()) return 0;
  int deepest = 0;
  for (auto it = n.begin(); it != n.end(); ++it) {
    if (n.IsMap()) {
      deepest = std::max(deepest, tree_depth(it->first));
      deepest = std::max(deepest, tree_depth(it->second));
    } else {
      deepest = std::max(deepest, tree_depth(*it));
    }
  }
  return 1 + deepest;
}

TEST(YamlDepth, MatchesTheStructureOfSmallDocuments) {
  const std::vector<std::pair<std::string, int>> cases = {
      {"", 0},
      {"a: 1", 1},
      {"a:\n  b: 1", 2},
      {"a:\n- b\n- c\nd: 1", 2},  // a sequence at its key's column
      {"- - - x", 3},             // compact sequences
      {"- a: 1\n  b:\n  - - c", 4},
      {"a: [[1], {b: [2]}]", 4},
      {"a: \"[[[[\"\nb: '{{'", 1},         // brackets inside quotes
      {"a: x [ y\nb: 1", 1},               // inside a plain scalar
      {"a: |\n  [[[[\n  - - -\nb: 1", 1},  // inside a block scalar
      {"a: 1 # [[[[", 1},                  // inside a comment
      {"--- [1]\n--- [[2]]", 2},           // the deepest document
  };
  for (const auto& [yaml, depth] : cases) {
    EXPECT_EQ(yaml_depth(yaml, 64), depth) << yaml;
    EXPECT_EQ(tree_depth(YAML::Load(yaml.substr(0, yaml.find("\n---")))) <= depth, true) << yaml;
  }
}

// Random documents from block mappings, block and compact sequences, flow
// collections, quoted and block scalars: the scan is an upper bound of what
// yaml-cpp builds (the property that makes the bound safe).
TEST(YamlDepth, NeverBelowTheDepthYamlCppBuilds) {
  std::mt19937_64 rng(13);
  auto node = [&](auto&& self, int indent, int budget) -> std::string {
    const std::string pad(size_t(indent), ' ');
    switch (budget <= 0 ? 0 : rng() % 6) {
      case 0: {
        static const char* scalars[] = {"x", "\"q [ {\"", "'s'' ]'", "1e3", "a b # c", "~"};
        return std::string(" ") + scalars[rng() % 6] + "\n";
      }
      case 1: {  // block mapping
        std::string s = "\n";
        for (int k = 0, n = 1 + int(rng() % 3); k < n; ++k)
          s += pad + "k" + std::to_string(k) + ":" + self(self, indent + 2, budget - 1);
        return s;
      }
      case 2: {  // block sequence, indented or at the key's column
        std::string s = "\n";
        const std::string p = rng() % 2 ? pad : std::string(size_t(std::max(0, indent - 2)), ' ');
        for (int k = 0, n = 1 + int(rng() % 3); k < n; ++k)
          s += p + "-" + self(self, int(p.size()) + 2, budget - 1);
        return s;
      }
      case 3: {  // compact sequences on one line
        std::string s = " ";
        const int n = 1 + int(rng() % 4);
        for (int k = 0; k < n; ++k) s += "- ";
        return s + "x\n";
      }
      case 4: {  // flow
        std::string open, close;
        for (int k = 0, n = 1 + int(rng() % 5); k < n; ++k) {
          const bool seq = rng() % 2;
          open += seq ? "[" : "{a: ";
          close = (seq ? "]" : "}") + close;
        }
        return " " + open + "1" + close + "\n";
      }
      default: {  // block scalar
        return " |\n" + pad + "  [[[ - - {{\n" + pad + "  text\n";
      }
    }
  };
  int compared = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::string doc = "root:" + node(node, 2, 1 + int(rng() % 6));
    YAML::Node tree;
    try {
      tree = YAML::Load(doc);
    } catch (const YAML::Exception&) {
      continue;  // not YAML: nothing to compare
    }
    ++compared;
    ASSERT_GE(yaml_depth(doc, 1000), tree_depth(tree)) << doc;
  }
  EXPECT_GT(compared, 500);
}

TEST(TrainConfigYaml, DeepNestingIsRefusedBeforeYamlCppRecurses) {
  const std::string head = "model: m\noutput_dir: o\nmax_steps: 1\ndata: {files: a.txt}\n";
  for (const size_t d : {65, 1000, 100000}) {
    EXPECT_CONTAINS(message_of([&] {
                      parse_train_config(
                          head + "lr: " + std::string(d, '[') + "1" + std::string(d, ']'),
                          "deep.yaml");
                    }),
                    "deep.yaml:5: YAML nested deeper than 64 levels");
    EXPECT_CONTAINS(
        message_of([&] { parse_train_config(head + "lr: " + std::string(d, '{'), "deep.yaml"); }),
        "deep.yaml:5: YAML nested deeper than 64 levels");
    std::string compact = "lr:\n";
    for (size_t i = 0; i < d; ++i) compact += "- ";
    EXPECT_CONTAINS(message_of([&] { parse_train_config(head + compact + "x", "deep.yaml"); }),
                    "deep.yaml:6: YAML nested deeper than 64 levels");
  }
  std::string block = head;
  for (size_t i = 0; i < 70; ++i) block += std::string(i, ' ') + "k:\n";
  EXPECT_CONTAINS(message_of([&] { parse_train_config(block, "deep.yaml"); }),
                  "YAML nested deeper than 64 levels");
  // 60 levels is not refused for its depth (the key is wrong)
  EXPECT_CONTAINS(message_of([&] {
                    parse_train_config(
                        head + "lr: " + std::string(60, '[') + "1" + std::string(60, ']'),
                        "deep.yaml");
                  }),
                  "deep.yaml:5: lr: expected a number, got a list");
  // a block scalar may hold any brackets: the chat template of a data section
  const TrainConfig c = parse_train_config(head.substr(0, head.find("data:")) +
                                               "data:\n  files: [a.txt]\n  chat_template: |\n    " +
                                               std::string(200, '[') + "\n    - - - -\n",
                                           "ok.yaml");
  EXPECT_EQ(c.data.chat_template, std::string(200, '[') + "\n- - - -\n");
}

TEST(TrainConfigYaml, SizeKeysAndTextAreChecked) {
  const std::string head = "model: m\noutput_dir: o\nmax_steps: 1\ndata: {files: a.txt}\n";
  const std::string big = head + "#" + std::string(kMaxYamlBytes, 'x');
  EXPECT_CONTAINS(message_of([&] { parse_train_config(big, "big.yaml"); }),
                  "big.yaml: " + std::to_string(big.size()) + " bytes, more than the 1048576");
  EXPECT_CONTAINS(message_of([&] { parse_train_config(head + "[a]: 1\n", "k.yaml"); }),
                  "k.yaml:5: (key): expected a key name, got a list");
  EXPECT_CONTAINS(message_of([&] { parse_train_config(head + "{a: 1}: 1\n", "k.yaml"); }),
                  "expected a key name, got a mapping");
  // yaml-cpp passes raw invalid bytes through (a surrogate escape it refuses);
  // the config is written back as JSON, which needs valid UTF-8
  EXPECT_CONTAINS(message_of([&] { parse_train_config(head + "device: cpu\xFF\n", "u.yaml"); }),
                  "u.yaml:5: device: not valid UTF-8 (byte 3 of the value)");
  EXPECT_CONTAINS(message_of([&] { parse_train_config(head + "output_dir: o\xC3\n", "u.yaml"); }),
                  "u.yaml:5: output_dir: not valid UTF-8");
  // a list key given one file name (found by fuzz_train_yaml: the JSON dump threw)
  EXPECT_CONTAINS(message_of([&] {
                    parse_train_config("model: m\noutput_dir: o\nmax_steps: 1\ndata:\n  files: a\xA3.txt\n",
                                       "u.yaml");
                  }),
                  "u.yaml:5: data.files: not valid UTF-8");
  EXPECT_CONTAINS(
      message_of([&] { parse_train_config(head + "device: \"cpu\\uD800\"\n", "u.yaml"); }),
      "u.yaml:5: invalid YAML");
  EXPECT_CONTAINS(
      message_of([&] { parse_train_config(head, "x.yaml", {"lr=" + std::string(100, '[')}); }),
      "override 'lr=");
  EXPECT_CONTAINS(
      message_of([&] { parse_train_config(head, "x.yaml", {"data.seq_len=1099511627776"}); }),
      "data.seq_len must be at most 16777216");
  EXPECT_CONTAINS(
      message_of([&] {
        parse_train_config(head, "x.yaml", {"data.seq_len=65536", "data.batch_size=65536"});
      }),
      "data.seq_len x batch_size must be at most 268435456 tokens");
  EXPECT_CONTAINS(message_of([&] { parse_train_config(head, "x.yaml", {"lora.r=1e9"}); }),
                  "lora.r must be at most 65536");
}

}  // namespace
}  // namespace finmoe
