// Held-out language-model loss of a model over a batch stream.
#include <cmath>

#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/train.h"
#include "train/losses.h"

namespace finmoe {

EvalResult evaluate_lm(Transformer& model, BatchSource& source, int64_t batches,
                       const std::function<void(int64_t)>& on_batch) {
  if (batches <= 0 || batches > kMaxEvalBatches)
    throw Error("evaluate_lm: batches must be in [1, " + std::to_string(kMaxEvalBatches) +
                "], got " + std::to_string(batches));
  torch::NoGradGuard no_grad;
  double sum = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < batches; ++i) {
    const TrainBatch b = source.next();
    ForwardOptions fo;
    fo.document_ids = b.document_ids;
    auto logits = model.forward(b.tokens, fo);  // [B,T,V]
    sum += lm_loss_sum(logits, b.labels.to(logits.device())).item<double>();
    n += b.loss_tokens();
    if (on_batch) on_batch(i + 1);
  }
  EvalResult r;
  r.tokens = n;
  r.loss = n > 0 ? sum / double(n) : 0.0;
  r.ppl = std::exp(r.loss);
  return r;
}

}  // namespace finmoe
