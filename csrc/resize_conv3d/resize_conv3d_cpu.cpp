// CPU path of resize_conv3d: the phase convolution runs through ATen (oneDNN) with the
// folded weights; the crop + interleave of the 8 phases, the bias and the activation
// are one fused pass here, and so are the activation derivative and the bias gradient
// of the backward.
#include "resize_conv3d/resize_conv3d.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace brainkern {
namespace {

enum Act : int64_t { kNone = 0, kRelu = 1, kLeaky = 2, kTanh = 3 };

template <int64_t A, typename acc_t>
inline acc_t activate(acc_t v, acc_t slope) {
  if constexpr (A == kRelu) {
    return v > acc_t(0) ? v : acc_t(0);
  } else if constexpr (A == kLeaky) {
    return v > acc_t(0) ? v : v * slope;
  } else if constexpr (A == kTanh) {
    return std::tanh(v);
  } else {
    return v;
  }
}

// Derivative of the activation expressed through its output y.
template <int64_t A, typename acc_t>
inline acc_t activate_grad(acc_t g, acc_t y, acc_t slope) {
  if constexpr (A == kRelu) {
    return y > acc_t(0) ? g : acc_t(0);
  } else if constexpr (A == kLeaky) {
    return y > acc_t(0) ? g : g * slope;
  } else if constexpr (A == kTanh) {
    return g * (acc_t(1) - y * y);
  } else {
    return g;
  }
}

template <typename F>
void dispatch_act(int64_t act, F&& f) {
  switch (act) {
    case kRelu: f(std::integral_constant<int64_t, kRelu>{}); break;
    case kLeaky: f(std::integral_constant<int64_t, kLeaky>{}); break;
    case kTanh: f(std::integral_constant<int64_t, kTanh>{}); break;
    default: f(std::integral_constant<int64_t, kNone>{}); break;
  }
}

// conv: (N, 8*C_out, D+1, H+1, W+1), channel p*C_out + o holds phase p = 4a + 2b + c at
// (d+a, h+b, w+c). Writes y (N, C_out, 2D, 2H, 2W) = act(phase value + bias), one output row
// (fixed n, o, 2d+a, 2h+b) per step, reading two source rows (c = 0 and c = 1).
template <typename scalar_t, int64_t A>
void interleave_epilogue(const scalar_t* conv, const scalar_t* bias, scalar_t* y, int64_t n, int64_t c_out,
                         int64_t d, int64_t h, int64_t w, double slope_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const int64_t d1 = d + 1, h1 = h + 1, w1 = w + 1;
  const int64_t plane = d1 * h1 * w1;
  const int64_t rows = n * c_out * 2 * d * 2 * h;
  const int64_t grain = std::max<int64_t>(1, 16384 / (2 * w));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t oh = r % (2 * h);
      const int64_t od = (r / (2 * h)) % (2 * d);
      const int64_t o = (r / (4 * d * h)) % c_out;
      const int64_t b_n = r / (4 * d * h * c_out);
      const int64_t a = od & 1, dd = od >> 1, b = oh & 1, hh = oh >> 1;
      const int64_t p0 = 4 * a + 2 * b;
      const scalar_t* src0 = conv + ((b_n * 8 + p0) * c_out + o) * plane + ((dd + a) * h1 + hh + b) * w1;
      const scalar_t* src1 = src0 + c_out * plane + 1;  // phase c = 1 reads from column w + 1
      const acc_t bv = bias ? static_cast<acc_t>(bias[o]) : acc_t(0);
      scalar_t* out = y + r * 2 * w;
      for (int64_t i = 0; i < w; ++i) {
        out[2 * i] = static_cast<scalar_t>(activate<A>(static_cast<acc_t>(src0[i]) + bv, slope));
        out[2 * i + 1] = static_cast<scalar_t>(activate<A>(static_cast<acc_t>(src1[i]) + bv, slope));
      }
    }
  });
}

// In place: y = act(y + bias) over (N, C_out, S) planes.
template <typename scalar_t, int64_t A>
void bias_act_inplace(scalar_t* y, const scalar_t* bias, int64_t n, int64_t c_out, int64_t s, double slope_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  at::parallel_for(0, n * c_out, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pl = begin; pl < end; ++pl) {
      const acc_t bv = bias ? static_cast<acc_t>(bias[pl % c_out]) : acc_t(0);
      scalar_t* row = y + pl * s;
      for (int64_t i = 0; i < s; ++i) row[i] = static_cast<scalar_t>(activate<A>(static_cast<acc_t>(row[i]) + bv, slope));
    }
  });
}

// g = grad_y * act'(y) (written when A != none) and per-(n, o) sums of g for the bias gradient.
// y_t: the output's dtype, or bool for relu/leaky_relu when only the sign of y was saved.
template <typename scalar_t, int64_t A, typename y_t>
void act_backward(const scalar_t* gy, const y_t* y, scalar_t* g, double* plane_sums, int64_t planes,
                  int64_t s, double slope_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pl = begin; pl < end; ++pl) {
      const scalar_t* gyp = gy + pl * s;
      acc_t sum = 0;
      if constexpr (A == kNone) {
        for (int64_t i = 0; i < s; ++i) sum += static_cast<acc_t>(gyp[i]);
      } else {
        const y_t* yp = y + pl * s;
        scalar_t* gp = g + pl * s;
        for (int64_t i = 0; i < s; ++i) {
          const acc_t v = activate_grad<A>(static_cast<acc_t>(gyp[i]), static_cast<acc_t>(yp[i]), slope);
          gp[i] = static_cast<scalar_t>(v);
          sum += v;
        }
      }
      if (plane_sums) plane_sums[pl] = static_cast<double>(sum);
    }
  });
}

// The 1-voxel halo of the phase-form conv3d costs (D+1)(H+1)(W+1)/(DHW) of the useful work;
// above this ratio the folded conv_transpose3d was faster on oneDNN (measured at 4^3 .. 32^3).
constexpr double kMaxHalo = 1.45;

}  // namespace

at::Tensor resize_conv3d_fwd_cpu(const at::Tensor& x_in, const at::Tensor& w8_in,
                                 const c10::optional<at::Tensor>& bias_opt, int64_t act, double slope) {
  BK_CHECK_CPU(x_in, "resize_conv3d: x");
  resize_conv3d_check(x_in, w8_in, bias_opt, act);
  if (x_in.scalar_type() == at::kHalf || x_in.scalar_type() == at::kBFloat16) {
    // Half precision runs in float32 and rounds once at the end: oneDNN has no faster half
    // path on CPUs without native bf16/fp16 units, and the folded weights (sums of up to 8
    // weights) stay unrounded.
    c10::optional<at::Tensor> bias32;
    if (bias_opt.has_value() && bias_opt->defined()) bias32 = bias_opt->to(at::kFloat);
    return resize_conv3d_fwd_cpu(x_in.to(at::kFloat), w8_in.to(at::kFloat), bias32, act, slope)
        .to(x_in.scalar_type());
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w8 = w8_in.contiguous();
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? bias_opt->contiguous() : at::Tensor();
  const int64_t n = x.size(0), c_in = x.size(1), d = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t c_out = w8.size(3);
  const double halo = double(d + 1) * double(h + 1) * double(w + 1) / (double(d) * double(h) * double(w));

  if (halo <= kMaxHalo) {
    const at::Tensor conv = at::conv3d(x, w8.view({8 * c_out, c_in, 2, 2, 2}), {}, 1, 1).contiguous();
    at::Tensor y = at::empty({n, c_out, 2 * d, 2 * h, 2 * w}, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_fwd_cpu", [&] {
      dispatch_act(act, [&](auto A) {
        interleave_epilogue<scalar_t, decltype(A)::value>(conv.const_data_ptr<scalar_t>(),
                                                          has_bias ? bias.const_data_ptr<scalar_t>() : nullptr,
                                                          y.mutable_data_ptr<scalar_t>(), n, c_out, d, h, w, slope);
      });
    });
    return y;
  }
  at::Tensor y = at::conv_transpose3d(x, resize_conv3d_phase_to_transposed(w8), {}, 2, 1).contiguous();
  if (has_bias || act != kNone) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_bias_act_cpu", [&] {
      dispatch_act(act, [&](auto A) {
        bias_act_inplace<scalar_t, decltype(A)::value>(y.mutable_data_ptr<scalar_t>(),
                                                       has_bias ? bias.const_data_ptr<scalar_t>() : nullptr, n,
                                                       c_out, 8 * d * h * w, slope);
      });
    });
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> resize_conv3d_bwd_cpu(
    const at::Tensor& grad_y_in, const c10::optional<at::Tensor>& y_opt, const at::Tensor& x_in,
    const at::Tensor& w8_in, int64_t act, double slope, bool need_x, bool need_w, bool need_b) {
  BK_CHECK_CPU(x_in, "resize_conv3d: x");
  BK_CHECK_CPU(grad_y_in, "resize_conv3d: grad_y");
  resize_conv3d_check(x_in, w8_in, c10::nullopt, act);
  if (x_in.scalar_type() == at::kHalf || x_in.scalar_type() == at::kBFloat16) {
    const auto half = x_in.scalar_type();
    c10::optional<at::Tensor> y32;
    if (y_opt.has_value() && y_opt->defined())
      y32 = y_opt->scalar_type() == at::kBool ? *y_opt : y_opt->to(at::kFloat);
    auto [gx, gw, gb] = resize_conv3d_bwd_cpu(grad_y_in.to(at::kFloat), y32, x_in.to(at::kFloat),
                                              w8_in.to(at::kFloat), act, slope, need_x, need_w, need_b);
    return {gx.to(half), gw.to(w8_in.scalar_type()), gb.to(half)};
  }
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), d = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t c_out = w8_in.size(3);
  const std::vector<int64_t> out_shape{n, c_out, 2 * d, 2 * h, 2 * w};
  TORCH_CHECK(grad_y_in.sizes() == at::IntArrayRef(out_shape), "resize_conv3d: grad_y must have shape ",
              shape_str(out_shape), ", got ", shape_str(grad_y_in.sizes()));
  TORCH_CHECK(grad_y_in.scalar_type() == x.scalar_type(), "resize_conv3d: grad_y dtype ",
              grad_y_in.scalar_type(), " differs from x's ", x.scalar_type());
  const at::Tensor grad_y = grad_y_in.contiguous();
  at::Tensor y;
  if (act != kNone) {
    TORCH_CHECK(y_opt.has_value() && y_opt->defined() && y_opt->sizes() == grad_y.sizes(),
                "resize_conv3d: the backward of an activation needs the forward output y (or, for relu and "
                "leaky_relu, the mask y > 0) of shape ",
                shape_str(out_shape));
    y = y_opt->contiguous();
    TORCH_CHECK(y.scalar_type() == x.scalar_type() || (y.scalar_type() == at::kBool && act != kTanh),
                "resize_conv3d: y must be ", x.scalar_type(), " (or bool for relu/leaky_relu), got ",
                y.scalar_type());
  }

  const int64_t planes = n * c_out, s = 8 * d * h * w;
  at::Tensor g = act == kNone ? grad_y : at::empty_like(grad_y);
  std::vector<double> sums(need_b ? planes : 0);
  if (act != kNone || need_b) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "resize_conv3d_bwd_cpu", [&] {
      dispatch_act(act, [&](auto A) {
        scalar_t* gp = act == kNone ? nullptr : g.mutable_data_ptr<scalar_t>();
        double* sp = need_b ? sums.data() : nullptr;
        if (y.defined() && y.scalar_type() == at::kBool) {
          act_backward<scalar_t, decltype(A)::value, bool>(grad_y.const_data_ptr<scalar_t>(),
                                                           y.const_data_ptr<bool>(), gp, sp, planes, s, slope);
        } else {
          act_backward<scalar_t, decltype(A)::value, scalar_t>(
              grad_y.const_data_ptr<scalar_t>(), y.defined() ? y.const_data_ptr<scalar_t>() : nullptr, gp, sp,
              planes, s, slope);
        }
      });
    });
  }
  at::Tensor grad_b = at::empty({0}, x.options());
  if (need_b) {
    at::Tensor acc = at::zeros({c_out}, x.options().dtype(at::kDouble));
    double* a = acc.mutable_data_ptr<double>();
    for (int64_t pl = 0; pl < planes; ++pl) a[pl % c_out] += sums[pl];
    grad_b = acc.to(x.scalar_type());
  }
  at::Tensor grad_x = at::empty({0}, x.options()), grad_w8 = at::empty({0}, x.options());
  if (need_x || need_w) {
    auto grads = at::convolution_backward(g, x, resize_conv3d_phase_to_transposed(w8_in), c10::nullopt, {2, 2, 2},
                                          {1, 1, 1}, {1, 1, 1}, true, {0, 0, 0}, 1, {need_x, need_w, false});
    if (need_x) grad_x = std::get<0>(grads);
    if (need_w) grad_w8 = resize_conv3d_transposed_to_phase(std::get<1>(grads));
  }
  return {grad_x, grad_w8, grad_b};
}

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  m.def("resize_conv3d_fwd(Tensor x, Tensor w8, Tensor? bias, int act, float slope) -> Tensor");
  m.def(
      "resize_conv3d_bwd(Tensor grad_y, Tensor? y, Tensor x, Tensor w8, int act, float slope, bool need_x, "
      "bool need_w, bool need_b) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(brainkern, CPU, m) {
  m.impl("resize_conv3d_fwd", &brainkern::resize_conv3d_fwd_cpu);
  m.impl("resize_conv3d_bwd", &brainkern::resize_conv3d_bwd_cpu);
}
