#include "kernels/thread_pool.h"

#include <immintrin.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "finmoe/error.h"

namespace finmoe::kernels {
namespace {

thread_local bool t_inside_job = false;

int env_int(const char* name, int fallback, int min_value) {
  const char* s = std::getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (*end != '\0' || v < min_value || v > 4096)
    throw Error(std::string(name) + ": expected an integer >= " + std::to_string(min_value) +
                ", got '" + s + "'");
  return static_cast<int>(v);
}

int affinity_cpu_count() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

struct ThreadPool::Impl {
  int n_threads = 1;
  std::chrono::microseconds spin{100};
  std::vector<std::thread> workers;
  std::mutex call_mu;  // serialises parallel_for callers

  // The current job: written by the caller before it bumps `generation`,
  // read by workers after they observe the new generation (acquire).
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  int64_t grain = 1;

  std::atomic<uint64_t> generation{0};
  std::atomic<int> pending{0};  // workers still running the current job
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  std::mutex sleep_mu;  // guards nothing but the condition variable's wait
  std::condition_variable sleep_cv;

  std::mutex error_mu;  // guards error
  std::exception_ptr error;

  void run_chunk(int t) {
    const int64_t g = (n + grain - 1) / grain;
    const int64_t begin = std::min(n, g * t / n_threads * grain);
    const int64_t end = std::min(n, g * (t + 1) / n_threads * grain);
    if (begin >= end) return;
    try {
      (*fn)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
    }
  }

  // Spins for `spin`, then sleeps, until generation moves past `seen`.
  uint64_t wait_for_job(uint64_t seen) {
    const auto deadline = std::chrono::steady_clock::now() + spin;
    for (int i = 0;; ++i) {
      const uint64_t g = generation.load(std::memory_order_acquire);
      if (g != seen) return g;
      _mm_pause();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) break;
    }
    std::unique_lock<std::mutex> lock(sleep_mu);
    sleepers.fetch_add(1, std::memory_order_seq_cst);
    uint64_t g;
    sleep_cv.wait(lock, [&] { return (g = generation.load(std::memory_order_seq_cst)) != seen; });
    sleepers.fetch_sub(1, std::memory_order_relaxed);
    return g;
  }

  void worker_loop(int t) {
    t_inside_job = true;  // a worker calling parallel_for runs it inline
    uint64_t seen = 0;
    for (;;) {
      seen = wait_for_job(seen);
      if (stop.load(std::memory_order_acquire)) return;
      run_chunk(t);
      pending.fetch_sub(1, std::memory_order_release);
    }
  }

  void wake_all() {
    generation.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) {
      // Taking the mutex orders this notify after a sleeper's predicate check.
      { std::lock_guard<std::mutex> lock(sleep_mu); }
      sleep_cv.notify_all();
    }
  }
};

int default_num_threads() { return env_int("FINMOE_NUM_THREADS", affinity_cpu_count(), 1); }

ThreadPool& ThreadPool::global() {
  // Leaked on purpose: workers must outlive every static that may still call kernels at exit.
  static ThreadPool* pool = new ThreadPool(default_num_threads(),
                                           env_int("FINMOE_SPIN_US", 100, 0));
  return *pool;
}

ThreadPool::ThreadPool(int num_threads, int spin_us) : impl_(new Impl) {
  if (num_threads < 1) throw Error("ThreadPool: num_threads must be >= 1");
  impl_->n_threads = num_threads;
  impl_->spin = std::chrono::microseconds(std::max(0, spin_us));
  impl_->workers.reserve(num_threads - 1);
  for (int t = 1; t < num_threads; ++t)
    impl_->workers.emplace_back([this, t] { impl_->worker_loop(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(impl_->call_mu);
    impl_->stop.store(true, std::memory_order_release);
    impl_->wake_all();
  }
  for (auto& w : impl_->workers) w.join();
  delete impl_;
}

int ThreadPool::num_threads() const { return impl_->n_threads; }

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  Impl& s = *impl_;
  if (s.n_threads == 1 || n <= grain || t_inside_job) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(s.call_mu);
  s.fn = &fn;
  s.n = n;
  s.grain = grain;
  s.error = nullptr;
  s.pending.store(s.n_threads - 1, std::memory_order_relaxed);
  s.wake_all();

  t_inside_job = true;
  s.run_chunk(0);
  t_inside_job = false;

  for (int i = 0; s.pending.load(std::memory_order_acquire) != 0; ++i) {
    _mm_pause();
    if (i > (1 << 16)) std::this_thread::yield();  // a worker is being woken or preempted
  }
  if (s.error) std::rethrow_exception(s.error);
}

}  // namespace finmoe::kernels
