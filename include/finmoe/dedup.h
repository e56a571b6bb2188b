#pragma once
// Exact and near-duplicate removal on JSONL (`finmoe data dedup`, docs/data_tools.md).
//
// A record's text is normalised (NFC is not applied; ASCII lowercased and
// runs of white space made one space, unless normalize = false) and cut into
// shingles: character n-grams (code points) or word n-grams. Two texts are
// near duplicates when the Jaccard similarity of their shingle sets reaches
// `threshold`. MinHash signatures (num_perm 64-bit minima, one seeded hash
// per slot) estimate it; LSH (bands x rows of the signature) finds the
// candidates; a candidate counts when its estimated Jaccard reaches the
// threshold. Streaming: a record is compared with the records kept before it
// and kept only if none matches, so the output keeps the first of each
// cluster in input order. Signatures are computed on `threads` threads; the
// result does not depend on the thread count.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace finmoe {

struct DedupOptions {
  double threshold = 0.8;  // Jaccard at or above which two texts are duplicates
  int num_perm = 128;      // MinHash signature length
  int bands = 0;           // LSH bands; 0 with rows 0: chosen for the threshold (see lsh_params)
  int rows = 0;            // rows per band; bands * rows <= num_perm
  bool word_shingles = false;  // false: character n-grams (right for Chinese)
  int ngram = 0;               // shingle size; 0: 5 characters or 3 words
  bool normalize = true;       // lowercase ASCII, collapse white space
  bool exact_only = false;     // only identical (normalised) texts
  uint64_t seed = 1;           // of the MinHash hash family
  int threads = 0;             // 0: hardware concurrency
  std::string field;           // text field; "" -> data::record_text's defaults
  bool skip_bad = false;       // skip malformed lines / records without text
};

// The (bands, rows) with bands * rows <= num_perm that minimise the area of
// false positives below the threshold plus false negatives above it under
// the LSH S-curve P(candidate | J) = 1 - (1 - J^rows)^bands.
std::pair<int, int> lsh_params(double threshold, int num_perm);

// The probability that two texts of Jaccard `j` share a bucket.
double lsh_candidate_probability(double j, int bands, int rows);

class MinHasher {
 public:
  explicit MinHasher(const DedupOptions& opt);  // throws Error on bad options
  std::string normalize(std::string_view text) const;
  // Distinct 64-bit hashes of the shingles of the normalised text; a text
  // shorter than one shingle is one shingle.
  std::vector<uint64_t> shingles(std::string_view text) const;
  std::vector<uint64_t> signature(std::string_view text) const;  // [num_perm]
  int bands() const { return bands_; }
  int rows() const { return rows_; }
  // Band keys of a signature: [bands].
  std::vector<uint64_t> band_keys(const std::vector<uint64_t>& sig) const;

 private:
  DedupOptions opt_;
  int bands_ = 0, rows_ = 0;
  std::vector<uint64_t> seeds_;  // [num_perm]
};

// Fraction of equal slots: the MinHash estimate of Jaccard.
double estimate_jaccard(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b);

// The pairs (i < j) of `texts` that share an LSH bucket and whose estimated
// Jaccard reaches the threshold: the all-pairs form of the streaming rule.
std::vector<std::pair<int, int>> near_duplicate_pairs(const std::vector<std::string>& texts,
                                                      const DedupOptions& opt);

struct DedupCluster {
  int64_t kept_line = 0;  // input line of the record kept
  std::vector<int64_t> removed_lines;
  std::vector<double> similarity;  // per removed record: 1 for exact, else the estimate
  std::vector<bool> exact;
};

struct DedupResult {
  int64_t records = 0, kept = 0, removed_exact = 0, removed_near = 0, skipped = 0;
  int bands = 0, rows = 0;
  std::vector<DedupCluster> clusters;  // those with at least one removal, by kept line
};

// Streams IN to OUT (kept records, unchanged). `removed` (optional, "" none)
// gets each removed record as {"line", "duplicate_of", "similarity",
// "exact", "record"}. OUT and `removed` must not exist; both are written
// atomically. `on_skip` hears each skipped line; `progress` is called with
// bytes read and the file size.
DedupResult dedup_jsonl(const std::string& in, const std::string& out, const std::string& removed,
                        const DedupOptions& opt,
                        const std::function<void(const std::string&)>& on_skip = {},
                        const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace finmoe
