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
// Backward: g = grad_y * act'(y) (from the saved output y, or the mask y > 0), then
//   grad_x[n, i, d] = sum over phases/taps with d = d_out + a - 1 + t of g[n, o, 2 d_out + a] w8[a, o, i, t]
//   (the stride-2 convolution of g with the folded 4x4x4 kernel), grad_w8 and grad_bias.
//
// CUDA kernels (resize_conv3d.cu). Per phase p = (a, b, c) the forward is a GEMM:
// M = N*D*H*W low-resolution voxels, N = C_out, K = 8 taps x C_in; the input gradient is one
// GEMM with M = N*D*H*W, N = C_in, K = 64 (phase, tap) pairs x C_out. Three families:
//   - "gemm" on tensor cores (nvcuda::wmma, fp32 accumulation): float16 and bfloat16
//     (16x16x16 fragments) and float32 as TF32 (16x16x8) when the caller allows TF32 for
//     convolutions (torch.backends.cudnn.allow_tf32, default on), on compute capability >= 8.0;
//   - "gemm" on the SIMT cores (same tiling and staging, scalar FMAs): float32 without TF32,
//     float64 (and float32 on GPUs older than sm_80);
//   - "small": C_out < 16 (the generators' last layer, C_out = 1), one thread per
//     low-resolution voxel computing every phase of a few output channels (forward), or every
//     tap of the folded 4x4x4 kernel for a few input channels (input gradient), in float32 /
//     float64: a 16-wide fragment would waste 15/16 of its work on one channel.
// Tensor-core operands are x's type: the folded weights (float32 sums of up to 8 weights) are
// rounded to it once, as cuDNN and Triton do; measured on a Kwon-like layer this gives about 1.6x
// the output error of eager conv3d in bf16 / fp16 (within the tests' bound of 2x + one ulp).
//
// Which layers go where (Kwon et al.'s generator, batch 4, 512 -> 256 -> 128 -> 64 -> 1 on 4^3 ->
// 64^3; M = voxels of the input, tiles as chosen for 132 SMs):
//   512->256, 4^3 -> 8^3     M = 256     tensor cores; forward 128 x 32 tiles, 128 blocks;
//                                        input gradient 128 x 32, only 32 blocks of K = 16384
//                                        (under-fills an H100/H200: a split-K candidate)
//   256->128, 8^3 -> 16^3    M = 2048    tensor cores; forward 64 x 128, 256 blocks; gradient
//                                        128 x 32, 128 blocks
//   128->64, 16^3 -> 32^3    M = 16384   tensor cores; forward 128 x 64, 1024 blocks; gradient
//                                        64 x 128, 256 blocks
//   64->1, 32^3 -> 64^3      M = 131072  "small" in every dtype, forward and input gradient
// in bf16 / fp16, and in float32 while TF32 is allowed; float64, and float32 with TF32 off, run
// the SIMT gemm (or "small" for the last layer). The weight and bias gradients stay on cuDNN /
// ATen (see resize_conv3d_cuda.cpp for the passes that remain).
//
// To choose between this kernel, the Triton kernel and cuDNN's conv_transpose3d on the folded
// 4x4x4 kernel, a GPU benchmark must time, per generator layer above (and HA-GAN's 256^3 layers),
// in bf16 (autocast), fp32 with TF32 and fp32 without: the forward alone, the backward alone
// (need_x, need_w, need_b all true, as in training, and need_x only), and forward + backward,
// each including the per-call weight re-layout and the activation / mask handling, synchronised,
// median of many repeats after warm-up; plus peak memory (cuDNN's workspace). Report achieved
// TFLOP/s (2 * N*D*H*W * 8 * C_out * 8 * C_in per forward) and bytes moved over copy bandwidth
// beside the times: the first and last layers are latency- or bandwidth-bound, not FLOP-bound,
// and the winner may differ per layer (the dispatch can then choose per shape).
#pragma once

#include <cstdint>

namespace brainkern {

// Padding of the weight layouts the launchers read (listed below): the reduction
// dimension per tap / (phase, tap) pair is padded to kResizeConv3dPadK rows so that every
// staged K chunk lies inside one tap (no per-element tap arithmetic); the output dimension to
// kResizeConv3dPadN columns so that any column tile reads whole, aligned 16-byte vectors with
// no bounds checks. The "small" layouts pad their channel group the same way.
constexpr int64_t kResizeConv3dPadK = 32;
constexpr int64_t kResizeConv3dPadN = 128;
constexpr int64_t kResizeConv3dSmallOut = 4;  // output channels per thread, small forward
constexpr int64_t kResizeConv3dSmallIn = 8;   // input channels per thread, small input gradient
constexpr int64_t kResizeConv3dSmallBelow = 16;  // C_out below this runs "small"

// c rounded up to a multiple of `mult`, and at least `mult` (an empty channel dimension still
// gets one zero group, so no launch divides by zero).
inline int64_t resize_conv3d_round_up(int64_t c, int64_t mult) {
  return c <= 0 ? mult : (c + mult - 1) / mult * mult;
}

enum class ResizeConv3dPath : int { kTensorCores = 0, kSimt = 1, kSmall = 2 };

// The kernel family for a call (forward and input gradient choose alike: in both the
// narrow dimension of the Kwon generator's last layer is C_out). half: x is float16 or
// bfloat16; tf32: float32 and the caller allows TF32; cc_major: the device's compute capability.
inline ResizeConv3dPath resize_conv3d_path(bool half, bool is_double, bool tf32, int64_t c_out, int cc_major) {
  if (c_out < kResizeConv3dSmallBelow) return ResizeConv3dPath::kSmall;
  if (is_double) return ResizeConv3dPath::kSimt;
  if (half) return ResizeConv3dPath::kTensorCores;  // the wrapper refuses half below sm_80
  return tf32 && cc_major >= 8 ? ResizeConv3dPath::kTensorCores : ResizeConv3dPath::kSimt;
}

}  // namespace brainkern

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>

namespace brainkern {

// Folded weights of the "small" kernels are read in the accumulation type: float for float,
// __half and __nv_bfloat16 inputs, double for double.
template <typename T>
struct resize_conv3d_acc {
  using type = float;
};
template <>
struct resize_conv3d_acc<double> {
  using type = double;
};

// Weight layouts the launchers read (all contiguous, zero in the padding; the torch wrapper
// makes them from w8 each call):
//   forward gemm    (8 phases, 8 taps, Kp = round_up(C_in, PadK), Np = round_up(C_out, PadN))
//                   [p, t, i, o] = w8[p, o, i, t]; element type W = T (tensor cores take the
//                   folded weights rounded to x's half type; TF32 rounds them in the kernel)
//   forward small   (C_in, round_up(C_out, SmallOut), 8 phases, 8 taps) [i, o, p, t] = w8[p, o, i, t],
//                   W = the accumulation type
//   backward gemm   (8 phases, 8 taps, Kp = round_up(C_out, PadK), Np = round_up(C_in, PadN))
//                   [p, t, o, i] = w8[p, o, i, t]; W = T
//   backward small  (C_out, round_up(C_in, SmallIn), 4, 4, 4) [o, i, kd, kh, kw] = K4[i, o, kd, kh, kw]
//                   (the transposed kernel: grad_x[d] = sum_kd g[2d - 1 + kd] K4[kd]), W = acc type
template <typename T, typename W>
struct ResizeConv3dFwdArgs {
  const T* x;        // (N, C_in, D, H, W)
  const W* wt;       // forward gemm or small layout
  const T* bias;     // (C_out) or null
  T* y;              // (N, C_out, 2D, 2H, 2W)
  uint8_t* mask;     // (N, C_out, 2D, 2H, 2W) bool y > 0, or null (written with y, no second pass)
  int64_t n, c_in, c_out, d, h, w;
  int act;
  double slope;
};

template <typename T, typename W>
struct ResizeConv3dBwdArgs {
  const T* grad_y;       // (N, C_out, 2D, 2H, 2W)
  const uint8_t* mask;   // relu / leaky_relu: the forward's bool mask y > 0, same shape; else null
  const T* y;            // tanh: the forward output; else null
  const W* wt;           // backward gemm or small layout
  T* grad_x;             // (N, C_in, D, H, W)
  T* g;                  // null, or (N, C_out, 2D, 2H, 2W): receives grad_y * act'(y), each element
                         // once, for the weight and bias gradients (no separate pass for them)
  int64_t n, c_in, c_out, d, h, w;
  int act;
  double slope;
};

// tensor_cores: wmma (T = __half, __nv_bfloat16: must be true; float: TF32; double: must be
// false). Return cudaErrorInvalidValue for a combination that has no kernel.
template <typename T>
cudaError_t resize_conv3d_fwd_gemm_launch(const ResizeConv3dFwdArgs<T, T>& args, bool tensor_cores,
                                          cudaStream_t stream);
template <typename T>
cudaError_t resize_conv3d_fwd_small_launch(const ResizeConv3dFwdArgs<T, typename resize_conv3d_acc<T>::type>& args,
                                           cudaStream_t stream);
template <typename T>
cudaError_t resize_conv3d_bwd_input_gemm_launch(const ResizeConv3dBwdArgs<T, T>& args, bool tensor_cores,
                                                cudaStream_t stream);
template <typename T>
cudaError_t resize_conv3d_bwd_input_small_launch(
    const ResizeConv3dBwdArgs<T, typename resize_conv3d_acc<T>::type>& args, cudaStream_t stream);

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
