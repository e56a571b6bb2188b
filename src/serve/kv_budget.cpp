// `serve --kv-cache-memory` as a size or a share of the available memory,
// and the start-up capacity warning (server.h).
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "finmoe/error.h"
#include "finmoe/server.h"

#ifdef FINMOE_HAVE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace finmoe {

KvCacheMemory parse_kv_cache_memory(const std::string& text) {
  const std::string flag = "--kv-cache-memory '" + text + "'";
  const std::string usage = " (a size such as 2GiB or 512MiB, or a share of the available memory: 0.5 or 50%)";
  KvCacheMemory m;
  const bool percent = !text.empty() && text.back() == '%';
  const std::string number = percent ? text.substr(0, text.size() - 1) : text;
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(number, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  const bool bare = pos > 0 && pos == number.size() && number.find_first_of("xXpP") == std::string::npos;
  if (percent) {
    if (!bare || !std::isfinite(v) || v <= 0 || v > 100)
      throw Error(flag + ": a percentage must be a number in (0, 100]" + usage);
    m.fraction = v / 100;
    return m;
  }
  if (bare && v > 0 && v <= 1 && number.find('.') != std::string::npos) {
    m.fraction = v;  // "0.5", "1.0": a share
    return m;
  }
  if (bare && v == 1) {
    m.fraction = 1;  // "1": all of it (one byte would hold no block)
    return m;
  }
  if (bare && std::isfinite(v) && v > 1 && std::floor(v) != v)
    throw Error(flag + ": a share must be in (0, 1]; a size needs a unit or a whole number of bytes" + usage);
  try {
    m.bytes = parse_byte_size(text);
  } catch (const Error&) {
    throw Error(flag + " is neither a size nor a share" + usage);
  }
  if (m.bytes <= 0) throw Error(flag + ": the KV cache needs more than 0 bytes" + usage);
  return m;
}

int64_t mem_available_bytes(const std::string& meminfo) {
  std::istringstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    int64_t kib = -1;
    std::string unit;
    fields >> kib >> unit;
    if (kib < 0 || unit != "kB") throw Error("/proc/meminfo: cannot read the MemAvailable line '" + line + "'");
    return kib * 1024;
  }
  throw Error("/proc/meminfo has no MemAvailable line (Linux 3.14 or later reports it)");
}

namespace {

// Free memory of the GPU `device` names ("cuda", "cuda:N") now, in bytes,
// after libtorch hands back the blocks its caching allocator holds unused
// (loading the weights leaves some): the memory a KV cache can still take.
int64_t free_gpu_memory_bytes(const std::string& device) {
  const std::string flag = "--kv-cache-memory as a share of free GPU memory (--device " + device + ")";
  int index = 0;
  if (device.size() > 5) {
    const std::string n = device.substr(5);
    if (device.compare(0, 5, "cuda:") != 0 || n.find_first_not_of("0123456789") != std::string::npos || n.size() > 4)
      throw Error(flag + ": expected cuda or cuda:N");
    index = std::stoi(n);
  }
#ifdef FINMOE_HAVE_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = index;
  cudaError_t e = cudaSetDevice(index);
  size_t free_bytes = 0, total_bytes = 0;
  if (e == cudaSuccess) e = cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaSetDevice(previous);
  if (e != cudaSuccess) throw Error(flag + ": " + cudaGetErrorString(e) + "; give a size (e.g. 20GiB)");
  return int64_t(free_bytes);
#else
  (void)index;
  throw Error(flag + ": this finmoe build has no CUDA (build it against a CUDA libtorch); give a size (e.g. 20GiB)");
#endif
}

}  // namespace

int64_t resolve_kv_cache_memory(const KvCacheMemory& m, const std::string& device) {
  if (m.bytes > 0) return m.bytes;
  if (device.rfind("cuda", 0) == 0) return int64_t(double(free_gpu_memory_bytes(device)) * m.fraction);
  if (device != "cpu")
    throw Error("--kv-cache-memory as a share: --device " + device + " is neither cpu nor cuda[:N]; give a size");
  std::ifstream f("/proc/meminfo");
  std::stringstream text;
  text << f.rdbuf();
  if (!f) throw Error("--kv-cache-memory as a share: cannot read /proc/meminfo; give a size (e.g. 2GiB)");
  return int64_t(double(mem_available_bytes(text.str())) * m.fraction);
}

std::string kv_capacity_warning(int64_t fit, int64_t max_model_len, int64_t cache_tokens) {
  if (fit >= 4) return "";
  std::ostringstream w;
  w << "finmoe: warning: the KV cache (" << cache_tokens << " tokens) holds " << fit << " sequence(s) of the full context ("
    << max_model_len << " tokens) at once, fewer than 4";
  if (fit == 0) w << "; a sequence ends with \"length\" at " << cache_tokens << " tokens";
  w << ". Raise --kv-cache-memory or lower --max-model-len.\n";
  return w.str();
}

std::string engine_error_with_flags(std::string message) {
  static const std::pair<const char*, const char*> flags[] = {
      {"EngineOptions.kv_cache_bytes", "--kv-cache-memory"},
      {"EngineOptions.max_model_len", "--max-model-len"},
      {"EngineOptions.block_size", "--block-size"},
      {"EngineOptions.max_num_seqs", "--max-num-seqs"},
      {"EngineOptions.max_batched_tokens", "--max-batched-tokens"}};
  for (const auto& [field, flag] : flags)
    for (size_t at = message.find(field); at != std::string::npos; at = message.find(field, at))
      message.replace(at, std::strlen(field), flag);
  return message;
}

}  // namespace finmoe
