// Torch-side wrappers of the CUDA gradient-penalty kernels: boundary checks,
// device guard, current stream, dtype dispatch.
#include "gradient_penalty/gradient_penalty.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "common.h"

namespace brainkern {
namespace {

template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
using cuda_t = typename CudaType<T>::type;

template <typename T>
const cuda_t<T>* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const cuda_t<T>*>(t.const_data_ptr<T>());
}
template <typename T>
cuda_t<T>* out_ptr(at::Tensor& t) {
  return reinterpret_cast<cuda_t<T>*>(t.mutable_data_ptr<T>());
}

void check_batch_tensor(const at::Tensor& x, const char* name) {
  BK_CHECK_CUDA(x, name);
  gp::check_batch_tensor(x, name);
}

void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device() == x.device(), name, " must be on ", x.device(), ", got ", t.device());
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed to launch: ", cudaGetErrorString(err));
}

}  // namespace

at::Tensor gradient_penalty_interp_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps) {
  check_batch_tensor(real, "real");
  check_batch_tensor(fake, "fake");
  check_same_device(fake, real, "fake");
  TORCH_CHECK(real.sizes() == fake.sizes(), "real and fake must have the same shape, got ",
              shape_str(real.sizes()), " and ", shape_str(fake.sizes()));
  TORCH_CHECK(real.scalar_type() == fake.scalar_type(), "real and fake must have the same dtype, got ",
              real.scalar_type(), " and ", fake.scalar_type());
  gp::check_eps(eps, real, "eps");
  const c10::cuda::CUDAGuard guard(real.device());
  const at::Tensor e = eps.contiguous();
  at::Tensor out = at::empty_like(real);
  const int64_t B = real.size(0), N = gp::per_sample(real, "real");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, real.scalar_type(), "gradient_penalty_interp_cuda", [&] {
    check_launch(gp::interp_cuda(in_ptr<scalar_t>(real), in_ptr<scalar_t>(fake), in_ptr<scalar_t>(e),
                                 out_ptr<scalar_t>(out), B, N, stream),
                 "gradient_penalty_interp");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_interp_backward_cuda(const at::Tensor& g,
                                                                         const at::Tensor& eps) {
  check_batch_tensor(g, "grad");
  gp::check_eps(eps, g, "eps");
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor e = eps.contiguous();
  at::Tensor grad_real = at::empty_like(g);
  at::Tensor grad_fake = at::empty_like(g);
  const int64_t B = g.size(0), N = gp::per_sample(g, "grad");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "gradient_penalty_interp_backward_cuda", [&] {
    check_launch(gp::interp_backward_cuda(in_ptr<scalar_t>(g), in_ptr<scalar_t>(e), out_ptr<scalar_t>(grad_real),
                                          out_ptr<scalar_t>(grad_fake), B, N, stream),
                 "gradient_penalty_interp_backward");
  });
  return {grad_real, grad_fake};
}

std::tuple<at::Tensor, at::Tensor> gradient_penalty_norm_cuda(const at::Tensor& grad, double weight,
                                                              double center, int64_t mode) {
  check_batch_tensor(grad, "grad");
  gp::check_mode(mode);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t B = grad.size(0), N = gp::per_sample(grad, "grad");
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor norms = at::empty({B}, grad.options().dtype(acc_type));
  at::Tensor penalty = at::empty({}, grad.options());
  at::Tensor partial = at::empty({B * gp::norm_chunks(N)}, grad.options().dtype(acc_type));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_launch(gp::norm_cuda(in_ptr<scalar_t>(grad), B, N, weight, center, mode,
                               partial.mutable_data_ptr<acc_t>(), norms.mutable_data_ptr<acc_t>(),
                               out_ptr<scalar_t>(penalty), stream),
                 "gradient_penalty_norm");
  });
  return {penalty, norms};
}

at::Tensor gradient_penalty_norm_backward_cuda(const at::Tensor& dpen, const at::Tensor& grad,
                                               const at::Tensor& norms, double weight, double center,
                                               int64_t mode) {
  check_batch_tensor(grad, "grad");
  gp::check_mode(mode);
  check_same_device(dpen, grad, "dpen");
  check_same_device(norms, grad, "norms");
  TORCH_CHECK(dpen.numel() == 1, "dpen must hold one value, got shape ", shape_str(dpen.sizes()));
  TORCH_CHECK(dpen.scalar_type() == grad.scalar_type(), "dpen must have dtype ", grad.scalar_type(), ", got ",
              dpen.scalar_type());
  const int64_t B = grad.size(0), N = gp::per_sample(grad, "grad");
  const auto acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(norms.dim() == 1 && norms.size(0) == B, "norms must have shape [", B, "], got ",
              shape_str(norms.sizes()));
  TORCH_CHECK(norms.scalar_type() == acc_type, "norms must have dtype ", acc_type, ", got ",
              norms.scalar_type());
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor d = dpen.contiguous();
  const at::Tensor n = norms.contiguous();
  at::Tensor dgrad = at::empty_like(grad);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "gradient_penalty_norm_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    check_launch(gp::norm_backward_cuda(in_ptr<scalar_t>(d), in_ptr<scalar_t>(grad), n.const_data_ptr<acc_t>(),
                                        out_ptr<scalar_t>(dgrad), B, N, weight, center, mode, stream),
                 "gradient_penalty_norm_backward");
  });
  return dgrad;
}

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) {
  m.impl("gradient_penalty_interp", &brainkern::gradient_penalty_interp_cuda);
  m.impl("gradient_penalty_interp_backward", &brainkern::gradient_penalty_interp_backward_cuda);
  m.impl("gradient_penalty_norm", &brainkern::gradient_penalty_norm_cuda);
  m.impl("gradient_penalty_norm_backward", &brainkern::gradient_penalty_norm_backward_cuda);
}
