// MinHash-LSH dedup against exact Jaccard computed by brute force over
// shingle sets built here (std::set of code-point 5-grams), on a corpus of
// random Chinese texts with near copies at known edit rates.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>

#include "../expect_error.h"
#include "data/jsonl.h"
#include "data_test_util.h"
#include "finmoe/dedup.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;

std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

std::set<std::string> shingle_set(const std::string& s, size_t n = 5) {
  const auto cp = code_points(s);
  std::set<std::string> out;
  for (size_t i = 0; i + n <= cp.size(); ++i) {
    std::string g;
    for (size_t k = i; k < i + n; ++k) g += cp[k];
    out.insert(g);
  }
  return out;
}

double jaccard(const std::set<std::string>& a, const std::set<std::string>& b) {
  size_t inter = 0;
  for (const auto& x : a) inter += b.count(x);
  return double(inter) / double(a.size() + b.size() - inter);
}

// Random texts over 400 CJK characters; each base has copies with characters
// substituted at rates from 1% to 40%.
struct Corpus {
  std::vector<std::string> texts;
  std::vector<int> base_of;
};

Corpus make_corpus(int bases, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> alphabet;
  for (char32_t c = 0x4e00; c < 0x4e00 + 400; ++c) {
    std::string s;
    s += char(0xe0 | (c >> 12));
    s += char(0x80 | ((c >> 6) & 0x3f));
    s += char(0x80 | (c & 0x3f));
    alphabet.push_back(s);
  }
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  Corpus c;
  for (int b = 0; b < bases; ++b) {
    std::vector<std::string> base(150);
    for (auto& ch : base) ch = alphabet[pick(rng)];
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& x : v) s += x;
      return s;
    };
    c.texts.push_back(join(base));
    c.base_of.push_back(b);
    for (double rate : {0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.4}) {
      auto copy = base;
      for (auto& ch : copy)
        if (std::uniform_real_distribution<double>(0, 1)(rng) < rate) ch = alphabet[pick(rng)];
      c.texts.push_back(join(copy));
      c.base_of.push_back(b);
    }
  }
  return c;
}

TEST(NearDedup, LshParametersPutTheSCurveAroundTheThreshold) {
  for (double t : {0.5, 0.7, 0.8, 0.9}) {
    const auto [b, r] = lsh_params(t, 128);
    EXPECT_LE(b * r, 128);
    EXPECT_GT(lsh_candidate_probability(std::min(1.0, t + 0.15), b, r), 0.9) << t;
    EXPECT_GT(lsh_candidate_probability(t, b, r), 0.3) << t;
    EXPECT_LT(lsh_candidate_probability(t - 0.2, b, r), 0.15) << t;
  }
  // the formula itself, against a direct simulation of bands of independent slots
  std::mt19937_64 rng(5);
  const int b = 8, r = 4;
  const double j = 0.6;
  int hits = 0;
  const int trials = 20000;
  for (int t = 0; t < trials; ++t) {
    bool any = false;
    for (int k = 0; k < b && !any; ++k) {
      bool all = true;
      for (int q = 0; q < r; ++q) all &= std::uniform_real_distribution<double>(0, 1)(rng) < j;
      any = all;
    }
    hits += any;
  }
  EXPECT_NEAR(double(hits) / trials, lsh_candidate_probability(j, b, r), 0.015);
}

TEST(NearDedup, MinHashEstimatesExactJaccard) {
  const Corpus c = make_corpus(20, 1);
  DedupOptions o;
  o.num_perm = 256;
  MinHasher mh(o);
  double sum_err = 0;
  int n = 0;
  for (size_t i = 0; i < c.texts.size(); i += 10)
    for (size_t k = 1; k < 10; ++k) {
      const double exact = jaccard(shingle_set(c.texts[i]), shingle_set(c.texts[i + k]));
      const double est = estimate_jaccard(mh.signature(c.texts[i]), mh.signature(c.texts[i + k]));
      EXPECT_NEAR(est, exact, 0.13) << i << " " << k;
      sum_err += std::abs(est - exact);
      ++n;
    }
  EXPECT_LT(sum_err / n, 0.03);
  // the shingle count equals the exact set's size (no hash collisions here)
  EXPECT_EQ(mh.shingles(c.texts[0]).size(), shingle_set(c.texts[0]).size());
}

TEST(NearDedup, LshPairsHaveHighRecallAndPrecisionAgainstBruteForce) {
  const Corpus c = make_corpus(40, 2);
  const size_t n = c.texts.size();
  std::vector<std::set<std::string>> sets;
  for (const auto& t : c.texts) sets.push_back(shingle_set(t));
  DedupOptions o;
  o.threshold = 0.7;
  const auto found = near_duplicate_pairs(c.texts, o);
  const std::set<std::pair<int, int>> got(found.begin(), found.end());
  int truth = 0, true_pos = 0, sure = 0, sure_found = 0;
  // the recall to expect: P(candidate | J) under the S-curve times P(estimate
  // >= threshold | J), the binomial tail of num_perm slots
  const auto [bands, rows] = lsh_params(o.threshold, o.num_perm);
  auto binomial_tail = [&](double j) {
    if (j >= 1.0) return 1.0;
    const int n = o.num_perm, need = int(std::ceil(o.threshold * n - 1e-9));
    double p = 0;
    for (int k = need; k <= n; ++k)
      p += std::exp(std::lgamma(n + 1) - std::lgamma(k + 1) - std::lgamma(n - k + 1) +
                    k * std::log(j) + (n - k) * std::log1p(-j));
    return p;
  };
  double expected = 0;
  for (size_t i = 0; i < n; ++i)
    for (size_t k = i + 1; k < n; ++k) {
      if (c.base_of[i] != c.base_of[k]) {
        EXPECT_FALSE(got.count({int(i), int(k)})) << "unrelated texts paired";
        continue;
      }
      const double j = jaccard(sets[i], sets[k]);
      const bool reported = got.count({int(i), int(k)}) > 0;
      if (j >= o.threshold) {
        ++truth;
        expected += lsh_candidate_probability(j, bands, rows) * binomial_tail(j);
        true_pos += reported;
      }
      if (j >= o.threshold + 0.1) {
        ++sure;
        sure_found += reported;
      }
      if (j < o.threshold - 0.15) {
        EXPECT_FALSE(reported) << "J " << j;
      }
    }
  ASSERT_GT(truth, 200);
  const double recall = double(true_pos) / truth, precision = double(true_pos) / double(got.size());
  std::cout << "pairs at J >= " << o.threshold << ": " << truth << ", recall " << recall
            << " (expected " << expected / truth << "), precision " << precision
            << ", recall at J >= " << o.threshold + 0.1 << ": " << double(sure_found) / sure
            << "\n";
  EXPECT_NEAR(recall, expected / truth, 0.06);
  EXPECT_GE(recall, 0.75);
  EXPECT_GE(precision, 0.85);
  EXPECT_GE(double(sure_found) / sure, 0.97);
}

TEST(NearDedup, StreamingKeepsTheFirstOfEachClusterAndReportsTheRest) {
  datatest::TempDir dir("dedup");
  const Corpus c = make_corpus(30, 3);
  std::string jsonl;
  std::vector<std::string> texts, lines;
  for (size_t i = 0; i < c.texts.size(); ++i) {
    texts.push_back(c.texts[i]);
    // every fifth base text appears again with changed case and spacing of a
    // latin prefix: exact after normalisation
    if (i % 50 == 0) texts.push_back(c.texts[i]);
  }
  texts.insert(texts.begin(), "Hello  World " + c.texts[5]);
  texts.push_back("hello world\t" + c.texts[5]);
  for (size_t i = 0; i < texts.size(); ++i)
    lines.push_back(nlohmann::json{{"id", int(i)}, {"text", texts[i]}, {"a", 1}}.dump());
  for (const auto& l : lines) jsonl += l + "\n";
  datatest::write(dir / "in.jsonl", jsonl);
  DedupOptions o;
  o.threshold = 0.7;
  o.threads = 3;
  const DedupResult r = dedup_jsonl(dir / "in.jsonl", dir / "out.jsonl", dir / "removed.jsonl", o);
  EXPECT_EQ(r.records, int64_t(texts.size()));
  EXPECT_EQ(r.kept + r.removed_exact + r.removed_near, r.records);
  EXPECT_GE(r.removed_exact, 4);
  const auto kept = datatest::lines_of(dir / "out.jsonl");
  ASSERT_EQ(int64_t(kept.size()), r.kept);
  // kept lines are the input lines, byte for byte, in input order
  size_t pos = 0;
  std::vector<std::set<std::string>> kept_sets;
  for (const auto& k : kept) {
    while (pos < lines.size() && lines[pos] != k) ++pos;
    ASSERT_LT(pos, lines.size()) << "not an input line in order: " << k;
    kept_sets.push_back(shingle_set(texts[pos]));
  }
  for (size_t i = 0; i < kept_sets.size(); ++i)
    for (size_t k = i + 1; k < kept_sets.size(); ++k)
      EXPECT_LT(jaccard(kept_sets[i], kept_sets[k]), 0.85);
  // every removed record resembles the record it was removed for
  int64_t removed = 0;
  for (const auto& l : datatest::lines_of(dir / "removed.jsonl")) {
    const auto j = nlohmann::json::parse(l);
    const int64_t line = j["line"], of = j["duplicate_of"];
    const double sim =
        jaccard(shingle_set(texts[size_t(line - 1)]), shingle_set(texts[size_t(of - 1)]));
    EXPECT_GE(sim, 0.55) << line << " " << of;
    EXPECT_LT(of, line);
    EXPECT_EQ(j["record"]["id"], line - 1);
    if (j["exact"]) {
      EXPECT_EQ(j["similarity"], 1.0);
    }
    ++removed;
  }
  EXPECT_EQ(removed, r.removed_exact + r.removed_near);
  int64_t in_clusters = 0;
  for (const auto& cl : r.clusters) in_clusters += int64_t(cl.removed_lines.size());
  EXPECT_EQ(in_clusters, removed);
  // the normalised copy of line 1 is an exact duplicate of it
  bool found = false;
  for (const auto& cl : r.clusters)
    for (size_t k = 0; k < cl.removed_lines.size(); ++k)
      if (cl.kept_line == 1 && cl.removed_lines[k] == int64_t(texts.size())) found = cl.exact[k];
  EXPECT_TRUE(found);
  // the same output on one thread
  o.threads = 1;
  dedup_jsonl(dir / "in.jsonl", dir / "out1.jsonl", "", o);
  EXPECT_EQ(datatest::read_file(dir / "out1.jsonl"), datatest::read_file(dir / "out.jsonl"));
  // exact-only removes only the exact copies
  o.exact_only = true;
  const DedupResult e = dedup_jsonl(dir / "in.jsonl", dir / "exact.jsonl", "", o);
  EXPECT_EQ(e.removed_near, 0);
  EXPECT_EQ(e.removed_exact, r.removed_exact);
}

TEST(NearDedup, BadInputNamesFileAndLineAndNothingIsWritten) {
  datatest::TempDir dir("dedup-bad");
  datatest::write(
      dir / "in.jsonl",
      "{\"text\": \"abcdefg\"}\n{\"text\": \"abc\n{\"other\": 1}\n{\"text\": \"abcdefg\"}\n");
  DedupOptions o;
  EXPECT_CONTAINS(message_of([&] { dedup_jsonl(dir / "in.jsonl", dir / "out.jsonl", "", o); }),
                  "in.jsonl:2");
  EXPECT_FALSE(std::filesystem::exists(dir / "out.jsonl"));
  o.skip_bad = true;
  std::vector<std::string> skipped;
  const auto r = dedup_jsonl(dir / "in.jsonl", dir / "out.jsonl", "", o,
                             [&](const std::string& m) { skipped.push_back(m); });
  EXPECT_EQ(r.skipped, 2);
  ASSERT_EQ(skipped.size(), 2u);
  EXPECT_CONTAINS(skipped[1], "in.jsonl:3: no text");
  EXPECT_EQ(r.kept, 1);
  EXPECT_EQ(r.removed_exact, 1);
  // an existing output is refused
  EXPECT_CONTAINS(message_of([&] { dedup_jsonl(dir / "in.jsonl", dir / "out.jsonl", "", o); }),
                  "refusing to overwrite");
  o.bands = 50;
  o.rows = 3;
  EXPECT_CONTAINS(message_of([&] { MinHasher m(o); }), "exceeds --num-perm");
  o.field = "missing";
  o.skip_bad = false;
  o.bands = o.rows = 0;
  EXPECT_CONTAINS(message_of([&] { dedup_jsonl(dir / "in.jsonl", dir / "o2.jsonl", "", o); }),
                  "in.jsonl:1: no string field 'missing'");
}

}  // namespace
