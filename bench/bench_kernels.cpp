// Decode-kernel throughput against the machine's memory read bandwidth.
// Prints, for the Qwen2-0.5B linears at M = 1, 4, 16: time, GB/s of weights
// streamed, GFLOP/s, and GB/s as a fraction of a plain 2-thread read of a
// 1 GiB buffer measured in the same run; then the per-token chain (24 layers
// x 7 linears + the tied lm_head) at M = 1 as tokens/s vs the bandwidth floor;
// `gemm`: the same linears at prefill sizes against torch::linear.
// `chain8`: the chain with int8 weights (kernels/qlinear.h), per output
// channel and per group of 32, bf16 scales; `gemm8`: int8 prefill products
// against the bf16 kernels on the same shapes. `attention [CONTEXT ...]`:
// decode attention of 16 sequences at long context (default 2048).
// Numbers on a shared VM are noisy: compare ratios within one run.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "finmoe/bench.h"
#include "kernels/attention.h"
#include "kernels/cpu_features.h"
#include "kernels/linear.h"
#include "kernels/linear_isa.h"
#include "kernels/ops.h"
#include "kernels/qlinear.h"
#include "kernels/thread_pool.h"

namespace {

using finmoe::kernels::ThreadPool;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Bandwidth in GB/s: median and best of the repetitions.
struct Bandwidth {
  double median_gbs, best_gbs;
};

// Random bf16 weights in [-0.05, 0.05): real data, so every page is backed and never shared.
std::vector<uint16_t> random_bf16(size_t n, uint32_t seed) {
  std::vector<uint16_t> w(n);
  ThreadPool::global().parallel_for(static_cast<int64_t>(n), 1 << 16, [&](int64_t b, int64_t e) {
    uint32_t s = seed * 2654435761u + static_cast<uint32_t>(b);
    for (int64_t i = b; i < e; ++i) {
      s = s * 1664525u + 1013904223u;
      const float f = (static_cast<float>(s >> 8) / 16777216.f - 0.5f) * 0.1f;
      uint32_t u;
      std::memcpy(&u, &f, 4);
      w[static_cast<size_t>(i)] = static_cast<uint16_t>(u >> 16);
    }
  });
  return w;
}

// Bandwidth of samples of the shared read probe (finmoe/bench.h: a 1 GiB
// buffer summed on all pool threads), taken between kernel timings: the
// machine's bandwidth drifts by tens of percent within seconds.
Bandwidth bandwidth_of(const std::vector<double>& gb_s) {
  return {median(gb_s), *std::max_element(gb_s.begin(), gb_s.end())};
}

Bandwidth measure(finmoe::ReadBandwidthProbe& probe, int reps) {
  std::vector<double> gb_s;
  for (int r = 0; r < reps; ++r) gb_s.push_back(probe.sample_gb_s());
  return bandwidth_of(gb_s);
}

struct Shape {
  const char* name;
  int64_t n, k;
  bool bias;
};

const Shape kLayerShapes[] = {
    {"q_proj", 896, 896, true},      {"k_proj", 128, 896, true},      {"v_proj", 128, 896, true},
    {"o_proj", 896, 896, false},     {"gate_proj", 4864, 896, false}, {"up_proj", 4864, 896, false},
    {"down_proj", 896, 4864, false},
};
const Shape kLmHead = {"lm_head", 151936, 896, false};

// Times linear_bf16 on `copies` distinct weight copies in rotation (so small
// layers stream from memory as in a real forward, not from cache).
void bench_shape(const Shape& s, finmoe::ReadBandwidthProbe& probe) {
  const size_t w_elems = static_cast<size_t>(s.n * s.k);
  const size_t w_bytes = w_elems * 2;
  const size_t copies = std::max<size_t>(1, std::min<size_t>(4096, (size_t{512} << 20) / w_bytes));
  const std::vector<uint16_t> w = random_bf16(w_elems * copies, 7);
  std::vector<float> bias(static_cast<size_t>(s.n), 0.01f);
  for (int64_t M : {1, 4, 16}) {
    const Bandwidth bw = measure(probe, 3);  // just before, as the reference for this line
    std::vector<float> x(static_cast<size_t>(M * s.k), 0.5f), y(static_cast<size_t>(M * s.n));
    const int reps = static_cast<int>(std::max<size_t>(10, std::min<size_t>(400, copies * 4)));
    std::vector<double> times;
    for (int r = -2; r < reps; ++r) {  // two warm-up calls
      const uint16_t* wc = w.data() + (static_cast<size_t>(r + 2) % copies) * w_elems;
      const auto t0 = Clock::now();
      finmoe::kernels::linear_bf16(x.data(), M, s.k, wc, s.n, s.bias ? bias.data() : nullptr,
                                   y.data());
      const double t = seconds_since(t0);
      if (r >= 0) times.push_back(t);
    }
    const double t = median(times);
    const double gbs = static_cast<double>(w_bytes) / t / 1e9;
    const double gbs_best = static_cast<double>(w_bytes) / best(times) / 1e9;
    const double gflops = 2.0 * static_cast<double>(M * s.n * s.k) / t / 1e9;
    std::printf(
        "%-9s %6lld x %-4lld M=%-2lld %8.1f us %5.1f GB/s (best %5.1f) %6.1f GFLOP/s "
        "%4.0f%% of read bw (best/best %4.0f%%)\n",
        s.name, static_cast<long long>(s.n), static_cast<long long>(s.k), static_cast<long long>(M),
        t * 1e6, gbs, gbs_best, gflops, 100.0 * gbs / bw.median_gbs,
        100.0 * gbs_best / bw.best_gbs);
  }
}

// One layer's weights in the chain: bf16, or int8 (from the bf16 ones) with bf16 scales.
struct ChainWeights {
  std::vector<uint16_t> bf16;
  std::vector<int8_t> q;
  std::vector<uint16_t> scale;
  size_t bytes() const { return bf16.size() * 2 + q.size() + scale.size() * 2; }
};

ChainWeights chain_weights(const Shape& s, uint32_t seed, const finmoe::kernels::Int8Format* f) {
  ChainWeights w;
  w.bf16 = random_bf16(static_cast<size_t>(s.n * s.k), seed);
  if (!f) return w;
  std::vector<float> wf(w.bf16.size());
  for (size_t i = 0; i < wf.size(); ++i) {
    const uint32_t u = uint32_t{w.bf16[i]} << 16;
    std::memcpy(&wf[i], &u, 4);
  }
  w.q.resize(wf.size());
  w.scale.resize(static_cast<size_t>(s.n * finmoe::kernels::int8_scales_per_row(*f, s.k)));
  finmoe::kernels::quantize_int8(wf.data(), s.n, s.k, *f, w.q.data(), w.scale.data());
  w.bf16.clear();
  return w;
}

// The per-token chain at M = 1 with every layer's weights distinct (~0.99 GB
// in bf16, ~0.5 GB in int8): `f` null for bf16 weights.
void bench_chain(finmoe::ReadBandwidthProbe& probe, const finmoe::kernels::Int8Format* f) {
  const int n_layers = 24;
  std::vector<ChainWeights> layers;
  size_t bytes = 0;
  for (int l = 0; l < n_layers; ++l)
    for (const Shape& s : kLayerShapes) {
      layers.push_back(chain_weights(s, 100 + l, f));
      bytes += layers.back().bytes();
    }
  layers.push_back(chain_weights(kLmHead, 9, f));
  bytes += layers.back().bytes();
  std::vector<float> x(4864, 0.5f), y(static_cast<size_t>(kLmHead.n)), bias(4864, 0.01f);
  const auto linear = [&](const ChainWeights& w, const Shape& s) {
    const float* b = s.bias ? bias.data() : nullptr;
    if (f)
      finmoe::kernels::linear_int8(finmoe::kernels::ElemType::kF32, x.data(), 1, s.k, w.q.data(),
                                   w.scale.data(), *f, s.n, b, finmoe::kernels::ElemType::kF32,
                                   y.data());
    else
      finmoe::kernels::linear_bf16(x.data(), 1, s.k, w.bf16.data(), s.n, b, y.data());
  };
  std::vector<double> times, probe_gb_s;
  for (int tok = -1; tok < 15; ++tok) {
    if (tok >= 0) probe_gb_s.push_back(probe.sample_gb_s());  // interleaved with the tokens
    const auto t0 = Clock::now();
    size_t i = 0;
    for (int l = 0; l < n_layers; ++l)
      for (const Shape& s : kLayerShapes) linear(layers[i++], s);
    linear(layers[i], kLmHead);
    if (tok >= 0) times.push_back(seconds_since(t0));
  }
  const Bandwidth bw = bandwidth_of(probe_gb_s);
  std::printf("memory read bandwidth during the chain: median %.1f GB/s, best %.1f GB/s\n",
              bw.median_gbs, bw.best_gbs);
  const double t = median(times), tb = best(times);
  const double gb = static_cast<double>(bytes) / 1e9;
  std::printf(
      "chain %s M=1: %.3f GB/token, median %.2f ms = %.1f tokens/s (%.0f%% of the floor "
      "%.1f tokens/s); best %.2f ms = %.1f tokens/s (%.0f%% of the best floor %.1f)\n",
      !f ? "bf16" : f->group ? "int8/group32" : "int8/channel", gb, t * 1e3, 1.0 / t,
      100.0 * gb / t / bw.median_gbs, bw.median_gbs / gb, tb * 1e3, 1.0 / tb,
      100.0 * gb / tb / bw.best_gbs, bw.best_gbs / gb);
}

// FineRMoE's routed experts at decode batch 16 (or any number of tokens:
// experts-prefill runs 512, about 8 tokens an expert), as MoeImpl::experts_grouped
// runs them: 128 experts of gate/up [152, 896] and down [448, 152] in bf16
// (the finermoe preset on the Qwen2-0.5B shape), 16 tokens choosing one
// expert in each of the two output slices, every layer's experts distinct
// (12 layers, 1.2 GB: the steps stream from memory). Per step and layer one
// linear_batch for the gate and up products, one SwiGLU, one linear_batch for
// the down products. GB/s counts the chosen experts' bytes once each.
// `warm`: each layer's products also run once, untimed, just before the timed
// run, which then reads weights it has just read (from the caches, as far as
// 19 MB fit): the most that prefetching the chosen experts ahead could buy.
void bench_experts(finmoe::ReadBandwidthProbe& probe, bool warm, int64_t kTokens) {
  using finmoe::kernels::ElemType;
  using finmoe::kernels::LinearProduct;
  constexpr int64_t kLayers = 12, kExperts = 128, kSlices = 2;
  constexpr int64_t D = 896, I = 152, S = D / kSlices;
  const int64_t per_expert = 2 * I * D + S * I;  // elements
  const std::vector<uint16_t> w = random_bf16(size_t(kLayers * kExperts * per_expert), 11);
  const std::vector<uint16_t> x = random_bf16(size_t(kTokens * D), 12);
  const int64_t pairs = kTokens * kSlices;
  std::vector<uint16_t> xs(size_t(pairs * D)), gate(size_t(pairs * I)), up(size_t(pairs * I)),
      ys(size_t(pairs * S));
  uint32_t rng = 12345;
  const auto next = [&] { return rng = rng * 1664525u + 1013904223u; };
  std::vector<double> times, gb, probe_gb_s;
  double gate_up_s = 0, down_s = 0;  // of the timed products, the two linear_batch calls
  for (int step = -2; step < 40; ++step) {
    if (step >= 0 && step % 4 == 0) probe_gb_s.push_back(probe.sample_gb_s());
    double t = 0, bytes = 0;
    for (int64_t l = 0; l < kLayers; ++l) {
      std::vector<int64_t> chosen;  // (expert, token) pairs sorted by expert
      for (int64_t tok = 0; tok < kTokens; ++tok)
        for (int64_t g = 0; g < kSlices; ++g)
          chosen.push_back((g * (kExperts / kSlices) + (next() >> 8) % (kExperts / kSlices)) * kTokens + tok);
      std::sort(chosen.begin(), chosen.end());
      auto t0 = Clock::now();
      std::vector<LinearProduct> gate_up, down;
      for (int64_t row = 0; row < pairs;) {
        const int64_t e = chosen[size_t(row)] / kTokens;
        int64_t n = 0;
        for (; row + n < pairs && chosen[size_t(row + n)] / kTokens == e; ++n)
          std::memcpy(&xs[size_t((row + n) * D)], &x[size_t(chosen[size_t(row + n)] % kTokens * D)], D * 2);
        const uint16_t* we = w.data() + (l * kExperts + e) * per_expert;
        gate_up.push_back({&xs[size_t(row * D)], n, we, I, nullptr, &gate[size_t(row * I)]});
        gate_up.push_back({&xs[size_t(row * D)], n, we + I * D, I, nullptr, &up[size_t(row * I)]});
        down.push_back({&gate[size_t(row * I)], n, we + 2 * I * D, S, nullptr, &ys[size_t(row * S)]});
        bytes += double(per_expert) * 2;
        row += n;
      }
      const auto products = [&] {
        const auto a = Clock::now();
        finmoe::kernels::linear_batch(ElemType::kBF16, D, ElemType::kBF16, gate_up, ElemType::kBF16);
        if (step >= 0) gate_up_s += seconds_since(a);
        finmoe::kernels::swiglu(ElemType::kBF16, gate.data(), up.data(), pairs * I, gate.data());
        const auto b = Clock::now();
        finmoe::kernels::linear_batch(ElemType::kBF16, I, ElemType::kBF16, down, ElemType::kBF16);
        if (step >= 0) down_s += seconds_since(b);
      };
      if (warm) {  // the setup above stays timed: only the products move out
        const double setup = seconds_since(t0);
        products();
        t0 = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(setup));
      }
      products();
      t += seconds_since(t0);
    }
    if (step >= 0) {
      times.push_back(t / kLayers);
      gb.push_back(bytes / t / 1e9);
    }
  }
  const Bandwidth bw = bandwidth_of(probe_gb_s);
  const double calls = double(times.size() * (warm ? 2 : 1) * kLayers);
  std::printf(
      "FineRMoE experts%s, %lld tokens (%lld pairs/layer): median %.0f us/layer (gate/up %.0f, "
      "down %.0f), %.1f GB/s of the chosen experts (best %.1f) = %.0f%% of the read probe's median "
      "%.1f GB/s\n",
      warm ? " (warm: weights just read)" : "", static_cast<long long>(kTokens),
      static_cast<long long>(pairs), median(times) * 1e6, gate_up_s / calls * 1e6,
      down_s / calls * 1e6, median(gb), *std::max_element(gb.begin(), gb.end()),
      100.0 * median(gb) / bw.median_gbs, bw.median_gbs);
}

// Decode attention at long context: 16 sequences of `context` positions, one
// query each, Qwen2-0.5B heads (14 query heads, 2 kv heads, head_dim 64),
// bf16 cache in scattered slots (as the paged cache leaves them), per layer
// call: microseconds and GB/s of K and V read, against the read probe.
void bench_attention(finmoe::ReadBandwidthProbe& probe, int64_t context) {
  using finmoe::kernels::ElemType;
  constexpr int64_t kSeqs = 16, H = 14, Hkv = 2, d = 64;
  const int64_t slots = kSeqs * context;
  const std::vector<uint16_t> k = random_bf16(size_t(slots * Hkv * d), 21);
  const std::vector<uint16_t> v = random_bf16(size_t(slots * Hkv * d), 22);
  const std::vector<uint16_t> q = random_bf16(size_t(kSeqs * H * d), 23);
  std::vector<uint16_t> out(size_t(kSeqs * H * d));
  // slots: blocks of 16 positions in a shuffled order, as a paged cache hands them out
  std::vector<int64_t> blocks(size_t(slots / 16));
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = int64_t(i);
  uint32_t rng = 777;
  for (size_t i = blocks.size(); i > 1; --i) {
    rng = rng * 1664525u + 1013904223u;
    std::swap(blocks[i - 1], blocks[(rng >> 8) % i]);
  }
  std::vector<int64_t> slot_of(static_cast<size_t>(slots));
  for (int64_t p = 0; p < slots; ++p) slot_of[size_t(p)] = blocks[size_t(p / 16)] * 16 + p % 16;
  std::vector<finmoe::kernels::AttentionSeq> seqs(kSeqs);
  for (int64_t i = 0; i < kSeqs; ++i)
    seqs[size_t(i)] = {i, 1, context, slot_of.data() + i * context};
  finmoe::kernels::AttentionArgs a;
  a.q_t = ElemType::kBF16;
  a.q = q.data();
  a.n_head = H;
  a.n_kv_head = Hkv;
  a.head_dim = d;
  a.cache_t = ElemType::kBF16;
  a.k_cache = k.data();
  a.v_cache = v.data();
  a.seqs = seqs.data();
  a.n_seqs = kSeqs;
  a.scale = 0.125f;
  a.out_t = ElemType::kBF16;
  a.out = out.data();
  std::vector<double> times, probe_gb_s;
  for (int r = -2; r < 30; ++r) {
    if (r >= 0 && r % 6 == 0) probe_gb_s.push_back(probe.sample_gb_s());
    const auto t0 = Clock::now();
    finmoe::kernels::paged_attention(a);
    if (r >= 0) times.push_back(seconds_since(t0));
  }
  const double bytes = double(2 * slots * Hkv * d * 2);
  const Bandwidth bw = bandwidth_of(probe_gb_s);
  std::printf(
      "decode attention, %lld sequences x %lld positions (H 14, Hkv 2, d 64, bf16 cache): median "
      "%.0f us/layer (best %.0f), %.1f GB/s of K and V = %.0f%% of the read probe's median %.1f "
      "GB/s\n",
      static_cast<long long>(kSeqs), static_cast<long long>(context), median(times) * 1e6,
      best(times) * 1e6, bytes / median(times) / 1e9,
      100.0 * bytes / median(times) / 1e9 / bw.median_gbs, bw.median_gbs);
}

// bf16 products on AMX tiles with W read in place (linear_bf16_rows_amx)
// against, below 32 rows of x, the vector few-row kernels (set_gemm_amx(false))
// and, from 32, the tiled GEMM (set_amx_gemm_min_rows(kGemmMinRows)),
// alternating: FineRMoE's routed experts as a prefill hands them out (64
// experts' gate [152, 896] in one linear_batch; their down [448, 152]) and
// the dense gate_proj [4864, 896] and down_proj [896, 4864] of batched
// decode. Every repetition reads weights no other has read (a 768 MiB pool),
// so they come from memory as in a forward. Median microseconds per call and
// the weights' GB/s.
void bench_rows_amx() {
  using finmoe::kernels::ElemType;
  using finmoe::kernels::LinearProduct;
  if (!finmoe::kernels::gemm_amx()) {
    std::printf("rows-amx: this CPU (or FINMOE_AMX=0) has no AMX tiles\n");
    return;
  }
  struct Case {
    const char* name;
    int64_t products, N, K;
  };
  const Case cases[] = {{"experts gate 64 x [152, 896]", 64, 152, 896},
                        {"experts down 64 x [448, 152]", 64, 448, 152},
                        {"gate_proj [4864, 896]", 1, 4864, 896},
                        {"down_proj [896, 4864]", 1, 896, 4864}};
  const int64_t rows[] = {1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 31, 32, 48, 64, 96, 128};
  const int64_t max_rows = 128, gemm_default = finmoe::kernels::amx_gemm_min_rows();
  const std::vector<uint16_t> pool = random_bf16(size_t(384) << 20, 31);
  const std::vector<uint16_t> x = random_bf16(size_t(64 * max_rows * 896), 32);
  std::vector<uint16_t> y(size_t(64 * max_rows * 896));
  size_t at = 0;  // next unread weights in the pool
  for (const Case& c : cases)
    for (const int64_t M : rows) {
      const bool gemm =
          M >= finmoe::kernels::kGemmMinRows;  // the other side: the GEMM or the vector kernels
      const size_t per_call = size_t(c.products * c.N * c.K);
      std::vector<double> t_amx, t_other;
      for (int rep = -1; rep < 9; ++rep)
        for (const bool amx : {true, false}) {
          if (at + per_call > pool.size()) at = 0;
          std::vector<LinearProduct> ps;
          for (int64_t p = 0; p < c.products; ++p)
            ps.push_back({x.data() + p * M * c.K, M, pool.data() + at + size_t(p * c.N * c.K), c.N,
                          nullptr, y.data() + p * M * c.N});
          at += per_call;
          finmoe::kernels::set_gemm_amx(amx || gemm);
          finmoe::kernels::set_amx_gemm_min_rows(amx ? INT32_MAX : finmoe::kernels::kGemmMinRows);
          const auto t0 = Clock::now();
          finmoe::kernels::linear_batch(ElemType::kBF16, c.K, ElemType::kBF16, ps, ElemType::kBF16);
          const double t = seconds_since(t0);
          if (rep >= 0) (amx ? t_amx : t_other).push_back(t);
        }
      finmoe::kernels::set_gemm_amx(true);
      finmoe::kernels::set_amx_gemm_min_rows(gemm_default);
      const double bytes = double(per_call) * 2, a = median(t_amx), v = median(t_other);
      std::printf(
          "%-30s M=%-3lld in place %7.0f us %5.1f GB/s   %s %7.0f us %5.1f GB/s   (%.2fx)\n",
          c.name, static_cast<long long>(M), a * 1e6, bytes / a / 1e9, gemm ? "GEMM  " : "vector",
          v * 1e6, bytes / v / 1e9, v / a);
    }
}

// Prefill-sized int8 products (per channel, bf16 scales) against the bf16
// kernels on the same shapes: GFLOP/s of each, median of the repetitions.
void bench_gemm8() {
  using finmoe::kernels::ElemType;
  const finmoe::kernels::Int8Format f{0, ElemType::kBF16};
  for (const Shape& s : kLayerShapes) {
    const ChainWeights wb = chain_weights(s, 5, nullptr), w8 = chain_weights(s, 5, &f);
    for (int64_t M : {1, 4, 8, 16, 32, 128}) {
      std::vector<uint16_t> x(static_cast<size_t>(M * s.k), 0x3f00), y(static_cast<size_t>(M * s.n));
      const int reps = M >= 128 ? 5 : 20;
      std::vector<double> t8, tb;
      for (int r = -1; r < reps; ++r) {
        auto t0 = Clock::now();
        finmoe::kernels::linear_int8(ElemType::kBF16, x.data(), M, s.k, w8.q.data(), w8.scale.data(),
                                     f, s.n, nullptr, ElemType::kBF16, y.data());
        const double a = seconds_since(t0);
        t0 = Clock::now();
        finmoe::kernels::linear(ElemType::kBF16, x.data(), M, s.k, ElemType::kBF16, wb.bf16.data(),
                                s.n, nullptr, ElemType::kBF16, y.data());
        const double b = seconds_since(t0);
        if (r >= 0) {
          t8.push_back(a);
          tb.push_back(b);
        }
      }
      const double flop = 2.0 * double(M) * double(s.n) * double(s.k);
      std::printf("%-9s %5lld x %-5lld M=%-4lld int8 %7.1f GFLOP/s  bf16 %7.1f GFLOP/s  (%.2fx)\n",
                  s.name, static_cast<long long>(s.n), static_cast<long long>(s.k),
                  static_cast<long long>(M), flop / median(t8) / 1e9, flop / median(tb) / 1e9,
                  median(tb) / median(t8));
    }
  }
}

// Many-row (prefill) products: kernels::linear (skinny kernel up to 31 rows,
// tiled GEMM from 32) against torch::linear on the same tensors, bf16 and
// float32 weights, libtorch on as many threads as the kernel pool; median of
// the repetitions, GFLOP/s of each and the ratio. Where the bf16 GEMM runs on
// AMX tiles, also the same kernels with the tiles off (vector tiles only), in
// the same repetitions.
void bench_gemm() {
  torch::NoGradGuard no_grad;
  torch::set_num_threads(ThreadPool::global().num_threads());
  const bool amx = finmoe::kernels::gemm_amx();
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    const auto t = dtype == torch::kFloat32 ? finmoe::kernels::ElemType::kF32
                                            : finmoe::kernels::ElemType::kBF16;
    const bool both = amx && dtype == torch::kBFloat16;
    for (const Shape& s : kLayerShapes) {
      auto w = torch::randn({s.n, s.k}).mul(0.05).to(dtype);
      for (int64_t M : {16, 32, 64, 128, 512}) {
        auto x = torch::randn({M, s.k}).to(dtype);
        auto y = torch::empty({M, s.n}, x.options());
        const int reps = M >= 128 ? 5 : 20;
        std::vector<double> tk, tv, tt;
        const auto kernels = [&] {
          const auto t0 = Clock::now();
          finmoe::kernels::linear(t, x.data_ptr(), M, s.k, t, w.data_ptr(), s.n, nullptr, t,
                                  y.data_ptr());
          return seconds_since(t0);
        };
        for (int r = -1; r < reps; ++r) {
          const double a = kernels();
          double v = 0;
          if (both) {
            finmoe::kernels::set_gemm_amx(false);
            v = kernels();
            finmoe::kernels::set_gemm_amx(true);
          }
          const auto t0 = Clock::now();
          auto yt = torch::linear(x, w);
          const double b = seconds_since(t0);
          if (r >= 0) {
            tk.push_back(a);
            tv.push_back(v);
            tt.push_back(b);
          }
        }
        const double flop = 2.0 * double(M) * double(s.n) * double(s.k);
        const double k = median(tk), tm = median(tt);
        std::printf("%-4s %-9s %5lld x %-5lld M=%-4lld kernels %7.1f GFLOP/s  torch %7.1f GFLOP/s  (%.2fx)",
                    dtype == torch::kFloat32 ? "f32" : "bf16", s.name,
                    static_cast<long long>(s.n), static_cast<long long>(s.k),
                    static_cast<long long>(M), flop / k / 1e9, flop / tm / 1e9, tm / k);
        if (both)
          std::printf("  without AMX %7.1f GFLOP/s (%.2fx)", flop / median(tv) / 1e9,
                      median(tv) / k);
        std::printf("\n");
      }
    }
  }
}

// Fixed cost of one call: parallel_for with an empty body, and a tiny linear.
void bench_overhead() {
  ThreadPool& pool = ThreadPool::global();
  const int reps = 20000;
  auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) pool.parallel_for(1024, 16, [](int64_t, int64_t) {});
  const double pf = seconds_since(t0) / reps;
  std::vector<uint16_t> w = random_bf16(256 * 896, 3);
  std::vector<float> x(896, 0.5f), y(256);
  t0 = Clock::now();
  for (int i = 0; i < reps; ++i)
    finmoe::kernels::linear_bf16(x.data(), 1, 896, w.data(), 256, nullptr, y.data());
  const double lin = seconds_since(t0) / reps;
  std::printf("overhead: empty parallel_for %.2f us, linear_bf16 256x896 M=1 (cached) %.2f us\n",
              pf * 1e6, lin * 1e6);
}

}  // namespace

// Usage: bench_kernels [all|overhead|shapes|chain|chain8|experts|experts-warm|experts-prefill|
//                      gemm|gemm8|rows-amx|attention [CONTEXT...]]  (default all)
int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  ThreadPool& pool = ThreadPool::global();
  std::printf("isa %s, %d threads\n", finmoe::kernels::path_name(), pool.num_threads());
  if (what == "all" || what == "overhead") bench_overhead();
  if (what == "overhead") return 0;
  if (what == "gemm") {
    bench_gemm();
    return 0;
  }
  if (what == "rows-amx") {
    bench_rows_amx();
    return 0;
  }
  if (what == "gemm8") {
    bench_gemm8();
    return 0;
  }
  finmoe::ReadBandwidthProbe probe;
  const Bandwidth bw = measure(probe, 7);
  std::printf("memory read bandwidth (1 GiB, %d threads): median %.1f GB/s, best %.1f GB/s\n",
              pool.num_threads(), bw.median_gbs, bw.best_gbs);
  if (what == "all" || what == "shapes") {
    std::printf("(each line's %% is against 3 bandwidth samples taken just before it)\n");
    for (const Shape& s : kLayerShapes) bench_shape(s, probe);
    bench_shape(kLmHead, probe);
  }
  if (what == "all" || what == "chain") bench_chain(probe, nullptr);
  if (what == "all" || what == "experts") bench_experts(probe, false, 16);
  if (what == "experts-prefill")  // a 512-token prefill: about 8 of the 1024 pairs an expert
    for (int round = 0; round < 3; ++round) bench_experts(probe, false, 512);
  if (what == "experts-warm") {  // the cold run and the warm one, alternating
    for (int round = 0; round < 3; ++round) {
      bench_experts(probe, false, 16);
      bench_experts(probe, true, 16);
    }
  }
  if (what == "attention") {  // [CONTEXT ...]: decode attention at each context (default 2048)
    if (argc <= 2) bench_attention(probe, 2048);
    for (int i = 2; i < argc; ++i) bench_attention(probe, std::atoll(argv[i]));
  }
  if (what == "chain8") {
    const finmoe::kernels::Int8Format channel{0, finmoe::kernels::ElemType::kBF16};
    const finmoe::kernels::Int8Format group{finmoe::kernels::kInt8Group,
                                            finmoe::kernels::ElemType::kBF16};
    bench_chain(probe, &channel);
    bench_chain(probe, &group);
  }
  return 0;
}
