// The hybrid-tuning mix (finmoe/data_mix.h).
#include "finmoe/data_mix.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include "data/jsonl.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

struct Ref {
  uint32_t file;
  uint32_t length;
  int64_t offset;
};

// Offsets of the valid records of `path`.
void index_file(const std::string& path, uint32_t file, bool text, bool skip_bad,
                std::vector<Ref>& out, int64_t* skipped,
                const std::function<void(const std::string&)>& on_skip) {
  data::JsonlReader reader(path, skip_bad);
  reader.on_skip = on_skip;
  nlohmann::json rec;
  while (reader.next(rec)) {
    const int64_t len = int64_t(reader.raw().size());  // without a CR before the newline
    bool ok = false;
    if (text) {
      ok = rec.is_object() && rec.contains("text") && rec["text"].is_string();
      if (!ok) reader.bad_record("expected a string 'text' (a pretraining text record)");
    } else {
      ok = rec.is_object() && rec.contains("messages") && rec["messages"].is_array() &&
           !rec["messages"].empty();
      if (!ok) reader.bad_record("expected a non-empty 'messages' array (an instruction record)");
    }
    if (ok) {
      if (len > int64_t(UINT32_MAX)) throw Error(reader.where() + ": record longer than 4 GiB");
      out.push_back({file, uint32_t(len), reader.line_offset()});
    }
  }
  *skipped += reader.skipped();
}

}  // namespace

MixResult mix_jsonl(const std::string& out, const MixOptions& opt,
                    const std::function<void(const std::string&)>& on_skip,
                    const std::function<void(int64_t, int64_t)>& progress) {
  if (opt.text_files.empty() && opt.sft_files.empty())
    throw Error("mix: give --text and/or --sft files");
  if (opt.text_share >= 0 && !(opt.text_share <= 1))
    throw Error("mix: --text-share must be in [0, 1]");
  if (opt.total < 0) throw Error("mix: --total must be >= 0");
  if (opt.text_share < 0 && opt.total > 0)
    throw Error("mix: --total needs --text-share (the union takes everything)");
  data::refuse_existing(out, "--out");
  std::vector<std::string> files;
  std::vector<Ref> text, sft;
  MixResult r;
  for (const auto& f : opt.text_files) {
    files.push_back(f);
    index_file(f, uint32_t(files.size() - 1), true, opt.skip_bad, text, &r.skipped, on_skip);
  }
  for (const auto& f : opt.sft_files) {
    files.push_back(f);
    index_file(f, uint32_t(files.size() - 1), false, opt.skip_bad, sft, &r.skipped, on_skip);
  }
  r.text_in = int64_t(text.size());
  r.sft_in = int64_t(sft.size());
  std::mt19937_64 rng(opt.seed);
  std::vector<Ref> chosen;
  if (opt.text_share < 0) {
    chosen = text;
    chosen.insert(chosen.end(), sft.begin(), sft.end());
    r.text_out = r.text_in;
    r.sft_out = r.sft_in;
  } else {
    const double s = opt.text_share;
    int64_t total = opt.total;
    if (total == 0) {
      // the most records the pools allow at this share without repeating one
      const double by_text = s > 0 ? double(text.size()) / s : INFINITY;
      const double by_sft = s < 1 ? double(sft.size()) / (1 - s) : INFINITY;
      total = int64_t(std::floor(std::min(by_text, by_sft) + 1e-9));
    }
    const int64_t nt = std::llround(s * double(total)), ns = total - nt;
    if (nt > int64_t(text.size()) || ns > int64_t(sft.size()))
      throw Error("mix: " + std::to_string(total) + " records at text share " + std::to_string(s) +
                  " need " + std::to_string(nt) + " text and " + std::to_string(ns) +
                  " instruction records; the inputs have " + std::to_string(text.size()) + " and " +
                  std::to_string(sft.size()));
    std::shuffle(text.begin(), text.end(), rng);
    std::shuffle(sft.begin(), sft.end(), rng);
    chosen.assign(text.begin(), text.begin() + nt);
    chosen.insert(chosen.end(), sft.begin(), sft.begin() + ns);
    r.text_out = nt;
    r.sft_out = ns;
  }
  std::shuffle(chosen.begin(), chosen.end(), rng);

  std::vector<std::ifstream> streams;
  for (const auto& f : files) {
    streams.emplace_back(f, std::ios::binary);
    if (!streams.back()) throw Error(f + ": cannot open for reading");
  }
  data::JsonlWriter writer(out);
  std::string line;
  for (size_t i = 0; i < chosen.size(); ++i) {
    const Ref& c = chosen[i];
    auto& in = streams[c.file];
    line.resize(c.length);
    in.clear();
    in.seekg(c.offset);
    if (!in.read(line.data(), c.length))
      throw Error(files[c.file] + ": changed while mixing (short read)");
    writer.write_line(line);
    if (progress && i % 4096 == 0) progress(int64_t(i), int64_t(chosen.size()));
  }
  writer.commit();
  if (progress) progress(int64_t(chosen.size()), int64_t(chosen.size()));
  return r;
}

}  // namespace finmoe
