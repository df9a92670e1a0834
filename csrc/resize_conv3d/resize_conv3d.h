// resize_conv3d: nearest x2 upsampling then a 3x3x3 convolution (padding 1), with
// bias and activation, computed on the low-resolution input with folded weights.
//
// Shapes:
//   x     (N, C_in, D, H, W)                  low-resolution input, contiguous
//   w8    (2, 2, 2, C_out, C_in, 2, 2, 2)     phase filters [a, b, c, o, i, t, u, v] (the torch-side
//         entry points also take the (C_in, C_out, 4, 4, 4) transposed kernel), in x's dtype,
//         or float32 when x is float16/bfloat16 (folded sums of weights are not rounded to half):
//         output voxel (2d+a, 2h+b, 2w+c) reads x[d+a-1+t, h+b-1+u, w+c-1+v]
//         (zero outside the volume); brainkern.ops.fold_resize_conv_weight makes them
//   bias  (C_out) or none
//   y     (N, C_out, 2D, 2H, 2W)
// act: 0 none, 1 relu, 2 leaky_relu (slope for negative inputs), 3 tanh.
//
// Backward: g = grad_y * act'(y) (from the saved output y), then
//   grad_x[n, i, d] = sum over phases/taps with d = d_out + a - 1 + t of g[n, o, 2 d_out + a] w8[a, o, i, t]
//   (the stride-2 convolution of g with the folded 4x4x4 kernel), grad_w8 and grad_bias.
#pragma once

#include <cstdint>

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>

namespace brainkern {

// Folded weights are read in the accumulation type: float for float, __half and
// __nv_bfloat16 inputs, double for double.
template <typename T>
struct resize_conv3d_acc {
  using type = float;
};
template <>
struct resize_conv3d_acc<double> {
  using type = double;
};

// y = act(phase_conv(x, w8) + bias); bias may be null. T: float, double, __half, __nv_bfloat16.
template <typename T>
cudaError_t resize_conv3d_fwd_cuda_launch(const T* x, const typename resize_conv3d_acc<T>::type* w8, const T* bias, T* y, int64_t n,
                                          int64_t c_in, int64_t c_out, int64_t d, int64_t h, int64_t w,
                                          int act, float slope, cudaStream_t stream);

// grad_x (N, C_in, D, H, W) from g (N, C_out, 2D, 2H, 2W) = grad_y * act'(y).
template <typename T>
cudaError_t resize_conv3d_bwd_input_cuda_launch(const T* g, const typename resize_conv3d_acc<T>::type* w8, T* grad_x, int64_t n, int64_t c_in,
                                                int64_t c_out, int64_t d, int64_t h, int64_t w,
                                                cudaStream_t stream);

}  // namespace brainkern
#endif

#ifndef __CUDACC__
#include <torch/types.h>

#include <tuple>

#include "common.h"

namespace brainkern {

// (2,2,2, C_out, C_in, 2,2,2) phase filters -> (C_in, C_out, 4,4,4) kernel of the equivalent
// conv_transpose3d(stride 2, padding 1): per axis, tap k = 3 - (2t + a) holds phase a's tap t.
inline at::Tensor resize_conv3d_phase_to_transposed(const at::Tensor& w8) {
  const int64_t c_out = w8.size(3), c_in = w8.size(4);
  return w8.permute({4, 3, 5, 0, 6, 1, 7, 2}).reshape({c_in, c_out, 4, 4, 4}).flip({2, 3, 4});
}

inline at::Tensor resize_conv3d_transposed_to_phase(const at::Tensor& k4) {
  const int64_t c_in = k4.size(0), c_out = k4.size(1);
  return k4.flip({2, 3, 4}).reshape({c_in, c_out, 2, 2, 2, 2, 2, 2}).permute({3, 5, 7, 1, 0, 2, 4, 6})
      .contiguous();
}

// The folded weights come in either layout: (2,2,2, C_out, C_in, 2,2,2) phase filters or the
// (C_in, C_out, 4,4,4) transposed-convolution kernel (what the CPU path runs: the Python side
// folds straight into it, avoiding an 8-D permutation per call). Gradients come back in the
// layout given.
inline int64_t resize_conv3d_c_out(const at::Tensor& w) { return w.dim() == 8 ? w.size(3) : w.size(1); }

inline at::Tensor resize_conv3d_as_transposed(const at::Tensor& w) {
  return w.dim() == 5 ? w : resize_conv3d_phase_to_transposed(w);
}

inline at::Tensor resize_conv3d_as_phase(const at::Tensor& w) {
  return w.dim() == 8 ? w : resize_conv3d_transposed_to_phase(w);
}

// Boundary checks shared by the CPU and CUDA entry points.
inline void resize_conv3d_check(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                                int64_t act) {
  BK_CHECK_DIM(x, 5, "resize_conv3d: x");
  BK_CHECK_FLOAT(x, "resize_conv3d: x");
  const int64_t c_in = x.size(1);
  const bool phase = w.dim() == 8 && w.size(0) == 2 && w.size(1) == 2 && w.size(2) == 2 && w.size(4) == c_in &&
                     w.size(5) == 2 && w.size(6) == 2 && w.size(7) == 2;
  const bool transposed =
      w.dim() == 5 && w.size(0) == c_in && w.size(2) == 4 && w.size(3) == 4 && w.size(4) == 4;
  TORCH_CHECK(phase || transposed, "resize_conv3d: folded weights must have shape (2, 2, 2, C_out, C_in=", c_in,
              ", 2, 2, 2) or (C_in=", c_in, ", C_out, 4, 4, 4), got ", shape_str(w.sizes()));
  const bool half = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(w.scalar_type() == x.scalar_type() || (half && w.scalar_type() == at::kFloat),
              "resize_conv3d: folded weights are ", w.scalar_type(), " but x is ", x.scalar_type(),
              " (they must match x, or be float32 for half x)");
  TORCH_CHECK(w.device() == x.device(), "resize_conv3d: folded weights are on ", w.device(), " but x is on ",
              x.device());
  TORCH_CHECK(act >= 0 && act <= 3, "resize_conv3d: activation code must be 0..3, got ", act);
  if (bias.has_value() && bias->defined()) {
    const int64_t c_out = resize_conv3d_c_out(w);
    BK_CHECK_DIM(*bias, 1, "resize_conv3d: bias");
    TORCH_CHECK(bias->size(0) == c_out, "resize_conv3d: bias must have ", c_out, " entries, got ", bias->size(0));
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "resize_conv3d: bias must match x's dtype and device");
  }
}

// Returns (y, mask): mask = y > 0 (bool) for relu / leaky_relu, empty otherwise. The backward
// takes that mask as y for relu / leaky_relu, the output y for tanh.
std::tuple<at::Tensor, at::Tensor> resize_conv3d_fwd_cpu(const at::Tensor& x, const at::Tensor& w8,
                                                         const c10::optional<at::Tensor>& bias, int64_t act,
                                                         double slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor> resize_conv3d_bwd_cpu(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& y, const at::Tensor& x, const at::Tensor& w8,
    int64_t act, double slope, bool need_x, bool need_w, bool need_b);

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> resize_conv3d_fwd_cuda(const at::Tensor& x, const at::Tensor& w8,
                                                          const c10::optional<at::Tensor>& bias, int64_t act,
                                                          double slope);
std::tuple<at::Tensor, at::Tensor, at::Tensor> resize_conv3d_bwd_cuda(
    const at::Tensor& grad_y, const c10::optional<at::Tensor>& y, const at::Tensor& x, const at::Tensor& w8,
    int64_t act, double slope, bool need_x, bool need_w, bool need_b);
#endif

}  // namespace brainkern
#endif
