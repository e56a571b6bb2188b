#pragma once
// Internal to the merge layer: the merge methods' table and how a recipe
// parameter is evaluated for one tensor (include/finmoe/merge.h).
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "finmoe/merge.h"

namespace finmoe {

struct MergeMethodInfo {
  std::string name;
  std::set<std::string> parameters;  // the keys a recipe may give
  bool needs_base = false;           // a base_model the others are deltas from
  int min_models = 1;                // inputs besides the base
  int max_models = 0;                // 0 = any number
  bool optional_base = false;        // a base_model is used when given (nuslerp)
};

const std::vector<MergeMethodInfo>& merge_methods();
// Throws Error "WHERE: merge_method 'X' is not one finmoe implements (...)".
const MergeMethodInfo& merge_method_info(const std::string& name, const std::string& where);

// mergekit's evaluation of a setting for tensor `tensor` at layer position t
// in [0, 1]: a scalar as is; a gradient of numbers interpolated at
// t*(n-1); the first {filter, value} whose filter is empty, "*" or a substring
// of the tensor name. nullopt when no filter matches. `key` names the
// parameter in errors (a value that is not a number / boolean).
std::optional<double> eval_number(const MergeParam& p, const std::string& tensor, double t,
                                  const std::string& key);
std::optional<bool> eval_bool(const MergeParam& p, const std::string& tensor, double t,
                              const std::string& key);

// A model path of a recipe: as given when it exists from the current
// directory (or is absolute), else from the recipe's directory.
std::string resolve_recipe_path(const std::string& path, const std::filesystem::path& recipe_dir);

// OUT of a merge must be new: throws Error naming it when it exists.
void check_new_output(const std::string& out_dir);
// The output directory of a merge, written under a temporary name beside OUT and renamed to OUT by
// commit(); destroyed before that, the temporary directory is removed.
class StagedOutput {
 public:
  explicit StagedOutput(const std::string& out_dir);
  ~StagedOutput();
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;
  const std::string& dir() const { return tmp_; }
  void commit();

 private:
  std::string out_dir_, tmp_;
  bool committed_ = false;
};

}  // namespace finmoe
