// Training data: packing invariants, document masks, SFT assistant-only
// labels (against HF's rendering of the golden conversations), streaming of
// plain text in blocks, deterministic shuffles, bit-exact resume, hybrid
// mixing ratio, and errors that name the file and line.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../expect_error.h"
#include "../tokenizer/tokenizer_test_util.h"
#include "core/file_util.h"
#include "finmoe/dataset.h"
#include "finmoe/tokenizer.h"
#include "finmoe/tokenizer_trainer.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() / ("finmoe_data_" + name + "_" + std::to_string(::getpid()));
    remove_tree(path.string());
    fs::create_directories(path);
  }
  ~TempDir() { remove_tree(path.string()); }
  std::string write(const std::string& name, const std::string& text) const {
    std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
};

// A small byte-level BPE tokenizer with the plain ChatML template, trained once
// per process on the tokenizer test cases (fast to load, unlike the golden ones).
const Tokenizer& small_tok() {
  static std::unique_ptr<Tokenizer> tok = [] {
    TempDir dir("tok");
    TokenizerFilesOptions fo;  // chatml
    BpeTrainerOptions o;
    o.vocab_size = 700;
    o.special_tokens = special_tokens_for(fo);
    BpeTrainer t(o);
    for (const auto& c : test::read_jsonl(test::tok_data("cases.jsonl"))) t.feed(c["text"].get<std::string>());
    write_bpe_tokenizer(dir.path.string(), t.train(), fo);
    return std::make_unique<Tokenizer>(Tokenizer::from_dir(dir.path.string()));
  }();
  return *tok;
}

int32_t eos() { return *small_tok().eos_id(); }

// Random documents: words, Chinese, digits, newlines.
std::vector<std::string> make_docs(int n, uint32_t seed, int max_words = 40) {
  static const std::vector<std::string> words = {"the", "balance", "sheet", "lists", "assets", "and",
                                                 "liabilities", "资产", "负债", "1,000.00", "NPV",
                                                 "cash", "flow", "\n", "\n\n", "  ", "GnuCash"};
  std::mt19937 rng(seed);
  std::vector<std::string> docs;
  for (int i = 0; i < n; ++i) {
    std::string d = "doc" + std::to_string(i);
    int k = 1 + int(rng() % uint32_t(max_words));
    for (int j = 0; j < k; ++j) d += " " + words[rng() % words.size()];
    docs.push_back(d);
  }
  return docs;
}

std::string jsonl_texts(const std::vector<std::string>& docs) {
  std::string out;
  for (const auto& d : docs) out += json{{"text", d}}.dump() + "\n";
  return out;
}

// The rows of a batch as x = tokens ++ [last label] (valid when the last
// label is not masked).
std::vector<Ids> rows_of(const TrainBatch& b) {
  std::vector<Ids> rows;
  auto tok = b.tokens.accessor<int64_t, 2>();
  auto lab = b.labels.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b.tokens.size(0); ++i) {
    Ids r;
    for (int64_t t = 0; t < b.tokens.size(1); ++t) r.push_back(int32_t(tok[i][t]));
    r.push_back(int32_t(lab[i][b.tokens.size(1) - 1]));
    rows.push_back(r);
  }
  return rows;
}

// ---- text packing ------------------------------------------------------------------

TEST(Packing, RowsAreTheDocumentStreamCutIntoTPlusOneTokens) {
  TempDir dir("pack");
  auto docs = make_docs(12, 1);
  DataConfig c;
  c.files = {dir.write("a.jsonl", jsonl_texts(docs))};
  c.seq_len = 16;
  c.batch_size = 3;
  c.shuffle = false;
  auto src = make_batch_source(c, small_tok());

  Ids stream;  // the documents in file order, each followed by eos; epochs repeat
  for (const auto& d : docs) {
    Ids ids = small_tok().encode(d);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(eos());
  }
  Ids got;
  for (int k = 0; k < 60; ++k) {
    TrainBatch b = src->next();
    ASSERT_EQ(b.tokens.sizes(), (std::vector<int64_t>{3, 16}));
    EXPECT_FALSE(b.document_ids.defined());
    EXPECT_EQ(b.loss_tokens(), 3 * 16);  // plain text: every position has a label
    for (const Ids& r : rows_of(b)) got.insert(got.end(), r.begin(), r.end());
  }
  ASSERT_GT(got.size(), 3 * stream.size());  // several epochs
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], stream[i % stream.size()]) << "token " << i;
}

TEST(Packing, DocumentMaskNumbersDocumentsAndMasksCrossDocumentLabels) {
  TempDir dir("mask");
  DataConfig c;
  c.files = {dir.write("a.jsonl", jsonl_texts(make_docs(10, 2, 12)))};
  c.seq_len = 24;
  c.batch_size = 4;
  c.document_mask = true;
  c.seed = 3;
  auto src = make_batch_source(c, small_tok());
  int64_t boundaries = 0;
  for (int k = 0; k < 20; ++k) {
    TrainBatch b = src->next();
    ASSERT_TRUE(b.document_ids.defined());
    ASSERT_EQ(b.document_ids.sizes(), b.tokens.sizes());
    auto x = b.tokens.accessor<int64_t, 2>();
    auto y = b.labels.accessor<int64_t, 2>();
    auto d = b.document_ids.accessor<int64_t, 2>();
    for (int64_t i = 0; i < 4; ++i) {
      EXPECT_EQ(d[i][0], 0);
      for (int64_t t = 0; t < 24; ++t) {
        // A new document starts right after each eos, and only there.
        if (t > 0) {
          EXPECT_EQ(d[i][t], d[i][t - 1] + (x[i][t - 1] == eos() ? 1 : 0));
        }
        // eos ends its document: what follows it is another document's token.
        if (x[i][t] == eos()) {
          EXPECT_EQ(y[i][t], -100);
          ++boundaries;
        } else {
          EXPECT_NE(y[i][t], -100);
          if (t + 1 < 24) {
            EXPECT_EQ(y[i][t], x[i][t + 1]);
          }
        }
      }
    }
  }
  EXPECT_GT(boundaries, 20);
}

TEST(Packing, ShuffleIsAPermutationPerEpochAndDependsOnTheSeed) {
  TempDir dir("shuf");
  auto docs = make_docs(20, 4, 6);
  std::map<Ids, int> want;
  for (const auto& d : docs) {
    Ids ids = small_tok().encode(d);
    ids.push_back(eos());
    ++want[ids];
  }
  DataConfig c;
  c.files = {dir.write("a.jsonl", jsonl_texts(docs))};
  c.seq_len = 8;
  c.batch_size = 2;
  c.shuffle_buffer = 0;  // rows in stream order: documents appear whole and in order
  auto epochs = [&](uint64_t seed) {
    c.seed = seed;
    auto src = make_batch_source(c, small_tok());
    Ids all;
    for (int k = 0; k < 80; ++k)
      for (const Ids& r : rows_of(src->next())) all.insert(all.end(), r.begin(), r.end());
    std::vector<std::vector<Ids>> out(1);  // documents, split at eos, grouped by epoch
    Ids cur;
    for (int32_t id : all) {
      cur.push_back(id);
      if (id != eos()) continue;
      if (out.back().size() == docs.size()) out.emplace_back();
      out.back().push_back(cur);
      cur.clear();
    }
    out.pop_back();  // possibly incomplete
    return out;
  };
  auto a = epochs(1), b = epochs(1), other = epochs(2);
  ASSERT_GE(a.size(), 2u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  for (const auto& e : a) {
    std::map<Ids, int> got;
    for (const auto& d : e) ++got[d];
    EXPECT_EQ(got, want);
  }
  EXPECT_NE(a[0], a[1]);  // a fresh order every epoch
}

TEST(Packing, ShuffleBufferDrawsEachRowOnceFromTheNextRows) {
  TempDir dir("buf");
  DataConfig c;
  c.files = {dir.write("a.jsonl", jsonl_texts(make_docs(15, 5)))};
  c.seq_len = 8;
  c.batch_size = 1;
  c.shuffle_buffer = 0;
  auto plain = make_batch_source(c, small_tok());
  c.shuffle_buffer = 6;
  auto buffered = make_batch_source(c, small_tok());
  const int M = 60;
  std::vector<Ids> stream;
  for (int k = 0; k < M + 6; ++k) stream.push_back(rows_of(plain->next())[0]);
  std::vector<bool> used(stream.size());
  bool reordered = false;
  for (int k = 0; k < M; ++k) {
    Ids r = rows_of(buffered->next())[0];
    // Row k comes from the first k + 6 stream rows and was not drawn before.
    size_t j = 0;
    while (j < size_t(k) + 6 && (used[j] || stream[j] != r)) ++j;
    ASSERT_LT(j, size_t(k) + 6) << "row " << k;
    used[j] = true;
    reordered |= j != size_t(k);
  }
  EXPECT_TRUE(reordered);
}

// ---- plain text ------------------------------------------------------------------

TEST(PlainText, BlocksTokenizeLikeTheWholeFile) {
  // Lines starting with spaces, ideographic/no-break spaces, Chinese,
  // punctuation; blank lines, CRLF: tiny blocks must give exactly the ids of
  // encoding the whole file at once.
  const std::vector<std::string> starts = {"", "   ", "\xE3\x80\x80", "\xC2\xA0", "资产 ", "\xE3\x80\x82", "- ", "\t"};
  std::string text;
  int i = 0;
  for (const auto& d : make_docs(40, 6, 10)) {
    text += starts[size_t(i) % starts.size()] + d + (i % 3 ? "\n" : "\r\n\n");
    ++i;
  }
  TempDir dir("blocks");
  DataConfig c;
  c.files = {dir.write("book.txt", text)};
  c.seq_len = 32;
  c.batch_size = 2;
  c.shuffle = false;
  c.text_block_bytes = 40;
  auto src = make_batch_source(c, small_tok());
  Ids want = small_tok().encode(text);
  want.push_back(eos());
  Ids got;
  while (got.size() < 2 * want.size())
    for (const Ids& r : rows_of(src->next())) got.insert(got.end(), r.begin(), r.end());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i % want.size()]) << "token " << i;
}

TEST(PlainText, ParagraphsAreDocuments) {
  TempDir dir("para");
  DataConfig c;
  c.files = {dir.write("p.txt", "\n\nfirst para\nline two\n\n  \n\nsecond\n\n\nthird para\n")};
  c.seq_len = 8;
  c.batch_size = 1;
  c.shuffle = false;
  c.text_documents = "paragraph";
  auto src = make_batch_source(c, small_tok());
  Ids want;
  for (const char* p : {"first para\nline two\n", "second\n", "third para\n"}) {
    Ids ids = small_tok().encode(p);
    want.insert(want.end(), ids.begin(), ids.end());
    want.push_back(eos());
  }
  Ids got;
  while (got.size() < want.size())
    for (const Ids& r : rows_of(src->next())) got.insert(got.end(), r.begin(), r.end());
  got.resize(want.size());
  EXPECT_EQ(got, want);
}

// ---- SFT -------------------------------------------------------------------------

std::vector<ChatMessage> messages_of(const json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

// Expected mask by the template's structure, on HF's ids: 1 from after each
// assistant header through the next end-of-turn token.
std::vector<uint8_t> mask_after_headers(const Ids& ids, const Ids& header, int32_t eot) {
  std::vector<uint8_t> m(ids.size(), 0);
  for (size_t i = 0; i + header.size() <= ids.size(); ++i) {
    if (!std::equal(header.begin(), header.end(), ids.begin() + long(i))) continue;
    for (size_t j = i + header.size(); j < ids.size(); ++j) {
      m[j] = 1;
      if (ids[j] == eot) break;
    }
  }
  return m;
}

class GoldenChat : public ::testing::TestWithParam<std::string> {};

// The golden conversations end with the generation prompt, rendered and
// tokenized by HF (Jinja + HF tokenizer). Appending an assistant reply gives
// the training conversation: its ids are HF's prompt ids + the reply, and the
// mask covers the reply and every earlier assistant turn, never a header.
// Templates differ in what follows a final assistant turn: Qwen3 wraps its
// (empty) reasoning in <think> and ends the turn with "<|im_end|>\n"; this
// Llama-3 template appends the assistant header after every conversation
// (its Jinja has no add_generation_prompt test), so HF renders it there too.
TEST_P(GoldenChat, AssistantOnlyMaskOnHfRendering) {
  const std::string name = GetParam();
  const Tokenizer& tok = test::golden_tokenizer(name);
  const bool qwen = name == "qwen3";
  const std::string eot_s = qwen ? "<|im_end|>" : "<|eot_id|>";
  const std::string header_s =
      qwen ? "<|im_start|>assistant\n" : "<|start_header_id|>assistant<|end_header_id|>\n\n";
  const int32_t eot = *tok.token_to_id(eot_s);
  const Ids header = tok.encode(header_s);
  const std::string reply = "资产负债表 lists assets, liabilities and equity.";
  int with_earlier_turns = 0;
  for (const auto& rec : test::read_jsonl(test::tok_data(name + "/" + name + ".chat.jsonl"))) {
    SCOPED_TRACE(rec["id"].dump());
    auto msgs = messages_of(rec["messages"]);
    for (const auto& m : msgs) with_earlier_turns += m.role == "assistant";
    msgs.push_back({"assistant", reply});
    Ids want = rec["ids"].get<Ids>();
    Ids tail = tok.encode(qwen ? "<think>\n\n</think>\n\n" + reply + eot_s + "\n" : reply + eot_s + header_s);
    want.insert(want.end(), tail.begin(), tail.end());

    ChatTokens ct = tokenize_chat(tok, msgs);
    EXPECT_EQ(ct.ids, want);
    EXPECT_EQ(ct.loss_mask, mask_after_headers(want, header, eot));

    // Without the reply: HF's ids, less the generation prompt for Qwen3.
    msgs.pop_back();
    Ids prompt = rec["ids"].get<Ids>();
    ASSERT_TRUE(std::equal(header.begin(), header.end(), prompt.end() - long(header.size())));
    if (qwen) prompt.resize(prompt.size() - header.size());
    ct = tokenize_chat(tok, msgs);
    EXPECT_EQ(ct.ids, prompt);
    EXPECT_EQ(ct.loss_mask, mask_after_headers(prompt, header, eot));
  }
  EXPECT_GE(with_earlier_turns, 2);
}

INSTANTIATE_TEST_SUITE_P(Templates, GoldenChat, ::testing::Values("qwen3", "llama3"),
                         [](const auto& info) { return info.param; });

TEST(Sft, HandCheckedChatMLMask) {
  const Tokenizer& tok = small_tok();
  std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"},
                                   {"user", "2+2?"}, {"assistant", "4"}};
  ChatTokens ct = tokenize_chat(tok, msgs);
  // Assemble the expectation piece by piece.
  Ids want;
  std::vector<uint8_t> mask;
  auto add = [&](const std::string& s, uint8_t m) {
    for (int32_t id : tok.encode(s)) {
      want.push_back(id);
      mask.push_back(m);
    }
  };
  add("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", 0);
  add("Hello!<|im_end|>", 1);
  add("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", 0);
  add("4<|im_end|>", 1);
  add("\n", 0);
  EXPECT_EQ(ct.ids, want);
  EXPECT_EQ(ct.loss_mask, mask);
}

TEST(Sft, ReplyStartingWithNewlinesIsTokenizedApartFromTheHeader) {
  // "assistant\n" + "\n\nHi": encoding the whole rendering would merge the
  // header's newline with the reply's; the prompt is tokenized alone (as at
  // inference) so the mask boundary falls on a token boundary.
  const Tokenizer& tok = small_tok();
  ChatTokens ct = tokenize_chat(tok, {{"user", "Q"}, {"assistant", "\n\nHi"}});
  std::string all = tok.decode(ct.ids), masked;
  Ids m;
  for (size_t i = 0; i < ct.ids.size(); ++i)
    if (ct.loss_mask[i]) m.push_back(ct.ids[i]);
  EXPECT_EQ(all, render_chat(tok, {{"user", "Q"}, {"assistant", "\n\nHi"}}, false));
  EXPECT_EQ(tok.decode(m), "\n\nHi<|im_end|>");
}

TEST(Sft, PackedExamplesKeepTheirMasksAndAreNeverSplit) {
  TempDir dir("sft");
  std::vector<std::vector<ChatMessage>> convs;
  std::string lines;
  std::mt19937 rng(9);
  for (int i = 0; i < 12; ++i) {
    std::vector<ChatMessage> m = {{"user", "question " + std::to_string(i)}};
    std::string answer;
    for (int k = i == 8 ? 40 : int(rng() % 12); k >= 0; --k) answer += "cash flow ";  // 8: truncated
    m.push_back({"assistant", answer});
    if (i == 5) {  // a prompt longer than a row: no assistant token fits, the example is dropped
      std::string numbers;
      for (int k = 10; k < 70; ++k) numbers += std::to_string(k) + " ";
      m.insert(m.begin(), ChatMessage{"system", numbers});
    }
    convs.push_back(m);
    json msgs = json::array();
    for (const auto& x : m) msgs.push_back({{"role", x.role}, {"content", x.content}});
    lines += json{{"messages", msgs}}.dump() + "\n";
  }
  DataConfig c;
  c.files = {dir.write("sft.jsonl", lines)};
  c.format = "sft";
  c.seq_len = 40;
  c.batch_size = 2;
  c.shuffle = false;
  c.document_mask = true;
  auto src = make_batch_source(c, small_tok());
  const int32_t pad = *small_tok().token_to_id("<|endoftext|>");

  // Walk the rows: each must be whole examples (ids + eos) in file order,
  // then padding; an example longer than T+1 fills a row alone, truncated.
  size_t next = 0, rows_seen = 0;
  bool saw_truncated = false;
  for (int k = 0; k < 10; ++k) {
    TrainBatch b = src->next();
    auto x = b.tokens.accessor<int64_t, 2>();
    auto y = b.labels.accessor<int64_t, 2>();
    auto d = b.document_ids.accessor<int64_t, 2>();
    for (int64_t i = 0; i < 2; ++i, ++rows_seen) {
      int64_t t = 0, doc = 0;
      while (t <= 40) {
        ChatTokens ct = tokenize_chat(small_tok(), convs[next % convs.size()]);
        ct.ids.push_back(eos());
        ct.loss_mask.push_back(0);
        const bool fits = int64_t(ct.ids.size()) <= 41 - t;
        const bool truncated = t == 0 && int64_t(ct.ids.size()) > 41;
        if (next % convs.size() == 5) {  // its prompt alone is longer than a row
          ++next;
          continue;
        }
        if (!fits && !truncated) break;
        saw_truncated |= truncated;
        const int64_t n = std::min<int64_t>(int64_t(ct.ids.size()), 41 - t);
        for (int64_t j = 0; j < n; ++j, ++t) {
          const int64_t id = t < 40 ? x[i][t] : y[i][39];
          if (t < 40 || ct.loss_mask[size_t(j)]) {
            ASSERT_EQ(id, ct.ids[size_t(j)]) << "row " << rows_seen;
          }
          if (t < 40) {
            ASSERT_EQ(d[i][t], doc);
          }
          // Label of the position before this token: the token iff it is an
          // assistant token of this example.
          if (t > 0) {
            ASSERT_EQ(y[i][t - 1], j > 0 && ct.loss_mask[size_t(j)] ? ct.ids[size_t(j)] : -100)
                << "row " << rows_seen;
          }
        }
        ++doc;
        ++next;
      }
      for (; t < 40; ++t) {  // padding
        ASSERT_EQ(x[i][t], pad);
        ASSERT_EQ(y[i][t], -100);
        if (t > 0) {
          ASSERT_EQ(y[i][t - 1], -100);
        }
      }
    }
  }
  EXPECT_GT(next, convs.size());  // wrapped into a second epoch
  EXPECT_TRUE(saw_truncated);
}

// ---- resume ----------------------------------------------------------------------

DataConfig hybrid_config(const TempDir& dir) {
  DataConfig c;
  c.files = {dir.write("a.jsonl", jsonl_texts(make_docs(9, 11, 20))),
             dir.write("book.txt", jsonl_texts(make_docs(5, 12)) /* any text */),
             dir.write("paras.md", "one para\n\ntwo para\nstill two\n\n\nthree\n")};
  std::string sft;
  for (int i = 0; i < 7; ++i) {
    const std::string n = std::to_string(i);
    json msgs = json::array({{{"role", "user"}, {"content", "q" + n}},
                             {{"role", "assistant"}, {"content", "answer " + n}}});
    sft += json{{"messages", msgs}}.dump() + "\n";
  }
  c.instruction_files = {dir.write("sft.jsonl", sft)};
  c.instruction_ratio = 0.3;
  c.seq_len = 24;
  c.batch_size = 3;
  c.document_mask = true;
  c.shuffle_buffer = 5;
  c.text_block_bytes = 50;
  c.seed = 1234;
  return c;
}

// SFT rows that end in padding mark exactly those tokens.
TEST(Sft, RowsMarkTheirPadding) {
  TempDir dir("sftpad");
  std::string lines;
  for (int i = 0; i < 6; ++i) {
    std::string answer;
    for (int k = 0; k < 3 + 2 * i; ++k) answer += "ledger ";
    lines += json{{"messages",
                             {{{"role", "user"}, {"content", "q" + std::to_string(i)}},
                              {{"role", "assistant"}, {"content", answer}}}}}
                 .dump() +
             "\n";
  }
  DataConfig c;
  c.files = {dir.write("sft.jsonl", lines)};
  c.format = "sft";
  c.seq_len = 48;
  c.batch_size = 2;
  c.shuffle = false;
  auto src = make_batch_source(c, small_tok());
  const int32_t pad = *small_tok().token_to_id("<|endoftext|>");
  int64_t padded_rows = 0;
  for (int k = 0; k < 4; ++k) {
    TrainBatch b = src->next();
    ASSERT_TRUE(b.padding.defined());
    ASSERT_EQ(b.padding.sizes(), b.tokens.sizes());
    for (int64_t r = 0; r < b.tokens.size(0); ++r) {
      // the padded tail: pad ids with no label, and nothing after it is real
      const int64_t n = b.padding[r].sum().item<int64_t>();
      const int64_t T = b.tokens.size(1);
      padded_rows += n > 0;
      if (n == 0) continue;
      EXPECT_TRUE(b.padding[r].narrow(0, T - n, n).all().item<bool>());
      EXPECT_TRUE(b.tokens[r].narrow(0, T - n, n).eq(pad).all().item<bool>());
      EXPECT_TRUE(b.labels[r].narrow(0, T - n, n).eq(-100).all().item<bool>());
    }
  }
  EXPECT_GT(padded_rows, 0);
}

TEST(Resume, RestoredSourceRepeatsTheUninterruptedBatchesBitExactly) {
  TempDir dir("resume");
  DataConfig c = hybrid_config(dir);
  auto src = make_batch_source(c, small_tok());
  std::vector<json> states;
  std::vector<TrainBatch> batches;
  for (int k = 0; k < 80; ++k) {
    states.push_back(src->state());
    batches.push_back(src->next());
  }
  // Several epochs of both streams, and rows mid-document at many states.
  ASSERT_GE(states.back()["pretraining"]["epoch"].get<int>(), 3);
  ASSERT_GE(states.back()["instruction"]["epoch"].get<int>(), 3);
  for (int k : {0, 1, 13, 40, 77}) {
    SCOPED_TRACE("resumed at batch " + std::to_string(k));
    auto resumed = make_batch_source(c, small_tok());
    resumed->restore(json::parse(states[size_t(k)].dump()));  // as stored in a checkpoint
    for (int j = k; j < 80; ++j) {
      TrainBatch b = resumed->next();
      ASSERT_TRUE(torch::equal(b.tokens, batches[size_t(j)].tokens)) << "batch " << j;
      ASSERT_TRUE(torch::equal(b.labels, batches[size_t(j)].labels)) << "batch " << j;
      ASSERT_TRUE(torch::equal(b.document_ids, batches[size_t(j)].document_ids)) << "batch " << j;
    }
    EXPECT_EQ(resumed->state(), src->state());
  }
}

TEST(Resume, StateOfAnotherConfigIsRefusedNamingTheDifference) {
  TempDir dir("resume_bad");
  DataConfig c = hybrid_config(dir);
  json s = make_batch_source(c, small_tok())->state();
  DataConfig other = c;
  other.seed = 99;
  EXPECT_CONTAINS(test::message_of([&] { make_batch_source(other, small_tok())->restore(s); }), "seed differs");
  other = c;
  other.seq_len = 32;
  EXPECT_CONTAINS(test::message_of([&] { make_batch_source(other, small_tok())->restore(s); }), "seq_len");
  // A file that changed size since the state was saved.
  std::ofstream(c.files[2], std::ios::app) << "four\n";
  EXPECT_CONTAINS(test::message_of([&] { make_batch_source(c, small_tok())->restore(s); }), "files differs");
  EXPECT_CONTAINS(test::message_of([&] { make_batch_source(c, small_tok())->restore(json{{"x", 1}}); }),
                  "version");
  // batch_size and document_mask only shape batches: allowed to change.
  DataConfig wider = c;
  wider.batch_size = 5;
  wider.document_mask = false;
  auto a = make_batch_source(c, small_tok());
  a->next();
  auto b = make_batch_source(wider, small_tok());
  EXPECT_NO_THROW(b->restore(a->state()));
}

// ---- hybrid tuning ---------------------------------------------------------------

TEST(Hybrid, InstructionRowsFollowTheRatioDeterministically) {
  TempDir dir("hybrid");
  DataConfig c = hybrid_config(dir);
  c.batch_size = 50;
  const int32_t im_start = *small_tok().token_to_id("<|im_start|>");
  auto pattern = [&](uint64_t seed) {
    c.seed = seed;
    auto src = make_batch_source(c, small_tok());
    std::vector<bool> sft;
    for (int k = 0; k < 40; ++k) {
      TrainBatch b = src->next();
      auto x = b.tokens.accessor<int64_t, 2>();
      // Instruction rows open with an example (<|im_start|>); text never holds it.
      for (int64_t i = 0; i < 50; ++i) sft.push_back(x[i][0] == im_start);
    }
    return sft;
  };
  auto a = pattern(7);
  const double n = double(a.size()), p = double(std::count(a.begin(), a.end(), true)) / n;
  EXPECT_NEAR(p, 0.3, 4 * std::sqrt(0.3 * 0.7 / n));  // 4 sigma of a binomial
  EXPECT_EQ(pattern(7), a);
  EXPECT_NE(pattern(8), a);
}

// ---- errors ----------------------------------------------------------------------

std::string error_of(const DataConfig& c) {
  return test::message_of([&] { make_batch_source(c, small_tok()); });
}

TEST(DataErrors, NameTheFileAndLine) {
  TempDir dir("err");
  DataConfig c;
  c.files = {"/nonexistent/data.jsonl"};
  EXPECT_CONTAINS(error_of(c), "/nonexistent/data.jsonl: cannot open");

  c.files = {dir.write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"ok\"\n")};
  EXPECT_CONTAINS(error_of(c), "bad.jsonl:2: invalid JSON");

  c.files = {dir.write("notext.jsonl", "{\"text\": \"ok\"}\n\n{\"body\": \"x\"}\n")};
  EXPECT_CONTAINS(error_of(c), "notext.jsonl:3: expected an object with a string field 'text' or an array 'messages'");
  c.format = "text";
  c.files = {dir.write("msgs.jsonl", "{\"messages\": []}\n")};
  EXPECT_CONTAINS(error_of(c), "msgs.jsonl:1: expected an object with a string field 'text'");
  c.format = "sft";
  c.files = {dir.write("text.jsonl", "{\"text\": \"x\"}\n")};
  EXPECT_CONTAINS(error_of(c), "text.jsonl:1: expected an object with an array 'messages'");
  c.files = {dir.write("role.jsonl",
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                       "{\"role\": \"bot\", \"content\": \"b\"}]}\n")};
  EXPECT_CONTAINS(error_of(c), "role.jsonl:1: messages[1].role 'bot' not supported");
  c.files = {dir.write("noasst.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n")};
  EXPECT_CONTAINS(error_of(c), "noasst.jsonl:1: messages has no assistant turn");
  c.files = {dir.write("plain.txt", "text\n")};
  EXPECT_CONTAINS(error_of(c), "plain.txt: a plain text file cannot hold SFT examples");

  c.format = "auto";
  c.files = {dir.write("empty.jsonl", "\n  \n{\"text\": \"\"}\n"), dir.write("empty.txt", "")};
  EXPECT_CONTAINS(error_of(c), "no documents in");
  EXPECT_CONTAINS(error_of(c), "empty.txt");

  c.files = {dir.write("bad_utf8.txt", "fine\nnot \xC3 fine\n")};
  c.text_block_bytes = 1;
  EXPECT_CONTAINS(test::message_of([&] {
                    auto s = make_batch_source(c, small_tok());
                    for (int i = 0; i < 4; ++i) s->next();
                  }),
                  "bad_utf8.txt (bytes 5..");
}

TEST(DataErrors, BadConfigIsRefused) {
  TempDir dir("cfg");
  DataConfig c;
  c.files = {dir.write("a.jsonl", "{\"text\": \"x\"}\n")};
  c.seq_len = 0;
  EXPECT_CONTAINS(error_of(c), "seq_len");
  c.seq_len = 8;
  c.format = "markdown";
  EXPECT_CONTAINS(error_of(c), "format 'markdown'");
  c.format = "auto";
  c.instruction_ratio = 0.5;
  EXPECT_CONTAINS(error_of(c), "needs instruction_files");
  c.instruction_ratio = 1.5;
  c.instruction_files = c.files;
  EXPECT_CONTAINS(error_of(c), "instruction_ratio must be in [0, 1]");
  c.instruction_ratio = 0;
  EXPECT_CONTAINS(error_of(c), "instruction_ratio is 0");
  c.instruction_files.clear();
  c.text_documents = "chapter";
  EXPECT_CONTAINS(error_of(c), "text_documents 'chapter'");
}

// ---- SFT layouts besides `messages` -----------------------------------------------

namespace layouts {

// The batch one record makes alone (no shuffle; a row long enough for it).
TrainBatch batch_of(const TempDir& dir, const std::string& name, const json& record,
                    const std::string& sft_format = "auto") {
  DataConfig c;
  c.files = {dir.write(name, record.dump() + "\n")};
  c.format = "sft";
  c.sft_format = sft_format;
  c.seq_len = 160;
  c.batch_size = 1;
  c.shuffle = false;
  return make_batch_source(c, small_tok())->next();
}

// Same token ids and the same labels (loss mask) as the `messages` record.
void expect_same_batch(const TrainBatch& got, const TrainBatch& want) {
  EXPECT_TRUE(torch::equal(got.tokens, want.tokens));
  EXPECT_TRUE(torch::equal(got.labels, want.labels));
  // the reference has something to compare: assistant labels and masked prompt
  EXPECT_GT(want.labels.ne(-100).sum().item<int64_t>(), 0);
  EXPECT_GT(want.labels.eq(-100).sum().item<int64_t>(), 0);
}

json msg(const char* role, const std::string& content) { return {{"role", role}, {"content", content}}; }

}  // namespace layouts

TEST(SftLayouts, AlpacaEqualsItsMessagesRecord) {
  using namespace layouts;
  TempDir dir("alpaca");
  const TrainBatch want = batch_of(
      dir, "m.jsonl",
      {{"messages", {msg("system", "You are an accountant."), msg("user", "Classify the item.\nPrepaid rent"),
                     msg("assistant", "A current asset.")}}});
  const json rec = {{"system", "You are an accountant."},
                    {"instruction", "Classify the item."},
                    {"input", "Prepaid rent"},
                    {"output", "A current asset."}};
  expect_same_batch(batch_of(dir, "a.jsonl", rec), want);               // detected
  expect_same_batch(batch_of(dir, "a2.jsonl", rec, "alpaca"), want);   // named
  // no input, no system: just the instruction as the user turn
  expect_same_batch(batch_of(dir, "a3.jsonl", {{"instruction", "Define NPV."}, {"input", ""}, {"output", "Net present value."}}),
                    batch_of(dir, "m3.jsonl", {{"messages", {msg("user", "Define NPV."), msg("assistant", "Net present value.")}}}));
}

TEST(SftLayouts, ShareGptEqualsItsMessagesRecord) {
  using namespace layouts;
  TempDir dir("sharegpt");
  const TrainBatch want = batch_of(
      dir, "m.jsonl",
      {{"messages", {msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!"),
                     msg("user", "2+2?"), msg("assistant", "4")}}});
  const json rec = {{"conversations",
                     {{{"from", "system"}, {"value", "Be brief."}},
                      {{"from", "human"}, {"value", "Hi"}},
                      {{"from", "gpt"}, {"value", "Hello!"}},
                      {{"from", "human"}, {"value", "2+2?"}},
                      {{"from", "gpt"}, {"value", "4"}}}}};
  expect_same_batch(batch_of(dir, "s.jsonl", rec), want);
  expect_same_batch(batch_of(dir, "s2.jsonl", rec, "sharegpt"), want);
}

TEST(SftLayouts, PromptCompletionEqualsItsMessagesRecord) {
  using namespace layouts;
  TempDir dir("pc");
  // strings: a user turn and an assistant turn
  expect_same_batch(
      batch_of(dir, "p.jsonl", {{"prompt", "What is EBITDA?"}, {"completion", "Earnings before interest."}}),
      batch_of(dir, "m.jsonl", {{"messages", {msg("user", "What is EBITDA?"), msg("assistant", "Earnings before interest.")}}}));
  // TRL's conversational form: message lists, concatenated
  const json rec = {{"prompt", {msg("system", "Be brief."), msg("user", "Hi")}},
                    {"completion", {msg("assistant", "Hello!")}}};
  const TrainBatch want =
      batch_of(dir, "m2.jsonl", {{"messages", {msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello!")}}});
  expect_same_batch(batch_of(dir, "p2.jsonl", rec), want);
  expect_same_batch(batch_of(dir, "p3.jsonl", rec, "prompt_completion"), want);
}

TEST(SftLayouts, MalformedRecordsNameFileLineAndField) {
  using namespace layouts;
  TempDir dir("badlayout");
  DataConfig c;
  c.format = "sft";
  auto error_at_line2 = [&](const json& bad, const std::string& sft_format = "auto") {
    c.sft_format = sft_format;
    c.files = {dir.write("bad.jsonl", json{{"instruction", "ok"}, {"output", "fine"}}.dump() + "\n" +
                                          bad.dump() + "\n")};
    return error_of(c);
  };
  EXPECT_CONTAINS(error_at_line2({{"instruction", "x"}}), "bad.jsonl:2: expected a string field 'output' (alpaca record)");
  EXPECT_CONTAINS(error_at_line2({{"instruction", 3}, {"output", "y"}}), "bad.jsonl:2: 'instruction' must be a string");
  EXPECT_CONTAINS(error_at_line2({{"conversations", {{{"from", "bot"}, {"value", "b"}}}}}),
                  "bad.jsonl:2: conversations[0].from 'bot' not supported");
  EXPECT_CONTAINS(error_at_line2({{"conversations", {{{"from", "human"}}}}}),
                  "bad.jsonl:2: conversations[0]: expected a string field 'value'");
  EXPECT_CONTAINS(error_at_line2({{"conversations", {{{"from", "human"}, {"value", "q"}}}}}),
                  "bad.jsonl:2: conversations has no assistant turn");
  EXPECT_CONTAINS(error_at_line2({{"prompt", "q"}, {"completion", {msg("assistant", "a")}}}),
                  "bad.jsonl:2: 'prompt' and 'completion' must both be strings or both message lists");
  EXPECT_CONTAINS(error_at_line2({{"prompt", {msg("user", "q")}}, {"completion", {msg("user", "a")}}}),
                  "bad.jsonl:2: 'completion' has no assistant message");
  EXPECT_CONTAINS(error_at_line2({{"prompt", "q"}}), "bad.jsonl:2: expected fields 'prompt' and 'completion'");
  // a named layout holds every record to it: line 1 is alpaca
  EXPECT_CONTAINS(error_at_line2({{"conversations", json::array()}}, "sharegpt"),
                  "bad.jsonl:1: expected an array 'conversations' (sharegpt record)");
  c.sft_format = "chatml";
  EXPECT_CONTAINS(error_of(c), "sft_format 'chatml' unknown");
}

}  // namespace
}  // namespace finmoe
