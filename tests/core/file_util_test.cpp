// remove_tree: what the tests and tools use in place of std::filesystem::remove_all.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/file_util.h"
#include "core_test_util.h"

namespace fs = std::filesystem;

namespace finmoe {
namespace {

TEST(RemoveTree, RemovesNestedFilesButNotSymlinkTargets) {
  test::ScratchDir scratch;
  const fs::path root = fs::path(scratch.str()) / "tree";
  const fs::path outside = fs::path(scratch.str()) / "outside";
  fs::create_directories(root / "a" / "b");
  fs::create_directories(outside);
  std::ofstream(root / "a" / "b" / "f.bin") << "x";
  std::ofstream(root / "top.txt") << "y";
  std::ofstream(outside / "keep.txt") << "z";
  fs::create_directory_symlink(outside, root / "link");
  EXPECT_TRUE(remove_tree(root.string()));
  EXPECT_FALSE(fs::exists(root));
  EXPECT_TRUE(fs::exists(outside / "keep.txt"));  // the link was removed, not followed
  EXPECT_TRUE(remove_tree(root.string()));         // absent: nothing to do
}

}  // namespace
}  // namespace finmoe
