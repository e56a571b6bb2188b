// Stratified, quality-first, information-gain selection (finmoe/data_compress.h).
#include "finmoe/data_compress.h"

#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <queue>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "data/jsonl.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

int64_t zlib_size(const std::string& s) {
  uLongf n = compressBound(uLong(s.size()));
  std::string buf(n, '\0');
  if (compress2(reinterpret_cast<Bytef*>(buf.data()), &n, reinterpret_cast<const Bytef*>(s.data()),
                uLong(s.size()), 6) != Z_OK)
    throw Error("compress: zlib failed");
  return int64_t(n);
}

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h ^ (h >> 29);
}

// Every n-gram of t (with repeats), as hashes.
std::vector<uint64_t> ngram_list(const std::string& t, int n) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < t.size(); ++i)
    if ((static_cast<unsigned char>(t[i]) & 0xC0) != 0x80) starts.push_back(i);
  starts.push_back(t.size());
  std::vector<uint64_t> out;
  const size_t cps = starts.size() - 1;
  for (size_t i = 0; i + size_t(n) <= cps; ++i)
    out.push_back(
        hash_bytes(std::string_view(t).substr(starts[i], starts[i + size_t(n)] - starts[i])));
  return out;
}

double xlog2x(double x) { return x > 0 ? x * std::log2(x) : 0.0; }

// The distinct n-grams of t, sorted.
std::vector<uint64_t> ngram_hashes(const std::string& t, int n) {
  std::vector<uint64_t> out = ngram_list(t, n);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// The selected set as the gain function sees it.
class Selected {
 public:
  Selected(const std::vector<std::string>& texts, const CompressOptions& opt)
      : texts_(texts), opt_(opt) {
    if (opt.gain == GainKind::ngram) {
      grams_.resize(texts.size());
      for (size_t i = 0; i < texts.size(); ++i) grams_[i] = ngram_hashes(texts[i], opt.ngram);
    }
    if (opt.gain == GainKind::entropy) {
      counts_.resize(texts.size());
      for (size_t i = 0; i < texts.size(); ++i) {
        auto all = ngram_list(texts[i], opt.ngram);
        std::sort(all.begin(), all.end());
        for (size_t a = 0; a < all.size();) {
          size_t b = a;
          while (b < all.size() && all[b] == all[a]) ++b;
          counts_[i].push_back({all[a], int64_t(b - a)});
          a = b;
        }
      }
    }
    base_ = opt.gain == GainKind::zlib ? zlib_size("") : 0;
  }

  double gain(size_t i) const {
    if (opt_.gain == GainKind::entropy) {
      // bits of S + x minus bits of S, bits = N log2 N - sum_g c_g log2 c_g
      // (the n-gram counts coded with their own empirical distribution)
      int64_t dn = 0;
      double dsum = 0;
      for (const auto& [g, d] : counts_[i]) {
        auto it = total_.find(g);
        const double c = it == total_.end() ? 0.0 : double(it->second);
        dsum += xlog2x(c + double(d)) - xlog2x(c);
        dn += d;
      }
      return xlog2x(double(n_ + dn)) - xlog2x(double(n_)) - dsum;
    }
    if (opt_.gain == GainKind::ngram) {
      int64_t g = 0;
      for (uint64_t h : grams_[i]) g += !covered_.count(h);
      return double(g);
    }
    return double(zlib_size(tail_ + texts_[i] + "\n") - base_);
  }

  void add(size_t i) {
    if (opt_.gain == GainKind::entropy) {
      for (const auto& [g, d] : counts_[i]) {
        total_[g] += d;
        n_ += d;
      }
      return;
    }
    if (opt_.gain == GainKind::ngram) {
      covered_.insert(grams_[i].begin(), grams_[i].end());
      return;
    }
    tail_ += texts_[i];
    tail_ += '\n';
    if (int64_t(tail_.size()) > opt_.window) tail_.erase(0, tail_.size() - size_t(opt_.window));
    base_ = zlib_size(tail_);
  }

 private:
  const std::vector<std::string>& texts_;
  const CompressOptions& opt_;
  std::vector<std::vector<uint64_t>> grams_;
  std::unordered_set<uint64_t> covered_;
  std::vector<std::vector<std::pair<uint64_t, int64_t>>> counts_;  // per text: (n-gram, count)
  std::unordered_map<uint64_t, int64_t> total_;                    // n-gram counts of S
  int64_t n_ = 0;                                                  // n-grams in S
  std::string tail_;
  int64_t base_ = 0;
};

// One unit to the stratum whose wish exceeds its quota most, until `total`
// is given or every stratum is full. Ties: the first.
void fill(std::vector<int64_t>& quota, const std::vector<double>& wish,
          const std::vector<int64_t>& cap, int64_t total) {
  int64_t given = 0;
  for (int64_t q : quota) given += q;
  while (given < total) {
    int best = -1;
    for (size_t i = 0; i < quota.size(); ++i)
      if (quota[i] < cap[i] && (best < 0 || wish[i] - double(quota[i]) >
                                                wish[size_t(best)] - double(quota[size_t(best)])))
        best = int(i);
    if (best < 0) break;
    ++quota[size_t(best)];
    ++given;
  }
}

}  // namespace

std::vector<size_t> greedy_select(const std::vector<std::string>& texts,
                                  const std::vector<int>& tier, size_t k,
                                  const CompressOptions& opt) {
  if (!tier.empty() && tier.size() != texts.size())
    throw Error("greedy_select: tier and texts differ in size");
  if (opt.window < 1) throw Error("compress: --window must be positive");
  if (opt.ngram < 1) throw Error("compress: --ngram must be positive");
  Selected sel(texts, opt);
  std::vector<size_t> out;
  k = std::min(k, texts.size());
  for (int t = 0; t <= 1 && out.size() < k; ++t) {
    std::vector<size_t> cand;
    for (size_t i = 0; i < texts.size(); ++i)
      if ((tier.empty() ? 0 : tier[i]) == t) cand.push_back(i);
    if (opt.exact_greedy) {
      std::vector<bool> taken(texts.size(), false);
      while (out.size() < k) {
        int64_t best = -1;
        double bg = 0;
        for (size_t i : cand) {
          if (taken[i]) continue;
          const double g = sel.gain(i);
          if (best < 0 || g > bg) {
            best = int64_t(i);
            bg = g;
          }
        }
        if (best < 0) break;
        taken[size_t(best)] = true;
        sel.add(size_t(best));
        out.push_back(size_t(best));
      }
      continue;
    }
    // lazy greedy: (gain, -index) with stale gains as upper bounds
    using Entry = std::pair<double, int64_t>;
    std::priority_queue<Entry> heap;
    for (size_t i : cand) heap.push({sel.gain(i), -int64_t(i)});
    while (out.size() < k && !heap.empty()) {
      const auto [stale, neg] = heap.top();
      heap.pop();
      const size_t i = size_t(-neg);
      const Entry fresh{sel.gain(i), neg};
      if (heap.empty() || fresh >= heap.top()) {
        sel.add(i);
        out.push_back(i);
      } else {
        heap.push(fresh);
      }
    }
  }
  return out;
}

std::vector<int64_t> stratum_quotas(const std::vector<std::string>& keys,
                                    const std::vector<int64_t>& sizes, int64_t target,
                                    const CompressOptions& opt) {
  if (keys.size() != sizes.size()) throw Error("stratum_quotas: keys and sizes differ in size");
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  target = std::min(target, total);
  // first-field groups
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < keys.size(); ++i)
    groups[keys[i].substr(0, keys[i].find('|'))].push_back(i);
  std::vector<int64_t> gq, gsize, gcap;
  std::vector<double> gwish;
  int64_t minimum = 0;
  for (const auto& [g, members] : groups) {
    int64_t s = 0;
    for (size_t m : members) s += sizes[m];
    gsize.push_back(s);
    gcap.push_back(s);
    gq.push_back(std::min(s, opt.min_per_stratum));
    minimum += gq.back();
    gwish.push_back(double(target) * double(s) / double(std::max<int64_t>(total, 1)));
  }
  if (minimum > target)
    throw Error("compress: the target (" + std::to_string(target) +
                ") is below --min-per-stratum x the " + std::to_string(groups.size()) +
                " groups (" + std::to_string(minimum) + ")");
  fill(gq, gwish, gcap, target);
  std::vector<int64_t> quota(keys.size(), 0);
  size_t g = 0;
  for (const auto& [name, members] : groups) {
    std::vector<int64_t> q(members.size(), 0), cap;
    std::vector<double> wish;
    for (size_t m : members) {
      cap.push_back(sizes[m]);
      wish.push_back(opt.balance ? double(gq[g]) / double(members.size())
                                 : double(gq[g]) * double(sizes[m]) / double(gsize[g]));
    }
    fill(q, wish, cap, gq[g]);
    for (size_t j = 0; j < members.size(); ++j) quota[members[j]] = q[j];
    ++g;
  }
  return quota;
}

namespace {

std::string tag_value(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  return v.dump();
}

std::string difficulty_bin(double d) { return d <= 2 ? "easy" : d <= 4 ? "medium" : "hard"; }

}  // namespace

CompressResult compress_jsonl(const std::string& in, const std::string& out,
                              const CompressOptions& opt,
                              const std::function<void(const std::string&)>& on_skip,
                              const std::function<void(const char*, int64_t, int64_t)>& progress) {
  if ((opt.target > 0) == (opt.ratio > 0))
    throw Error("compress: give one of --target (records) or --ratio (share of the pool)");
  if (opt.target < 0 || !(opt.ratio >= 0 && opt.ratio <= 1))
    throw Error("compress: --ratio must be in (0, 1], --target positive");
  if (opt.min_per_stratum < 0) throw Error("compress: --min-per-stratum must be >= 0");
  if (opt.window < 1 || opt.ngram < 1)
    throw Error("compress: --window and --ngram must be positive");
  data::refuse_existing(out, "--out");

  struct Rec {
    int64_t line;
    int tier;
  };
  std::map<std::string, std::pair<std::vector<Rec>, std::vector<std::string>>> strata;
  int64_t records = 0, skipped = 0;
  {
    data::JsonlReader reader(in, opt.skip_bad);
    reader.on_skip = on_skip;
    nlohmann::json rec;
    while (reader.next(rec)) {
      if (progress && reader.records() % 1024 == 0)
        progress("read", reader.bytes_read(), reader.size());
      bool ok = false;
      std::string text = data::record_text(rec, opt.field, &ok);
      if (!ok) {
        reader.bad_record(opt.field.empty()
                              ? "no text (expected 'text', 'messages', 'instruction'/'output' or "
                                "'prompt'/'response')"
                              : "no string field '" + opt.field + "'");
        continue;
      }
      std::string key;
      bool bad = false;
      for (const auto& f : opt.strata_fields) {
        if (!rec.contains(f) || !(rec[f].is_string() || rec[f].is_number())) {
          reader.bad_record("no tag field '" + f + "' (a string or a number)");
          bad = true;
          break;
        }
        std::string v = tag_value(rec[f]);
        std::replace(v.begin(), v.end(), '|', '/');  // '|' separates the fields of a stratum key
        if (f == opt.difficulty_field) {
          if (!rec[f].is_number()) {
            reader.bad_record("tag field '" + f + "' is not a number (the difficulty is binned)");
            bad = true;
            break;
          }
          v = difficulty_bin(rec[f].get<double>());
        }
        key += (key.empty() ? "" : "|") + f + "=" + v;
      }
      if (bad) continue;
      int tier = 0;
      if (!opt.quality_field.empty()) {
        if (!rec.contains(opt.quality_field) || !rec[opt.quality_field].is_number()) {
          reader.bad_record("no numeric quality field '" + opt.quality_field + "'");
          continue;
        }
        tier = rec[opt.quality_field].get<double>() >= opt.quality_threshold ? 0 : 1;
      }
      if (key.empty()) key = "all";
      auto& s = strata[key];
      s.first.push_back({reader.line(), tier});
      s.second.push_back(std::move(text));
    }
    records = reader.records();
    skipped = reader.skipped();
  }
  std::vector<std::string> keys;
  std::vector<int64_t> sizes;
  int64_t pool = 0;
  for (const auto& [k, s] : strata) {
    keys.push_back(k);
    sizes.push_back(int64_t(s.first.size()));
    pool += sizes.back();
  }
  const int64_t target =
      opt.target > 0 ? opt.target
                     : std::max<int64_t>(pool > 0 ? 1 : 0, std::llround(opt.ratio * double(pool)));
  const auto quota = stratum_quotas(keys, sizes, target, opt);

  CompressResult r;
  r.records = records;
  r.skipped = skipped;
  std::vector<std::vector<int64_t>> chosen(keys.size());
  std::atomic<size_t> next{0}, done{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < keys.size();) {
      const auto& s = strata[keys[i]];
      std::vector<int> tiers;
      for (const auto& rec : s.first) tiers.push_back(rec.tier);
      for (size_t j : greedy_select(s.second, tiers, size_t(quota[i]), opt))
        chosen[i].push_back(s.first[j].line);
      ++done;
    }
  };
  const int threads =
      opt.threads > 0 ? opt.threads : std::max(1, int(std::thread::hardware_concurrency()));
  std::vector<std::thread> pool_threads;
  for (int t = 1; t < std::min<int>(threads, int(keys.size())); ++t)
    pool_threads.emplace_back(work);
  work();
  for (auto& t : pool_threads) t.join();
  if (progress) progress("select", int64_t(keys.size()), int64_t(keys.size()));

  std::unordered_set<int64_t> selected;
  for (size_t i = 0; i < keys.size(); ++i) {
    const auto& s = strata[keys[i]];
    StratumReport rep;
    rep.key = keys[i];
    rep.before = sizes[i];
    rep.quota = quota[i];
    rep.after = int64_t(chosen[i].size());
    std::unordered_set<int64_t> mine(chosen[i].begin(), chosen[i].end());
    for (const auto& rec : s.first) {
      if (opt.quality_field.empty()) break;  // no tiers: nothing is "high quality"
      rep.high_quality_before += rec.tier == 0;
      rep.high_quality_after += rec.tier == 0 && mine.count(rec.line);
    }
    selected.insert(chosen[i].begin(), chosen[i].end());
    r.strata.push_back(rep);
  }
  data::JsonlReader again(in, opt.skip_bad);
  data::JsonlWriter writer(out);
  nlohmann::json rec;
  while (again.next(rec)) {
    if (selected.count(again.line())) writer.write_line(again.raw());
    if (progress && again.records() % 4096 == 0)
      progress("write", again.bytes_read(), again.size());
  }
  writer.commit();
  r.selected = writer.written();
  return r;
}

}  // namespace finmoe
