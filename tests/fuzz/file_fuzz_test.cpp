// Hostile input never takes the process down: seeded, structure-aware
// mutations of every file a model directory or a training run consists of,
// each read by finmoe as a user would. An input must end in success with a
// sane result, or in finmoe::Error (the CLI's exit 2) naming the file; a
// crash (signal), a hang (20 s), another exception (the CLI's exit 1,
// "internal error") or a wrong result fails the test.
//
// Most inputs run in a forked child that calls the loaders (load_model and a
// forward pass, Tokenizer, make_batch_source, parse_train_config): the
// parent counts signals and time-outs without a process start per input. A
// sample of each target runs the real `finmoe` binary (info, logits,
// tokenize, train) as a subprocess. FINMOE_FUZZ_LONG=1 runs 10,000 inputs
// per target instead of 1,000 (figures: docs/RELIABILITY.md).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../cli/cli_util.h"
#include "../core/core_test_util.h"
#include "../fuzz_mutations.h"
#include "core/file_util.h"
#include "finmoe/dataset.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"
#include "finmoe/train.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using test::fuzz::Rng;

constexpr int kTimeoutSeconds = 20;

// ---- running one input ------------------------------------------------------------

// A success whose result is wrong (the child's exit code 3).
struct WrongResult : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Kind { Ok, Rejected, Internal, Wrong, Crash, Hang };

struct Outcome {
  Kind kind;
  std::string message;  // the error, or the signal
};

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (out.size() < (size_t(1) << 20)) out.append(buf, size_t(n));
  }
  return out;
}

Outcome from_status(int status, const std::string& message) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return {sig == SIGALRM ? Kind::Hang : Kind::Crash, std::string("signal ") + strsignal(sig)};
  }
  switch (WEXITSTATUS(status)) {
    case 0:
      return {Kind::Ok, message};
    case 2:
      return {Kind::Rejected, message};
    case 3:
      return {Kind::Wrong, message};
    default:
      return {Kind::Internal, message};
  }
}

// Runs `work` in a forked child under a time limit: returning is exit 0,
// finmoe::Error exit 2 (its message sent back), WrongResult exit 3, any
// other exception exit 1.
Outcome in_child(const std::function<void()>& work) {
  int fds[2];
  if (::pipe(fds) != 0) return {Kind::Internal, "pipe failed"};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::alarm(kTimeoutSeconds);
    int code = 0;
    std::string message;
    try {
      work();
    } catch (const Error& e) {
      code = 2, message = e.what();
    } catch (const fs::filesystem_error& e) {  // exit 2 in finmoe's main too
      code = 2, message = e.what();
    } catch (const WrongResult& e) {
      code = 3, message = e.what();
    } catch (const std::exception& e) {
      code = 1, message = e.what();
    } catch (...) {
      code = 1, message = "unknown exception";
    }
    message.resize(std::min<size_t>(message.size(), 4000));
    [[maybe_unused]] ssize_t n = ::write(fds[1], message.data(), message.size());
    ::_exit(code);  // no static destructors (libtorch's) in the child
  }
  ::close(fds[1]);
  const std::string message = read_all(fds[0]);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return from_status(status, message);
}

// Runs the finmoe binary with `args` under the same time limit. Exit 1 and
// "internal error" are internal errors; exit 2 must carry finmoe's one-line
// message.
Outcome run_cli(const std::vector<std::string>& args, std::string* output = nullptr) {
  const clitest::Exit e = clitest::run_args(args, kTimeoutSeconds);
  if (output) *output = e.out;
  if (e.signal != 0)
    return {e.timed_out() ? Kind::Hang : Kind::Crash, std::string("signal ") + strsignal(e.signal)};
  if (e.code == 1 || e.out.find("internal error") != std::string::npos)
    return {Kind::Internal, e.out};
  if (e.code == 0) return {Kind::Ok, e.out};
  if (e.code == 2 && e.out.find("finmoe: error: ") != std::string::npos)
    return {Kind::Rejected, e.out};
  return {Kind::Wrong, "exit " + std::to_string(e.code) + ": " + e.out};
}

// ---- counting -----------------------------------------------------------------------

struct Tally {
  int64_t n[6] = {};
  double seconds = 0;
  std::vector<std::string> failures;  // the first few, for the report

  void add(const Outcome& o, const std::string& where) {
    ++n[int(o.kind)];
    if (o.kind != Kind::Ok && o.kind != Kind::Rejected && failures.size() < 5)
      failures.push_back(where + ": " + o.message.substr(0, 600));
  }
  int64_t total() const { return n[0] + n[1] + n[2] + n[3] + n[4] + n[5]; }
  int64_t bad() const {
    return n[int(Kind::Internal)] + n[int(Kind::Wrong)] + n[int(Kind::Crash)] + n[int(Kind::Hang)];
  }
};

std::map<std::string, std::pair<Tally, Tally>>& report() {  // target -> (in-process, CLI)
  static std::map<std::string, std::pair<Tally, Tally>> r;
  return r;
}

bool long_mode() {
  const char* v = std::getenv("FINMOE_FUZZ_LONG");
  return v != nullptr && std::string(v) == "1";
}
int inputs_per_target() { return long_mode() ? 10000 : 1000; }
int cli_inputs_per_target() { return long_mode() ? 200 : 10; }

// ---- the files ----------------------------------------------------------------------

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

void copy_dir(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from))
    if (e.is_regular_file()) fs::copy_file(e.path(), to / e.path().filename());
}

// GPT-2's byte-level alphabet: byte b -> the code point that stands for it.
std::string byte_level_char(int b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
    int n = 0;
    for (int c = 0; c < b; ++c)
      if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// A small byte-level BPE tokenizer of the Qwen/Llama-3 kind (Split regex, NFC,
// ByteLevel, added tokens), so the mutations reach those code paths too.
ordered_json byte_level_tokenizer() {
  ordered_json vocab = ordered_json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}, {"i", "n"}, {"a", "n"}, {"e", "r"}};
  ordered_json m = ordered_json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    m.push_back(a + " " + b);
  }
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {{{"id", id},
         {"content", "<|endoftext|>"},
         {"single_word", false},
         {"lstrip", false},
         {"rstrip", false},
         {"normalized", false},
         {"special", true}},
        {{"id", id + 1},
         {"content", "<|im_start|>"},
         {"single_word", false},
         {"lstrip", false},
         {"rstrip", false},
         {"normalized", false},
         {"special", true}},
        {{"id", id + 2},
         {"content", "<|im_end|>"},
         {"single_word", false},
         {"lstrip", false},
         {"rstrip", false},
         {"normalized", false},
         {"special", true}}}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"},
           {"add_prefix_space", false},
           {"trim_offsets", false},
           {"use_regex", false}}}}}},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"byte_fallback", false},
        {"vocab", vocab},
        {"merges", m}}}};
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = uint8_t(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

const std::string kText = "The ledger: debit 1,250.00 EUR; credit 980 USD.\nCafé ünïcödé 中文 ok";

// The fuzz fixture: a tiny llama model with a byte-fallback tokenizer, made
// once with `finmoe init`, and each target's working copy of it.
class FileFuzz : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("finmoe-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(root_);
    const std::string tokenizer =
        std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/byte_fallback/llama2_style";
    std::string out;
    const Outcome o =
        run_cli({"init", (root_ / "model").string(), "--preset", "tiny", "--arch", "llama",
                 "--dtype", "float32", "--seed", "7", "--tokenizer", tokenizer},
                &out);
    ASSERT_EQ(int(o.kind), int(Kind::Ok)) << out;
    // every parameter counted once, from the file itself: `info`'s total
    auto f = SafetensorsFile::open((root_ / "model" / "model.safetensors").string());
    total_params_ = 0;
    for (const auto& t : f->tensors()) total_params_ += t.numel();
    // the same tensors in two shards with an index, and a decoy outside
    std::vector<TensorData> tensors;
    for (const auto& t : f->tensors())
      tensors.push_back({t.name, t.dtype, t.shape, t.data, t.nbytes});
    copy_dir(root_ / "model", root_ / "sharded");
    fs::remove(root_ / "sharded" / "model.safetensors");
    write_checkpoint((root_ / "sharded").string(), tensors, {{"format", "pt"}},
                     f->mapped_size() / 2);
    ASSERT_TRUE(fs::exists(root_ / "sharded" / "model.safetensors.index.json"));
    // a valid shard outside the directory: what a path in the index must not reach
    const auto index =
        nlohmann::json::parse(read_file(root_ / "sharded" / "model.safetensors.index.json"));
    fs::create_directories(root_ / "outside");
    fs::copy_file(root_ / "sharded" / index["weight_map"].begin()->get<std::string>(),
                  root_ / "outside" / "weights.bin");
    fs::create_directories(root_ / "bytelevel");
    write_file(root_ / "bytelevel" / "tokenizer.json", byte_level_tokenizer().dump(2));
    write_file(root_ / "bytelevel" / "tokenizer_config.json",
               R"({"bos_token": null, "eos_token": "<|endoftext|>", "chat_template": "chatml",
                   "model_max_length": 131072, "clean_up_tokenization_spaces": false})");
    // training: JSONL records of both kinds and a config that stops after one step
    std::string data;
    for (int i = 0; i < 12; ++i)
      data += ordered_json{{"text", "Invoice " + std::to_string(i) + ": net 30 days, total " +
                                        std::to_string(i * 125) + ".50 EUR."}}
                  .dump() +
              "\n";
    data += ordered_json{{"messages",
                          {{{"role", "user"}, {"content", "What is EBITDA?"}},
                           {{"role", "assistant"}, {"content", "Earnings before interest."}}}}}
                .dump() +
            "\n";
    write_file(root_ / "data.jsonl", data);
    base_yaml_ = "mode: pretrain\nmodel: " + (root_ / "model").string() +
                 "\noutput_dir: " + (root_ / "run").string() + "\ndata:\n  files: [" +
                 (root_ / "data.jsonl").string() +
                 "]\n  seq_len: 16\n  batch_size: 2\n  chat_template: chatml\n"
                 "lr: 1.0e-3\nmax_steps: 1\nlog_interval: 0\nseed: 3\n"
                 "betas: [0.9, 0.95]\nlora:\n  r: 4\n  target_modules: [q_proj, v_proj]\n";
  }

  static void TearDownTestSuite() {
    std::cout
        << "\nfile fuzzing: inputs, outcomes and seconds per target "
        << (long_mode() ? "(long mode)" : "(FINMOE_FUZZ_LONG=1 for 10x)") << "\n"
        << "target               | path        |  inputs | ok     | exit 2 | exit 1 | wrong | "
           "crash | hang | seconds\n";
    for (const auto& [target, tallies] : report()) {
      for (const auto* t : {&tallies.first, &tallies.second}) {
        if (t->total() == 0) continue;
        std::cout << std::left << std::setw(20) << target << " | " << std::setw(11)
                  << (t == &tallies.first ? "in-process" : "finmoe CLI") << " | " << std::right
                  << std::setw(7) << t->total() << " | " << std::setw(6) << t->n[0] << " | "
                  << std::setw(6) << t->n[1] << " | " << std::setw(6) << t->n[2] << " | "
                  << std::setw(5) << t->n[3] << " | " << std::setw(5) << t->n[4] << " | "
                  << std::setw(4) << t->n[5] << " | " << std::fixed << std::setprecision(1)
                  << t->seconds << "\n";
      }
    }
    finmoe::remove_tree(root_.string());
  }

  // A fresh working copy of the model directory for one target.
  static fs::path workdir(const std::string& target, const fs::path& from) {
    const fs::path d = root_ / ("t-" + target);
    finmoe::remove_tree(d.string());
    copy_dir(from, d);
    return d;
  }

  // `count` inputs: `prepare(rng)` writes a mutated file, `check` runs in a
  // child; every `cli_every`-th input also goes through the finmoe binary.
  static void fuzz(const std::string& target, uint64_t seed,
                   const std::function<void(Rng&)>& prepare, const std::function<void()>& check,
                   const std::function<Outcome()>& cli) {
    Tally& in = report()[target].first;
    Tally& sub = report()[target].second;
    const int count = inputs_per_target();
    const int cli_every = std::max(1, count / cli_inputs_per_target());
    for (int i = 0; i < count; ++i) {
      Rng rng(seed * 1000003 + uint64_t(i));
      prepare(rng);
      const std::string where =
          target + " input " + std::to_string(i) + " (seed " + std::to_string(seed) + ")";
      auto t0 = std::chrono::steady_clock::now();
      in.add(in_child(check), where);
      in.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (cli && i % cli_every == 0) {
        t0 = std::chrono::steady_clock::now();
        sub.add(cli(), where);
        sub.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
    }
    for (const Tally* t : {&in, &sub}) {
      EXPECT_EQ(t->n[int(Kind::Crash)], 0) << target;
      EXPECT_EQ(t->n[int(Kind::Hang)], 0) << target;
      EXPECT_EQ(t->n[int(Kind::Internal)], 0) << target;
      EXPECT_EQ(t->n[int(Kind::Wrong)], 0) << target;
      for (const auto& f : t->failures) ADD_FAILURE() << f;
    }
    // the mutations reach past the parser, and are not all fatal
    EXPECT_GT(in.n[int(Kind::Ok)], count / 50) << target;
    EXPECT_GT(in.n[int(Kind::Rejected)], count / 10) << target;
  }

  // An Error must name the file it is about (or its directory).
  static void require_named(const Error& e, const std::vector<std::string>& names) {
    const std::string msg = e.what();
    for (const auto& n : names)
      if (msg.find(n) != std::string::npos) throw e;
    throw WrongResult("error names none of the files: " + msg);
  }

  // load_model + a forward pass over three tokens: logits [1, 3, V], finite.
  static void load_and_forward(const fs::path& dir) {
    Transformer model = [&] {
      try {
        return load_model(dir.string(), {.dtype = torch::kFloat32});
      } catch (const Error& e) {
        require_named(e, {dir.string()});
        throw;
      }
    }();
    torch::NoGradGuard no_grad;
    auto logits = model.forward(torch::tensor({1, 5, 9}, torch::kInt64).unsqueeze(0));
    if (logits.sizes() != std::vector<int64_t>{1, 3, model.config().vocab_size})
      throw WrongResult("logits of shape " + std::to_string(logits.dim()) + "-d");
    if (!torch::isfinite(logits).all().item<bool>()) throw WrongResult("non-finite logits");
  }

  static fs::path root_;
  static int64_t total_params_;
  static std::string base_yaml_;
};
fs::path FileFuzz::root_;
int64_t FileFuzz::total_params_ = 0;
std::string FileFuzz::base_yaml_;

// `finmoe logits DIR --ids 1,5,9`: exit 0 gives three positions of log-probabilities <= 0.
Outcome cli_logits(const fs::path& dir) {
  std::string out;
  Outcome o = run_cli({"logits", dir.string(), "--ids", "1,5,9", "--top", "3"}, &out);
  if (o.kind != Kind::Ok) return o;
  try {
    const auto j = nlohmann::json::parse(out.substr(out.find('{')));
    if (j.at("positions").size() != 3) return {Kind::Wrong, "logits: " + out};
    for (const auto& p : j["positions"])
      for (const auto& a : p.at("top"))
        if (!(a.at("logprob").get<double>() <= 0)) return {Kind::Wrong, "logprob > 0: " + out};
  } catch (const std::exception& e) {
    return {Kind::Wrong, std::string("logits output: ") + e.what() + ": " + out};
  }
  return o;
}

TEST_F(FileFuzz, ConfigJson) {
  const fs::path dir = workdir("config", root_ / "model");
  const ordered_json base = ordered_json::parse(read_file(dir / "config.json"));
  const std::vector<std::string> hot = {
      "vocab_size",          "hidden_size",         "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim",          "max_position_embeddings",
      "rope_theta",          "rms_norm_eps",        "model_type",        "torch_dtype",
      "tie_word_embeddings", "eos_token_id",        "rope_scaling"};
  // MoE keys too, on a llama config they are refused or ignored
  ordered_json moe = base;
  moe["model_type"] = "qwen2_moe";
  moe["num_experts"] = 4;
  moe["num_experts_per_tok"] = 2;
  moe["moe_intermediate_size"] = 32;
  moe["decoder_sparse_step"] = 1;
  moe["mlp_only_layers"] = {0};
  int i = 0;
  fuzz(
      "config.json", 1,
      [&](Rng& rng) {
        const bool use_moe = ++i % 4 == 0;
        auto more_hot = hot;
        for (const char* k : {"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                              "decoder_sparse_step", "mlp_only_layers"})
          more_hot.push_back(k);
        write_file(dir / "config.json",
                   test::fuzz::mutate_json(use_moe ? moe : base, rng, use_moe ? more_hot : hot));
      },
      [&] {
        try {
          ModelConfig::load(dir.string());
        } catch (const Error& e) {
          require_named(e, {"config.json"});
        }
        load_and_forward(dir);
      },
      [&] {
        std::string out;
        Outcome o = run_cli({"info", dir.string(), "--json"}, &out);
        if (o.kind == Kind::Ok) {
          try {
            // the parameters are counted from the checkpoint, which did not change
            if (nlohmann::json::parse(out).at("total_params").get<int64_t>() != total_params_)
              return Outcome{Kind::Wrong, "info total_params: " + out};
          } catch (const std::exception& e) {
            return Outcome{Kind::Wrong, std::string("info --json output: ") + e.what()};
          }
        }
        if (o.kind != Kind::Ok && o.kind != Kind::Rejected) return o;
        return cli_logits(dir);
      });
}

// Encodes kText with special tokens and decodes it: ids are non-negative, the
// text decodes to valid UTF-8.
void encode_decode(const fs::path& dir) {
  Tokenizer tok = Tokenizer::from_dir(dir.string());
  const std::vector<int32_t> ids = tok.encode(kText, true);
  for (int32_t id : ids)
    if (id < 0) throw WrongResult("negative id " + std::to_string(id));
  if (!valid_utf8(tok.decode(ids))) throw WrongResult("decode gave invalid UTF-8");
}

Outcome cli_tokenize(const fs::path& dir) {
  std::string out;
  Outcome o = run_cli({"tokenize", dir.string(), "--text", kText, "--json"}, &out);
  if (o.kind != Kind::Ok) return o;
  try {
    const auto j = nlohmann::json::parse(out);
    if (j.at("ids").size() != j.at("count").get<size_t>()) return {Kind::Wrong, out};
  } catch (const std::exception& e) {
    return {Kind::Wrong, std::string("tokenize --json output: ") + e.what()};
  }
  return o;
}

TEST_F(FileFuzz, TokenizerJson) {
  const fs::path dir = workdir("tokenizer", root_ / "model");
  const ordered_json sentencepiece = ordered_json::parse(read_file(dir / "tokenizer.json"));
  const ordered_json byte_level = byte_level_tokenizer();
  const std::string sp_config = read_file(dir / "tokenizer_config.json");
  const std::string bl_config = read_file(root_ / "bytelevel" / "tokenizer_config.json");
  const std::vector<std::string> hot = {
      "id",      "ids",   "vocab",  "merges",  "type",      "added_tokens",   "content",
      "pattern", "Regex", "String", "prepend", "unk_token", "special_tokens", "start",
      "stop",    "single"};
  int i = 0;
  fuzz(
      "tokenizer.json", 2,
      [&](Rng& rng) {
        const bool bl = ++i % 2 == 0;
        write_file(dir / "tokenizer_config.json", bl ? bl_config : sp_config);
        write_file(dir / "tokenizer.json",
                   test::fuzz::mutate_json(bl ? byte_level : sentencepiece, rng, hot));
      },
      [&] {
        try {
          encode_decode(dir);
        } catch (const Error& e) {
          require_named(e, {"tokenizer.json", "tokenizer_config.json"});
        }
      },
      [&] { return cli_tokenize(dir); });
}

TEST_F(FileFuzz, TokenizerConfigJson) {
  const fs::path dir = workdir("tokenizer_config", root_ / "model");
  ordered_json base = ordered_json::parse(read_file(dir / "tokenizer_config.json"));
  base["pad_token"] = {{"content", "<unk>"}, {"lstrip", false}};
  base["chat_template"] = {{{"name", "default"}, {"template", "{{ bos_token }}"}}};
  base["model_max_length"] = 4096;
  const std::vector<std::string> hot = {
      "bos_token",     "eos_token",     "pad_token",        "add_bos_token",
      "add_eos_token", "chat_template", "model_max_length", "clean_up_tokenization_spaces",
      "content",       "name"};
  fuzz(
      "tokenizer_config.json", 3,
      [&](Rng& rng) {
        write_file(dir / "tokenizer_config.json", test::fuzz::mutate_json(base, rng, hot));
      },
      [&] {
        try {
          encode_decode(dir);
        } catch (const Error& e) {
          require_named(e, {"tokenizer_config.json", "tokenizer.json"});
        }
      },
      [&] { return cli_tokenize(dir); });
}

TEST_F(FileFuzz, SafetensorsHeader) {
  const fs::path dir = workdir("safetensors", root_ / "model");
  const std::string file = read_file(dir / "model.safetensors");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file.data(), 8);
  const ordered_json header = ordered_json::parse(file.substr(8, header_len));
  const std::string data = file.substr(8 + header_len);
  const std::vector<std::string> hot = {"dtype", "shape", "data_offsets", "__metadata__"};
  fuzz(
      "safetensors header", 4,
      [&](Rng& rng) {
        std::string out;
        switch (test::fuzz::pick(rng, 4)) {
          case 0:
          case 1: {  // the header edited, its length field right (sometimes padded)
            std::string h = test::fuzz::mutate_json(header, rng, hot);
            if (rng() % 2) h.append((8 - h.size() % 8) % 8, ' ');
            out = test::raw_safetensors(h, data);
            break;
          }
          case 2: {  // the length field off by a little (padding dropped or added)
            out = file;
            const uint64_t v = header_len + test::fuzz::pick(rng, 17) - 8;
            std::memcpy(out.data(), &v, 8);
            break;
          }
          default: {  // bytes of the header region, or the file's end
            out = file;
            const size_t edits = 1 + test::fuzz::pick(rng, 3);
            for (size_t e = 0; e < edits; ++e) {
              std::string head = out.substr(0, 8 + header_len + 16);
              test::fuzz::mutate_bytes(head, rng);
              out = head + out.substr(std::min(out.size(), size_t(8 + header_len + 16)));
            }
            if (rng() % 4 == 0) out.resize(out.size() - test::fuzz::pick(rng, 64));
          }
        }
        write_file(dir / "model.safetensors", out);
      },
      [&] { load_and_forward(dir); },
      [&] {
        std::string out;
        Outcome o = run_cli({"info", dir.string(), "--json"}, &out);
        if (o.kind != Kind::Ok && o.kind != Kind::Rejected) return o;
        return cli_logits(dir);
      });
}

TEST_F(FileFuzz, ShardIndexJson) {
  const fs::path dir = workdir("index", root_ / "sharded");
  const ordered_json base = ordered_json::parse(read_file(dir / "model.safetensors.index.json"));
  const std::string decoy = (root_ / "outside" / "weights.bin").string();
  const std::vector<std::string> hot = {"weight_map", "metadata", "total_size",
                                        "model.embed_tokens.weight", "model.norm.weight"};
  fuzz(
      "index.json", 5,
      [&](Rng& rng) {
        ordered_json j = base;
        if (rng() % 3 == 0) {  // a shard named by a path that leaves the directory
          static const char* paths[] = {"../outside/weights.bin",
                                        "../../outside/weights.bin",
                                        "/outside/weights.bin",
                                        "sub/../../outside/weights.bin",
                                        "./model-00001-of-00002.safetensors",
                                        "..",
                                        "."};
          auto& wm = j["weight_map"];
          auto it = wm.begin();
          std::advance(it, test::fuzz::pick(rng, wm.size()));
          std::string p = paths[test::fuzz::pick(rng, std::size(paths))];
          if (rng() % 2) p = decoy;  // absolute
          *it = p;
          write_file(dir / "model.safetensors.index.json", j.dump(2));
        } else {
          write_file(dir / "model.safetensors.index.json", test::fuzz::mutate_json(base, rng, hot));
        }
      },
      [&] {
        load_and_forward(dir);
        // loaded: then no shard may have come from outside the directory
        const auto j = nlohmann::json::parse(read_file(dir / "model.safetensors.index.json"));
        for (const auto& [name, shard] : j["weight_map"].items()) {
          const std::string s = shard.get<std::string>();
          if (s.find('/') != std::string::npos || s == "..")
            throw WrongResult("loaded a shard named '" + s + "'");
        }
      },
      [&] { return cli_logits(dir); });
}

TEST_F(FileFuzz, TrainingYaml) {
  const fs::path dir = root_ / "t-yaml";
  fs::create_directories(dir);
  const fs::path path = dir / "train.yaml";
  int i = 0;
  fuzz(
      "training YAML", 6,
      [&](Rng& rng) {
        std::string y = base_yaml_;
        const size_t edits = 1 + test::fuzz::pick(rng, 3);
        for (size_t e = 0; e < edits; ++e) y = test::fuzz::mutate_yaml(y, rng);
        write_file(path, y);
      },
      [&] {
        try {
          const TrainConfig c =
              load_train_config(path.string(), {"output_dir=" + (dir / "run").string()});
          c.validate();  // a parsed config is a valid one
          if (c.data.seq_len < 1 || c.data.batch_size < 1 || c.total_steps() < 1)
            throw WrongResult("a config that trains nothing was accepted");
          (void)c.to_json().dump();  // as --dry-run prints it and the trainer stores it
        } catch (const Error& e) {
          require_named(e, {"train.yaml", "override"});
        }
      },
      [&] {
        // mostly the resolved config (--dry-run), every fifth a real one-step run
        if (++i % 5 != 0) return run_cli({"train", "-c", path.string(), "--dry-run"});
        finmoe::remove_tree((dir / "run").string());
        return run_cli({"train", "-c", path.string(), "--output-dir", (dir / "run").string()});
      });
}

TEST_F(FileFuzz, TrainingJsonl) {
  const fs::path dir = root_ / "t-jsonl";
  fs::create_directories(dir);
  const fs::path path = dir / "data.jsonl";
  std::vector<ordered_json> records;
  {
    std::istringstream in(read_file(root_ / "data.jsonl"));
    for (std::string line; std::getline(in, line);) records.push_back(ordered_json::parse(line));
  }
  // the byte-level tokenizer: it has the chatml tokens the SFT records need
  const fs::path tokenizer = root_ / "bytelevel";
  const std::string yaml = base_yaml_.substr(0, base_yaml_.find("\ndata:")) +
                           "\ntokenizer: " + tokenizer.string() + "\ndata:\n  files: [" + path.string() +
                           "]\n  seq_len: 16\n  batch_size: 2\n  chat_template: chatml\n" +
                           "lr: 1.0e-3\nmax_steps: 1\nlog_interval: 0\n";
  write_file(dir / "train.yaml", yaml);
  int i = 0;
  fuzz(
      "training JSONL", 7,
      [&](Rng& rng) {
        std::string out;
        const size_t target = test::fuzz::pick(rng, records.size());
        for (size_t r = 0; r < records.size(); ++r) {
          std::string line = r == target
                                 ? test::fuzz::mutate_json(records[r], rng,
                                                           {"text", "messages", "role", "content"})
                                 : records[r].dump();
          if (r == target && rng() % 5 == 0) {  // raw invalid UTF-8 inside the string
            const size_t q = line.rfind('"');
            if (q != std::string::npos) line.insert(q, test::fuzz::invalid_utf8(rng));
          }
          out += line + (r == target && rng() % 7 == 0 ? "" : "\n");
        }
        write_file(path, out);
      },
      [&] {
        try {
          Tokenizer tok = Tokenizer::from_dir(tokenizer.string());
          DataConfig c;
          c.files = {path.string()};
          c.seq_len = 16;
          c.batch_size = 2;
          c.chat_template = "chatml";
          auto source = make_batch_source(c, tok);
          for (int b = 0; b < 3; ++b) {
            const TrainBatch batch = source->next();
            if (batch.tokens.sizes() != std::vector<int64_t>{2, 16})
              throw WrongResult("a batch of the wrong shape");
            const int64_t lo = batch.tokens.min().item<int64_t>();
            const int64_t hi = batch.tokens.max().item<int64_t>();
            if (lo < 0 || hi >= tok.vocab_size())
              throw WrongResult("a token id outside the vocabulary");
          }
        } catch (const Error& e) {
          require_named(e, {"data.jsonl"});
        }
      },
      [&] {
        if (++i % 3 != 0)
          return run_cli({"tokenize", tokenizer.string(), "--jsonl", path.string()});
        finmoe::remove_tree((dir / "run").string());
        return run_cli(
            {"train", "-c", (dir / "train.yaml").string(), "--output-dir", (dir / "run").string()});
      });
}

}  // namespace
}  // namespace finmoe
