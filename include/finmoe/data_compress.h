#pragma once
// Stratified, quality-first, information-gain selection of an SFT pool
// (`finmoe data compress`; YouZhi §3.3 "Compression of General and Financial
// Data", after the entropy-law ZIP selection). docs/data_tools.md.
//
//   1. strata: records are grouped by the values of tag fields (e.g.
//      category, difficulty); a numeric `difficulty_field` is binned into
//      easy (<= 2), medium (<= 4) and hard (> 4) as on the DEITA 1-6 scale.
//   2. quotas: the target (a count or a ratio of the pool) is shared among
//      the first field's groups in proportion to their size (largest
//      remainder), each group getting at least `min_per_stratum` (so no
//      category goes missing); with `balance`, a group's quota is then split
//      equally among its sub-strata (water-filling what small ones cannot
//      use), else every stratum is proportional.
//   3. inside a stratum: records at or above `quality_threshold` first, then
//      the rest; within each tier, greedy by information gain: the next
//      record is the one whose text adds the most to the selected set, with
//        zlib:  Z(tail(S) + "\n" + x) - Z(tail(S)), Z the zlib size (level 6)
//               and tail(S) the last `window` bytes of the selected texts
//        ngram: the number of distinct character n-grams of x not in S
//        entropy: the increase of the n-gram code length of S,
//               bits(S) = N log2 N - sum_g c_g log2 c_g over the counts c_g
//               of S's character n-grams (N of them): Shannon bits of S's
//               n-grams under their own distribution.
//      Lazy greedy by default (stale gains as upper bounds: exact when a
//      gain only shrinks as S grows, which holds for ngram); exact_greedy
//      recomputes every gain at every step.
// Output keeps the selected records in input order, byte for byte. The pool's
// texts are held in memory (the records themselves are re-read).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace finmoe {

enum class GainKind { zlib, ngram, entropy };

struct CompressOptions {
  std::vector<std::string> strata_fields;  // e.g. {"category", "difficulty"}
  std::string difficulty_field;            // numeric field binned easy/medium/hard ("" none)
  std::string quality_field;               // numeric quality score ("" none)
  double quality_threshold = 4.0;          // at or above: selected first
  int64_t target = 0;                      // records to keep; 0: use ratio
  double ratio = 0.0;                      // share of the pool to keep, (0, 1]
  int64_t min_per_stratum = 1;             // per first-field group
  bool balance = false;                    // equal split among a group's sub-strata
  GainKind gain = GainKind::zlib;
  int64_t window = 8192;  // bytes of the selected set zlib sees
  int ngram = 3;          // for GainKind::ngram and entropy
  bool exact_greedy = false;
  std::string field;  // text field ("" -> data::record_text defaults)
  bool skip_bad = false;
  int threads = 0;  // strata selected in parallel; 0: hardware concurrency
};

struct StratumReport {
  std::string key;  // "category=loan|difficulty=hard"
  int64_t before = 0, after = 0, quota = 0;
  int64_t high_quality_before = 0, high_quality_after = 0;
};

struct CompressResult {
  int64_t records = 0, selected = 0, skipped = 0;
  std::vector<StratumReport> strata;  // sorted by key
};

// Greedy order of `texts` by information gain, first `k` of them; `tier`
// (same size, or empty) puts tier-0 texts before tier-1 texts. Returns the
// chosen indices in the order chosen.
std::vector<size_t> greedy_select(const std::vector<std::string>& texts,
                                  const std::vector<int>& tier, size_t k,
                                  const CompressOptions& opt);

// Quotas for strata of `sizes` (keys "a=..|b=.."; first-field group = the
// part before the first '|'), summing to min(target, total).
std::vector<int64_t> stratum_quotas(const std::vector<std::string>& keys,
                                    const std::vector<int64_t>& sizes, int64_t target,
                                    const CompressOptions& opt);

// Reads IN twice (texts and tags, then the selected lines) and writes OUT
// (must not exist; written atomically). `progress(stage, done, total)` hears
// "read" (bytes), "select" (strata) and "write" (bytes).
CompressResult compress_jsonl(
    const std::string& in, const std::string& out, const CompressOptions& opt,
    const std::function<void(const std::string&)>& on_skip = {},
    const std::function<void(const char* stage, int64_t done, int64_t total)>& progress = {});

}  // namespace finmoe
