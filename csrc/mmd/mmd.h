// Batch MMD^2 statistics (brainkern.ops.mmd2 / mmd2_batched).
//
// Shapes: x (T, m, D) and y (T, n, D), contiguous, the same floating dtype;
// T independent tests, m and n samples, D features (voxels) per sample.
//
// - mmd_linear_stats(x, y) -> (T, 3) float64: per test
//     S   = sum_d (mean_i x[i, d] - mean_j y[j, d])^2,
//     V_x = sum_{i, d} (x[i, d] - mean_i x[i, d])^2,
//     V_y = sum_{j, d} (y[j, d] - mean_j y[j, d])^2,
//   in one streaming pass over D (the linear-kernel MMD^2 is a combination of them).
// - mmd_linear_backward(x, y, coef) -> (gx (T, m, D), gy (T, n, D)) in x's dtype:
//   the gradient of sum_t coef[t, 0] S_t + coef[t, 1] V_x,t + coef[t, 2] V_y,t,
//   coef (T, 3) float64. One pass: the column means, then the closed form.
// - mmd_gram(x, y) -> (T, m+n, m+n) float64: G = Z Z^T with Z = [X; Y] per test,
//   accumulated in float64, streaming over D (nothing of size (m+n)^2 x D).
#pragma once

#include <cstdint>

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>

namespace brainkern {

// The launchers take any number of tests T: the grid's test dimension is capped
// at CUDA's 65,535 and the kernels loop over the rest. T == 0 launches nothing.

// partial (T, P, 3) float64: the three sums of each D-chunk of `chunk` features.
template <typename scalar_t>
cudaError_t mmd_linear_stats_launch(const scalar_t* x, const scalar_t* y, double* partial, int64_t tests,
                                    int64_t m, int64_t n, int64_t dim, int64_t chunk, int64_t parts,
                                    cudaStream_t stream);

// gx (T, m, D), gy (T, n, D); coef (T, 3) float64.
template <typename scalar_t>
cudaError_t mmd_linear_backward_launch(const scalar_t* x, const scalar_t* y, const double* coef,
                                       scalar_t* gx, scalar_t* gy, int64_t tests, int64_t m, int64_t n,
                                       int64_t dim, cudaStream_t stream);

// partial (T, P, N(N+1)/2) float64: the upper triangle (row-major, i <= j) of the
// Gram matrix of Z = [X; Y] over each D-chunk; N = m + n <= kMmdMaxRows.
constexpr int kMmdMaxRows = 64;
template <typename scalar_t>
cudaError_t mmd_gram_launch(const scalar_t* x, const scalar_t* y, double* partial, int64_t tests, int64_t m,
                            int64_t n, int64_t dim, int64_t chunk, int64_t parts, cudaStream_t stream);

}  // namespace brainkern
#endif

#ifndef __CUDACC__
#include <torch/types.h>

#include <tuple>

namespace brainkern {

at::Tensor mmd_linear_stats_cpu(const at::Tensor& x, const at::Tensor& y);
std::tuple<at::Tensor, at::Tensor> mmd_linear_backward_cpu(const at::Tensor& x, const at::Tensor& y,
                                                           const at::Tensor& coef);
at::Tensor mmd_gram_cpu(const at::Tensor& x, const at::Tensor& y);

#ifdef WITH_CUDA
at::Tensor mmd_linear_stats_cuda(const at::Tensor& x, const at::Tensor& y);
std::tuple<at::Tensor, at::Tensor> mmd_linear_backward_cuda(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& coef);
at::Tensor mmd_gram_cuda(const at::Tensor& x, const at::Tensor& y);
#endif

// Boundary checks shared by the CPU and CUDA entry points.
void mmd_check_inputs(const at::Tensor& x, const at::Tensor& y, const char* op);
void mmd_check_coef(const at::Tensor& coef, const at::Tensor& x);

}  // namespace brainkern
#endif
