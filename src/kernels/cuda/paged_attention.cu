// Paged attention and RoPE + cache write for the serving step (see the header).
//
// Attention: one block of 128 threads per (work item, kv head, split). The
// item's queries times the GQA group (rows = q_tile * H/Hkv, decode: just
// the group) share every key tile: KT keys of K and V are read once from the
// cache through the block table into shared memory (float32), then each warp
// takes its rows through an online softmax (flash-decoding): lane j scores
// keys j, j+32; the tile's probabilities go through shared memory to the
// P·V product, where each lane owns head dims lane, lane+32, ...
// Scores live in the log2 domain (q pre-scaled by scale * log2 e) so every
// exponential is one exp2f.
#include "kernels/cuda/paged_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>

namespace finmoe::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Keys per shared-memory tile: 64 up to head_dim 128, 32 above (the tile's
// K and V in float32 stay under 64 KB).
int key_tile(int head_dim) { return head_dim <= 128 ? 64 : 32; }

// Dynamic shared memory of one attention block, in 4-byte words.
__host__ __device__ inline int smem_words(int rows, int d, int kt) {
  return 2 * rows * d    // queries, accumulators
         + kt * (d + 1)  // K tile, rows padded by one word (lanes read different rows)
         + kt * d        // V tile
         + kWarps * kt   // one warp's probabilities
         + 2 * rows      // running max and sum
         + kt;           // cache row of each key
}

// K and V rows of keys 0..n_keys-1 (cache rows slot_s[j], kv head kvh) into
// shared memory as float32: 16-byte loads when rows allow them.
template <typename T>
__device__ void load_tile(const T* __restrict__ kc, const T* __restrict__ vc, const int* slot_s,
                          int n_keys, int kvh, int d, int row_elems, bool vec, float* ks,
                          float* vs) {
  constexpr int V = 16 / sizeof(T);
  if (vec) {
    union Pack {
      uint4 u;
      T t[V];
    };
    const int per_row = d / V;
    for (int e = threadIdx.x; e < n_keys * per_row; e += kThreads) {
      const int j = e / per_row, c = (e - j * per_row) * V;
      const int64_t off = int64_t(slot_s[j]) * row_elems + int64_t(kvh) * d + c;
      Pack kp, vp;
      kp.u = *reinterpret_cast<const uint4*>(kc + off);
      vp.u = *reinterpret_cast<const uint4*>(vc + off);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        ks[j * (d + 1) + c + i] = to_float(kp.t[i]);
        vs[j * d + c + i] = to_float(vp.t[i]);
      }
    }
  } else {
    for (int e = threadIdx.x; e < n_keys * d; e += kThreads) {
      const int j = e / d, c = e - j * d;
      const int64_t off = int64_t(slot_s[j]) * row_elems + int64_t(kvh) * d + c;
      ks[j * (d + 1) + c] = to_float(kc[off]);
      vs[j * d + c] = to_float(vc[off]);
    }
  }
}

template <typename T, int KT>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(AttentionArgs a, PagedPlan p, bool vec) {
  extern __shared__ float smem[];
  const int d = a.head_dim, H = a.n_head, G = a.n_head / a.n_kv_head;
  const int rows_max = p.q_tile * G;
  float* qs = smem;                // [rows_max, d] queries * scale * log2 e
  float* acc = qs + rows_max * d;  // [rows_max, d] unnormalised outputs
  float* ks = acc + rows_max * d;  // [KT, d + 1]
  float* vs = ks + KT * (d + 1);   // [KT, d]
  float* ps = vs + KT * d;         // [kWarps, KT]
  float* m_s = ps + kWarps * KT;   // [rows_max] running max (log2 domain)
  float* l_s = m_s + rows_max;     // [rows_max] running sum of exp2(score - max)
  int* slot_s = reinterpret_cast<int*>(l_s + rows_max);  // [KT]

  const int item = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int seq = p.items[2 * item], first = p.items[2 * item + 1];
  const int q_start = p.seqs[3 * seq], q_len = p.seqs[3 * seq + 1], ctx = p.seqs[3 * seq + 2];
  const int nq = min(p.q_tile, q_len - first);
  const int rows = nq * G;               // row r: query first + r / G, head kvh * G + r % G
  const int pos0 = ctx - q_len + first;  // position of the item's first query (-1: padding)
  // Keys any of the item's queries sees: [lo, hi)
  int lo = a.window > 0 ? max(0, pos0 - a.window + 1) : 0;
  int hi = max(lo, pos0 + nq);
  if (a.n_splits > 1) {  // this block's share, whole key tiles
    const int chunk = ((hi - lo + a.n_splits - 1) / a.n_splits + KT - 1) / KT * KT;
    const int s_lo = min(hi, lo + split * chunk);
    hi = min(hi, s_lo + chunk);
    lo = s_lo;
  }
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* q = static_cast<const T*>(a.q);
  const float qscale = a.scale * kLog2e;
  for (int e = tid; e < rows * d; e += kThreads) {
    const int r = e / d, c = e - r * d;
    const int64_t n = q_start + first + r / G, h = kvh * G + r % G;
    qs[e] = to_float(q[(n * H + h) * d + c]) * qscale;
    acc[e] = 0.f;
  }
  for (int r = tid; r < rows; r += kThreads) {
    m_s[r] = -INFINITY;
    l_s[r] = 0.f;
  }

  const T* kc = static_cast<const T*>(a.k_cache);
  const T* vc = static_cast<const T*>(a.v_cache);
  const int32_t* table = p.tables + int64_t(seq) * p.table_stride;
  const int row_elems = a.n_kv_head * d;  // elements per cache row
  for (int kv0 = lo; kv0 < hi; kv0 += KT) {
    const int n_keys = min(KT, hi - kv0);
    __syncthreads();  // the previous tile is consumed
    for (int j = tid; j < n_keys; j += kThreads) {
      const int pos = kv0 + j;
      slot_s[j] = table[pos / p.block_size] * p.block_size + pos % p.block_size;
    }
    __syncthreads();
    load_tile<T>(kc, vc, slot_s, n_keys, kvh, d, row_elems, vec, ks, vs);
    __syncthreads();
    for (int r = warp; r < rows; r += kWarps) {
      const int qpos = pos0 + r / G;
      const int klo = a.window > 0 ? qpos - a.window + 1 : 0;
      const float* qr = qs + r * d;
      float s[KT / 32];
      float tile_max = -INFINITY;
#pragma unroll
      for (int t = 0; t < KT / 32; ++t) {
        const int j = lane + 32 * t, kp = kv0 + j;
        float v = -INFINITY;
        if (j < n_keys && kp <= qpos && kp >= klo) {
          const float* kr = ks + j * (d + 1);
          float dot = 0.f;
          for (int c = 0; c < d; ++c) dot = fmaf(qr[c], kr[c], dot);
          v = dot;
        }
        s[t] = v;
        tile_max = fmaxf(tile_max, v);
      }
      tile_max = warp_max(tile_max);
      if (tile_max == -INFINITY) continue;  // no key of this tile is visible to the row
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, tile_max);
      float* pw = ps + warp * KT;
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < KT / 32; ++t) {
        const float pr = exp2f(s[t] - m_new);  // masked keys: exp2(-inf) = 0
        pw[lane + 32 * t] = pr;
        sum += pr;
      }
      sum = warp_sum(sum);
      const float alpha = exp2f(m_old - m_new);  // 0 before the row's first visible key
      __syncwarp();
      const int j_end = min(n_keys, qpos - kv0 + 1);  // later keys are masked for this row
      float* ar = acc + r * d;
      for (int c = lane; c < d; c += 32) {
        float o = ar[c] * alpha;
        for (int j = 0; j < j_end; ++j) o = fmaf(pw[j], vs[j * d + c], o);
        ar[c] = o;
      }
      __syncwarp();
      if (lane == 0) {
        m_s[r] = m_new;
        l_s[r] = l_s[r] * alpha + sum;
      }
    }
  }
  __syncthreads();

  T* out = static_cast<T*>(a.out);
  for (int e = tid; e < rows * d; e += kThreads) {
    const int r = e / d, c = e - r * d;
    const int64_t n = q_start + first + r / G, h = kvh * G + r % G;
    const int64_t row = n * H + h;
    if (a.n_splits == 1) {
      const float l = l_s[r];
      out[row * d + c] = from_float<T>(l > 0.f ? acc[e] / l : 0.f);
    } else {  // [N, H, n_splits, d + 2]: unnormalised output, max, sum
      float* w = a.workspace + (row * a.n_splits + split) * (d + 2);
      w[c] = acc[e];
      if (c == 0) {
        w[d] = m_s[r];
        w[d + 1] = l_s[r];
      }
    }
  }
}

// out[row] = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M), M = max_s m_s;
// zeros for a row that saw no key (padding).
template <typename T>
__global__ void combine_kernel(const float* __restrict__ ws, int n_splits, int d, T* out) {
  const int64_t row = blockIdx.x;
  const float* w = ws + row * n_splits * (d + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_splits; ++s) M = fmaxf(M, w[s * (d + 2) + d]);
  float L = 0.f;
  if (M != -INFINITY)
    for (int s = 0; s < n_splits; ++s) L += w[s * (d + 2) + d + 1] * exp2f(w[s * (d + 2) + d] - M);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float o = 0.f;
    if (L > 0.f) {
      for (int s = 0; s < n_splits; ++s) o += w[s * (d + 2) + c] * exp2f(w[s * (d + 2) + d] - M);
      o /= L;
    }
    out[row * d + c] = from_float<T>(o);
  }
}

template <typename T>
__global__ void rope_write_kernel(RopeWriteArgs a) {
  const int64_t n = blockIdx.x;
  const int d = a.head_dim, half = d / 2;
  const float* cs = a.cos + n * d;
  const float* sn = a.sin + n * d;
  const int slot = a.slots[n];
  T* q = static_cast<T*>(a.q) + n * a.n_head * d;
  const T* k = static_cast<const T*>(a.k) + n * a.n_kv_head * d;
  T* kc = static_cast<T*>(a.k_cache) + int64_t(slot) * a.n_kv_head * d;
  const int q_pairs = a.n_head * half;
  const int pairs = q_pairs + (slot >= 0 ? a.n_kv_head * half : 0);
  for (int e = threadIdx.x; e < pairs; e += blockDim.x) {
    const bool is_q = e < q_pairs;
    const int pe = is_q ? e : e - q_pairs;
    const int h = pe / half, i = pe - h * half;
    const int ia = a.interleaved ? 2 * i : i, ib = a.interleaved ? 2 * i + 1 : i + half;
    const T* src = is_q ? q + h * d : k + h * d;
    T* dst = is_q ? q + h * d : kc + h * d;
    const float xa = to_float(src[ia]), xb = to_float(src[ib]);
    dst[ia] = from_float<T>(xa * cs[ia] - xb * sn[ia]);
    dst[ib] = from_float<T>(xb * cs[ib] + xa * sn[ib]);
  }
  if (slot < 0) return;
  const T* v = static_cast<const T*>(a.v) + n * a.n_kv_head * d;
  T* vc = static_cast<T*>(a.v_cache) + int64_t(slot) * a.n_kv_head * d;
  for (int e = threadIdx.x; e < a.n_kv_head * d; e += blockDim.x) vc[e] = v[e];
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

int current_device() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess)
    throw std::runtime_error("paged_attention: no current CUDA device");
  return dev;
}

int device_attribute(cudaDeviceAttr attr) {
  int value = 0;
  if (cudaDeviceGetAttribute(&value, attr, current_device()) != cudaSuccess)
    throw std::runtime_error("paged_attention: cannot query the CUDA device");
  return value;
}

template <typename T, int KT>
void launch_attention(const AttentionArgs& a, const PagedPlan& p, cudaStream_t stream) {
  const int rows = p.q_tile * (a.n_head / a.n_kv_head);
  const size_t smem = size_t(smem_words(rows, a.head_dim, KT)) * 4;
  const int limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  if (smem > size_t(limit))
    throw std::invalid_argument("paged_attention: q_tile " + std::to_string(p.q_tile) +
                                " x group " + std::to_string(a.n_head / a.n_kv_head) +
                                " rows of head_dim " + std::to_string(a.head_dim) + " need " +
                                std::to_string(smem) + " bytes of shared memory, the device has " +
                                std::to_string(limit));
  // Raised once per device to the whole opt-in limit: not a stream operation,
  // and the first launch comes before any graph capture.
  static std::atomic<uint64_t> raised{0};
  const uint64_t bit = uint64_t(1) << (current_device() % 64);
  if (!(raised.load() & bit)) {
    cudaFuncSetAttribute(attention_kernel<T, KT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         limit);
    raised.fetch_or(bit);
  }
  constexpr int V = 16 / sizeof(T);
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vec = a.head_dim % V == 0 && aligned(a.k_cache) && aligned(a.v_cache);
  const dim3 grid(unsigned(p.n_items), unsigned(a.n_kv_head), unsigned(a.n_splits));
  attention_kernel<T, KT><<<grid, kThreads, smem, stream>>>(a, p, vec);
  check_launch("paged_attention");
  if (a.n_splits > 1) {
    const int threads = std::min(256, (a.head_dim + 31) / 32 * 32);
    combine_kernel<T><<<unsigned(int64_t(a.n_tokens) * a.n_head), threads, 0, stream>>>(
        a.workspace, a.n_splits, a.head_dim, static_cast<T*>(a.out));
    check_launch("paged_attention (combine)");
  }
}

template <typename T>
void dispatch_tile(const AttentionArgs& a, const PagedPlan& p, cudaStream_t stream) {
  if (key_tile(a.head_dim) == 64)
    launch_attention<T, 64>(a, p, stream);
  else
    launch_attention<T, 32>(a, p, stream);
}

}  // namespace

int64_t attention_workspace_floats(int64_t n_tokens, int64_t n_head, int64_t head_dim,
                                   int32_t n_splits) {
  return n_splits > 1 ? n_tokens * n_head * n_splits * (head_dim + 2) : 0;
}

int32_t attention_splits(int64_t n_items, int64_t n_kv_head, int64_t max_keys) {
  // ~4 resident blocks per multiprocessor keep the loads of one block's
  // tile overlapped with the others' arithmetic
  const int64_t target = 4 * int64_t(device_attribute(cudaDevAttrMultiProcessorCount));
  const int64_t blocks = std::max<int64_t>(1, n_items * n_kv_head);
  if (blocks >= target) return 1;
  const int64_t tiles = (max_keys + 63) / 64;
  const int64_t s = std::min({(target + blocks - 1) / blocks, tiles, int64_t(64)});
  return int32_t(std::max<int64_t>(1, s));
}

void paged_attention(const AttentionArgs& a, const PagedPlan& p, void* stream) {
  if (a.n_head <= 0 || a.n_kv_head <= 0 || a.n_head % a.n_kv_head != 0 || a.head_dim <= 0 ||
      a.head_dim > kMaxHeadDim)
    throw std::invalid_argument("paged_attention: heads " + std::to_string(a.n_head) +
                                " / kv heads " + std::to_string(a.n_kv_head) + " / head_dim " +
                                std::to_string(a.head_dim) +
                                " unsupported (head_dim <= " + std::to_string(kMaxHeadDim) + ")");
  if (p.q_tile < 1 || p.block_size < 1 || a.n_splits < 1 || (a.n_splits > 1 && !a.workspace))
    throw std::invalid_argument(
        "paged_attention: q_tile, block_size and n_splits must be >= 1, "
        "and n_splits > 1 needs a workspace");
  if (p.n_items == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::kF32:
      return dispatch_tile<float>(a, p, s);
    case DType::kF16:
      return dispatch_tile<__half>(a, p, s);
    case DType::kBF16:
      return dispatch_tile<__nv_bfloat16>(a, p, s);
  }
}

void rope_write_kv(const RopeWriteArgs& a, void* stream) {
  if (a.head_dim <= 0 || a.head_dim % 2 != 0)
    throw std::invalid_argument("rope_write_kv: head_dim must be even, got " +
                                std::to_string(a.head_dim));
  if (a.n_tokens == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::kF32:
      rope_write_kernel<float><<<a.n_tokens, kThreads, 0, s>>>(a);
      break;
    case DType::kF16:
      rope_write_kernel<__half><<<a.n_tokens, kThreads, 0, s>>>(a);
      break;
    case DType::kBF16:
      rope_write_kernel<__nv_bfloat16><<<a.n_tokens, kThreads, 0, s>>>(a);
      break;
  }
  check_launch("rope_write_kv");
}

}  // namespace finmoe::kernels::cuda
