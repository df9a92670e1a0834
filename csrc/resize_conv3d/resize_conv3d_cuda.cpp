// Torch-side CUDA entry points of resize_conv3d: boundary checks, device guard, stream,
// dtype dispatch onto the raw launchers in resize_conv3d.cu. The weight gradient goes
// through ATen's (cuDNN's) transposed-convolution backward on the folded 4x4x4 kernel.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
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

// The folded weights travel in the accumulation type (see resize_conv3d_acc).
at::Tensor weights_in_acc_type(const at::Tensor& w8, const at::Tensor& x) {
  return w8.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

void check_int32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.numel() <= INT32_MAX, "resize_conv3d: ", name, " has ", t.numel(),
              " elements; the CUDA kernels support at most 2^31 - 1");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> resize_conv3d_fwd_cuda(const at::Tensor& x_in, const at::Tensor& w_in,
                                                          const c10::optional<at::Tensor>& bias_opt, int64_t act,
                                                          double slope) {
  BK_CHECK_CUDA(x_in, "resize_conv3d: x");
  resize_conv3d_check(x_in, w_in, bias_opt, act);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w8 = weights_in_acc_type(resize_conv3d_as_phase(w_in), x_in);
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? bias_opt->contiguous() : at::Tensor();
  const int64_t n = x.size(0), c_in = x.size(1), d = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t c_out = w8.size(3);
  at::Tensor y = at::empty({n, c_out, 2 * d, 2 * h, 2 * w}, x.options());
  check_int32(y, "the output");
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_fwd_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    using W = typename resize_conv3d_acc<T>::type;
    err = resize_conv3d_fwd_cuda_launch<T>(
        reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()), w8.const_data_ptr<W>(),
        has_bias ? reinterpret_cast<const T*>(bias.const_data_ptr<scalar_t>()) : nullptr,
        reinterpret_cast<T*>(y.mutable_data_ptr<scalar_t>()), n, c_in, c_out, d, h, w, static_cast<int>(act),
        static_cast<float>(slope), stream);
  });
  TORCH_CHECK(err == cudaSuccess, "resize_conv3d forward kernel failed: ", cudaGetErrorString(err));
  // relu / leaky_relu: the backward keeps only the 1-byte mask y > 0.
  at::Tensor mask = (act == 1 || act == 2) ? at::gt(y, 0) : at::empty({0}, y.options().dtype(at::kBool));
  return {y, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> resize_conv3d_bwd_cuda(
    const at::Tensor& grad_y_in, const c10::optional<at::Tensor>& y_opt, const at::Tensor& x_in,
    const at::Tensor& w_in, int64_t act, double slope, bool need_x, bool need_w, bool need_b) {
  BK_CHECK_CUDA(x_in, "resize_conv3d: x");
  BK_CHECK_CUDA(grad_y_in, "resize_conv3d: grad_y");
  resize_conv3d_check(x_in, w_in, c10::nullopt, act);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w8 = weights_in_acc_type(resize_conv3d_as_phase(w_in), x_in);
  const int64_t n = x.size(0), c_in = x.size(1), d = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t c_out = w8.size(3);
  const std::vector<int64_t> out_shape{n, c_out, 2 * d, 2 * h, 2 * w};
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef(out_shape), "resize_conv3d: grad_y must have shape ",
              shape_str(out_shape), ", got ", shape_str(grad_y_in.sizes()));
  TORCH_CHECK(grad_y_in.scalar_type() == x.scalar_type(), "resize_conv3d: grad_y dtype ",
              grad_y_in.scalar_type(), " differs from x's ", x.scalar_type());
  check_int32(grad_y_in, "grad_y");
  at::Tensor g = grad_y_in.contiguous();
  if (act != 0) {
    TORCH_CHECK(y_opt.has_value() && y_opt->defined() && y_opt->sizes() == g.sizes(),
                "resize_conv3d: the backward of an activation needs the forward output y (or the mask y > 0) of shape ",
                shape_str(out_shape));
    const at::Tensor& y = *y_opt;  // relu/leaky_relu: may be the bool mask y > 0
    if (act == 1 || act == 2) {
      // leaky_relu_backward reads only the sign of its "result" argument: the mask as 0/1 works.
      g = at::leaky_relu_backward(g, y.to(g.scalar_type()), act == 1 ? 0.0 : slope, true);
    } else {
      g = at::tanh_backward(g, y);
    }
    g = g.contiguous();
  }
  at::Tensor grad_b = need_b ? g.sum({0, 2, 3, 4}) : at::empty({0}, x.options());
  at::Tensor grad_x = at::empty({0}, x.options());
  if (need_x) {
    grad_x = at::empty_like(x);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t err = cudaSuccess;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_bwd_cuda", [&] {
      using T = typename CudaType<scalar_t>::type;
      using W = typename resize_conv3d_acc<T>::type;
      err = resize_conv3d_bwd_input_cuda_launch<T>(reinterpret_cast<const T*>(g.const_data_ptr<scalar_t>()),
                                                   w8.const_data_ptr<W>(),
                                                   reinterpret_cast<T*>(grad_x.mutable_data_ptr<scalar_t>()), n,
                                                   c_in, c_out, d, h, w, stream);
    });
    TORCH_CHECK(err == cudaSuccess, "resize_conv3d input-gradient kernel failed: ", cudaGetErrorString(err));
  }
  at::Tensor grad_w8 = at::empty({0}, x.options());
  if (need_w) {
    // cuDNN wants the weight in the activations' dtype; only its shape matters here.
    auto grads = at::convolution_backward(g, x, resize_conv3d_phase_to_transposed(w8).to(x.scalar_type()),
                                          c10::nullopt, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, true, {0, 0, 0}, 1,
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
