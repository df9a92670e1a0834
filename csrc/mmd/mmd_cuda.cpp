// Torch-side entry points of the CUDA MMD^2 statistics (see mmd.h): boundary
// checks, stream and device guard, dtype dispatch, launch, and the float64 sum
// of the per-chunk partials.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "common.h"
#include "mmd/mmd.h"

namespace brainkern {
namespace {

constexpr int64_t kThreadsHost = 256;
constexpr int64_t kTileHost = 32;
// Blocks to aim for per launch, and features per thread of the linear kernel
// (each thread sums at most this many terms in float before the double reduction).
constexpr int64_t kTargetBlocks = 2048;
constexpr int64_t kLinearTermsPerThread = 64;

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

int64_t round_up(int64_t v, int64_t k) { return (v + k - 1) / k * k; }

void check_cuda_inputs(const at::Tensor& x, const at::Tensor& y, const char* op) {
  mmd_check_inputs(x, y, op);
  BK_CHECK_CUDA(x, "x");
}

}  // namespace

at::Tensor mmd_linear_stats_cuda(const at::Tensor& x, const at::Tensor& y) {
  check_cuda_inputs(x, y, "mmd_linear_stats");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t tests = x.size(0), dim = x.size(2);
  const int64_t want = std::max<int64_t>(1, (kTargetBlocks + tests - 1) / std::max<int64_t>(tests, 1));
  int64_t chunk = round_up((dim + want - 1) / want, kThreadsHost);
  chunk = std::min(chunk, kThreadsHost * kLinearTermsPerThread);
  const int64_t parts = (dim + chunk - 1) / chunk;
  auto partial = at::empty({tests, parts, 3}, x.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mmd_linear_stats_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    const cudaError_t err = mmd_linear_stats_launch<T>(
        reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()),
        reinterpret_cast<const T*>(y.const_data_ptr<scalar_t>()), partial.mutable_data_ptr<double>(), tests,
        x.size(1), y.size(1), dim, chunk, parts, stream);
    TORCH_CHECK(err == cudaSuccess, "mmd_linear_stats: CUDA launch failed: ", cudaGetErrorString(err));
  });
  return partial.sum(1);
}

std::tuple<at::Tensor, at::Tensor> mmd_linear_backward_cuda(const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& coef) {
  check_cuda_inputs(x, y, "mmd_linear_backward");
  mmd_check_coef(coef, x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto gx = at::empty_like(x);
  auto gy = at::empty_like(y);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mmd_linear_backward_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    const cudaError_t err = mmd_linear_backward_launch<T>(
        reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()),
        reinterpret_cast<const T*>(y.const_data_ptr<scalar_t>()), coef.const_data_ptr<double>(),
        reinterpret_cast<T*>(gx.mutable_data_ptr<scalar_t>()), reinterpret_cast<T*>(gy.mutable_data_ptr<scalar_t>()),
        x.size(0), x.size(1), y.size(1), x.size(2), stream);
    TORCH_CHECK(err == cudaSuccess, "mmd_linear_backward: CUDA launch failed: ", cudaGetErrorString(err));
  });
  return {gx, gy};
}

at::Tensor mmd_gram_cuda(const at::Tensor& x, const at::Tensor& y) {
  check_cuda_inputs(x, y, "mmd_gram");
  const int64_t tests = x.size(0), dim = x.size(2), rows = x.size(1) + y.size(1);
  TORCH_CHECK(rows <= kMmdMaxRows, "mmd_gram: the CUDA kernel takes at most ", kMmdMaxRows,
              " rows of [X; Y] per test, got m + n = ", rows);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t want = std::max<int64_t>(1, (kTargetBlocks + tests - 1) / std::max<int64_t>(tests, 1));
  const int64_t chunk = round_up((dim + want - 1) / want, kTileHost);
  const int64_t parts = (dim + chunk - 1) / chunk;
  const int64_t pairs = rows * (rows + 1) / 2;
  auto partial = at::empty({tests, parts, pairs}, x.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mmd_gram_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    const cudaError_t err =
        mmd_gram_launch<T>(reinterpret_cast<const T*>(x.const_data_ptr<scalar_t>()),
                           reinterpret_cast<const T*>(y.const_data_ptr<scalar_t>()),
                           partial.mutable_data_ptr<double>(), tests, x.size(1), y.size(1), dim, chunk, parts,
                           stream);
    TORCH_CHECK(err == cudaSuccess, "mmd_gram: CUDA launch failed: ", cudaGetErrorString(err));
  });
  // Upper triangle (row-major) -> symmetric (T, N, N).
  const auto upper = partial.sum(1);
  const auto iu = at::triu_indices(rows, rows, 0, x.options().dtype(at::kLong));
  auto gram = at::empty({tests, rows, rows}, upper.options());
  const auto r = iu.select(0, 0), c = iu.select(0, 1);
  gram.index_put_({at::indexing::Slice(), r, c}, upper);
  gram.index_put_({at::indexing::Slice(), c, r}, upper);
  return gram;
}

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) {
  m.impl("mmd_linear_stats", &brainkern::mmd_linear_stats_cuda);
  m.impl("mmd_linear_backward", &brainkern::mmd_linear_backward_cuda);
  m.impl("mmd_gram", &brainkern::mmd_gram_cuda);
}
