#pragma once
// Validation of tensors handed to the safetensors writers (internal).
#include <string>
#include <vector>

#include "finmoe/safetensors.h"

namespace finmoe {

// Throws Error naming `path` and the tensor when a name is empty, reserved
// or repeated, a dimension is negative, nbytes != numel * dtype_size, or the
// data pointer is null for a non-empty tensor.
void check_tensor_data(const std::string& path, const std::vector<TensorData>& tensors);

}  // namespace finmoe
