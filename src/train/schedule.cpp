#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "finmoe/error.h"

namespace finmoe {

double LrSchedule::at(int64_t step) const {
  const int64_t n = step + 1;
  if (n <= warmup_steps) return lr * double(n) / double(warmup_steps);
  if (type == "constant") return lr;
  const int64_t decay = total_steps - warmup_steps;
  const double p = decay <= 0 ? 1.0 : std::min(1.0, double(n - warmup_steps) / double(decay));
  if (type == "cosine")
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
  if (type == "linear") return lr - (lr - min_lr) * p;
  throw Error("schedule '" + type + "' is not one of cosine, linear, constant");
}

}  // namespace finmoe
