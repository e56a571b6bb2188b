#pragma once
// The settings of the per-tensor merge math (convert/merge_methods.h has the
// math; docs/merging.md the formulas), without libtorch: the merge layer
// plans with them. Internal.
namespace finmoe::merge_math {

// How a task vector delta = model - base is thinned before it is combined.
enum class Sparsify {
  None,
  Magnitude,          // TIES: keep the max(1, floor(density*n)) largest |delta|
                      // (of ties at the threshold the lowest indices)
  Random,             // DARE: keep each entry with probability density
  MagnitudeOutliers,  // Breadcrumbs: drop the floor(gamma*n) largest, then the smallest,
                      // keeping floor(density*n)
  DellaMagprune,  // DELLA: keep probability from density-eps to density+eps by |delta| rank per row
};

struct ModelParams {
  double weight = 1.0;
  double density = 1.0;
  double gamma = 0.01;
  double epsilon = 0.15;
};

// How the task-arithmetic family combines task vectors (merge_methods.h).
struct TaskArithmetic {
  Sparsify sparsify = Sparsify::None;
  bool consensus = false;
  bool normalize = false;
  bool rescale = false;
  double lambda = 1.0;
};

}  // namespace finmoe::merge_math
