// The hybrid-tuning mix: the union is a permutation of the input records, the
// share mode takes exactly the shares asked without repeats, text records
// are spread through the stream, and bad records are named.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "../expect_error.h"
#include "data_test_util.h"
#include "finmoe/data_mix.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;
using nlohmann::json;

struct Inputs {
  std::vector<std::string> text_lines, sft_lines;
};

Inputs write_inputs(const datatest::TempDir& dir) {
  Inputs in;
  std::string a, b, c;
  for (int i = 0; i < 300; ++i) {
    in.text_lines.push_back(
        json{{"text", std::string("金融文本 ").append(std::to_string(i))}, {"z", 1}, {"a", 2}}.dump());
    (i % 3 ? a : b) += in.text_lines.back() + (i % 7 ? "\n" : "\r\n");
  }
  for (int i = 0; i < 100; ++i) {
    in.sft_lines.push_back(json{{"messages",
                                 {{{"role", "user"}, {"content", std::string("q").append(std::to_string(i))}},
                                  {{"role", "assistant"}, {"content", "a"}}}}}
                               .dump());
    c += in.sft_lines.back() + "\n";
  }
  datatest::write(dir / "a.jsonl", a);
  datatest::write(dir / "b.jsonl", b + "\n");
  datatest::write(dir / "sft.jsonl", c);
  return in;
}

TEST(Mix, TheUnionIsAShuffledPermutationOfTheInputs) {
  datatest::TempDir dir("mix");
  const Inputs in = write_inputs(dir);
  MixOptions o;
  o.text_files = {dir / "a.jsonl", dir / "b.jsonl"};
  o.sft_files = {dir / "sft.jsonl"};
  o.seed = 1;
  const MixResult r = mix_jsonl(dir / "out.jsonl", o);
  EXPECT_EQ(r.text_in, 300);
  EXPECT_EQ(r.sft_in, 100);
  EXPECT_EQ(r.text_out + r.sft_out, 400);
  auto out = datatest::lines_of(dir / "out.jsonl");
  auto expected = in.text_lines;
  expected.insert(expected.end(), in.sft_lines.begin(), in.sft_lines.end());
  auto sorted_out = out;
  std::sort(sorted_out.begin(), sorted_out.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(sorted_out, expected);  // every record once, byte for byte
  // shuffled: instruction records are spread over the stream, not in a block
  int sft_first_half = 0;
  for (size_t i = 0; i < out.size() / 2; ++i)
    sft_first_half += out[i].find("messages") != std::string::npos;
  EXPECT_NEAR(sft_first_half, 50, 15);
  // deterministic in the seed
  mix_jsonl(dir / "again.jsonl", o);
  EXPECT_EQ(datatest::read_file(dir / "again.jsonl"), datatest::read_file(dir / "out.jsonl"));
  o.seed = 2;
  mix_jsonl(dir / "other.jsonl", o);
  EXPECT_NE(datatest::read_file(dir / "other.jsonl"), datatest::read_file(dir / "out.jsonl"));
}

TEST(Mix, AShareTakesExactlyThatManyWithoutRepeats) {
  datatest::TempDir dir("mix-share");
  const Inputs in = write_inputs(dir);
  MixOptions o;
  o.text_files = {dir / "a.jsonl", dir / "b.jsonl"};
  o.sft_files = {dir / "sft.jsonl"};
  o.text_share = 0.8;
  o.total = 200;
  const MixResult r = mix_jsonl(dir / "out.jsonl", o);
  EXPECT_EQ(r.text_out, 160);
  EXPECT_EQ(r.sft_out, 40);
  const auto out = datatest::lines_of(dir / "out.jsonl");
  ASSERT_EQ(out.size(), 200u);
  std::set<std::string> distinct(out.begin(), out.end());
  EXPECT_EQ(distinct.size(), 200u);
  int text = 0;
  for (const auto& l : out) {
    const bool is_text =
        std::find(in.text_lines.begin(), in.text_lines.end(), l) != in.text_lines.end();
    const bool is_sft =
        std::find(in.sft_lines.begin(), in.sft_lines.end(), l) != in.sft_lines.end();
    EXPECT_TRUE(is_text != is_sft) << l;
    text += is_text;
  }
  EXPECT_EQ(text, 160);
  // without a total: as many as the smaller pool allows at the share
  o.text_share = 0.5;
  o.total = 0;
  const MixResult m = mix_jsonl(dir / "max.jsonl", o);
  EXPECT_EQ(m.text_out, 100);
  EXPECT_EQ(m.sft_out, 100);
  o.text_share = 0.3;
  o.total = 200;
  EXPECT_CONTAINS(message_of([&] { mix_jsonl(dir / "no.jsonl", o); }),
                  "need 60 text and 140 instruction records");
}

TEST(Mix, BadRecordsAreNamed) {
  datatest::TempDir dir("mix-bad");
  datatest::write(dir / "t.jsonl", "{\"text\": \"a\"}\n{\"messages\": []}\n");
  datatest::write(
      dir / "s.jsonl",
      "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n{\"text\": \"b\"}\n");
  MixOptions o;
  o.text_files = {dir / "t.jsonl"};
  o.sft_files = {dir / "s.jsonl"};
  EXPECT_CONTAINS(message_of([&] { mix_jsonl(dir / "out.jsonl", o); }),
                  "t.jsonl:2: expected a string 'text'");
  EXPECT_FALSE(std::filesystem::exists(dir / "out.jsonl"));
  o.skip_bad = true;
  const auto r = mix_jsonl(dir / "out.jsonl", o);
  EXPECT_EQ(r.skipped, 2);
  EXPECT_EQ(datatest::lines_of(dir / "out.jsonl").size(), 2u);
  EXPECT_CONTAINS(message_of([&] { mix_jsonl(dir / "out.jsonl", o); }), "refusing to overwrite");
}

}  // namespace
