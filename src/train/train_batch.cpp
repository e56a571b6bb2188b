#include "finmoe/dataset.h"

namespace finmoe {

int64_t TrainBatch::loss_tokens() const {
  return labels.defined() ? labels.ne(-100).sum().item<int64_t>() : 0;
}

}  // namespace finmoe
