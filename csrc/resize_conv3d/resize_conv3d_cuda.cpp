// Torch-side CUDA entry points of resize_conv3d: boundary checks, device guard, stream, the
// per-call weight layouts the kernels read, dtype dispatch onto the raw launchers in
// resize_conv3d.cu. The weight gradient goes through ATen's (cuDNN's) transposed-convolution
// backward on the folded 4x4x4 kernel, the bias gradient through a sum.
//
// Passes over output-sized tensors: the forward writes y and, for relu / leaky_relu, the mask
// y > 0 in its epilogue (one pass). The backward's input-gradient kernel reads grad_y and the
// mask (or y for tanh) and applies act' while staging, and, when the weight or bias gradient is
// wanted, writes g = grad_y * act'(y) once as it goes; then the bias gradient reads g once and
// cuDNN's weight gradient reads it once: three passes where there were five (mask cast,
// activation backward, bias sum, input gradient, weight gradient).
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <vector>

#include "resize_conv3d/resize_conv3d.h"

namespace brainkern {
namespace {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

at::ScalarType acc_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "resize_conv3d: ", name, " is on ", t.device(), " but x is on ", x.device());
}

// Which kernel family runs, from the dtype, torch's TF32 switch for convolutions (what conv3d
// obeys: torch.backends.cudnn.allow_tf32) and the device.
ResizeConv3dPath choose_path(const at::Tensor& x, int64_t c_out) {
  int major = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index());
  TORCH_CHECK(err == cudaSuccess, "resize_conv3d: cannot query the device: ", cudaGetErrorString(err));
  const bool tf32 = x.scalar_type() == at::kFloat && at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
  const ResizeConv3dPath path =
      resize_conv3d_path(is_half(x), x.scalar_type() == at::kDouble, tf32, c_out, major);
  TORCH_CHECK(path != ResizeConv3dPath::kTensorCores || major >= 8, "resize_conv3d: the CUDA kernels run ",
              x.scalar_type(), " on tensor cores, which needs compute capability 8.0 or later; this device has ",
              major, ".x (use the triton or reference backend)");
  return path;
}

// The phase filters as (8 phases, C_out, C_in, 8 taps).
at::Tensor phase_view(const at::Tensor& w8) { return w8.reshape({8, w8.size(3), w8.size(4), 8}); }

// The padded layouts of resize_conv3d.h, zero in the padding. `dtype`: x's type for the gemm
// kernels (tensor cores take the folded weights rounded to it), the accumulation type for "small".
at::Tensor gemm_weights(const at::Tensor& w8, bool forward, at::ScalarType dtype) {
  const int64_t c_out = w8.size(3), c_in = w8.size(4);
  const int64_t k = forward ? c_in : c_out, n = forward ? c_out : c_in;
  const int64_t k_pad = resize_conv3d_round_up(k, kResizeConv3dPadK);
  const int64_t n_pad = resize_conv3d_round_up(n, kResizeConv3dPadN);
  at::Tensor out = at::zeros({8, 8, k_pad, n_pad}, w8.options().dtype(dtype));
  // forward [p, t, i, o], backward [p, t, o, i] = w8[p, o, i, t]
  const at::Tensor src = forward ? phase_view(w8).permute({0, 3, 2, 1}) : phase_view(w8).permute({0, 3, 1, 2});
  out.narrow(2, 0, k).narrow(3, 0, n).copy_(src);
  return out;
}

at::Tensor small_fwd_weights(const at::Tensor& w8, at::ScalarType dtype) {
  const int64_t c_out = w8.size(3), c_in = w8.size(4);
  const int64_t o_pad = resize_conv3d_round_up(c_out, kResizeConv3dSmallOut);
  at::Tensor out = at::zeros({c_in, o_pad, 8, 8}, w8.options().dtype(dtype));
  out.narrow(1, 0, c_out).copy_(phase_view(w8).permute({2, 1, 0, 3}));  // [i, o, p, t]
  return out;
}

at::Tensor small_bwd_weights(const at::Tensor& k4, at::ScalarType dtype) {
  const int64_t c_in = k4.size(0), c_out = k4.size(1);
  at::Tensor out =
      at::zeros({c_out, resize_conv3d_round_up(c_in, kResizeConv3dSmallIn), 4, 4, 4}, k4.options().dtype(dtype));
  out.narrow(1, 0, c_in).copy_(k4.transpose(0, 1));  // [o, i, kd, kh, kw]
  return out;
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<const T*>(t.const_data_ptr()) : nullptr;
}
template <typename T>
T* mut_ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<T*>(t.mutable_data_ptr()) : nullptr;
}

// g = grad_y * act'(y) through ATen, for the backward without an input gradient.
at::Tensor act_grad_aten(const at::Tensor& gy, const at::Tensor& saved, int64_t act, double slope) {
  if (act == 1 || act == 2)  // leaky_relu_backward reads only the sign of "result": the mask as 0/1 works
    return at::leaky_relu_backward(gy, saved.to(gy.scalar_type()), act == 1 ? 0.0 : slope, true);
  if (act == 3) return at::tanh_backward(gy, saved);
  return gy;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> resize_conv3d_fwd_cuda(const at::Tensor& x_in, const at::Tensor& w_in,
                                                          const c10::optional<at::Tensor>& bias_opt, int64_t act,
                                                          double slope) {
  BK_CHECK_CUDA(x_in, "resize_conv3d: x");
  resize_conv3d_check(x_in, w_in, bias_opt, act);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w8 = resize_conv3d_as_phase(w_in);
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? bias_opt->contiguous() : at::Tensor();
  const int64_t n = x.size(0), c_in = x.size(1), d = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t c_out = w8.size(3);
  const ResizeConv3dPath path = choose_path(x, c_out);
  const bool small = path == ResizeConv3dPath::kSmall;
  const at::Tensor wl = small ? small_fwd_weights(w8, acc_type(x)) : gemm_weights(w8, true, x.scalar_type());
  at::Tensor y = at::empty({n, c_out, 2 * d, 2 * h, 2 * w}, x.options());
  // relu / leaky_relu: the backward keeps only the 1-byte mask y > 0, written by the kernel.
  const bool want_mask = act == 1 || act == 2;
  const at::Tensor mask = want_mask ? at::empty(y.sizes(), y.options().dtype(at::kBool))
                                    : at::empty({0}, y.options().dtype(at::kBool));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_fwd_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    using A = typename resize_conv3d_acc<T>::type;
    uint8_t* m = want_mask ? mut_ptr<uint8_t>(mask) : nullptr;
    if (small) {
      const ResizeConv3dFwdArgs<T, A> args{ptr<T>(x), ptr<A>(wl), ptr<T>(bias), mut_ptr<T>(y), m, n, c_in, c_out,
                                           d, h, w, static_cast<int>(act), slope};
      err = resize_conv3d_fwd_small_launch<T>(args, stream);
    } else {
      const ResizeConv3dFwdArgs<T, T> args{ptr<T>(x), ptr<T>(wl), ptr<T>(bias), mut_ptr<T>(y), m, n, c_in, c_out,
                                           d, h, w, static_cast<int>(act), slope};
      err = resize_conv3d_fwd_gemm_launch<T>(args, path == ResizeConv3dPath::kTensorCores, stream);
    }
  });
  TORCH_CHECK(err == cudaSuccess, "resize_conv3d forward kernel failed: ", cudaGetErrorString(err));
  return {y, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> resize_conv3d_bwd_cuda(
    const at::Tensor& grad_y_in, const c10::optional<at::Tensor>& y_opt, const at::Tensor& x_in,
    const at::Tensor& w_in, int64_t act, double slope, bool need_x, bool need_w, bool need_b) {
  BK_CHECK_CUDA(x_in, "resize_conv3d: x");
  BK_CHECK_CUDA(grad_y_in, "resize_conv3d: grad_y");
  check_same_device(grad_y_in, x_in, "grad_y");
  BK_CHECK_CUDA(w_in, "resize_conv3d: the saved folded weights");
  check_same_device(w_in, x_in, "the saved folded weights");
  resize_conv3d_check(x_in, w_in, c10::nullopt, act);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t n = x_in.size(0), c_in = x_in.size(1), d = x_in.size(2), h = x_in.size(3), w = x_in.size(4);
  const int64_t c_out = resize_conv3d_c_out(w_in);
  const std::vector<int64_t> out_shape{n, c_out, 2 * d, 2 * h, 2 * w};
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef(out_shape), "resize_conv3d: grad_y must have shape ",
              shape_str(out_shape), ", got ", shape_str(grad_y_in.sizes()));
  TORCH_CHECK(grad_y_in.scalar_type() == x_in.scalar_type(), "resize_conv3d: grad_y dtype ",
              grad_y_in.scalar_type(), " differs from x's ", x_in.scalar_type());
  at::Tensor saved;  // relu / leaky_relu: the bool mask y > 0; tanh: y
  if (act != 0) {
    TORCH_CHECK(y_opt.has_value() && y_opt->defined() && y_opt->sizes() == grad_y_in.sizes(),
                "resize_conv3d: the backward of an activation needs the forward output y (or, for relu and "
                "leaky_relu, the mask y > 0) of shape ",
                shape_str(out_shape));
    BK_CHECK_CUDA(*y_opt, "resize_conv3d: the saved output (or mask)");
    check_same_device(*y_opt, x_in, "the saved output (or mask)");
    TORCH_CHECK(act == 3 ? y_opt->scalar_type() == x_in.scalar_type() : y_opt->scalar_type() == at::kBool,
                "resize_conv3d: the backward of ", act == 3 ? "tanh needs y" : "relu/leaky_relu needs the mask",
                " as ", act == 3 ? c10::toString(x_in.scalar_type()) : "bool", ", got ", y_opt->scalar_type());
    saved = y_opt->contiguous();
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gy = grad_y_in.contiguous();

  at::Tensor g = act == 0 ? gy : at::Tensor();  // grad_y * act'(y), once someone has formed it
  at::Tensor grad_x = at::empty({0}, x.options());
  if (need_x) {
    grad_x = at::empty(x.sizes(), x.options());
    // The kernel writes every element of g exactly once, as long as there is an input channel
    // to compute (with C_in = 0 it launches nothing).
    const bool fuse_g = (need_w || need_b) && act != 0 && c_in > 0;
    at::Tensor g_out = fuse_g ? at::empty(gy.sizes(), gy.options()) : at::Tensor();
    const ResizeConv3dPath path = choose_path(x, c_out);
    const bool small = path == ResizeConv3dPath::kSmall;
    const at::Tensor wl = small ? small_bwd_weights(resize_conv3d_as_transposed(w_in), acc_type(x))
                                : gemm_weights(resize_conv3d_as_phase(w_in), false, x.scalar_type());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t err = cudaSuccess;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_bwd_cuda", [&] {
      using T = typename CudaType<scalar_t>::type;
      using A = typename resize_conv3d_acc<T>::type;
      const uint8_t* mask = act == 1 || act == 2 ? ptr<uint8_t>(saved) : nullptr;
      const T* yv = act == 3 ? ptr<T>(saved) : nullptr;
      if (small) {
        const ResizeConv3dBwdArgs<T, A> args{ptr<T>(gy), mask, yv, ptr<A>(wl), mut_ptr<T>(grad_x), mut_ptr<T>(g_out),
                                             n, c_in, c_out, d, h, w, static_cast<int>(act), slope};
        err = resize_conv3d_bwd_input_small_launch<T>(args, stream);
      } else {
        const ResizeConv3dBwdArgs<T, T> args{ptr<T>(gy), mask, yv, ptr<T>(wl), mut_ptr<T>(grad_x), mut_ptr<T>(g_out),
                                             n, c_in, c_out, d, h, w, static_cast<int>(act), slope};
        err = resize_conv3d_bwd_input_gemm_launch<T>(args, path == ResizeConv3dPath::kTensorCores, stream);
      }
    });
    TORCH_CHECK(err == cudaSuccess, "resize_conv3d input-gradient kernel failed: ", cudaGetErrorString(err));
    if (fuse_g) g = g_out;
  }
  if (!g.defined() && (need_w || need_b)) g = act_grad_aten(gy, saved, act, slope);

  at::Tensor grad_b = need_b ? g.sum({0, 2, 3, 4}) : at::empty({0}, x.options());
  at::Tensor grad_w8 = at::empty({0}, x.options());
  if (need_w) {
    // cuDNN wants the weight in the activations' dtype; only its shape matters here.
    const at::Tensor k4 = resize_conv3d_as_transposed(w_in).to(x.scalar_type());
    auto grads = at::convolution_backward(g, x, k4, c10::nullopt, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, true, {0, 0, 0}, 1,
                                          {false, true, false});
    grad_w8 = w_in.dim() == 5 ? std::get<1>(grads) : resize_conv3d_transposed_to_phase(std::get<1>(grads));
    grad_w8 = grad_w8.to(w_in.scalar_type());
  }
  return {grad_x, grad_w8, grad_b};
}

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) {
  m.impl("resize_conv3d_fwd", &brainkern::resize_conv3d_fwd_cuda);
  m.impl("resize_conv3d_bwd", &brainkern::resize_conv3d_bwd_cuda);
}
