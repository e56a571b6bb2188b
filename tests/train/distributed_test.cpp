// Data parallel primitives (finmoe/distributed.h): bucket packing, the
// environment, and the collectives run by two real processes on localhost.
//
// The two-process tests re-run this binary through finmoe::launch with a
// gtest filter that selects one DistWorker test; the worker checks every
// collective against the same values computed locally and fails its process
// (and so launch) on a mismatch. Run alone, the DistWorker tests skip.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../scoped_env.h"
#include "../tolerance.h"
#include "finmoe/dataset.h"
#include "finmoe/distributed.h"
#include "finmoe/model.h"
#include "finmoe/train.h"
#include "train_test_util.h"
#include "train/buckets.h"

namespace finmoe {
namespace {

using test::message_of;
using test::ScopedEnv;

// A port that a listening socket holds until destruction (or a free one after release()).
struct HeldPort {
  int fd = -1;
  int port = 0;
  HeldPort() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    ::listen(fd, 1);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
  void release() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  ~HeldPort() { release(); }
};

std::string self_exe() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return std::string(buf, size_t(n > 0 ? n : 0));
}

// Runs DistWorker.<name> of this binary as `nproc` ranks; returns launch's code.
int run_workers(const std::string& name, int nproc) {
  ScopedEnv worker("FINMOE_DIST_WORKER", "1");
  ScopedEnv timeout("FINMOE_DIST_TIMEOUT", "20");
  LaunchOptions o;
  o.nproc = nproc;
  o.command = {self_exe(), "--gtest_filter=DistWorker." + name, "--gtest_brief=1"};
  return launch(o);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool is_worker() { return std::getenv("FINMOE_DIST_WORKER") != nullptr; }

bool have_gloo() {
  const auto b = dist_backends();
  return std::find(b.begin(), b.end(), "gloo") != b.end();
}

#define SKIP_WITHOUT_GLOO() \
  if (!have_gloo()) GTEST_SKIP() << "this build has no Gloo backend (gloo headers: libgloo-dev)"

// What rank r holds in the collective tests: a seeded function of r.
std::vector<torch::Tensor> rank_tensors(int r) {
  auto g = torch::make_generator<at::CPUGeneratorImpl>(1000 + r);
  return {
      torch::randn({3, 5}, g),                                         // fp32
      torch::randn({7}, g).to(torch::kFloat64),                        // fp64: a bucket of its own dtype
      torch::randn({4, 6}, g).t(),                                     // non-contiguous view
      torch::randint(0, 100, {5}, g, torch::TensorOptions(torch::kInt64)),  // integers
      torch::randn({2, 3, 4}, g),
  };
}

// ---- buckets (one process) --------------------------------------------------

TEST(DistBuckets, GroupByDtypeAndRespectTheSizeLimit) {
  std::vector<torch::Tensor> t = {
      torch::zeros({10}),                        // 40 B
      torch::zeros({10}, torch::kFloat64),       // 80 B
      torch::zeros({10}),                        // 40 B -> with 0: 80
      torch::zeros({100}),                       // 400 B > limit: alone
      torch::zeros({5}),                         // 20 B
      torch::zeros({10}, torch::kFloat64),       // 80 B -> with 1: 160 > 100: new bucket
  };
  const auto plan = dist::plan_buckets(t, 100);
  // Each index exactly once, one dtype per bucket, at most 100 bytes unless alone.
  std::vector<int> seen(t.size(), 0);
  for (const auto& b : plan) {
    size_t bytes = 0;
    for (size_t i : b) {
      ++seen[i];
      EXPECT_EQ(t[i].scalar_type(), t[b[0]].scalar_type());
      bytes += size_t(t[i].numel()) * t[i].element_size();
    }
    if (b.size() > 1) {
      EXPECT_LE(bytes, 100u);
    }
  }
  for (int s : seen) EXPECT_EQ(s, 1);
  EXPECT_EQ(plan, (std::vector<dist::Bucket>{{0, 2}, {3}, {1}, {4}, {5}}));
}

TEST(DistBuckets, FlattenUnflattenRoundTripsNonContiguousTensors) {
  auto src = rank_tensors(0);
  src.erase(src.begin() + 1);  // one dtype per bucket: drop the fp64 and int64 tensors
  src.erase(src.begin() + 2);
  std::vector<torch::Tensor> dst;
  for (const auto& s : src) {
    // 2-D destinations are transposed views: unflatten must write through strides
    dst.push_back(s.dim() == 2 ? torch::zeros({s.size(1), s.size(0)}).t() : torch::zeros_like(s));
  }
  const auto plan = dist::plan_buckets(src, 1 << 20);
  ASSERT_EQ(plan.size(), 1u);
  auto flat = dist::flatten_bucket(src, plan[0]);
  int64_t n = 0;
  for (const auto& s : src) n += s.numel();
  ASSERT_EQ(flat.dim(), 1);
  EXPECT_EQ(flat.numel(), n);
  // the flat buffer is each tensor's elements in its logical (row-major) order
  EXPECT_TRUE(torch::equal(flat.narrow(0, 0, 15), src[0].reshape({-1})));
  dist::unflatten_bucket(flat, dst, plan[0]);
  for (size_t i = 0; i < src.size(); ++i) EXPECT_TRUE(torch::equal(dst[i], src[i])) << i;
}

// ---- environment --------------------------------------------------------------

TEST(DistEnv, DefaultsToOneProcess) {
  ScopedEnv a("RANK", nullptr), b("WORLD_SIZE", nullptr), c("LOCAL_RANK", nullptr),
      d("MASTER_ADDR", nullptr), e("MASTER_PORT", nullptr);
  const DistConfig cfg = dist_config_from_env();
  EXPECT_EQ(cfg.rank, 0);
  EXPECT_EQ(cfg.world_size, 1);
  DistContext ctx(cfg);
  EXPECT_FALSE(ctx.distributed());
  EXPECT_EQ(ctx.backend(), "none");
  // collectives leave values as they are
  auto t = torch::arange(4.0);
  ctx.all_reduce_mean({t});
  ctx.broadcast({t});
  EXPECT_TRUE(torch::equal(t, torch::arange(4.0)));
  EXPECT_EQ(ctx.all_reduce_sum(2.5), 2.5);
  ctx.check_same("anything", "x");
}

TEST(DistEnv, ReadsTorchrunVariables) {
  ScopedEnv a("RANK", "3"), b("WORLD_SIZE", "4"), c("LOCAL_RANK", "1"),
      d("MASTER_ADDR", "10.0.0.7"), e("MASTER_PORT", "29511"), f("FINMOE_DIST_TIMEOUT", "7.5");
  const DistConfig cfg = dist_config_from_env();
  EXPECT_EQ(cfg.rank, 3);
  EXPECT_EQ(cfg.world_size, 4);
  EXPECT_EQ(cfg.local_rank, 1);
  EXPECT_EQ(cfg.master_addr, "10.0.0.7");
  EXPECT_EQ(cfg.master_port, 29511);
  EXPECT_EQ(cfg.timeout_s, 7.5);
}

TEST(DistEnv, RejectsInconsistentVariables) {
  ScopedEnv c("LOCAL_RANK", nullptr), d("MASTER_ADDR", "127.0.0.1"), e("MASTER_PORT", "29511");
  {
    ScopedEnv a("RANK", "2"), b("WORLD_SIZE", "2");
    EXPECT_CONTAINS(message_of([] { dist_config_from_env(); }), "RANK=2: expected a rank below WORLD_SIZE=2");
  }
  {
    ScopedEnv a("RANK", "x1"), b("WORLD_SIZE", "2");
    EXPECT_CONTAINS(message_of([] { dist_config_from_env(); }), "RANK='x1'");
  }
  {
    ScopedEnv a("RANK", "1"), b("WORLD_SIZE", nullptr);
    EXPECT_CONTAINS(message_of([] { dist_config_from_env(); }), "RANK is set but WORLD_SIZE is not");
  }
  {
    ScopedEnv a("RANK", "0"), b("WORLD_SIZE", "2"), p("MASTER_PORT", nullptr);
    EXPECT_CONTAINS(message_of([] { dist_config_from_env(); }), "needs MASTER_ADDR and MASTER_PORT");
  }
  {
    ScopedEnv a("RANK", "0"), b("WORLD_SIZE", "2"), p("MASTER_PORT", "70000");
    EXPECT_CONTAINS(message_of([] { dist_config_from_env(); }), "MASTER_PORT='70000'");
  }
  {
    ScopedEnv a("RANK", nullptr), b("WORLD_SIZE", nullptr), t("FINMOE_DIST_BACKEND", "mpi");
    EXPECT_CONTAINS(message_of([] { DistContext ctx(dist_config_from_env()); }),
                    "FINMOE_DIST_BACKEND='mpi'");
  }
}

// ---- rendezvous failures (in-process, short timeouts) -----------------------

DistConfig local_config(int rank, int world, int port, double timeout_s) {
  DistConfig c;
  c.rank = rank;
  c.world_size = world;
  c.master_port = port;
  c.timeout_s = timeout_s;
  return c;
}

TEST(DistRendezvous, UnreachableMasterTimesOutWithAClearError) {
  HeldPort p;
  p.release();  // nobody listens there
  const std::string m = message_of([&] { DistContext ctx(local_config(1, 2, p.port, 1)); });
  EXPECT_CONTAINS(m, "rank 1 of 2 could not reach the master (rank 0) at 127.0.0.1:" +
                         std::to_string(p.port));
  EXPECT_CONTAINS(m, "is rank 0 running");
}

TEST(DistRendezvous, MissingRanksTimeOutOnTheMaster) {
  HeldPort p;
  p.release();
  const std::string m = message_of([&] { DistContext ctx(local_config(0, 2, p.port, 1)); });
  // libtorch 1.x reports in finmoe's own wait, 2.x already in the TCPStore
  const bool named = m.find("rank 0 of 2 waited 1 s at 127.0.0.1:" + std::to_string(p.port) +
                            " for ranks [1]") != std::string::npos ||
                     m.find("rank 0 could not gather the 2 ranks at 127.0.0.1:" +
                            std::to_string(p.port)) != std::string::npos;
  EXPECT_TRUE(named) << m;
}

TEST(DistRendezvous, APortInUseIsReported) {
  HeldPort p;  // listening
  const std::string m = message_of([&] { DistContext ctx(local_config(0, 2, p.port, 1)); });
  EXPECT_CONTAINS(m, "rank 0 ");
  EXPECT_CONTAINS(m, "127.0.0.1:" + std::to_string(p.port));
}

TEST(DistRendezvous, ARankTakenTwiceIsReported) {
  SKIP_WITHOUT_GLOO();
  HeldPort p;
  p.release();
  // Ranks 0 and 1 and a second rank 1 (threads stand in for processes). The
  // contexts live until all three have tried, so rank 0's store outlasts them.
  std::vector<std::string> errors(3);
  std::atomic<int> tried{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      std::unique_ptr<DistContext> ctx;
      errors[size_t(i)] = message_of(
          [&] { ctx = std::make_unique<DistContext>(local_config(i == 0 ? 0 : 1, 2, p.port, 5)); });
      ++tried;
      while (tried < 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors[0], "<no error>");
  const bool second_failed = errors[1].find("RANK=1 was taken by two processes") != std::string::npos;
  const bool third_failed = errors[2].find("RANK=1 was taken by two processes") != std::string::npos;
  EXPECT_NE(second_failed, third_failed) << errors[1] << " | " << errors[2];
}

TEST(DistRendezvous, DifferentWorldSizesAreReported) {
  HeldPort p;
  p.release();
  std::string e0, e1;
  std::thread t0([&] { e0 = message_of([&] { DistContext ctx(local_config(0, 2, p.port, 3)); }); });
  std::thread t1([&] { e1 = message_of([&] { DistContext ctx(local_config(1, 3, p.port, 3)); }); });
  t0.join();
  t1.join();
  EXPECT_CONTAINS(e0, "ranks disagree on WORLD_SIZE (rank 0: '2', rank 1: '3')");
  EXPECT_NE(e1, "<no error>");
}

// ---- two processes --------------------------------------------------------------

TEST(DistTwoRanks, CollectivesMatchTheLocalComputation) {
  SKIP_WITHOUT_GLOO();
  EXPECT_EQ(run_workers("Collectives", 2), 0) << "a rank failed; see its [rankN] output above";
}

TEST(DistWorker, Collectives) {
  if (!is_worker()) GTEST_SKIP() << "runs as a rank of DistTwoRanks.CollectivesMatchTheLocalComputation";
  DistContext ctx(dist_config_from_env());
  ASSERT_EQ(ctx.world_size(), 2);
  ASSERT_EQ(ctx.backend(), "gloo");
  const int r = ctx.rank(), w = ctx.world_size();
  ctx.bucket_bytes = 64;  // several buckets, some tensors alone

  // all_reduce_mean == the average of every rank's tensors computed here
  auto mine = rank_tensors(r);
  std::vector<torch::Tensor> expected;
  for (size_t i = 0; i < mine.size(); ++i) {
    torch::Tensor sum = torch::zeros_like(mine[i], torch::kFloat64);
    for (int q = 0; q < w; ++q) sum += rank_tensors(q)[i].to(torch::kFloat64);
    expected.push_back(sum / w);
  }
  std::vector<torch::Tensor> floats;
  for (size_t i = 0; i < mine.size(); ++i) {
    if (mine[i].is_floating_point()) floats.push_back(mine[i]);
  }
  ctx.all_reduce_mean(floats);
  for (size_t i = 0; i < mine.size(); ++i) {
    if (!mine[i].is_floating_point()) continue;
    EXPECT_LT((mine[i].to(torch::kFloat64) - expected[i]).abs().max().item<double>(), 1e-6) << i;
  }
  // all_reduce_sum on integers is exact
  auto ints = rank_tensors(r)[3];
  ctx.all_reduce_sum({ints});
  EXPECT_TRUE(torch::equal(ints, rank_tensors(0)[3] + rank_tensors(1)[3]));

  // broadcast from rank 1: everyone ends with rank 1's values
  auto b = rank_tensors(r);
  ctx.broadcast(b, 1);
  const auto want = rank_tensors(1);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_TRUE(torch::equal(b[i], want[i])) << i;
  // parameters (leaves that require grad) are broadcast too, packed in one bucket
  auto w0 = torch::full({3}, double(r), torch::requires_grad());
  auto w1 = torch::full({2, 2}, double(r), torch::requires_grad());
  ctx.broadcast({w0, w1}, 0);
  EXPECT_TRUE(torch::equal(w0, torch::zeros({3})));
  EXPECT_TRUE(torch::equal(w1, torch::zeros({2, 2})));
  EXPECT_TRUE(w0.requires_grad());

  // scalars
  const auto s = ctx.all_reduce_sum(std::vector<double>{double(r + 1), 10.0, 0.5});
  EXPECT_EQ(s, (std::vector<double>{3.0, 20.0, 1.0}));

  // gradients: p0 has one on both ranks, p1 on rank 0 only, p2 nowhere
  auto p0 = torch::zeros({3}, torch::requires_grad());
  auto p1 = torch::zeros({2}, torch::requires_grad());
  auto p2 = torch::zeros({2}, torch::requires_grad());
  auto frozen = torch::zeros({2});
  p0.mutable_grad() = torch::full({3}, double(r + 1));
  if (r == 0) p1.mutable_grad() = torch::full({2}, 4.0);
  ctx.all_reduce_grads({p0, p1, p2, frozen}, /*mean=*/true);
  EXPECT_TRUE(torch::allclose(p0.grad(), torch::full({3}, 1.5)));
  ASSERT_TRUE(p1.grad().defined());
  EXPECT_TRUE(torch::allclose(p1.grad(), torch::full({2}, 2.0)));
  EXPECT_FALSE(p2.grad().defined());
  ctx.all_reduce_grads({p0}, /*mean=*/false);
  EXPECT_TRUE(torch::allclose(p0.grad(), torch::full({3}, 3.0)));

  // shard: rows r, r + W, ...; the shards partition the batch
  TrainBatch global;
  global.tokens = torch::arange(5 * 3, torch::kInt64).view({5, 3});
  global.labels = global.tokens + 100;
  const TrainBatch part = ctx.shard(global);
  const auto rows = r == 0 ? torch::tensor({0, 2, 4}, torch::kInt64) : torch::tensor({1, 3}, torch::kInt64);
  EXPECT_TRUE(torch::equal(part.tokens, global.tokens.index_select(0, rows)));
  EXPECT_TRUE(torch::equal(part.labels, global.labels.index_select(0, rows)));
  EXPECT_FALSE(part.document_ids.defined());
  TrainBatch tiny;
  tiny.tokens = torch::zeros({1, 3}, torch::kInt64);
  tiny.labels = tiny.tokens;
  EXPECT_CONTAINS(message_of([&] { ctx.shard(tiny); }), "cannot be split over 2 ranks");

  // check_same: agreement passes; a difference fails on every rank, naming both values
  ctx.check_same("config", "same");
  EXPECT_CONTAINS(message_of([&] { ctx.check_same("resume step", std::to_string(10 + r)); }),
                  "ranks disagree on resume step (rank 0: '10', rank 1: '11')");
  ctx.barrier();
}

TEST(DistTwoRanks, AFailingRankFailsTheLaunch) {
  SKIP_WITHOUT_GLOO();
  // Rank 1 fails its test; launch reports a non-zero code and stops rank 0,
  // which would otherwise wait in a collective until the timeout.
  EXPECT_NE(run_workers("OneRankFails", 2), 0);
}

TEST(DistWorker, OneRankFails) {
  if (!is_worker()) GTEST_SKIP() << "runs as a rank of DistTwoRanks.AFailingRankFailsTheLaunch";
  DistContext ctx(dist_config_from_env());
  if (ctx.rank() == 1) std::exit(3);
  ctx.barrier();  // never completes: rank 1 is gone
  ADD_FAILURE() << "rank 0 passed a barrier without rank 1";
}

// ---- the trainer over two ranks -----------------------------------------------

// A short MoE run: a global batch of 4 rows (2 per rank) x 2 micro-batches,
// rows with masked halves (the ranks see different label counts), evaluation
// and a checkpoint mid-way. No load-balancing loss: each rank's is over its own
// tokens, which is not the loss over the whole batch. A small lr: the ranks sum
// in another order than one process, and AdamW scales a gradient that is
// almost 0 by 1/(|g| + eps), so weights differ by up to ~lr * 1e-2 (as they do
// between one process's batch 4 x 2 and batch 2 x 4 micro-batches).
TrainConfig two_rank_config(const std::string& model, const std::string& out) {
  TrainConfig c = test::tiny_train_config(model, out);
  c.data.batch_size = 4;
  c.grad_accum = 2;
  c.max_steps = 4;
  c.save_interval = 2;
  c.moe_aux_loss_alpha = 0.0;
  c.lr = 1e-4;
  c.eval_data = c.data;
  c.eval_batches = 2;
  c.eval_interval = 2;
  return c;
}

TEST(DistTrainer, TwoRanksReachTheWeightsOfOneProcessAndResume) {
  SKIP_WITHOUT_GLOO();
  test::TempDir model, single, multi;
  const ModelConfig mc = test::save_tiny_model("mixtral", model.str(), 5);
  {
    ScopedEnv m("FINMOE_TEST_MODEL", model.str().c_str());
    ScopedEnv o("FINMOE_TEST_OUT", multi.str().c_str());
    ASSERT_EQ(run_workers("Trainer", 2), 0) << "a rank failed; see its [rankN] output above";
  }
  const Transformer init = load_model(model.str(), {torch::kFloat32, torch::kCPU});
  Trainer one(two_rank_config(model.str(), single.str()),
              test::synthetic_hooks(mc.vocab_size, "random", 4));
  one.run();

  // rank 0 wrote the checkpoints; the weights are those of one process
  EXPECT_EQ(slurp(multi.str() + "/latest"), "checkpoint-4\n");
  Transformer two = load_model(multi.str() + "/checkpoint-4", {torch::kFloat32, torch::kCPU});
  auto theirs = two.named_parameters(), start = init.named_parameters();
  ASSERT_EQ(theirs.size(), one.model().named_parameters().size());
  size_t i = 0;
  for (auto& [name, t] : one.model().named_parameters()) {
    ASSERT_EQ(theirs[i].first, name);
    // float32 gradients summed over ranks vs in one process: another order of sums
    EXPECT_TRUE(test::AllClose(theirs[i].second, t, 1e-4)) << name;
    EXPECT_GT(test::max_abs_diff(t, start[i].second), 1e-4) << name << " did not train";
    ++i;
  }
  // and the logged losses (sums over the ranks) are the single process's
  const std::string jsonl = slurp(multi.str() + "/metrics.jsonl");
  std::vector<nlohmann::json> rows;
  for (size_t a = 0, b; (b = jsonl.find('\n', a)) != std::string::npos; a = b + 1)
    rows.push_back(nlohmann::json::parse(jsonl.substr(a, b - a)));
  ASSERT_EQ(rows.size(), 4u);
  for (size_t k = 0; k < 4; ++k) {
    const StepMetrics& h = one.history()[k];
    EXPECT_TRUE(test::NearRel(rows[k]["lm_loss"].get<double>(), h.lm_loss, 1e-5)) << k;
    EXPECT_EQ(rows[k]["loss_tokens"].get<int64_t>(), h.loss_tokens) << k;
    EXPECT_EQ(rows[k]["tokens"].get<int64_t>(), h.tokens) << k;
    EXPECT_NEAR(rows[k]["grad_norm"].get<double>(), h.grad_norm, 1e-5 * h.grad_norm) << k;
  }
  ASSERT_TRUE(rows[3].contains("eval_loss"));
  EXPECT_TRUE(test::NearRel(rows[3]["eval_loss"].get<double>(), *one.history()[3].eval_loss, 1e-5));
}

TEST(DistWorker, Trainer) {
  if (!is_worker()) GTEST_SKIP() << "runs as a rank of DistTrainer.TwoRanksReachTheWeightsOfOneProcessAndResume";
  const std::string model = std::getenv("FINMOE_TEST_MODEL"), out = std::getenv("FINMOE_TEST_OUT");
  const int64_t vocab = ModelConfig::load(model).vocab_size;
  TrainConfig c = two_rank_config(model, out);
  {
    // interrupted after two steps and a checkpoint...
    Trainer first(c, test::synthetic_hooks(vocab, "random", 4));
    first.step();
    first.step();
    first.save_checkpoint();
  }
  // ... and resumed by both ranks
  c.resume = "auto";
  Trainer second(c, test::synthetic_hooks(vocab, "random", 4));
  ASSERT_EQ(second.step_count(), 2);
  second.run();
}

}  // namespace
}  // namespace finmoe
