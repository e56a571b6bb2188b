// Stratified information-gain selection against brute-force references: the
// greedy choice recomputed from scratch with zlib on the whole concatenation
// (or std::set n-grams), the optimum over all subsets for coverage, and
// stratum quotas against proportions computed here.
#include <gtest/gtest.h>

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "../expect_error.h"
#include "data_test_util.h"
#include "finmoe/data_compress.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;

int64_t zsize(const std::string& s) {
  uLongf n = compressBound(uLong(s.size()));
  std::vector<Bytef> buf(n);
  compress2(buf.data(), &n, reinterpret_cast<const Bytef*>(s.data()), uLong(s.size()), 6);
  return int64_t(n);
}

std::set<std::string> grams(const std::string& s, size_t n = 3) {  // ASCII texts here
  std::set<std::string> out;
  for (size_t i = 0; i + n <= s.size(); ++i) out.insert(s.substr(i, n));
  return out;
}

// Plain greedy, every gain recomputed from the whole selected set.
std::vector<size_t> reference_greedy(const std::vector<std::string>& texts, size_t k, bool zlib) {
  std::vector<size_t> out;
  std::vector<bool> taken(texts.size());
  std::string concat;
  std::set<std::string> covered;
  while (out.size() < k) {
    int best = -1;
    double bg = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      if (taken[i]) continue;
      double g = 0;
      if (zlib) {
        g = double(zsize(concat + texts[i] + "\n") - zsize(concat));
      } else {
        for (const auto& x : grams(texts[i])) g += !covered.count(x);
      }
      if (best < 0 || g > bg) best = int(i), bg = g;
    }
    taken[size_t(best)] = true;
    out.push_back(size_t(best));
    concat += texts[size_t(best)] + "\n";
    const auto gs = grams(texts[size_t(best)]);
    covered.insert(gs.begin(), gs.end());
  }
  return out;
}

std::vector<std::string> tiny_pool(uint64_t seed, int n) {
  std::mt19937_64 rng(seed);
  const std::vector<std::string> words = {"loan",  "rate", "bond",   "yield", "cash",
                                          "flow",  "tax",  "fund",   "stock", "risk",
                                          "asset", "debt", "equity", "margin"};
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string s;
    const int len = 3 + int(rng() % 12);
    for (int w = 0; w < len; ++w) s += words[rng() % (i % 3 == 0 ? 3 : words.size())] + " ";
    out.push_back(s);
  }
  return out;
}

TEST(Compress, ExactGreedyMatchesTheBruteForceReference) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const auto texts = tiny_pool(seed, 9);
    CompressOptions o;
    o.exact_greedy = true;
    o.window = 1 << 20;
    EXPECT_EQ(greedy_select(texts, {}, 5, o), reference_greedy(texts, 5, true)) << seed;
    o.gain = GainKind::ngram;
    EXPECT_EQ(greedy_select(texts, {}, 5, o), reference_greedy(texts, 5, false)) << seed;
    // lazy greedy is exact for coverage (gains only shrink)
    o.exact_greedy = false;
    EXPECT_EQ(greedy_select(texts, {}, 5, o), reference_greedy(texts, 5, false)) << seed;
  }
}

// bits(S) = N log2 N - sum c log2 c over the 3-gram counts of the texts of S.
double entropy_bits(const std::vector<std::string>& texts, const std::vector<size_t>& pick) {
  std::map<std::string, double> c;
  double n = 0;
  for (size_t i : pick)
    for (size_t k = 0; k + 3 <= texts[i].size(); ++k) {
      c[texts[i].substr(k, 3)] += 1;
      n += 1;
    }
  double bits = n > 0 ? n * std::log2(n) : 0;
  for (const auto& [g, v] : c) bits -= v * std::log2(v);
  return bits;
}

TEST(Compress, EntropyGreedyPicksTheLargestCodeLengthIncreaseEachStep) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    const auto texts = tiny_pool(seed + 20, 9);
    CompressOptions o;
    o.gain = GainKind::entropy;
    o.exact_greedy = true;
    const auto pick = greedy_select(texts, {}, 6, o);
    ASSERT_EQ(pick.size(), 6u);
    std::vector<size_t> so_far;
    for (size_t step = 0; step < pick.size(); ++step) {
      const double base = entropy_bits(texts, so_far);
      double best = -1e300;
      for (size_t i = 0; i < texts.size(); ++i) {
        if (std::find(so_far.begin(), so_far.end(), i) != so_far.end()) continue;
        auto with = so_far;
        with.push_back(i);
        best = std::max(best, entropy_bits(texts, with) - base);
      }
      auto with = so_far;
      with.push_back(pick[step]);
      EXPECT_NEAR(entropy_bits(texts, with) - base, best, 1e-6)
          << "seed " << seed << " step " << step;
      so_far.push_back(pick[step]);
    }
    // the lazy greedy reaches nearly the same code length
    o.exact_greedy = false;
    EXPECT_GE(entropy_bits(texts, greedy_select(texts, {}, 6, o)),
              0.97 * entropy_bits(texts, pick));
  }
}

TEST(Compress, LazyZlibGreedyIsCloseToExactAndCoverageIsWithinTheGreedyBound) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    const auto texts = tiny_pool(seed + 10, 10);
    CompressOptions o;
    auto total = [&](const std::vector<size_t>& pick) {
      std::string c;
      for (size_t i : pick) c += texts[i] + "\n";
      return double(zsize(c));
    };
    const auto lazy = greedy_select(texts, {}, 5, o);
    o.exact_greedy = true;
    const auto exact = greedy_select(texts, {}, 5, o);
    EXPECT_GE(total(lazy), 0.95 * total(exact)) << seed;
    // coverage: greedy >= (1 - 1/e) of the best 4-subset, found by enumeration
    o.gain = GainKind::ngram;
    const auto g = greedy_select(texts, {}, 4, o);
    auto coverage = [&](const std::vector<size_t>& pick) {
      std::set<std::string> all;
      for (size_t i : pick) {
        const auto gs = grams(texts[i]);
        all.insert(gs.begin(), gs.end());
      }
      return double(all.size());
    };
    double best = 0;
    for (unsigned mask = 0; mask < (1u << texts.size()); ++mask) {
      if (__builtin_popcount(mask) != 4) continue;
      std::vector<size_t> pick;
      for (size_t i = 0; i < texts.size(); ++i)
        if (mask >> i & 1) pick.push_back(i);
      best = std::max(best, coverage(pick));
    }
    EXPECT_GE(coverage(g), (1 - 1 / M_E) * best);
    EXPECT_LE(coverage(g), best);
  }
}

TEST(Compress, DuplicatesAddLittleAndHighQualityComesFirst) {
  std::vector<std::string> texts = tiny_pool(3, 6);
  const std::string dup = texts[0];
  for (int i = 0; i < 4; ++i) texts.push_back(dup);  // 4 copies of text 0
  CompressOptions o;
  const auto pick = greedy_select(texts, {}, 6, o);
  int copies = 0;
  for (size_t i : pick) copies += texts[i] == dup;
  EXPECT_EQ(copies, 1);  // the distinct texts add more than a second copy
  // tiers: the three tier-0 texts come first whatever their gain
  std::vector<int> tier(texts.size(), 1);
  tier[7] = tier[8] = tier[2] = 0;
  const auto t = greedy_select(texts, tier, 4, o);
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(std::set<size_t>(t.begin(), t.begin() + 3), (std::set<size_t>{2, 7, 8}));
}

TEST(Compress, QuotasFollowProportionsWithAMinimumAndBalance) {
  const std::vector<std::string> keys = {"c=a|d=easy", "c=a|d=hard", "c=b|d=easy", "c=b|d=hard",
                                         "c=z|d=easy"};
  const std::vector<int64_t> sizes = {600, 200, 150, 40, 10};  // total 1000
  CompressOptions o;
  auto q = stratum_quotas(keys, sizes, 100, o);
  int64_t sum = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    sum += q[i];
    EXPECT_LE(q[i], sizes[i]);
    EXPECT_NEAR(double(q[i]), 100.0 * double(sizes[i]) / 1000.0, 1.0) << keys[i];
  }
  EXPECT_EQ(sum, 100);
  // a small category is not lost
  q = stratum_quotas(keys, sizes, 20, o);
  EXPECT_GE(q[4], 1);
  EXPECT_EQ(q[0] + q[1] + q[2] + q[3] + q[4], 20);
  // balance: a category's quota is split equally among its difficulties
  o.balance = true;
  q = stratum_quotas(keys, sizes, 100, o);
  EXPECT_EQ(q[0] + q[1], 80);  // category a has 800/1000
  EXPECT_EQ(q[0], 40);
  EXPECT_EQ(q[1], 40);
  EXPECT_EQ(q[2] + q[3], 19);  // category b: 190/1000 -> 19
  EXPECT_LE(std::abs(q[2] - q[3]), 1);
  // water-filling: a sub-stratum smaller than its share gives the rest away
  q = stratum_quotas(keys, sizes, 500, o);
  EXPECT_EQ(q[3], 40);
  EXPECT_EQ(q[2], 95 - 40 + 0);  // b gets 95: hard capped at 40, easy 55
  o.min_per_stratum = 10;
  EXPECT_CONTAINS(message_of([&] { stratum_quotas(keys, sizes, 25, o); }),
                  "below --min-per-stratum");
}

TEST(Compress, JsonlKeepsTheTargetPerStratumInInputOrder) {
  datatest::TempDir dir("compress");
  std::mt19937_64 rng(9);
  const auto texts = tiny_pool(5, 400);
  std::vector<std::string> lines;
  std::map<std::string, int> before;
  const char* cats[] = {"loan", "tax", "general"};
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string cat = cats[i % 7 == 0 ? 0 : i % 2 ? 1 : 2];
    const int difficulty = 1 + int(rng() % 6);
    const std::string bin = difficulty <= 2 ? "easy" : difficulty <= 4 ? "medium" : "hard";
    ++before["category=" + cat + "|difficulty=" + bin];
    lines.push_back(nlohmann::json{{"text", texts[i]},
                                   {"category", cat},
                                   {"difficulty", difficulty},
                                   {"quality", double(rng() % 60) / 10.0}}
                        .dump());
  }
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  datatest::write(dir / "pool.jsonl", all);
  CompressOptions o;
  o.strata_fields = {"category", "difficulty"};
  o.difficulty_field = "difficulty";
  o.quality_field = "quality";
  o.quality_threshold = 4.0;
  o.ratio = 0.25;
  const CompressResult r = compress_jsonl(dir / "pool.jsonl", dir / "out.jsonl", o);
  EXPECT_EQ(r.records, 400);
  EXPECT_EQ(r.selected, 100);
  ASSERT_EQ(r.strata.size(), before.size());
  int64_t sum = 0;
  for (const auto& s : r.strata) {
    EXPECT_EQ(s.before, before[s.key]) << s.key;
    EXPECT_EQ(s.after, s.quota) << s.key;
    // quality first: a stratum keeps all its high-quality records or only them
    EXPECT_EQ(s.high_quality_after, std::min(s.high_quality_before, s.after)) << s.key;
    EXPECT_NEAR(double(s.after), 0.25 * double(s.before), 2.0) << s.key;
    sum += s.after;
  }
  EXPECT_EQ(sum, 100);
  const auto kept = datatest::lines_of(dir / "out.jsonl");
  ASSERT_EQ(kept.size(), 100u);
  size_t pos = 0;
  for (const auto& k : kept) {
    while (pos < lines.size() && lines[pos] != k) ++pos;
    ASSERT_LT(pos, lines.size()) << "not an input line in order";
  }
  // the result does not depend on the thread count
  o.threads = 1;
  compress_jsonl(dir / "pool.jsonl", dir / "out1.jsonl", o);
  EXPECT_EQ(datatest::read_file(dir / "out1.jsonl"), datatest::read_file(dir / "out.jsonl"));
}

TEST(Compress, BadInputIsNamed) {
  datatest::TempDir dir("compress-bad");
  datatest::write(dir / "pool.jsonl",
                  "{\"text\": \"a b c\", \"category\": \"x\"}\n{\"text\": \"d e f\"}\n");
  CompressOptions o;
  o.strata_fields = {"category"};
  o.target = 1;
  EXPECT_CONTAINS(message_of([&] { compress_jsonl(dir / "pool.jsonl", dir / "out.jsonl", o); }),
                  "pool.jsonl:2: no tag field 'category'");
  EXPECT_FALSE(std::filesystem::exists(dir / "out.jsonl"));
  o.skip_bad = true;
  const auto r = compress_jsonl(dir / "pool.jsonl", dir / "out.jsonl", o);
  EXPECT_EQ(r.skipped, 1);
  EXPECT_EQ(r.selected, 1);
  o.ratio = 0.5;
  EXPECT_CONTAINS(message_of([&] { compress_jsonl(dir / "pool.jsonl", dir / "o2.jsonl", o); }),
                  "give one of --target");
}

}  // namespace
