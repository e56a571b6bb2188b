#pragma once
// Validation of tensors handed to the safetensors writers, and the header
// they write (internal).
#include <map>
#include <string>
#include <vector>

#include "finmoe/safetensors.h"

namespace finmoe {

// Throws Error naming `path` and the tensor when a name is empty, reserved
// or repeated, a dimension is negative, nbytes != numel * dtype_size, or the
// data pointer is null for a non-empty tensor (unless !require_data: a plan
// whose bytes come later).
void check_tensor_data(const std::string& path, const std::vector<TensorData>& tensors,
                       bool require_data = true);

// The bytes before the data of a safetensors file holding `tensors` in this
// order: 8-byte little-endian length, then the JSON header padded with spaces
// to a multiple of 8 (only names, dtypes, shapes and nbytes are read).
std::string safetensors_header(const std::vector<TensorData>& tensors,
                               const std::map<std::string, std::string>& metadata);

}  // namespace finmoe
