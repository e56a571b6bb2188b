// finmoe merge against mergekit itself: the recipes of tests/data/merge/ were
// run by mergekit-yaml on the three tiny models there
// (tests/ref/make_mergekit_reference.py); finmoe runs the same recipe files
// and must give every tensor to float32 rounding.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include <torch/torch.h>

#include "../model/test_util.h"
#include "finmoe/merge.h"
#include "finmoe/safetensors.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

std::string data(const std::string& rel) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/merge/" + rel;
}

torch::Tensor f32(const TensorView& v) {
  EXPECT_EQ(v.dtype, DType::F32) << v.name;
  return torch::from_blob(v.data, v.shape, torch::kFloat32);
}

class MergekitReference : public ::testing::TestWithParam<std::string> {};

TEST_P(MergekitReference, EveryTensorEqualsMergekitsToFloat32Rounding) {
  TempDir tmp;
  const std::string out = tmp.str() + "/out";
  MergeOptions o;
  o.progress = false;
  // the recipe names models relative to its own directory
  merge_models(load_merge_recipe(data(GetParam() + ".yaml")), out, o);

  const CheckpointReader got = CheckpointReader::open(out);
  const CheckpointReader want = CheckpointReader::open(data("expected/" + GetParam()));
  ASSERT_EQ(got.names(), want.names());
  double worst = 0;
  std::string worst_name;
  for (const auto& name : want.names()) {
    auto w = f32(want.get(name)), g = f32(got.get(name));
    ASSERT_EQ(w.sizes(), g.sizes()) << name;
    // float32 rounding of a few operations on values of size ~1
    const double d = ((g - w).abs() / (1 + w.abs())).max().item<double>();
    if (d > worst) worst = d, worst_name = name;
  }
  EXPECT_LT(worst, 2e-6) << "worst tensor " << worst_name;
  RecordProperty("max_rel_diff", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(Recipes, MergekitReference,
                         ::testing::Values("linear", "linear_nonorm", "task_arithmetic",
                                           "task_arithmetic_normalize", "ties", "ties_lambda",
                                           "slerp", "breadcrumbs", "sce", "model_stock",
                                           "nuslerp", "nuslerp_rows"));

TEST(MergekitReference, ReferenceDataCoversEveryCommittedRecipe) {
  std::set<std::string> recipes, expected;
  for (const auto& e : fs::directory_iterator(data("")))
    if (e.path().extension() == ".yaml") recipes.insert(e.path().stem().string());
  for (const auto& e : fs::directory_iterator(data("expected")))
    expected.insert(e.path().filename().string());
  EXPECT_EQ(recipes, expected);
  EXPECT_EQ(recipes.size(), 12u);
}

}  // namespace
}  // namespace finmoe
