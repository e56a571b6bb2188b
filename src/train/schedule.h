#pragma once
// Learning-rate schedules: linear warmup, then cosine / linear / constant
// decay to min_lr (Megatron-style; FineRMoE App. B.2: cosine to 1e-7 after a
// 1% warmup).
#include <cstdint>
#include <string>

namespace finmoe {

struct LrSchedule {
  std::string type = "cosine";  // cosine | linear | constant
  double lr = 0;                // peak
  double min_lr = 0;
  int64_t warmup_steps = 0;  // W
  int64_t total_steps = 0;   // S

  // The rate of optimizer update n = step + 1 (step = updates already done):
  //   n <= W:  lr * n / W
  //   else     p = min(1, (n - W) / (S - W))
  //            cosine:   min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2
  //            linear:   lr - (lr - min_lr) * p
  //            constant: lr
  // so the first update after warmup is just below the peak and update S
  // uses min_lr.
  double at(int64_t step) const;
};

}  // namespace finmoe
