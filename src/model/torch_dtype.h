// Conversions between safetensors dtypes and libtorch scalar types, shared by
// everything that moves tensors between files and libtorch.
#pragma once

#include <c10/core/ScalarType.h>

#include "finmoe/safetensors.h"

namespace finmoe {

c10::ScalarType to_torch(DType d);
// Throws finmoe::Error for a scalar type safetensors cannot store (complex, ...).
DType from_torch(c10::ScalarType t);

}  // namespace finmoe
