// Encode/decode throughput of the golden tokenizers on one thread.
//   bench_tokenizer [DATA_DIR] [MB]
// DATA_DIR holds qwen3/, llama3/, deepseek_v3/ and cases.jsonl (default: the
// repository's tests/data/tokenizer). The text is the 451 golden cases (mixed
// English and Chinese) repeated to about MB megabytes (default 8), encoded one
// case at a time. "cold" is the first pass (empty BPE word cache).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"
#include "finmoe/tokenizer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  fs::path dir = argc > 1 ? fs::path(argv[1])
                          : fs::path(__FILE__).parent_path().parent_path() / "tests/data/tokenizer";
  double target_mb = argc > 2 ? std::atof(argv[2]) : 8.0;
  try {
    std::vector<std::string> cases;
    std::ifstream in(dir / "cases.jsonl");
    if (!in) throw finmoe::Error((dir / "cases.jsonl").string() + ": cannot open");
    std::string line;
    size_t case_bytes = 0;
    while (std::getline(in, line)) {
      cases.push_back(nlohmann::json::parse(line)["text"].get<std::string>());
      case_bytes += cases.back().size();
    }
    const int reps = std::max(1, static_cast<int>(target_mb * 1e6 / case_bytes));
    const double mb = static_cast<double>(case_bytes) * reps / 1e6;
    std::printf("text: %zu cases x %d = %.2f MB (mixed English/Chinese)\n", cases.size(), reps, mb);

    for (const char* name : {"qwen3", "llama3", "deepseek_v3"}) {
      auto t0 = std::chrono::steady_clock::now();
      finmoe::Tokenizer tok = finmoe::Tokenizer::from_dir((dir / name).string());
      double load_s = seconds_since(t0);

      size_t n_tokens = 0;
      t0 = std::chrono::steady_clock::now();
      for (const auto& c : cases) n_tokens += tok.encode(c).size();
      double cold_mb_s = case_bytes / 1e6 / seconds_since(t0);

      std::vector<std::vector<int32_t>> all_ids;
      t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r)
        for (const auto& c : cases) {
          auto ids = tok.encode(c);
          if (r == 0) all_ids.push_back(std::move(ids));
        }
      double enc_s = seconds_since(t0);

      size_t out_bytes = 0;
      t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r)
        for (const auto& ids : all_ids) out_bytes += tok.decode(ids).size();
      double dec_s = seconds_since(t0);

      std::printf(
          "%-12s load %.2f s | encode %.2f MB/s (cold pass %.2f MB/s), %.1f bytes/token | "
          "decode %.2f MB/s\n",
          name, load_s, mb / enc_s, cold_mb_s, static_cast<double>(case_bytes) / n_tokens,
          out_bytes / 1e6 / dec_s);
    }
  } catch (const finmoe::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
