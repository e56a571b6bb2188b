#include "core/progress.h"

#include <gtest/gtest.h>

namespace finmoe {
namespace {

TEST(Progress, FormatsCountRateAndEta) {
  // 30 of 120 in 10 s: 3/s, 90 left -> 30 s.
  EXPECT_EQ(Progress::format("convert", 30, 120, "tensors", 10.0),
            "convert  30/120 tensors  3.00 tensors/s  ETA 00:30");
  // 1000 of 61000 in 1 s -> 60 s left; rates >= 100 have no decimals.
  EXPECT_EQ(Progress::format("eval", 1000, 61000, "tok", 1.0), "eval  1000/61000 tok  1000 tok/s  ETA 01:00");
  EXPECT_EQ(Progress::format("x", 5, 5, "it", 2.0), "x  5/5 it  2.50 it/s  ETA 00:00");
  EXPECT_EQ(Progress::format("x", 0, 5, "it", 0.0), "x  0/5 it  0.00 it/s  ETA --:--");
  EXPECT_EQ(Progress::format("x", 7, 0, "it", 1.0), "x  7 it  7.00 it/s");  // unknown total
  EXPECT_EQ(Progress::format("x", 1, 7201, "it", 1.0), "x  1/7201 it  1.00 it/s  ETA 2:00:00");
}

TEST(Progress, AppendsAStatusAfterTheEta) {
  EXPECT_EQ(Progress::format("train", 10, 40, "steps", 5.0, "loss 2.1000  lr 3.00e-04"),
            "train  10/40 steps  2.00 steps/s  ETA 00:15  loss 2.1000  lr 3.00e-04");
}

TEST(Progress, MessagesGoOnTheirOwnLines) {
  testing::internal::CaptureStderr();
  {
    Progress p("job", 2, "steps");
    p.update(1, "loss 1.0");
    p.message("step 1 done");
    p.update(2, "loss 0.5");
  }
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("step 1 done\n"), std::string::npos) << err;
  EXPECT_NE(err.find("job  2/2 steps"), std::string::npos) << err;
  EXPECT_NE(err.find("loss 0.5"), std::string::npos) << err;
}

TEST(Progress, PrintsAFinalLine) {
  testing::internal::CaptureStderr();
  {
    Progress p("job", 4, "steps");
    for (int i = 1; i <= 4; ++i) p.update(i);
  }  // the destructor finishes
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("job  4/4 steps"), std::string::npos) << err;
  EXPECT_EQ(err.back(), '\n');
}

}  // namespace
}  // namespace finmoe
