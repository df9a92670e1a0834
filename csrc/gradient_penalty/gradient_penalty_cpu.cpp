// CPU kernels of the fused gradient-penalty pieces, and the op schemas.
#include "gradient_penalty/gradient_penalty.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace brainkern {
namespace {

constexpr int64_t kGrain = 32768;

void check_batch_tensor(const at::Tensor& x, const char* name) {
  BK_CHECK_CPU(x, name);
  gp::check_batch_tensor(x, name);
}

// Runs body(b, lo, hi) over the flat range [begin, end) of a (B, N) tensor, split at sample borders.
template <typename F>
inline void for_samples(int64_t begin, int64_t end, int64_t N, const F& body) {
  int64_t i = begin;
  while (i < end) {
    const int64_t b = i / N;
    const int64_t stop = std::min(end, (b + 1) * N);
    body(b, i, stop);
    i = stop;
  }
}

}  // namespace

at::Tensor gradient_penalty_interp_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_batch_tensor(real, "real");
  check_batch_tensor(fake, "fake");
  TORCH_CHECK(real.sizes() == fake.sizes(), "real and fake must have the same shape, got ",
              shape_str(real.sizes()), " and ", shape_str(fake.sizes()));
  TORCH_CHECK(real.scalar_type() == fake.scalar_type(), "real and fake must have the same dtype, got ",
              real.scalar_type(), " and ", fake.scalar_type());
  gp::check_eps(eps, real, "eps");
  const at::Tensor e = eps.contiguous();
  at::Tensor out = at::empty_like(real);
  const int64_t B = real.size(0), N = gp::per_sample(real, "real");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interp_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* r = real.const_data_ptr<scalar_t>();
    const scalar_t* f = fake.const_data_ptr<scalar_t>();
    const scalar_t* ep = e.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * N, kGrain, [&](int64_t begin, int64_t end) {
      for_samples(begin, end, N, [&](int64_t b, int64_t lo, int64_t hi) {
        const acc_t w = static_cast<acc_t>(ep[b]);
        const acc_t v = acc_t(1) - w;
        for (int64_t i = lo; i < hi; ++i) {
          o[i] = static_cast<scalar_t>(w * static_cast<acc_t>(r[i]) + v * static_cast<acc_t>(f[i]));
        }
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_interp_backward_cpu(const at::Tensor& g,
                                                                        const at::Tensor& eps) {
  check_batch_tensor(g, "grad");
  gp::check_eps(eps, g, "eps");
  const at::Tensor e = eps.contiguous();
  at::Tensor grad_real = at::empty_like(g);
  at::Tensor grad_fake = at::empty_like(g);
  const int64_t B = g.size(0), N = gp::per_sample(g, "grad");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_interp_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* ep = e.const_data_ptr<scalar_t>();
    scalar_t* gr = grad_real.mutable_data_ptr<scalar_t>();
    scalar_t* gf = grad_fake.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * N, kGrain, [&](int64_t begin, int64_t end) {
      for_samples(begin, end, N, [&](int64_t b, int64_t lo, int64_t hi) {
        const acc_t w = static_cast<acc_t>(ep[b]);
        const acc_t v = acc_t(1) - w;
        for (int64_t i = lo; i < hi; ++i) {
          const acc_t x = static_cast<acc_t>(gp[i]);
          gr[i] = static_cast<scalar_t>(w * x);
          gf[i] = static_cast<scalar_t>(v * x);
        }
      });
    });
  });
  return {grad_real, grad_fake};
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_norm_cpu(const at::Tensor& grad, double weight,
                                                             double center, int64_t mode) {
  check_batch_tensor(grad, "grad");
  gp::check_mode(mode);
  const int64_t B = grad.size(0), N = gp::per_sample(grad, "grad");
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor norms = at::empty({B}, grad.options().dtype(acc_type));
  at::Tensor penalty = at::empty({}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_norm_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int64_t chunks = gp::norm_chunks(N);
    // Partial sums per (sample, chunk), then a fixed-order finish: deterministic for any thread count.
    std::vector<acc_t> partial(static_cast<size_t>(B * chunks));
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / chunks, c = t % chunks;
        const scalar_t* p = g + b * N;
        const int64_t lo = c * gp::kNormChunk, hi = std::min(N, lo + gp::kNormChunk);
        acc_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent accumulators so the loop vectorises
        int64_t i = lo;
        for (; i + 8 <= hi; i += 8) {
          for (int k = 0; k < 8; ++k) {
            const acc_t v = static_cast<acc_t>(p[i + k]);
            s[k] += v * v;
          }
        }
        for (; i < hi; ++i) {
          const acc_t v = static_cast<acc_t>(p[i]);
          s[0] += v * v;
        }
        partial[t] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
      }
    });
    acc_t* n_out = norms.mutable_data_ptr<acc_t>();
    acc_t total = 0;
    for (int64_t b = 0; b < B; ++b) {
      acc_t s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += partial[b * chunks + c];
      const acc_t n = std::sqrt(s);
      n_out[b] = n;
      total += gp::term<acc_t>(n, static_cast<acc_t>(center), mode);
    }
    *penalty.mutable_data_ptr<scalar_t>() =
        static_cast<scalar_t>(static_cast<acc_t>(weight) * total / static_cast<acc_t>(B));
  });
  return {penalty, norms};
}

at::Tensor gradient_penalty_norm_backward_cpu(const at::Tensor& dpen, const at::Tensor& grad,
                                              const at::Tensor& norms, double weight, double center,
                                              int64_t mode) {
  check_batch_tensor(grad, "grad");
  gp::check_mode(mode);
  BK_CHECK_CPU(dpen, "dpen");
  BK_CHECK_CPU(norms, "norms");
  TORCH_CHECK(dpen.numel() == 1, "dpen must hold one value, got shape ", shape_str(dpen.sizes()));
  const int64_t B = grad.size(0), N = gp::per_sample(grad, "grad");
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(norms.dim() == 1 && norms.size(0) == B, "norms must have shape [", B, "], got ",
              shape_str(norms.sizes()));
  TORCH_CHECK(norms.scalar_type() == acc_type, "norms must have dtype ", acc_type, ", got ",
              norms.scalar_type());
  at::Tensor dgrad = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t d = dpen.to(acc_type).item<acc_t>();
    const acc_t scale = d * static_cast<acc_t>(weight) / static_cast<acc_t>(B);
    const at::Tensor nc = norms.contiguous();
    const acc_t* n = nc.const_data_ptr<acc_t>();
    std::vector<acc_t> coef(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) coef[b] = scale * gp::slope<acc_t>(n[b], static_cast<acc_t>(center), mode);
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* o = dgrad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * N, kGrain, [&](int64_t begin, int64_t end) {
      for_samples(begin, end, N, [&](int64_t b, int64_t lo, int64_t hi) {
        const acc_t c = coef[b];
        for (int64_t i = lo; i < hi; ++i) o[i] = static_cast<scalar_t>(c * static_cast<acc_t>(g[i]));
      });
    });
  });
  return dgrad;
}

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  m.def("gradient_penalty_interp(Tensor real, Tensor fake, Tensor eps) -> Tensor");
  m.def("gradient_penalty_interp_backward(Tensor grad, Tensor eps) -> (Tensor, Tensor)");
  m.def("gradient_penalty_norm(Tensor grad, float weight, float center, int mode) -> (Tensor, Tensor)");
  m.def(
      "gradient_penalty_norm_backward(Tensor dpen, Tensor grad, Tensor norms, float weight, float center, "
      "int mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(brainkern, CPU, m) {
  m.impl("gradient_penalty_interp", &brainkern::gradient_penalty_interp_cpu);
  m.impl("gradient_penalty_interp_backward", &brainkern::gradient_penalty_interp_backward_cpu);
  m.impl("gradient_penalty_norm", &brainkern::gradient_penalty_norm_cpu);
  m.impl("gradient_penalty_norm_backward", &brainkern::gradient_penalty_norm_backward_cpu);
}
