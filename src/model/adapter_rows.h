#pragma once
// Which serving adapter each row of the current forward pass uses: the state
// behind multi-adapter serving (several LoRA adapters and ESFT deltas over one
// base model in one running batch, include/finmoe/serving_adapters.h).
//
// The engine puts the batch's rows under an AdapterRowsScope for its model
// step; a LinearImpl with serving adapters adds each adapter's term to the
// rows that name it, and a MoE layer runs an ESFT delta's experts for the
// rows that name that delta. Modules that see other rows than the batch's
// (the routed experts' gathered tokens) open a nested scope with
// AdapterRows::select. Without a scope every row runs the base weights.
//
// Thread safety: the scope is per thread (a forward pass runs on one thread).
#include <cstdint>
#include <map>
#include <vector>

#include <torch/torch.h>

namespace finmoe {

class AdapterRows {
 public:
  // ids[i]: adapter of row i (0 = the base weights); row tensors on `device`.
  AdapterRows(std::vector<int32_t> ids, torch::Device device);

  int64_t rows() const { return static_cast<int64_t>(ids_.size()); }
  const std::vector<int32_t>& ids() const { return ids_; }
  // The adapters used by some row (ascending, 0 excluded).
  const std::vector<int32_t>& adapters() const { return adapters_; }
  // Rows using `adapter`, int64 [n] (empty when none).
  torch::Tensor rows_of(int32_t adapter) const;
  // The rows `rows` (int64 indices into these rows) as a batch of their own.
  AdapterRows select(const torch::Tensor& rows) const;

 private:
  std::vector<int32_t> ids_;
  std::vector<int32_t> adapters_;
  std::map<int32_t, torch::Tensor> rows_;
  torch::Device device_;
};

// The rows of the innermost scope on this thread, or null.
const AdapterRows* current_adapter_rows();

// Makes `rows` current on this thread until destruction (scopes nest). A
// scope whose rows all use the base weights makes nothing current.
class AdapterRowsScope {
 public:
  explicit AdapterRowsScope(const AdapterRows* rows);
  ~AdapterRowsScope();
  AdapterRowsScope(const AdapterRowsScope&) = delete;
  AdapterRowsScope& operator=(const AdapterRowsScope&) = delete;

 private:
  const AdapterRows* previous_;
};

}  // namespace finmoe
