// Torch-side CUDA entry point of diff_augment3d: checks, output allocation, device
// guard and stream, then the raw launcher in diff_augment3d.cu. x is read through
// its strides; only the (N, 3) and (N,) parameter tensors are made contiguous.
#include "diff_augment3d/diff_augment3d.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace brainkern {

at::Tensor diff_augment3d_cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& lo,
                               const at::Tensor& hi, const at::Tensor& scale, double background) {
  BK_CHECK_CUDA(x, "diff_augment3d: x");
  diff_augment3d_check(x, shift, lo, hi, scale);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  int64_t sizes[5], strides[5];
  for (int d = 0; d < 5; ++d) {
    sizes[d] = x.size(d);
    strides[d] = x.stride(d);
    TORCH_CHECK(strides[d] >= 0, "diff_augment3d: x has a negative stride ", strides[d], " in dimension ", d);
  }
  const at::Tensor sh = shift.contiguous(), l = lo.contiguous(), u = hi.contiguous();
  const at::Tensor s = scale.to(diff_augment3d_acc_type(x)).contiguous();
  AugmentDtype dtype;
  switch (x.scalar_type()) {
    case at::kFloat: dtype = AugmentDtype::kFloat32; break;
    case at::kDouble: dtype = AugmentDtype::kFloat64; break;
    case at::kHalf: dtype = AugmentDtype::kFloat16; break;
    default: dtype = AugmentDtype::kBFloat16; break;
  }
  const cudaError_t err = diff_augment3d_launch(x.const_data_ptr(), y.mutable_data_ptr(), dtype, sizes, strides,
                                                sh.const_data_ptr<int64_t>(), l.const_data_ptr<int64_t>(),
                                                u.const_data_ptr<int64_t>(), s.const_data_ptr(), background,
                                                c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "diff_augment3d: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) { m.impl("diff_augment3d", &brainkern::diff_augment3d_cuda); }
