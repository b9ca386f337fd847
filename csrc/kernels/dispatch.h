// Internal: the instruction set the kernels run on, picked at load time as the
// best the CPU supports (FACESDK_ISA overrides it) and switchable by set_isa
// (facesdk/kernels.h).
#pragma once

#include "tile.h"

namespace facesdk::detail {

// The kernels every call of the public API uses. A call reads this once, so a
// concurrent set_isa never mixes two instruction sets within one result.
const TileKernels& active_kernels();

}  // namespace facesdk::detail
