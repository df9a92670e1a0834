// Shared helpers for brainkern's C++ sources (torch-side files only; CUDA
// kernel files stay free of torch headers and include cuda_common.h instead).
#pragma once

#include <torch/extension.h>

#include <sstream>
#include <string>
#include <vector>

namespace brainkern {

// "[2, 16, 8, 8, 8]" for error messages.
inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << "]";
  return os.str();
}

}  // namespace brainkern

#define BK_CHECK_DIM(t, n, name)                                                      \
  TORCH_CHECK((t).dim() == (n), name, " must have ", n, " dimensions, got shape ",     \
              ::brainkern::shape_str((t).sizes()))
#define BK_CHECK_CPU(t, name) \
  TORCH_CHECK((t).device().is_cpu(), name, " must be a CPU tensor, got ", (t).device())
#define BK_CHECK_CUDA(t, name) \
  TORCH_CHECK((t).device().is_cuda(), name, " must be a CUDA tensor, got ", (t).device())
#define BK_CHECK_FLOAT(t, name)                                                       \
  TORCH_CHECK(at::isFloatingType((t).scalar_type()), name,                            \
              " must be a floating-point tensor, got ", (t).scalar_type())
