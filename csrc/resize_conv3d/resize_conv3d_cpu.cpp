// CPU path of resize_conv3d. The convolution runs through ATen (oneDNN) on the low-resolution
// input with the folded weights, as the equivalent stride-2 transposed convolution with the
// folded 4x4x4 kernel (which writes the interleaved output itself), the bias fused by oneDNN;
// the activation runs in place and, for relu / leaky_relu, the backward keeps a 1-byte mask.
//
// Measured on a 2-core x86 CPU (N=2, 64 -> 32 channels, 16^3 -> 32^3, one thread):
// - the phase form conv3d(x, w8 as (8 C_out, C_in, 2, 2, 2), padding=1) followed by our own
//   crop-and-interleave-bias-activation pass was 1.1-1.6x slower than the transposed form at
//   every Kwon et al. shape, even channels-last and with a cache-blocked interleave;
// - channels-last activations were no faster for oneDNN's transposed convolution on a quiet
//   machine (1.1-1.3x slower at 8^3 and 4^3), so everything stays contiguous NCDHW;
// - our scalar activation (+ mask) passes were 5x slower than ATen's vectorised in-place
//   kernels, so those are used for the activation and its derivative (the derivative reads
//   the mask through leaky_relu_backward, 5x faster than at::where on a bool tensor).
#include "resize_conv3d/resize_conv3d.h"

#include <torch/library.h>

#include <vector>

namespace brainkern {
namespace {

enum Act : int64_t { kNone = 0, kRelu = 1, kLeaky = 2, kTanh = 3 };

bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> resize_conv3d_fwd_cpu(const at::Tensor& x_in, const at::Tensor& w_in,
                                                         const c10::optional<at::Tensor>& bias_opt, int64_t act,
                                                         double slope) {
  BK_CHECK_CPU(x_in, "resize_conv3d: x");
  resize_conv3d_check(x_in, w_in, bias_opt, act);
  if (is_half(x_in)) {
    // Half precision runs in float32 and rounds once at the end: oneDNN has no faster half
    // path on CPUs without native bf16/fp16 units, and the folded weights (sums of up to 8
    // weights) stay unrounded.
    c10::optional<at::Tensor> bias32;
    if (bias_opt.has_value() && bias_opt->defined()) bias32 = bias_opt->to(at::kFloat);
    auto [y, mask] = resize_conv3d_fwd_cpu(x_in.to(at::kFloat), w_in.to(at::kFloat), bias32, act, slope);
    return {y.to(x_in.scalar_type()), mask};
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor k4 = resize_conv3d_as_transposed(w_in).contiguous();
  c10::optional<at::Tensor> bias;
  if (bias_opt.has_value() && bias_opt->defined()) bias = bias_opt->contiguous();
  at::Tensor y = at::conv_transpose3d(x, k4, bias, 2, 1).contiguous();
  at::Tensor mask = at::empty({0}, y.options().dtype(at::kBool));
  if (act == kTanh) {
    y.tanh_();
  } else if (act == kRelu || act == kLeaky) {
    act == kRelu ? y.relu_() : at::leaky_relu_(y, slope);
    mask = at::gt(y, 0);  // slope >= 0, so y > 0 exactly where the pre-activation is
  }
  return {y, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> resize_conv3d_bwd_cpu(
    const at::Tensor& grad_y_in, const c10::optional<at::Tensor>& y_opt, const at::Tensor& x_in,
    const at::Tensor& w_in, int64_t act, double slope, bool need_x, bool need_w, bool need_b) {
  BK_CHECK_CPU(x_in, "resize_conv3d: x");
  BK_CHECK_CPU(grad_y_in, "resize_conv3d: grad_y");
  resize_conv3d_check(x_in, w_in, c10::nullopt, act);
  const int64_t n = x_in.size(0), d = x_in.size(2), h = x_in.size(3), w = x_in.size(4);
  const int64_t c_out = resize_conv3d_c_out(w_in);
  const std::vector<int64_t> out_shape{n, c_out, 2 * d, 2 * h, 2 * w};
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef(out_shape), "resize_conv3d: grad_y must have shape ",
              shape_str(out_shape), ", got ", shape_str(grad_y_in.sizes()));
  TORCH_CHECK(grad_y_in.scalar_type() == x_in.scalar_type(), "resize_conv3d: grad_y dtype ",
              grad_y_in.scalar_type(), " differs from x's ", x_in.scalar_type());
  at::Tensor y;
  if (act != kNone) {
    TORCH_CHECK(y_opt.has_value() && y_opt->defined() && y_opt->sizes() == grad_y_in.sizes(),
                "resize_conv3d: the backward of an activation needs the forward output y (or, for relu and "
                "leaky_relu, the mask y > 0) of shape ",
                shape_str(out_shape));
    y = *y_opt;
    TORCH_CHECK(act == kTanh ? y.scalar_type() == x_in.scalar_type() : y.scalar_type() == at::kBool,
                "resize_conv3d: the backward of ", act == kTanh ? "tanh needs y" : "relu/leaky_relu needs the mask",
                " as ", act == kTanh ? c10::toString(x_in.scalar_type()) : "bool", ", got ", y.scalar_type());
  }
  if (is_half(x_in)) {
    const auto half = x_in.scalar_type();
    c10::optional<at::Tensor> y32;
    if (y.defined()) y32 = act == kTanh ? y.to(at::kFloat) : y;
    auto [gx, gw, gb] = resize_conv3d_bwd_cpu(grad_y_in.to(at::kFloat), y32, x_in.to(at::kFloat),
                                              w_in.to(at::kFloat), act, slope, need_x, need_w, need_b);
    return {gx.to(half), gw.to(w_in.scalar_type()), gb.to(half)};
  }

  at::Tensor g = grad_y_in;
  if (act == kTanh) {
    g = at::tanh_backward(grad_y_in, y);
  } else if (act == kRelu || act == kLeaky) {
    // ATen's vectorised leaky_relu_backward on the mask as 0/1 values (the mask stands in for
    // y: only its sign is read): 5x faster here than at::where on the bool mask.
    g = at::leaky_relu_backward(grad_y_in, y.to(grad_y_in.scalar_type()), act == kRelu ? 0.0 : slope, true);
  }
  at::Tensor grad_b = need_b ? g.sum({0, 2, 3, 4}) : at::empty({0}, x_in.options());
  at::Tensor grad_x = at::empty({0}, x_in.options()), grad_w8 = at::empty({0}, x_in.options());
  if (need_x || need_w) {
    const at::Tensor x = x_in.contiguous();
    const at::Tensor k4 = resize_conv3d_as_transposed(w_in).contiguous();
    auto grads = at::convolution_backward(g, x, k4, c10::nullopt, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, true, {0, 0, 0},
                                          1, {need_x, need_w, false});
    if (need_x) grad_x = std::get<0>(grads);
    if (need_w) grad_w8 = w_in.dim() == 5 ? std::get<1>(grads) : resize_conv3d_transposed_to_phase(std::get<1>(grads));
  }
  return {grad_x, grad_w8, grad_b};
}

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  // Returns (y, mask): mask = y > 0 (bool) for relu / leaky_relu, else empty.
  m.def("resize_conv3d_fwd(Tensor x, Tensor w8, Tensor? bias, int act, float slope) -> (Tensor, Tensor)");
  // y: the forward output for tanh, the bool mask for relu / leaky_relu, None otherwise.
  m.def(
      "resize_conv3d_bwd(Tensor grad_y, Tensor? y, Tensor x, Tensor w8, int act, float slope, bool need_x, "
      "bool need_w, bool need_b) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(brainkern, CPU, m) {
  m.impl("resize_conv3d_fwd", &brainkern::resize_conv3d_fwd_cpu);
  m.impl("resize_conv3d_bwd", &brainkern::resize_conv3d_bwd_cpu);
}
