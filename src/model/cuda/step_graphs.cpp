// Decode steps through CUDA graphs (see step_graphs.h).
#include "model/cuda/step_graphs.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "finmoe/error.h"
#include "model/transformer.h"

namespace finmoe {

StepGraphs::StepGraphs(std::weak_ptr<const torch::nn::Module> m)
    : model(std::move(m)), pool(at::cuda::graph_pool_handle()) {}

torch::Tensor TransformerImpl::step_graph(const StepBatch& batch, KVCache& cache) {
  const int64_t S = static_cast<int64_t>(batch.seqs.size());
  if (S == 0 || S != static_cast<int64_t>(batch.tokens.size())) return {};  // not decode-only
  for (const auto& layer : layer_list)
    if (layer->moe) return {};  // routing synchronises with the host (step_graphs.h)
  const auto bucket = std::find_if(std::begin(kGraphBuckets), std::end(kGraphBuckets),
                                   [&](int64_t b) { return b >= S; });
  if (bucket == std::end(kGraphBuckets)) return {};
  const int64_t bs = cache.block_size();
  const int64_t stride =
      std::min(cache.num_blocks(), (config.max_position_embeddings + bs - 1) / bs);
  for (const auto& s : batch.seqs)
    if ((s.context_len + bs - 1) / bs > stride) return {};

  auto& holder = cache.step_graphs();
  const auto self = shared_from_this();
  if (!holder || holder->model.lock() != self) holder = std::make_shared<StepGraphs>(self);
  StepGraphs& graphs = *holder;
  if (graphs.failed) return {};
  const PagedLayout layout{*bucket, *bucket, *bucket, stride};
  auto host = pack_paged_batch(batch, layout, bs, /*q_tile=*/1, /*pinned=*/true);

  auto& slot = graphs.graphs[*bucket];
  if (!slot) {
    auto g = std::make_unique<StepGraphs::Graph>();
    g->layout = layout;
    g->input = host.to(options.device());  // this batch: the warm-up computes it
    const PagedBatch views = view_paged_batch(g->input, layout, bs, 1, stride * bs);
    const auto make_plan = [&] {
      StepPlan plan;
      plan.paged = views;
      return plan;
    };
    // Capture on a side stream (required); the warm-up writes the same K/V
    // rows as the replay that follows.
    torch::cuda::synchronize();
    auto side = c10::cuda::getStreamFromPool();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      StepPlan warm = make_plan();
      step_layers(views.ids, views.positions, warm, cache, {});
      side.synchronize();
      StepPlan plan = make_plan();
      g->graph.capture_begin(graphs.pool, cudaStreamCaptureModeThreadLocal);
      try {
        g->logits = step_layers(views.ids, views.positions, plan, cache, {});
        g->graph.capture_end();
      } catch (const std::exception& e) {
        try {
          g->graph.capture_end();
        } catch (...) {
        }
        graphs.failed = true;
        throw Error(std::string("CUDA graph capture of the decode step failed; this cache's "
                                "decode steps run without graphs from now on: ") +
                    e.what());
      }
    }
    slot = std::move(g);
    ++graphs.captures;
  } else {
    slot->input.copy_(host, /*non_blocking=*/true);
  }
  slot->graph.replay();
  ++graphs.replays;
  return slot->logits.narrow(0, 0, S)
      .clone();  // the next replay of any bucket may reuse its memory
}

}  // namespace finmoe
