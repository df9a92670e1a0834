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

// One layer as the CUDA kernel sees it.
struct SNLayerDesc {
  const void* w;        // (out, in), row stride ld, unit column stride
  void* u;              // (out,)
  void* v;              // (in,)
  int64_t out;
  int64_t in;
  int64_t ld;
  int64_t work_offset;  // start of this layer's W^T d accumulator in the workspace
  int64_t rows_per_block;
  int64_t block_begin;  // first block of this layer in the grid
  int64_t slot;         // position of the layer in the call: its sigma and completion counter
};

// Layers per launch: the descriptors travel as a kernel argument (no host-device
// copy), which CUDA bounds at 4 KiB; longer lists take ceil(L / 32) launches.
constexpr int kSNMaxLayersPerLaunch = 32;

// Launch the fused step for `num_layers` (<= kSNMaxLayersPerLaunch) layers.
// `work` holds the W^T d accumulators (each descriptor's work_offset points into
// it) and `counters` one completion counter per slot, all zero on entry.
// `sigma[slot]` receives each layer's estimate. The descriptors' block_begin and
// rows_per_block must tile [0, num_blocks).
template <typename scalar_t>
cudaError_t spectral_norm_step_cuda_launch(const SNLayerDesc* layers, int num_layers, int64_t num_blocks,
                                           scalar_t* work, unsigned int* counters, scalar_t* sigma,
                                           double eps, cudaStream_t stream);

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
