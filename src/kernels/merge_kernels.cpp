#include "kernels/merge_kernels.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "kernels/merge_kernels_isa.h"
#include "kernels/thread_pool.h"

namespace finmoe::kernels {
namespace {

// Elements per task of the thread pool; below kMinParallel one thread does all.
constexpr int64_t kBlock = 1 << 16;
constexpr int64_t kMinParallel = 1 << 16;
// TIES' selection holds the entries of the k-th largest magnitude's high-bits
// bin (8 bytes each) when there are at most this many, instead of two more passes.
constexpr int64_t kMaxCandidates = int64_t(1) << 24;

const MergeTable& merge_table(Isa isa) {
  require_isa(isa);
  switch (isa) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return merge_avx512();
    case Isa::kAvx2:
      return merge_avx2();
    case Isa::kScalar:
      break;
  }
  return merge_scalar();
}

// fn(i0, i1) on one contiguous range per thread covering [0, n), the range
// bounds multiples of kBlock (small n: one call on this thread).
template <class F>
void over_ranges(int64_t n, const F& fn) {
  if (n <= 0) return;
  if (n < kMinParallel) return fn(int64_t{0}, n);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  ThreadPool::global().parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    fn(b0 * kBlock, std::min(n, b1 * kBlock));
  });
}

// fn(i0, i1, bits) for each kBlock piece of [r0, r1): bits = |delta| of the piece.
template <class F>
void delta_bits_pieces(const MergeTable& t, MergeInput x, MergeInput base, MergeType round,
                       int64_t r0, int64_t r1, const F& fn) {
  thread_local std::vector<uint32_t> buf;
  buf.resize(size_t(kBlock));
  for (int64_t i0 = r0; i0 < r1; i0 += kBlock) {
    const int64_t i1 = std::min(r1, i0 + kBlock);
    t.abs_delta_bits(x, base, round, i0, i1, buf.data());
    fn(i0, i1, buf.data());
  }
}

void check(const MergeCombine& a) {
  if (a.n < 0) throw Error("merge kernel: negative element count");
  if (a.xs.empty()) throw Error("merge kernel: no input models");
  if (a.xs.size() > 64) throw Error("merge kernel: more than 64 models");
  if (a.weights.size() != a.xs.size())
    throw Error("merge kernel: " + std::to_string(a.weights.size()) + " weights for " +
                std::to_string(a.xs.size()) + " models");
  if (!a.keep.empty() && a.keep.size() != a.xs.size())
    throw Error("merge kernel: magnitude masks for " + std::to_string(a.keep.size()) + " of " +
                std::to_string(a.xs.size()) + " models");
  const bool ta = a.method == MergeCombine::Method::kTaskArithmetic;
  if (!ta && (a.consensus || !a.keep.empty()))
    throw Error("merge kernel: sign consensus and masks belong to task arithmetic");
  if (a.n == 0) return;
  if (!a.out || (ta && !a.base.data)) throw Error("merge kernel: null tensor");
  for (const MergeInput& x : a.xs)
    if (!x.data) throw Error("merge kernel: null tensor");
}

}  // namespace

void merge_combine_isa(Isa isa, const MergeCombine& a) {
  check(a);
  const MergeTable& t = merge_table(isa);
  over_ranges(a.n, [&](int64_t i0, int64_t i1) { t.combine(a, i0, i1); });
}

void merge_combine(const MergeCombine& a) { merge_combine_isa(active_isa(), a); }

MergeCombine::Keep magnitude_keep_isa(Isa isa, MergeInput x, MergeInput base, int64_t n,
                                      int64_t k, MergeType round_inputs, int64_t max_candidates) {
  if (k < 1 || k > n)
    throw Error("magnitude selection: keep " + std::to_string(k) + " of " + std::to_string(n) +
                " entries");
  if (!x.data || !base.data) throw Error("magnitude selection: null tensor");
  const MergeTable& t = merge_table(isa);
  // Radix selection on the float32 bits of |delta| (for non-negative floats
  // the bits order as the values; NaN above inf, as topk ranks it):
  // the high 16 bits, then the low 16 bits within the high half that holds
  // the k-th largest.
  constexpr int64_t kBins = 1 << 16;
  std::mutex mu;
  auto histogram = [&](auto bin_of) {  // bin_of(bits) -> bin or -1
    std::vector<int64_t> total(kBins, 0);
    over_ranges(n, [&](int64_t r0, int64_t r1) {
      std::vector<int64_t> local(size_t(kBins), 0);
      delta_bits_pieces(t, x, base, round_inputs, r0, r1,
                        [&](int64_t i0, int64_t i1, const uint32_t* bits) {
                          for (int64_t e = 0; e < i1 - i0; ++e) {
                            const int64_t b = bin_of(bits[e]);
                            if (b >= 0) ++local[size_t(b)];
                          }
                        });
      std::lock_guard<std::mutex> lock(mu);
      for (int64_t b = 0; b < kBins; ++b) total[size_t(b)] += local[size_t(b)];
    });
    return total;
  };
  // the bin holding the `need`-th largest: (bin, count above it)
  auto find = [&](const std::vector<int64_t>& h, int64_t need) {
    int64_t above = 0;
    for (int64_t b = kBins - 1; b >= 0; --b) {
      if (above + h[size_t(b)] >= need) return std::pair<int64_t, int64_t>{b, above};
      above += h[size_t(b)];
    }
    throw Error("magnitude selection: internal: fewer entries than counted");
  };
  const auto hi = histogram([](uint32_t v) { return int64_t(v >> 16); });
  const auto [hbin, above_hi] = find(hi, k);
  MergeCombine::Keep keep;
  if (hi[size_t(hbin)] <= (max_candidates < 0 ? kMaxCandidates : max_candidates)) {
    // one more pass collects the high bin's entries, (index << 16 | low bits) in index order
    std::map<int64_t, std::vector<uint64_t>> by_range;
    over_ranges(n, [&](int64_t r0, int64_t r1) {
      std::vector<uint64_t> mine;
      delta_bits_pieces(t, x, base, round_inputs, r0, r1,
                        [&](int64_t i0, int64_t i1, const uint32_t* bits) {
                          for (int64_t e = 0; e < i1 - i0; ++e)
                            if ((bits[e] >> 16) == uint32_t(hbin))
                              mine.push_back(uint64_t(i0 + e) << 16 | (bits[e] & 0xffffu));
                        });
      std::lock_guard<std::mutex> lock(mu);
      by_range[r0] = std::move(mine);
    });
    std::vector<int64_t> lo(size_t(kBins), 0);
    for (const auto& [r0, c] : by_range)
      for (uint64_t v : c) ++lo[size_t(v & 0xffffu)];
    const auto [lbin, above_lo] = find(lo, k - above_hi);
    keep.threshold_bits = (uint32_t(hbin) << 16) | uint32_t(lbin);
    const int64_t ties_kept = k - above_hi - above_lo;  // 1 .. lo[lbin]
    keep.tie_cut = n;                                   // every tie
    if (ties_kept == lo[size_t(lbin)]) return keep;
    int64_t seen = 0;
    for (const auto& [r0, c] : by_range)
      for (uint64_t v : c)
        if ((v & 0xffffu) == uint64_t(lbin) && ++seen == ties_kept) {
          keep.tie_cut = int64_t(v >> 16);
          return keep;
        }
    throw Error("magnitude selection: internal: fewer ties than counted");
  }
  // a high bin too large to hold: its low-bits histogram, then the tie's index in two passes
  const auto lo = histogram([hb = uint32_t(hbin)](uint32_t v) {
    return (v >> 16) == hb ? int64_t(v & 0xffffu) : int64_t{-1};
  });
  const auto [lbin, above_lo] = find(lo, k - above_hi);
  const uint32_t thr_bits = (uint32_t(hbin) << 16) | uint32_t(lbin);
  keep.threshold_bits = thr_bits;
  const int64_t ties_kept = k - above_hi - above_lo;  // 1 .. lo[lbin]
  if (ties_kept == lo[size_t(lbin)]) {
    keep.tie_cut = n;  // every tie
    return keep;
  }
  // the index of the ties_kept-th entry equal to the threshold: count per block, then scan one
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<int64_t> per_block(size_t(blocks), 0);
  over_ranges(n, [&](int64_t r0, int64_t r1) {
    delta_bits_pieces(t, x, base, round_inputs, r0, r1,
                      [&](int64_t i0, int64_t i1, const uint32_t* bits) {
                        per_block[size_t(i0 / kBlock)] = std::count(bits, bits + (i1 - i0), thr_bits);
                      });
  });
  int64_t seen = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (seen + per_block[size_t(b)] < ties_kept) {
      seen += per_block[size_t(b)];
      continue;
    }
    const int64_t i0 = b * kBlock, i1 = std::min(n, i0 + kBlock);
    std::vector<uint32_t> buf(size_t(i1 - i0));
    t.abs_delta_bits(x, base, round_inputs, i0, i1, buf.data());
    for (int64_t e = 0; e < i1 - i0; ++e)
      if (buf[size_t(e)] == thr_bits && ++seen == ties_kept) {
        keep.tie_cut = i0 + e;
        return keep;
      }
  }
  throw Error("magnitude selection: internal: fewer ties than counted");
}

MergeCombine::Keep magnitude_keep(MergeInput x, MergeInput base, int64_t n, int64_t k,
                                  MergeType round_inputs) {
  return magnitude_keep_isa(active_isa(), x, base, n, k, round_inputs);
}

}  // namespace finmoe::kernels
