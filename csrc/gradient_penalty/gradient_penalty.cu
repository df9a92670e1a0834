// CUDA kernels of the fused gradient-penalty pieces (torch-free; launched from
// gradient_penalty_cuda.cpp). Elementwise kernels use a 2D grid: x over the
// N elements of a sample, y over samples (looping when B > 65535), so the
// per-sample eps / coefficient is read once per block and no division per
// element is needed. The norm is a deterministic two-stage reduction.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda_common.h"
#include "gradient_penalty/gradient_penalty.h"

namespace brainkern {
namespace gp {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // elements per thread per block-tile in the elementwise kernels
constexpr unsigned int kMaxGridY = 65535;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(float x);
template <typename T>
__device__ __forceinline__ T from_acc(double x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. Fixed order: deterministic.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (warp == 0) {
    total = lane < kThreads / 32 ? warp_sums[lane] : acc_t(0);
    total = warp_sum(total);
  }
  __syncthreads();  // warp_sums may be reused by the caller's next call
  return total;
}

dim3 elementwise_grid(int64_t B, int64_t N) {
  const int64_t tiles = (N + int64_t(kThreads) * kItems - 1) / (int64_t(kThreads) * kItems);
  const unsigned int gx = static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(tiles, 1), 1 << 20));
  const unsigned int gy = static_cast<unsigned int>(std::min<int64_t>(B, kMaxGridY));
  return dim3(gx, gy);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    interp_kernel(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake,
                  const scalar_t* __restrict__ eps, scalar_t* __restrict__ out, int64_t B, int64_t N) {
  using acc_t = typename Acc<scalar_t>::type;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const acc_t w = to_acc(eps[b]);
    const acc_t v = acc_t(1) - w;
    const int64_t base = b * N;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(blockDim.x) * gridDim.x) {
      out[base + i] = from_acc<scalar_t>(w * to_acc(real[base + i]) + v * to_acc(fake[base + i]));
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    interp_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ eps,
                           scalar_t* __restrict__ grad_real, scalar_t* __restrict__ grad_fake, int64_t B,
                           int64_t N) {
  using acc_t = typename Acc<scalar_t>::type;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const acc_t w = to_acc(eps[b]);
    const acc_t v = acc_t(1) - w;
    const int64_t base = b * N;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(blockDim.x) * gridDim.x) {
      const acc_t x = to_acc(g[base + i]);
      grad_real[base + i] = from_acc<scalar_t>(w * x);
      grad_fake[base + i] = from_acc<scalar_t>(v * x);
    }
  }
}

// Stage 1: block (c, b) writes the sum of squares of grad[b, c*kNormChunk : (c+1)*kNormChunk].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    norm_partial_kernel(const scalar_t* __restrict__ grad, acc_t* __restrict__ partial, int64_t B, int64_t N,
                        int64_t chunks) {
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
      const int64_t lo = c * kNormChunk;
      const int64_t hi = lo + kNormChunk < N ? lo + kNormChunk : N;
      const scalar_t* p = grad + b * N;
      acc_t s = acc_t(0);
      for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const acc_t v = to_acc(p[i]);
        s += v * v;
      }
      s = block_sum(s);
      if (threadIdx.x == 0) partial[b * chunks + c] = s;
    }
  }
}

// Stage 2 (one block): warp w finishes samples w, w + 8, ...; the penalty sums
// the per-warp totals in a fixed order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    norm_finish_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ norms, scalar_t* __restrict__ penalty,
                       int64_t B, int64_t chunks, acc_t weight, acc_t center, int64_t mode) {
  __shared__ acc_t warp_terms[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  acc_t terms = acc_t(0);
  for (int64_t b = warp; b < B; b += kThreads / 32) {
    acc_t s = acc_t(0);
    for (int64_t c = lane; c < chunks; c += 32) s += partial[b * chunks + c];
    s = warp_sum(s);
    if (lane == 0) {
      const acc_t n = sqrt(s);
      norms[b] = n;
      terms += term<acc_t>(n, center, mode);
    }
  }
  if (lane == 0) warp_terms[warp] = terms;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t total = acc_t(0);
    for (int w = 0; w < kThreads / 32; ++w) total += warp_terms[w];
    *penalty = from_acc<scalar_t>(weight * total / static_cast<acc_t>(B));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    norm_backward_kernel(const scalar_t* __restrict__ dpen, const scalar_t* __restrict__ grad,
                         const acc_t* __restrict__ norms, scalar_t* __restrict__ dgrad, int64_t B, int64_t N,
                         acc_t weight, acc_t center, int64_t mode) {
  const acc_t scale = to_acc(*dpen) * weight / static_cast<acc_t>(B);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const acc_t coef = scale * slope<acc_t>(norms[b], center, mode);
    const int64_t base = b * N;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N; i += int64_t(blockDim.x) * gridDim.x) {
      dgrad[base + i] = from_acc<scalar_t>(coef * to_acc(grad[base + i]));
    }
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t interp_cuda(const scalar_t* real, const scalar_t* fake, const scalar_t* eps, scalar_t* out,
                        int64_t B, int64_t N, cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  interp_kernel<scalar_t><<<elementwise_grid(B, N), kThreads, 0, stream>>>(real, fake, eps, out, B, N);
  return last_launch_error();
}

template <typename scalar_t>
cudaError_t interp_backward_cuda(const scalar_t* g, const scalar_t* eps, scalar_t* grad_real,
                                 scalar_t* grad_fake, int64_t B, int64_t N, cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  interp_backward_kernel<scalar_t>
      <<<elementwise_grid(B, N), kThreads, 0, stream>>>(g, eps, grad_real, grad_fake, B, N);
  return last_launch_error();
}

template <typename scalar_t, typename acc_t>
cudaError_t norm_cuda(const scalar_t* grad, int64_t B, int64_t N, double weight, double center, int64_t mode,
                      acc_t* partial, acc_t* norms, scalar_t* penalty, cudaStream_t stream) {
  if (B <= 0) return cudaSuccess;
  const int64_t chunks = norm_chunks(N);
  const dim3 grid(static_cast<unsigned int>(std::min<int64_t>(chunks, 1 << 20)),
                  static_cast<unsigned int>(std::min<int64_t>(B, kMaxGridY)));
  norm_partial_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(grad, partial, B, N, chunks);
  cudaError_t err = last_launch_error();
  if (err != cudaSuccess) return err;
  norm_finish_kernel<scalar_t, acc_t><<<1, kThreads, 0, stream>>>(
      partial, norms, penalty, B, chunks, static_cast<acc_t>(weight), static_cast<acc_t>(center), mode);
  return last_launch_error();
}

template <typename scalar_t, typename acc_t>
cudaError_t norm_backward_cuda(const scalar_t* dpen, const scalar_t* grad, const acc_t* norms, scalar_t* dgrad,
                               int64_t B, int64_t N, double weight, double center, int64_t mode,
                               cudaStream_t stream) {
  if (B <= 0 || N <= 0) return cudaSuccess;
  norm_backward_kernel<scalar_t, acc_t><<<elementwise_grid(B, N), kThreads, 0, stream>>>(
      dpen, grad, norms, dgrad, B, N, static_cast<acc_t>(weight), static_cast<acc_t>(center), mode);
  return last_launch_error();
}

#define BK_GP_INSTANTIATE(T, A)                                                                               \
  template cudaError_t interp_cuda<T>(const T*, const T*, const T*, T*, int64_t, int64_t, cudaStream_t);      \
  template cudaError_t interp_backward_cuda<T>(const T*, const T*, T*, T*, int64_t, int64_t, cudaStream_t);   \
  template cudaError_t norm_cuda<T, A>(const T*, int64_t, int64_t, double, double, int64_t, A*, A*, T*,       \
                                       cudaStream_t);                                                         \
  template cudaError_t norm_backward_cuda<T, A>(const T*, const T*, const A*, T*, int64_t, int64_t, double,   \
                                                double, int64_t, cudaStream_t);

BK_GP_INSTANTIATE(float, float)
BK_GP_INSTANTIATE(double, double)
BK_GP_INSTANTIATE(__half, float)
BK_GP_INSTANTIATE(__nv_bfloat16, float)

#undef BK_GP_INSTANTIATE

}  // namespace gp
}  // namespace brainkern
