// The Python module brainkern._C.
//
// Each op registers its own schema and kernels from its folder with
// TORCH_LIBRARY_FRAGMENT(brainkern, m) (CPU) and TORCH_LIBRARY_IMPL(brainkern,
// CUDA, m) (CUDA), so they appear as torch.ops.brainkern.<name> once this
// module is imported. This file only tells Python what the build contains.
#include <torch/extension.h>
#include <torch/version.h>

#include <string>

namespace {

bool cuda_built() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "brainkern's compiled CPU (and, when built, CUDA) kernels";
  m.def("cuda_built", &cuda_built, "Whether this build contains the CUDA kernels");
  m.attr("torch_version") = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR);
}
