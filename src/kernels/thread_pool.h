#pragma once
// A persistent pool of worker threads for the decode kernels. Spawning
// threads per call costs more than a whole batch-1 GEMV row block, so the
// workers live for the process and spin briefly before sleeping.
//
// Guarantees of parallel_for(n, grain, fn):
// - every index of [0, n) is covered by exactly one fn(begin, end) call with
//   begin < end; chunk t (of num_threads()) is [G*t/T, G*(t+1)/T) in units of
//   `grain` (G = ceil(n / grain), clipped to n), so every boundary except n is
//   a multiple of `grain`; empty chunks are not called;
// - chunk 0 runs on the calling thread, the others on workers 1..T-1, so a
//   call with n <= grain (or a pool of one thread) runs inline, no wake-up;
// - all writes made by fn are visible to the caller when parallel_for returns;
// - an exception thrown by fn is rethrown in the caller (the first one, after
//   every chunk has finished);
// - callers from different threads are serialised by a mutex; a nested call
//   (fn calling parallel_for) runs fn(0, n) serially on the calling thread
//   instead of deadlocking.
// Latency: workers spin (with pause) for spin_us microseconds after each job
// before blocking on a condition variable, so back-to-back calls cost ~1 µs;
// a call after a longer pause pays one futex wake-up (~10-50 µs).
#include <cstdint>
#include <functional>

namespace finmoe::kernels {

// FINMOE_NUM_THREADS, else the number of CPUs this process may run on (its
// affinity mask). Throws finmoe::Error if the variable is not a valid number.
int default_num_threads();

class ThreadPool {
 public:
  // The process-wide pool; size from FINMOE_NUM_THREADS, else the number of
  // CPUs this process may run on. Spin time from FINMOE_SPIN_US (default 100).
  // Throws finmoe::Error if either variable is not a valid number.
  static ThreadPool& global();
  // A pool of num_threads >= 1 threads (the caller counts as one).
  explicit ThreadPool(int num_threads, int spin_us = 100);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;
  // Splits [0, n) into num_threads() contiguous chunks (aligned to `grain`)
  // and runs fn(begin, end) on each; the calling thread takes part.
  // Returns when all chunks are done. See the guarantees above (nested calls
  // run inline; concurrent callers are serialised).
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace finmoe::kernels
