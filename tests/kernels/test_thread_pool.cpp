// ThreadPool::parallel_for: exact coverage, chunk alignment, stability under
// many back-to-back calls, wake-up after sleeping, errors, nesting.
#include "kernels/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace finmoe::kernels {
namespace {

struct Call {
  int64_t begin, end;
};

TEST(ThreadPool, CoversEveryIndexExactlyOnceWithGrainAlignedChunks) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 15, 16, 17, 100, 1000, 4097}) {
      for (int64_t grain : {1, 3, 16, 64, 5000}) {
        SCOPED_TRACE("threads=" + std::to_string(threads) + " n=" + std::to_string(n) +
                     " grain=" + std::to_string(grain));
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::mutex mu;
        std::vector<Call> calls;
        pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
          std::lock_guard<std::mutex> lock(mu);
          calls.push_back({b, e});
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << i;
        EXPECT_LE(calls.size(), static_cast<size_t>(threads));
        for (const Call& c : calls) {
          EXPECT_LT(c.begin, c.end);
          EXPECT_EQ(c.begin % grain, 0);
          if (c.end != n) {
            EXPECT_EQ(c.end % grain, 0);
          }
        }
        // Work is spread: with enough grains every thread gets a chunk.
        if ((n + grain - 1) / grain >= threads) {
          EXPECT_EQ(calls.size(), size_t(threads));
        }
      }
    }
  }
}

TEST(ThreadPool, TenThousandBackToBackCallsAreStable) {
  ThreadPool& pool = ThreadPool::global();
  ASSERT_GE(pool.num_threads(), 1);
  std::vector<int64_t> data(4096);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<int64_t>(i);
  for (int iter = 0; iter < 10000; ++iter) {
    std::atomic<int64_t> sum{0};
    const int64_t n = 1 + iter % 4096;
    pool.parallel_for(n, 16, [&](int64_t b, int64_t e) {
      int64_t s = 0;
      for (int64_t i = b; i < e; ++i) s += data[static_cast<size_t>(i)];
      sum.fetch_add(s);
    });
    ASSERT_EQ(sum.load(), (n - 1) * n / 2) << "iteration " << iter;
  }
}

TEST(ThreadPool, WakesWorkersThatWentToSleep) {
  ThreadPool pool(3, /*spin_us=*/0);
  for (int iter = 0; iter < 20; ++iter) {
    std::this_thread::sleep_for(std::chrono::microseconds(500));
    std::vector<int> owner(300, -1);
    pool.parallel_for(300, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) owner[static_cast<size_t>(i)] = static_cast<int>(b);
    });
    for (int v : owner) ASSERT_GE(v, 0);
    EXPECT_EQ(owner[0], 0);
    EXPECT_EQ(owner[299], 200);  // chunk 2 of 3 ran (on a worker)
  }
}

TEST(ThreadPool, RethrowsAnExceptionFromAnyChunkAfterAllChunksFinish) {
  ThreadPool pool(2);
  std::atomic<int> done{0};
  EXPECT_THROW(pool.parallel_for(100, 1,
                                 [&](int64_t b, int64_t) {
                                   if (b != 0) throw std::runtime_error("worker chunk");
                                   std::this_thread::sleep_for(std::chrono::milliseconds(2));
                                   done.fetch_add(1);
                                 }),
               std::runtime_error);
  EXPECT_EQ(done.load(), 1);
  // The pool is usable afterwards.
  std::atomic<int64_t> count{0};
  pool.parallel_for(100, 1, [&](int64_t b, int64_t e) { count.fetch_add(e - b); });
  EXPECT_EQ(count.load(), 100);
}

TEST(ThreadPool, NestedCallRunsInlineInsteadOfDeadlocking) {
  ThreadPool pool(2);
  std::atomic<int64_t> count{0};
  std::atomic<int> inner_calls{0};
  pool.parallel_for(64, 1, [&](int64_t b, int64_t e) {
    pool.parallel_for(e - b, 1, [&](int64_t ib, int64_t ie) {
      inner_calls.fetch_add(1);
      count.fetch_add(ie - ib);
    });
  });
  EXPECT_EQ(count.load(), 64);
  EXPECT_EQ(inner_calls.load(), 2);  // one serial inner call per outer chunk
}

TEST(ThreadPool, ConcurrentCallersAreSerialised) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  auto caller = [&] {
    for (int i = 0; i < 500; ++i)
      pool.parallel_for(1000, 8, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
  };
  std::thread a(caller), b(caller);
  a.join();
  b.join();
  EXPECT_EQ(total.load(), 2 * 500 * 1000);
}

}  // namespace
}  // namespace finmoe::kernels
