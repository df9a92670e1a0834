// 3D pixel shuffle (depth-to-space) and pixel unshuffle (space-to-depth).
//
//   pixel_shuffle3d:   x (N, C*r^3, D, H, W)    -> y (N, C, r*D, r*H, r*W)
//   pixel_unshuffle3d: x (N, C, r*D, r*H, r*W)  -> y (N, C*r^3, D, H, W)
//
// Low-resolution channel c*r^3 + i*r^2 + j*r + k at (d, h, w) is the same value
// as high-resolution voxel (c, d*r + i, h*r + j, w*r + k). x may have any strides
// (in elements, non-negative); y is always a new contiguous tensor. The kernels
// move raw 2-, 4- or 8-byte words, so one instantiation per element size serves
// float16 and bfloat16 (2), float32 (4) and float64 (8): the result is bit-exact.
#pragma once

#include <cstdint>

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>

namespace brainkern {

// Launches one pass over y on `stream`. sizes/strides: the 5 sizes and strides of
// x (elements). element_size: 2, 4 or 8. shuffle: true for pixel_shuffle3d, false
// for pixel_unshuffle3d. y must hold the contiguous output. Returns the launch's
// error (cudaErrorInvalidValue for an unsupported element size).
cudaError_t pixel_shuffle3d_launch(const void* x, void* y, int element_size, bool shuffle, int64_t r,
                                   const int64_t sizes[5], const int64_t strides[5], cudaStream_t stream);

}  // namespace brainkern
#endif

#ifndef __CUDACC__
#include "common.h"

namespace brainkern {

// Validates x and r for either op (shared by the CPU and CUDA entry points) and
// returns the output sizes.
inline std::vector<int64_t> pixel_shuffle3d_output_sizes(const at::Tensor& x, int64_t r, bool shuffle) {
  const char* op = shuffle ? "pixel_shuffle3d" : "pixel_unshuffle3d";
  TORCH_CHECK(x.dim() == 5, op, ": x must be 5-d (N, C, D, H, W), got shape ", shape_str(x.sizes()));
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": x must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(r >= 1, op, ": the scale factor must be >= 1, got ", r);
  std::vector<int64_t> out(x.sizes().begin(), x.sizes().end());
  if (shuffle) {
    const int64_t block = r * r * r;
    TORCH_CHECK(x.size(1) % block == 0, op, ": the number of input channels (", x.size(1),
                ") must be divisible by r^3 (", r, "^3=", block, "), shape ", shape_str(x.sizes()));
    out[1] /= block;
    for (int d = 2; d < 5; ++d) out[d] *= r;
  } else {
    for (int d = 2; d < 5; ++d) {
      TORCH_CHECK(x.size(d) % r == 0, op, ": every spatial size must be divisible by r (", r, "), got shape ",
                  shape_str(x.sizes()));
      out[d] /= r;
    }
    out[1] *= r * r * r;
  }
  return out;
}

at::Tensor pixel_shuffle3d_cpu(const at::Tensor& x, int64_t r);
at::Tensor pixel_unshuffle3d_cpu(const at::Tensor& x, int64_t r);
#ifdef WITH_CUDA
at::Tensor pixel_shuffle3d_cuda(const at::Tensor& x, int64_t r);
at::Tensor pixel_unshuffle3d_cuda(const at::Tensor& x, int64_t r);
#endif

}  // namespace brainkern
#endif
