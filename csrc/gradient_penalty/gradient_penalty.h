// WGAN-GP gradient penalty: the fused pieces around the discriminator.
//
// Every tensor is treated as a batch of flattened samples: x of shape
// (B, ...) is (B, N) with N = numel / B, contiguous. eps and norms are (B,).
//
//   interp:          out[b, i]  = eps[b] * real[b, i] + (1 - eps[b]) * fake[b, i]
//   interp_backward: grad_real  = eps[b] * g[b, i],  grad_fake = (1 - eps[b]) * g[b, i]
//   norm:            norms[b]   = ||grad[b, :]||_2   (accumulated in float, double for double)
//                    penalty    = weight * mean_b f(norms[b])
//                    f(n) = (n - c)^2 (two-sided), max(0, n - c)^2 (one-sided), n^2 (r1)
//   norm_backward:   dgrad[b,i] = dpen * weight / B * k(norms[b]) * grad[b, i]
//                    with k(n) = f'(n) / n, and k(0) = 0 for the two penalties with a
//                    centre (grad[b] is all zero there, so the product is zero anyway)
//
// A NaN norm stays NaN in the penalty and in dgrad (never clamped away).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BK_GP_HD __host__ __device__
#else
#define BK_GP_HD
#endif

namespace brainkern {
namespace gp {

enum Mode : int64_t { kTwoSided = 0, kOneSided = 1, kR1 = 2 };

// Elements reduced by one partial sum of the norm (one CUDA block / CPU task).
constexpr int64_t kNormChunk = 8192;

inline int64_t norm_chunks(int64_t n) { return n <= 0 ? 1 : (n + kNormChunk - 1) / kNormChunk; }

// f(n): the per-sample penalty term.
template <typename acc_t>
BK_GP_HD inline acc_t term(acc_t n, acc_t center, int64_t mode) {
  if (mode == kR1) return n * n;
  acc_t d = n - center;
  if (mode == kOneSided && d < acc_t(0)) d = acc_t(0);  // NaN < 0 is false: NaN survives
  return d * d;
}

// k(n) = f'(n) / n: the factor that turns grad[b] into d f / d grad[b].
template <typename acc_t>
BK_GP_HD inline acc_t slope(acc_t n, acc_t center, int64_t mode) {
  if (mode == kR1) return acc_t(2);
  if (n == acc_t(0)) return acc_t(0);
  acc_t d = n - center;
  if (mode == kOneSided && d < acc_t(0)) d = acc_t(0);
  return acc_t(2) * d / n;
}

}  // namespace gp
}  // namespace brainkern

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace brainkern {
namespace gp {

// scalar_t in {float, double, __half, __nv_bfloat16}; acc_t is double for
// double and float otherwise. All pointers are device pointers.

// out (B, N) = interp(real (B, N), fake (B, N), eps (B,)).
template <typename scalar_t>
cudaError_t interp_cuda(const scalar_t* real, const scalar_t* fake, const scalar_t* eps, scalar_t* out,
                        int64_t B, int64_t N, cudaStream_t stream);

// grad_real, grad_fake (B, N) from g (B, N) and eps (B,).
template <typename scalar_t>
cudaError_t interp_backward_cuda(const scalar_t* g, const scalar_t* eps, scalar_t* grad_real,
                                 scalar_t* grad_fake, int64_t B, int64_t N, cudaStream_t stream);

// norms (B,) and penalty (a single scalar_t) from grad (B, N). partial is a
// workspace of B * norm_chunks(N) acc_t. Deterministic (no atomics).
template <typename scalar_t, typename acc_t>
cudaError_t norm_cuda(const scalar_t* grad, int64_t B, int64_t N, double weight, double center, int64_t mode,
                      acc_t* partial, acc_t* norms, scalar_t* penalty, cudaStream_t stream);

// dgrad (B, N) from dpen (one scalar_t), grad (B, N) and norms (B,).
template <typename scalar_t, typename acc_t>
cudaError_t norm_backward_cuda(const scalar_t* dpen, const scalar_t* grad, const acc_t* norms, scalar_t* dgrad,
                               int64_t B, int64_t N, double weight, double center, int64_t mode,
                               cudaStream_t stream);

}  // namespace gp
}  // namespace brainkern
#endif

#ifndef __CUDACC__
#include <torch/types.h>

#include <tuple>

#include "common.h"

namespace brainkern {

// Boundary checks shared by the CPU and CUDA entry points (the device check is each
// file's own).
namespace gp {

// Elements per sample of a (B, ...) tensor with B >= 1.
inline int64_t per_sample(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 1 && x.size(0) >= 1, name, " must have a batch dimension of size >= 1, got shape ",
              shape_str(x.sizes()));
  return x.numel() / x.size(0);
}

inline void check_batch_tensor(const at::Tensor& x, const char* name) {
  BK_CHECK_FLOAT(x, name);
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  per_sample(x, name);
}

inline void check_eps(const at::Tensor& eps, const at::Tensor& x, const char* name) {
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == x.size(0), name, " must have shape [", x.size(0),
              "] (one value per sample), got ", shape_str(eps.sizes()));
  TORCH_CHECK(eps.scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(), ", got ",
              eps.scalar_type());
  TORCH_CHECK(eps.device() == x.device(), name, " must be on ", x.device(), ", got ", eps.device());
}

inline void check_mode(int64_t mode) {
  TORCH_CHECK(mode == kTwoSided || mode == kOneSided || mode == kR1,
              "gradient penalty mode must be 0 (two-sided), 1 (one-sided) or 2 (r1), got ", mode);
}

}  // namespace gp

at::Tensor gradient_penalty_interp_cpu(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps);
std::tuple<at::Tensor, at::Tensor> gradient_penalty_interp_backward_cpu(const at::Tensor& g,
                                                                        const at::Tensor& eps);
std::tuple<at::Tensor, at::Tensor> gradient_penalty_norm_cpu(const at::Tensor& grad, double weight,
                                                             double center, int64_t mode);
at::Tensor gradient_penalty_norm_backward_cpu(const at::Tensor& dpen, const at::Tensor& grad,
                                              const at::Tensor& norms, double weight, double center,
                                              int64_t mode);

#ifdef WITH_CUDA
at::Tensor gradient_penalty_interp_cuda(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& eps);
std::tuple<at::Tensor, at::Tensor> gradient_penalty_interp_backward_cuda(const at::Tensor& g,
                                                                         const at::Tensor& eps);
std::tuple<at::Tensor, at::Tensor> gradient_penalty_norm_cuda(const at::Tensor& grad, double weight,
                                                              double center, int64_t mode);
at::Tensor gradient_penalty_norm_backward_cuda(const at::Tensor& dpen, const at::Tensor& grad,
                                               const at::Tensor& norms, double weight, double center,
                                               int64_t mode);
#endif

}  // namespace brainkern
#endif
