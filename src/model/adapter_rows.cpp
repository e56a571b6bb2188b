#include "model/adapter_rows.h"

#include <algorithm>

namespace finmoe {

namespace {
thread_local const AdapterRows* g_current = nullptr;
}  // namespace

AdapterRows::AdapterRows(std::vector<int32_t> ids, torch::Device device)
    : ids_(std::move(ids)), device_(device) {
  std::map<int32_t, std::vector<int64_t>> rows;
  for (size_t i = 0; i < ids_.size(); ++i)
    if (ids_[i] != 0) rows[ids_[i]].push_back(static_cast<int64_t>(i));
  for (auto& [id, r] : rows) {
    adapters_.push_back(id);
    rows_.emplace(id, torch::tensor(r, torch::kInt64).to(device_));
  }
}

torch::Tensor AdapterRows::rows_of(int32_t adapter) const {
  auto it = rows_.find(adapter);
  return it == rows_.end() ? torch::empty({0}, torch::dtype(torch::kInt64).device(device_))
                           : it->second;
}

AdapterRows AdapterRows::select(const torch::Tensor& rows) const {
  auto r = rows.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* p = r.data_ptr<int64_t>();
  std::vector<int32_t> ids(static_cast<size_t>(r.numel()));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = ids_.at(static_cast<size_t>(p[i]));
  return AdapterRows(std::move(ids), device_);
}

const AdapterRows* current_adapter_rows() { return g_current; }

AdapterRowsScope::AdapterRowsScope(const AdapterRows* rows) : previous_(g_current) {
  g_current = rows && !rows->adapters().empty() ? rows : nullptr;
}

AdapterRowsScope::~AdapterRowsScope() { g_current = previous_; }

}  // namespace finmoe
