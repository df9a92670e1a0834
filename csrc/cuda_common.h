// Torch-free helpers for brainkern's CUDA kernel files, so that nvcc can
// compile-check them on a machine without PyTorch's CUDA headers.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace brainkern {

inline unsigned int ceil_div(int64_t a, int64_t b) { return static_cast<unsigned int>((a + b - 1) / b); }

// Launchers return the CUDA error of the launch so the torch-side caller can raise it.
inline cudaError_t last_launch_error() { return cudaGetLastError(); }

}  // namespace brainkern
