// Fused spectral-norm power iteration for a list of layers (Miyato et al. 2018,
// as torch.nn.utils.parametrizations.spectral_norm runs it).
//
// Layer l: W_l (out_l, in_l) with unit column stride and row stride ld_l >= in_l,
// u_l (out_l,), v_l (in_l,), contiguous, all of one dtype (float32 or float64) and
// one device. One call reads each W_l once:
//   d = W v (per row), g = W^T d (accumulated while the row is hot),
//   n = max(||d||, eps), t = ||g|| / n,
//   u <- d / n, v <- (g / n) / max(t, eps), sigma_l = t^2 / max(t, eps)
// which equals torch's u = normalize(W v), v = normalize(W^T u), sigma = u.(W v).
// Returns sigma (L,) in the weights' dtype; u and v are updated in place.
#pragma once

#include <cstdint>

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>

namespace brainkern {

// One layer of a call, as the torch wrapper hands it to the launcher.
struct SNLayer {
  const void* w;  // (out, in), row stride ld, unit column stride
  void* u;        // (out,), contiguous
  void* v;        // (in,), contiguous
  int64_t out;
  int64_t in;
  int64_t ld;
};

// Layers per group of launches: their descriptors travel as a kernel argument
// (no host-to-device copy), which CUDA bounds at 4 KiB; longer lists take
// ceil(L / 24) groups of three launches.
constexpr int kSNMaxLayersPerLaunch = 24;

// float64 elements of the workspace one call needs (partial sums of W^T d per
// row block, d, W^T d, and per-block / per-chunk sums of squares). It depends on
// the shapes only; the launcher writes every element before reading it, so the
// workspace needs no zero fill.
int64_t spectral_norm_workspace_size(const SNLayer* layers, int64_t num_layers);

// The fused step for `num_layers` layers of one dtype (float or double): three
// kernels per group of kSNMaxLayersPerLaunch layers (row blocks, column chunks,
// finish), no atomics, sums in double in a fixed order, so the result is
// bit-identical from run to run. `work` holds spectral_norm_workspace_size()
// doubles; sigma[l] receives layer l's estimate.
template <typename scalar_t>
cudaError_t spectral_norm_step_cuda_launch(const SNLayer* layers, int64_t num_layers, double* work,
                                           scalar_t* sigma, double eps, cudaStream_t stream);

}  // namespace brainkern
#endif

#ifndef __CUDACC__
#include <torch/types.h>

namespace brainkern {

// Shapes, dtypes (float32/float64), devices and strides of one call; errors name the layer.
void spectral_norm_check_inputs(at::TensorList weights, at::TensorList us, at::TensorList vs, bool cuda);

at::Tensor spectral_norm_step_cpu(at::TensorList weights, at::TensorList us, at::TensorList vs, double eps);

#ifdef WITH_CUDA
at::Tensor spectral_norm_step_cuda(at::TensorList weights, at::TensorList us, at::TensorList vs, double eps);
#endif

}  // namespace brainkern
#endif
