// MinHash-LSH near-duplicate removal (finmoe/dedup.h).
#include "finmoe/dedup.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "data/jsonl.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

uint64_t mix64(uint64_t x) {  // splitmix64's finaliser: a bijection on 64 bits
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

uint64_t fnv1a(std::string_view s, uint64_t basis = 0xcbf29ce484222325ULL) {
  uint64_t h = basis;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return mix64(h);
}

bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

double integrate(const std::function<double(double)>& f, double a, double b) {
  const int n = 200;
  const double h = (b - a) / n;
  double s = 0;
  for (int i = 0; i < n; ++i) s += f(a + (i + 0.5) * h);
  return s * h;
}

}  // namespace

double lsh_candidate_probability(double j, int bands, int rows) {
  return 1.0 - std::pow(1.0 - std::pow(j, rows), bands);
}

std::pair<int, int> lsh_params(double threshold, int num_perm) {
  if (!(threshold > 0.0 && threshold < 1.0)) throw Error("dedup: --threshold must be in (0, 1)");
  if (num_perm < 2) throw Error("dedup: --num-perm must be at least 2");
  double best = 1e300;
  std::pair<int, int> bp{1, num_perm};
  for (int b = 1; b <= num_perm; ++b)
    for (int r = 1; b * r <= num_perm; ++r) {
      const double fp =
          integrate([&](double s) { return lsh_candidate_probability(s, b, r); }, 0.0, threshold);
      const double fn = integrate(
          [&](double s) { return 1.0 - lsh_candidate_probability(s, b, r); }, threshold, 1.0);
      if (fp + fn < best - 1e-12) {
        best = fp + fn;
        bp = {b, r};
      }
    }
  return bp;
}

MinHasher::MinHasher(const DedupOptions& opt) : opt_(opt) {
  if (!(opt.threshold > 0.0 && opt.threshold <= 1.0))
    throw Error("dedup: --threshold must be in (0, 1]");
  if (opt.num_perm < 2 || opt.num_perm > 4096)
    throw Error("dedup: --num-perm must be in [2, 4096]");
  if (opt.ngram < 0 || opt.ngram > 64)
    throw Error("dedup: --ngram must be in [1, 64] (0: the default)");
  if ((opt.bands == 0) != (opt.rows == 0))
    throw Error("dedup: give both --bands and --rows, or neither");
  if (opt.bands < 0 || opt.rows < 0) throw Error("dedup: --bands and --rows must be positive");
  if (opt.bands > 0 && int64_t(opt.bands) * opt.rows > opt.num_perm)
    throw Error("dedup: --bands x --rows (" + std::to_string(int64_t(opt.bands) * opt.rows) +
                ") exceeds --num-perm (" + std::to_string(opt.num_perm) + ")");
  if (opt_.ngram == 0) opt_.ngram = opt.word_shingles ? 3 : 5;
  if (opt.bands > 0) {
    bands_ = opt.bands;
    rows_ = opt.rows;
  } else {
    std::tie(bands_, rows_) = lsh_params(std::min(opt.threshold, 0.999), opt.num_perm);
  }
  uint64_t s = opt.seed;
  for (int i = 0; i < opt.num_perm; ++i) seeds_.push_back(mix64(s += 0x9e3779b97f4a7c15ULL));
}

std::string MinHasher::normalize(std::string_view text) const {
  if (!opt_.normalize) return std::string(text);
  std::string out;
  out.reserve(text.size());
  bool space = false;
  for (unsigned char c : text) {
    if (is_space(c)) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  }
  return out;
}

std::vector<uint64_t> MinHasher::shingles(std::string_view text) const {
  const std::string t = normalize(text);
  const size_t n = size_t(opt_.ngram);
  std::vector<size_t> starts;  // code point or word starts, then the end
  if (opt_.word_shingles) {
    std::vector<std::pair<size_t, size_t>> words;
    for (size_t i = 0; i < t.size();) {
      while (i < t.size() && is_space(static_cast<unsigned char>(t[i]))) ++i;
      const size_t b = i;
      while (i < t.size() && !is_space(static_cast<unsigned char>(t[i]))) ++i;
      if (i > b) words.push_back({b, i});
    }
    std::vector<uint64_t> out;
    if (words.empty()) return {fnv1a("")};
    const size_t count = words.size() >= n ? words.size() - n + 1 : 1;
    for (size_t w = 0; w < count; ++w) {
      uint64_t h = 0x84222325cbf29ce4ULL;
      for (size_t k = w; k < std::min(words.size(), w + n); ++k)
        h = fnv1a(std::string_view(t).substr(words[k].first, words[k].second - words[k].first), h);
      out.push_back(h);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }
  for (size_t i = 0; i < t.size(); ++i)
    if ((static_cast<unsigned char>(t[i]) & 0xC0) != 0x80) starts.push_back(i);
  starts.push_back(t.size());
  const size_t cps = starts.size() - 1;
  std::vector<uint64_t> out;
  if (cps < n) return {fnv1a(t)};
  for (size_t i = 0; i + n <= cps; ++i)
    out.push_back(fnv1a(std::string_view(t).substr(starts[i], starts[i + n] - starts[i])));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<uint64_t> MinHasher::signature(std::string_view text) const {
  const auto sh = shingles(text);
  std::vector<uint64_t> sig(seeds_.size(), UINT64_MAX);
  for (uint64_t h : sh)
    for (size_t i = 0; i < seeds_.size(); ++i) sig[i] = std::min(sig[i], mix64(h ^ seeds_[i]));
  return sig;
}

std::vector<uint64_t> MinHasher::band_keys(const std::vector<uint64_t>& sig) const {
  std::vector<uint64_t> keys(static_cast<size_t>(bands_));
  for (int b = 0; b < bands_; ++b) {
    uint64_t h = mix64(uint64_t(b) + 1);
    for (int r = 0; r < rows_; ++r) h = mix64(h ^ (sig[size_t(b * rows_ + r)] & 0xffffffffULL));
    keys[size_t(b)] = h;
  }
  return keys;
}

double estimate_jaccard(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
  if (a.size() != b.size() || a.empty())
    throw Error("estimate_jaccard: signatures of different lengths");
  size_t eq = 0;
  for (size_t i = 0; i < a.size(); ++i) eq += (a[i] & 0xffffffffULL) == (b[i] & 0xffffffffULL);
  return double(eq) / double(a.size());
}

std::vector<std::pair<int, int>> near_duplicate_pairs(const std::vector<std::string>& texts,
                                                      const DedupOptions& opt) {
  MinHasher mh(opt);
  std::vector<std::vector<uint64_t>> sigs;
  for (const auto& t : texts) sigs.push_back(mh.signature(t));
  std::vector<std::unordered_map<uint64_t, std::vector<int>>> tables(size_t(mh.bands()));
  std::set<std::pair<int, int>> pairs;
  for (int i = 0; i < int(texts.size()); ++i) {
    const auto keys = mh.band_keys(sigs[size_t(i)]);
    for (size_t b = 0; b < keys.size(); ++b) {
      auto& bucket = tables[b][keys[b]];
      for (int j : bucket)
        if (estimate_jaccard(sigs[size_t(i)], sigs[size_t(j)]) >= opt.threshold)
          pairs.insert({j, i});
      bucket.push_back(i);
    }
  }
  return {pairs.begin(), pairs.end()};
}

DedupResult dedup_jsonl(const std::string& in, const std::string& out, const std::string& removed,
                        const DedupOptions& opt,
                        const std::function<void(const std::string&)>& on_skip,
                        const std::function<void(int64_t, int64_t)>& progress) {
  MinHasher mh(opt);
  if (opt.threads < 0) throw Error("dedup: --threads must be >= 0");
  const int threads =
      opt.threads > 0 ? opt.threads : std::max(1, int(std::thread::hardware_concurrency()));
  if (!removed.empty()) data::refuse_existing(removed, "--removed");
  if (!removed.empty() && removed == out)
    throw Error("dedup: --removed and --out are the same file");
  data::JsonlReader reader(in, opt.skip_bad);
  reader.on_skip = on_skip;
  data::JsonlWriter writer(out);
  std::unique_ptr<data::JsonlWriter> removed_writer;
  if (!removed.empty()) removed_writer = std::make_unique<data::JsonlWriter>(removed, "--removed");

  DedupResult r;
  r.bands = mh.bands();
  r.rows = mh.rows();
  const size_t P = size_t(opt.num_perm);
  // Kept records: signatures (low 32 bits, [kept, num_perm]), input lines.
  std::vector<uint32_t> kept_sigs;
  std::vector<int64_t> kept_lines;
  std::vector<int64_t> cluster_of;  // kept index -> index in r.clusters, or -1
  std::unordered_map<std::string, int64_t>
      exact;  // 16-byte digest of the normalised text -> kept index
  std::vector<std::unordered_map<uint64_t, std::vector<int64_t>>> tables(size_t(mh.bands()));

  struct Item {
    int64_t line;
    std::string raw, text;
    std::string digest;
    std::vector<uint64_t> sig;
  };
  const size_t kBatch = 4096;
  std::vector<Item> batch;
  auto flush = [&] {
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i; (i = next.fetch_add(1)) < batch.size();) {
        Item& it = batch[i];
        const std::string norm = mh.normalize(it.text);
        const uint64_t h1 = fnv1a(norm), h2 = fnv1a(norm, 0x6c62272e07bb0142ULL ^ norm.size());
        it.digest.assign(reinterpret_cast<const char*>(&h1), 8)
            .append(reinterpret_cast<const char*>(&h2), 8);
        if (!opt.exact_only) it.sig = mh.signature(it.text);
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int>(threads, int(batch.size())); ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();

    for (Item& it : batch) {
      int64_t match = -1;
      double sim = 0;
      bool is_exact = false;
      if (auto e = exact.find(it.digest); e != exact.end()) {
        match = e->second;
        sim = 1.0;
        is_exact = true;
      }
      std::vector<uint64_t> keys;
      if (match < 0 && !opt.exact_only) {
        keys = mh.band_keys(it.sig);
        std::unordered_set<int64_t> seen;
        for (size_t b = 0; b < keys.size(); ++b) {
          auto bucket = tables[b].find(keys[b]);
          if (bucket == tables[b].end()) continue;
          for (int64_t k : bucket->second) {
            if (!seen.insert(k).second) continue;
            size_t eq = 0;
            const uint32_t* ks = &kept_sigs[size_t(k) * P];
            for (size_t p = 0; p < P; ++p) eq += ks[p] == uint32_t(it.sig[p]);
            const double est = double(eq) / double(P);
            if (est >= opt.threshold && (est > sim || match < 0)) {
              match = k;
              sim = est;
            }
          }
        }
      }
      if (match < 0) {
        const int64_t k = int64_t(kept_lines.size());
        kept_lines.push_back(it.line);
        cluster_of.push_back(-1);
        exact.emplace(it.digest, k);
        if (!opt.exact_only) {
          for (size_t b = 0; b < keys.size(); ++b) tables[b][keys[b]].push_back(k);
          for (uint64_t v : it.sig) kept_sigs.push_back(uint32_t(v));
        }
        writer.write_line(it.raw);
        ++r.kept;
        continue;
      }
      (is_exact ? r.removed_exact : r.removed_near) += 1;
      if (cluster_of[size_t(match)] < 0) {
        cluster_of[size_t(match)] = int64_t(r.clusters.size());
        r.clusters.push_back({kept_lines[size_t(match)], {}, {}, {}});
      }
      auto& c = r.clusters[size_t(cluster_of[size_t(match)])];
      c.removed_lines.push_back(it.line);
      c.similarity.push_back(sim);
      c.exact.push_back(is_exact);
      if (removed_writer)
        removed_writer->write({{"line", it.line},
                               {"duplicate_of", kept_lines[size_t(match)]},
                               {"similarity", sim},
                               {"exact", is_exact},
                               {"record", nlohmann::json::parse(it.raw)}});
    }
    batch.clear();
    if (progress) progress(reader.bytes_read(), reader.size());
  };

  nlohmann::json rec;
  while (reader.next(rec)) {
    bool ok = false;
    std::string text = data::record_text(rec, opt.field, &ok);
    if (!ok) {
      reader.bad_record(opt.field.empty() ? "no text (expected a string 'text', 'messages', "
                                            "'instruction'/'output' or 'prompt'/'response')"
                                          : "no string field '" + opt.field + "'");
      continue;
    }
    batch.push_back({reader.line(), reader.raw(), std::move(text), {}, {}});
    if (batch.size() >= kBatch) flush();
  }
  flush();
  r.records = reader.records();
  r.skipped = reader.skipped();
  writer.commit();
  if (removed_writer) removed_writer->commit();
  return r;
}

}  // namespace finmoe
