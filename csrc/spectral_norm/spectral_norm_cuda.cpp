// Torch-side wrapper of the CUDA spectral-norm step: checks, workspace, launch.
//
// Launches per call: three kernels per group of kSNMaxLayersPerLaunch layers
// (one group for any discriminator with at most 24 spectral-normalised layers),
// no zero fill and no host-to-device copy (the layer descriptors are kernel
// arguments), so the host never waits for the GPU. The workspace is float64
// whatever the weights' dtype: every sum runs in double, in a fixed order.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "common.h"
#include "spectral_norm/spectral_norm.h"

namespace brainkern {

at::Tensor spectral_norm_step_cuda(at::TensorList weights, at::TensorList us, at::TensorList vs, double eps) {
  spectral_norm_check_inputs(weights, us, vs, /*cuda=*/true);
  const c10::cuda::CUDAGuard guard(weights[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t L = static_cast<int64_t>(weights.size());

  std::vector<SNLayer> layers(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor& w = weights[l];
    layers[l] = SNLayer{w.const_data_ptr(), us[l].mutable_data_ptr(), vs[l].mutable_data_ptr(),
                        w.size(0), w.size(1), w.stride(0)};
  }
  const int64_t work_size = spectral_norm_workspace_size(layers.data(), L);
  TORCH_CHECK(work_size > 0, "spectral_norm_step: invalid layer shapes for the CUDA workspace");
  // Every element is written before it is read: empty, not zeros.
  at::Tensor work = at::empty({work_size}, weights[0].options().dtype(at::kDouble));
  at::Tensor sigma = at::empty({L}, weights[0].options());

  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "spectral_norm_step_cuda", [&] {
    const cudaError_t err = spectral_norm_step_cuda_launch<scalar_t>(
        layers.data(), L, work.data_ptr<double>(), sigma.data_ptr<scalar_t>(), eps, stream);
    TORCH_CHECK(err == cudaSuccess, "spectral_norm_step: CUDA launch failed: ", cudaGetErrorString(err));
  });
  return sigma;
}

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) { m.impl("spectral_norm_step", &brainkern::spectral_norm_step_cuda); }
