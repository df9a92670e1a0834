// Torch-side CUDA entry points of pixel_shuffle3d / pixel_unshuffle3d: checks,
// output allocation, device guard and stream, then the raw launcher in
// pixel_shuffle3d.cu. x is read through its strides; no contiguous copy is made.
#include "pixel_shuffle3d/pixel_shuffle3d.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace brainkern {
namespace {

at::Tensor launch(const at::Tensor& x, int64_t r, bool shuffle) {
  const char* op = shuffle ? "pixel_shuffle3d: x" : "pixel_unshuffle3d: x";
  BK_CHECK_CUDA(x, op);
  const auto out_sizes = pixel_shuffle3d_output_sizes(x, r, shuffle);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(out_sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  int64_t sizes[5], strides[5];
  for (int d = 0; d < 5; ++d) {
    sizes[d] = x.size(d);
    strides[d] = x.stride(d);
    TORCH_CHECK(strides[d] >= 0, op, " has a negative stride ", strides[d], " in dimension ", d);
  }
  const cudaError_t err =
      pixel_shuffle3d_launch(x.const_data_ptr(), y.mutable_data_ptr(), static_cast<int>(x.element_size()), shuffle,
                             r, sizes, strides, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace

at::Tensor pixel_shuffle3d_cuda(const at::Tensor& x, int64_t r) { return launch(x, r, true); }
at::Tensor pixel_unshuffle3d_cuda(const at::Tensor& x, int64_t r) { return launch(x, r, false); }

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) {
  m.impl("pixel_shuffle3d", &brainkern::pixel_shuffle3d_cuda);
  m.impl("pixel_unshuffle3d", &brainkern::pixel_unshuffle3d_cuda);
}
