// Data parallel over c10d (finmoe/distributed.h): the TCPStore rendezvous,
// Gloo / NCCL process groups, bucketed collectives, batch sharding.
#include "finmoe/distributed.h"

#include <charconv>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <tuple>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>
#include <torch/version.h>

#include <unistd.h>

// Gloo's c10d header needs gloo's own headers (Debian: libgloo-dev); CMake
// defines FINMOE_HAVE_GLOO when it found them. NCCL: FINMOE_HAVE_NCCL, for
// builds against a CUDA libtorch whose nccl.h CMake found.
#if defined(FINMOE_HAVE_GLOO)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if defined(FINMOE_HAVE_NCCL)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "finmoe/dataset.h"
#include "finmoe/error.h"
#include "train/buckets.h"

namespace finmoe {
namespace {

// The class that carries the collectives: libtorch 1.x process groups are
// ProcessGroup subclasses; from 2.0 the backends derive from c10d::Backend.
#if TORCH_VERSION_MAJOR >= 2
using Group = c10d::Backend;
#else
using Group = c10d::ProcessGroup;
#endif

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int64_t env_int(const char* name, const char* value, int64_t lo, int64_t hi) {
  int64_t x = 0;
  const char* end = value + std::char_traits<char>::length(value);
  auto [p, ec] = std::from_chars(value, end, x);
  if (ec != std::errc() || p != end || x < lo || x > hi) {
    throw Error(std::string("environment variable ") + name + "='" + value +
                "': expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return x;
}

// c10::Error's what() carries a C++ backtrace; users need the message only.
std::string message(const std::exception& e) {
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string str(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

}  // namespace

DistConfig dist_config_from_env() {
  DistConfig c;
  const char* world = env("WORLD_SIZE");
  const char* rank = env("RANK");
  if (rank && !world) throw Error("environment variable RANK is set but WORLD_SIZE is not");
  if (world) c.world_size = int(env_int("WORLD_SIZE", world, 1, 1 << 20));
  if (rank) c.rank = int(env_int("RANK", rank, 0, 1 << 20));
  if (c.rank >= c.world_size) {
    throw Error("environment variable RANK=" + std::to_string(c.rank) +
                ": expected a rank below WORLD_SIZE=" + std::to_string(c.world_size));
  }
  // One machine without a launcher that sets LOCAL_RANK: the rank is the local rank.
  const char* local = env("LOCAL_RANK");
  c.local_rank = local ? int(env_int("LOCAL_RANK", local, 0, 1 << 20)) : c.rank;
  const char* addr = env("MASTER_ADDR");
  const char* port = env("MASTER_PORT");
  if (c.world_size > 1 && (!addr || !port)) {
    throw Error("WORLD_SIZE=" + std::to_string(c.world_size) +
                " needs MASTER_ADDR and MASTER_PORT (the host and port of rank 0); "
                "`finmoe launch` sets them");
  }
  if (addr) c.master_addr = addr;
  if (port) c.master_port = int(env_int("MASTER_PORT", port, 1, 65535));
  if (const char* t = env("FINMOE_DIST_TIMEOUT")) {
    char* end = nullptr;
    c.timeout_s = std::strtod(t, &end);
    if (*end || !(c.timeout_s > 0)) {
      throw Error(std::string("environment variable FINMOE_DIST_TIMEOUT='") + t +
                  "': expected a positive number of seconds");
    }
  }
  if (const char* b = env("FINMOE_DIST_BACKEND")) c.backend = b;
  return c;
}

std::vector<std::string> dist_backends() {
  std::vector<std::string> out;
#if defined(FINMOE_HAVE_GLOO)
  out.push_back("gloo");
#endif
#if defined(FINMOE_HAVE_NCCL)
  out.push_back("nccl");
#endif
  return out;
}

// ---- buckets ----------------------------------------------------------------

namespace dist {

std::vector<Bucket> plan_buckets(const std::vector<torch::Tensor>& tensors, size_t max_bytes) {
  std::vector<Bucket> done;
  // One open bucket per (dtype, device); closed when the next tensor would overflow it.
  std::map<std::tuple<int, int, int>, std::pair<Bucket, size_t>> open;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const std::tuple<int, int, int> key{int(t.scalar_type()), int(t.device().type()),
                                        int(t.device().index())};
    const size_t n = size_t(t.numel()) * t.element_size();
    auto& [bucket, size] = open[key];
    if (!bucket.empty() && size + n > max_bytes) {
      done.push_back(std::move(bucket));
      bucket.clear();
      size = 0;
    }
    bucket.push_back(i);
    size += n;
  }
  for (auto& [key, b] : open) {
    if (!b.first.empty()) done.push_back(std::move(b.first));
  }
  return done;
}

torch::Tensor flatten_bucket(const std::vector<torch::Tensor>& tensors, const Bucket& bucket) {
  std::vector<torch::Tensor> flat;
  flat.reserve(bucket.size());
  for (size_t i : bucket) flat.push_back(tensors[i].reshape({-1}));
  return torch::cat(flat);  // [sum numel]
}

void unflatten_bucket(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors,
                      const Bucket& bucket) {
  int64_t offset = 0;
  for (size_t i : bucket) {
    auto& t = tensors[i];
    const int64_t n = t.numel();
    t.copy_(flat.narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

}  // namespace dist

// ---- the context ------------------------------------------------------------

namespace {

// The TCPStores of this process, by master, rank and world size. A second
// DistContext (a program that builds two Trainers) reuses the first one's
// store under a new key generation: making a new one would race rank 0's old
// server going down. Kept until the process exits (never destroyed, so no
// server thread is stopped during static destruction).
struct StoreSlot {
  c10::intrusive_ptr<c10d::Store> store;
  int64_t generations = 0;  // DistContexts that have used it
  bool in_use = false;      // by a live DistContext (then a second one makes its own)
};
std::mutex g_slots_mutex;
std::map<std::string, StoreSlot>& store_slots() {
  static auto* slots = new std::map<std::string, StoreSlot>;
  return *slots;
}

}  // namespace

struct DistContext::Impl {
  DistConfig config;
  std::string backend = "none";
  std::chrono::milliseconds timeout{0};
  std::string slot;                        // key into store_slots() while in use
  c10::intrusive_ptr<c10d::Store> store;  // the TCPStore under this context's key prefix
  c10::intrusive_ptr<Group> group;
  torch::Device device{torch::kCPU};  // where scalar and flag vectors travel
  int64_t n_checks = 0;

  std::string where() const {
    return "rank " + std::to_string(config.rank) + " of " + std::to_string(config.world_size);
  }

  // Runs a collective, turning c10d's exceptions into one Error.
  template <class F>
  void guarded(const char* what, F&& f) {
    try {
      f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(std::string("data parallel ") + what + " failed on " + where() + " (" +
                  backend + "): " + message(e) +
                  " (another rank may have failed or exited first; see its output)");
    }
  }

  ~Impl() {
    if (slot.empty()) return;
    std::lock_guard<std::mutex> lock(g_slots_mutex);
    store_slots()[slot].in_use = false;
  }

  void rendezvous();
  void make_group(bool cuda);
  void bucketed(const std::vector<torch::Tensor>& tensors, size_t max_bytes, const char* what,
                const std::function<void(torch::Tensor&)>& collective);
};

void DistContext::Impl::rendezvous() {
  c10d::TCPStoreOptions o;
  o.port = uint16_t(config.master_port);
  o.isServer = config.rank == 0;
  o.numWorkers = size_t(config.world_size);
  o.waitWorkers = true;  // the constructor returns once every rank has connected
  o.timeout = timeout;
  const std::string at = config.master_addr + ":" + std::to_string(config.master_port);
  const std::string key = at + " " + std::to_string(config.rank) + "/" + std::to_string(config.world_size);
  c10::intrusive_ptr<c10d::Store> tcp;
  int64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(g_slots_mutex);
    auto it = store_slots().find(key);
    if (it != store_slots().end() && !it->second.in_use) {
      tcp = it->second.store;
      generation = it->second.generations++;
      it->second.in_use = true;
      slot = key;
    }
  }
  if (!tcp) {
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(config.master_addr, o);
    } catch (const std::exception& e) {
      if (config.rank == 0) {
        throw Error("rank 0 could not gather the " + std::to_string(config.world_size) +
                    " ranks at " + at + ": " + message(e) +
                    " (is the port free, and are all ranks started with the same MASTER_PORT?)");
      }
      throw Error(where() + " could not reach the master (rank 0) at " + at + " within " +
                  std::to_string(int(config.timeout_s)) + " s: " + message(e) +
                  " (is rank 0 running and are MASTER_ADDR/MASTER_PORT the same on all ranks?)");
    }
    std::lock_guard<std::mutex> lock(g_slots_mutex);
    if (!store_slots().count(key)) {
      store_slots()[key] = {tcp, 1, true};
      slot = key;
    }
  }
  store = c10::make_intrusive<c10d::PrefixStore>("finmoe/" + std::to_string(generation), tcp);
  // Two processes started with the same RANK: the second finds the rank's key taken.
  std::random_device rd;
  const std::string me = std::to_string(getpid()) + "-" + std::to_string(rd());
  std::string got;
  guarded("rendezvous", [&] {
    got = str(store->compareSet("rank/" + std::to_string(config.rank), {}, bytes(me)));
  });
  if (got != me) {
    throw Error("RANK=" + std::to_string(config.rank) +
                " was taken by two processes; every process needs its own RANK in [0, WORLD_SIZE)");
  }
  // Then each rank announces its WORLD_SIZE (with set(): libtorch 1.x's
  // compareSet does not wake waiting clients) and waits for all the others;
  // libtorch 1.x's TCPStore stops waiting for workers silently at its
  // timeout, so the wait that reports is this one.
  const std::string world = std::to_string(config.world_size);
  std::vector<std::string> keys;
  for (int r = 0; r < config.world_size; ++r) keys.push_back("world/" + std::to_string(r));
  try {
    store->set(keys[size_t(config.rank)], bytes(world));
    store->wait(keys, timeout);
  } catch (const std::exception& e) {
    std::string missing;
    try {
      for (int r = 0; r < config.world_size; ++r) {
        if (!store->check({keys[r]})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
    } catch (const std::exception&) {
      missing = "?";  // the master itself is gone
    }
    throw Error(where() + " waited " + std::to_string(int(config.timeout_s)) + " s at " + at +
                " for ranks [" + missing + "] (" + message(e) + "); are all " + world +
                " ranks started with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE?");
  }
  std::string list;
  bool same = true;
  guarded("rendezvous", [&] {
    for (int r = 0; r < config.world_size; ++r) {
      const std::string w = str(store->get(keys[r]));
      same = same && w == world;
      list += (r ? ", " : "") + std::string("rank ") + std::to_string(r) + ": '" + w + "'";
    }
  });
  if (!same) throw Error("data parallel ranks disagree on WORLD_SIZE (" + list + ")");
}

void DistContext::Impl::make_group(bool cuda) {
  std::string want = config.backend;
  if (want == "auto") want = cuda ? "nccl" : "gloo";
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(want, store);
  if (want == "gloo") {
#if defined(FINMOE_HAVE_GLOO)
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    // GLOO_SOCKET_IFNAME picks the network interface, as in PyTorch; one
    // machine talks over loopback; else the address this host's name resolves to.
    const std::string& addr = config.master_addr;
    guarded("setup", [&] {
      if (const char* ifname = env("GLOO_SOCKET_IFNAME")) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (addr == "localhost" || addr.rfind("127.", 0) == 0) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, config.rank,
                                                          config.world_size, opts);
    });
    backend = "gloo";
    if (cuda) device = torch::Device(torch::kCUDA, config.local_rank);
    return;
#endif
  } else if (want == "nccl") {
#if defined(FINMOE_HAVE_NCCL)
    if (!cuda) throw Error("FINMOE_DIST_BACKEND=nccl needs the model on CUDA (--device cuda)");
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    guarded("setup", [&] {
      group = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, config.rank,
                                                          config.world_size, opts);
    });
    backend = "nccl";
    device = torch::Device(torch::kCUDA, config.local_rank);
    return;
#endif
  } else {
    throw Error("FINMOE_DIST_BACKEND='" + config.backend + "': expected auto, gloo or nccl");
  }
  std::string have;
  for (const auto& b : dist_backends()) have += (have.empty() ? "" : ", ") + b;
  throw Error("data parallel backend '" + want + "' is not in this build (it has: " +
              (have.empty() ? "none" : have) +
              "); gloo needs gloo's headers at build time (Debian: libgloo-dev), "
              "nccl a CUDA libtorch");
}

void DistContext::Impl::bucketed(const std::vector<torch::Tensor>& tensors, size_t max_bytes,
                                 const char* what,
                                 const std::function<void(torch::Tensor&)>& collective) {
  for (const auto& t : tensors) {
    if (!t.defined()) throw Error(std::string("data parallel ") + what + ": undefined tensor");
  }
  torch::NoGradGuard no_grad;  // parameters are written in place
  for (const auto& bucket : dist::plan_buckets(tensors, max_bytes)) {
    const auto& first = tensors[bucket[0]];
    // A lone contiguous tensor travels as it is; others through a packed copy.
    if (bucket.size() == 1 && first.is_contiguous()) {
      torch::Tensor t = first;
      guarded(what, [&] { collective(t); });
      continue;
    }
    auto flat = dist::flatten_bucket(tensors, bucket);  // [sum numel]
    guarded(what, [&] { collective(flat); });
    dist::unflatten_bucket(flat, tensors, bucket);
  }
}

DistContext::DistContext(const DistConfig& config, bool cuda) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.config = config;
  if (config.world_size < 1 || config.rank < 0 || config.rank >= config.world_size) {
    throw Error("data parallel: rank " + std::to_string(config.rank) +
                " is outside [0, WORLD_SIZE=" + std::to_string(config.world_size) + ")");
  }
  if (!(config.timeout_s > 0)) throw Error("data parallel: timeout must be positive");
  if (config.backend != "auto" && config.backend != "gloo" && config.backend != "nccl") {
    throw Error("FINMOE_DIST_BACKEND='" + config.backend + "': expected auto, gloo or nccl");
  }
  if (config.world_size == 1) return;
  m.timeout = std::chrono::milliseconds(int64_t(config.timeout_s * 1000));
  m.rendezvous();
  m.make_group(cuda);
}

DistContext::~DistContext() = default;

int DistContext::rank() const { return impl_->config.rank; }
int DistContext::world_size() const { return impl_->config.world_size; }
int DistContext::local_rank() const { return impl_->config.local_rank; }
const std::string& DistContext::backend() const { return impl_->backend; }

void DistContext::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  if (!distributed()) return;
  if (root < 0 || root >= world_size()) {
    throw Error("data parallel broadcast: root rank " + std::to_string(root) + " is outside [0, " +
                std::to_string(world_size()) + ")");
  }
  impl_->bucketed(tensors, bucket_bytes, "broadcast", [&](torch::Tensor& t) {
    std::vector<torch::Tensor> v{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    impl_->group->broadcast(v, opts)->wait();
  });
}

void DistContext::all_reduce_sum(const std::vector<at::Tensor>& tensors) {
  if (!distributed()) return;
  impl_->bucketed(tensors, bucket_bytes, "all_reduce", [&](torch::Tensor& t) {
    std::vector<torch::Tensor> v{t};
    impl_->group->allreduce(v)->wait();  // ReduceOp::SUM
  });
}

void DistContext::all_reduce_mean(const std::vector<at::Tensor>& tensors) {
  if (!distributed()) return;
  const double w = world_size();
  impl_->bucketed(tensors, bucket_bytes, "all_reduce", [&](torch::Tensor& t) {
    std::vector<torch::Tensor> v{t};
    impl_->group->allreduce(v)->wait();
    t.div_(w);  // AVG is NCCL-only; sum then divide works on every backend
  });
}

void DistContext::all_reduce_grads(const std::vector<at::Tensor>& params, bool mean) {
  if (!distributed()) return;
  std::vector<torch::Tensor> trained;
  for (const auto& p : params) {
    if (p.requires_grad()) trained.push_back(p);
  }
  // Which parameters have a gradient somewhere: [n] counts of ranks.
  std::vector<double> has(trained.size());
  for (size_t i = 0; i < trained.size(); ++i) has[i] = trained[i].grad().defined() ? 1 : 0;
  has = all_reduce_sum(has);
  std::vector<torch::Tensor> grads;
  for (size_t i = 0; i < trained.size(); ++i) {
    auto& p = trained[i];
    if (has[i] == 0) continue;
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  if (mean) {
    all_reduce_mean(grads);
  } else {
    all_reduce_sum(grads);
  }
}

std::vector<double> DistContext::all_reduce_sum(const std::vector<double>& values) {
  if (!distributed() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kFloat64).to(impl_->device);  // [n]
  impl_->guarded("all_reduce", [&] {
    std::vector<torch::Tensor> v{t};
    impl_->group->allreduce(v)->wait();
  });
  t = t.cpu();
  return {t.data_ptr<double>(), t.data_ptr<double>() + t.numel()};
}

void DistContext::barrier() {
  if (!distributed()) return;
  impl_->guarded("barrier", [&] { impl_->group->barrier()->wait(); });
}

void DistContext::check_same(const std::string& what, const std::string& value) {
  if (!distributed()) return;
  auto& m = *impl_;
  const std::string prefix = "check/" + std::to_string(m.n_checks++) + "/";
  std::vector<std::string> keys, values;
  for (int r = 0; r < world_size(); ++r) keys.push_back(prefix + std::to_string(r));
  m.guarded("check", [&] {
    m.store->set(keys[rank()], bytes(value));
    m.store->wait(keys, m.timeout);
    for (const auto& k : keys) values.push_back(str(m.store->get(k)));
  });
  std::string list;
  bool same = true;
  for (int r = 0; r < world_size(); ++r) {
    same = same && values[r] == values[0];
    list += (r ? ", " : "") + std::string("rank ") + std::to_string(r) + ": '" + values[r] + "'";
  }
  if (!same) throw Error("data parallel ranks disagree on " + what + " (" + list + ")");
}

TrainBatch DistContext::shard(const TrainBatch& global) const {
  if (!distributed()) return global;
  const int64_t rows = global.tokens.size(0);
  const int w = world_size();
  if (rows < w) {
    throw Error("a global batch of " + std::to_string(rows) + " sequences cannot be split over " +
                std::to_string(w) + " ranks; use a batch size of at least WORLD_SIZE (best a multiple)");
  }
  auto take = [&](const torch::Tensor& t) {
    return t.defined() ? t.slice(0, rank(), rows, w).contiguous() : t;  // [ceil((rows-rank)/W), T]
  };
  TrainBatch out;
  out.tokens = take(global.tokens);
  out.labels = take(global.labels);
  out.document_ids = take(global.document_ids);
  out.padding = take(global.padding);
  return out;
}

}  // namespace finmoe
