// The torch side of the mining op, shared by its CPU registration (mining_torch.cpp) and its
// CUDA registration (mining_torch_cuda.cpp): argument checks and the kernel parameters.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "mining.h"

namespace facesdk {
namespace mining {

// Checks the op's arguments (shapes, dtypes, devices, options) and returns the parameters.
// Finite values and at least one positive pair are checked by the Python wrapper, not here.
Params make_params(const at::Tensor& embeddings, const at::Tensor& labels, double margin,
                   c10::string_view mode, int64_t seed, c10::string_view fallback, int64_t max_triplets);

}  // namespace mining
}  // namespace facesdk
