// CUDA kernels of the batch MMD^2 statistics (see mmd.h). No torch headers:
// raw pointers and launchers that take a cudaStream_t.
//
// Every kernel runs on a grid of (D-chunk, test) blocks and loops over tests
// with a stride of gridDim.y, which is capped at CUDA's 65,535: any number of
// tests runs in one launch. A block's iterations depend only on blockIdx, so
// every thread of a block reaches the same __syncthreads. Short sums (over the
// samples of one feature, over one shared-memory tile) are kept in float (double
// for double inputs); each block's totals are reduced and written in double as
// one partial per (test, chunk), and the caller adds the partials in double, in
// a fixed order, so results do not depend on scheduling.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_common.h"
#include "mmd/mmd.h"

namespace brainkern {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y
// Blocks per SM the register budget must allow: 3 x 256 threads leave 80
// registers per thread. With no minimum, ptxas (CUDA 13) aimed at 64 registers
// for the double kernels and spilled loop invariants to local memory.
constexpr int kMinBlocks = 3;
constexpr int kTile = 32;  // features per shared-memory tile of the Gram kernel
constexpr int kMaxPairs = kMmdMaxRows * (kMmdMaxRows + 1) / 2;
constexpr int kPairsPerThread = (kMaxPairs + kThreads - 1) / kThreads;

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

template <typename T>
__device__ __forceinline__ T store_value(typename AccType<T>::type v) {
  return from_acc<T>(v);
}
template <>
__device__ __forceinline__ double store_value<double>(double v) { return v; }

// The three sums of v[0..2] over the block, written by thread 0 to out[0..2].
// `scratch` holds kThreads / 32 triples. One reduction for the three needs one
// pair of barriers per test rather than three.
__device__ void block_sum3(double v[3], double (*scratch)[3], double* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < 3; ++k)
    for (int offset = 16; offset > 0; offset >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
  __syncthreads();  // scratch may still be read from the previous test
  if (lane == 0)
    for (int k = 0; k < 3; ++k) scratch[warp][k] = v[k];
  __syncthreads();
  if (threadIdx.x == 0)
    for (int k = 0; k < 3; ++k) {
      double total = 0.0;
      for (int w = 0; w < kThreads / 32; ++w) total += scratch[w][k];
      out[k] = total;
    }
}

// Mean and centred sum of squares of `rows` values with stride `dim`, in one pass
// (sums shifted by the first value, so that they do not cancel).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void column_moments(const scalar_t* col, int64_t rows, int64_t dim, acc_t& mean,
                                               acc_t& centred) {
  const acc_t shift = to_acc(col[0]);
  acc_t s1 = 0, s2 = 0;
#pragma unroll 4  // four independent loads in flight per thread
  for (int64_t i = 1; i < rows; ++i) {
    const acc_t v = to_acc(col[i * dim]) - shift;
    s1 += v;
    s2 += v * v;
  }
  const acc_t inv = acc_t(1) / static_cast<acc_t>(rows);
  mean = shift + s1 * inv;
  const acc_t c = s2 - s1 * s1 * inv;
  centred = c > acc_t(0) ? c : acc_t(0);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    linear_stats_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                        double* __restrict__ partial, int64_t tests, int64_t m, int64_t n, int64_t dim,
                        int64_t chunk, int64_t parts) {
  using acc_t = typename AccType<scalar_t>::type;
  __shared__ double scratch[kThreads / 32][3];
  const int64_t p = blockIdx.x;
  const int64_t start = p * chunk;
  const int64_t stop = start + chunk < dim ? start + chunk : dim;
  for (int64_t t = blockIdx.y; t < tests; t += gridDim.y) {
    const scalar_t* xt = x + t * m * dim;
    const scalar_t* yt = y + t * n * dim;
    acc_t s = 0, vx = 0, vy = 0;
    for (int64_t d = start + threadIdx.x; d < stop; d += kThreads) {
      acc_t mx, my, cx, cy;
      column_moments(xt + d, m, dim, mx, cx);
      column_moments(yt + d, n, dim, my, cy);
      s += (mx - my) * (mx - my);
      vx += cx;
      vy += cy;
    }
    double sums[3] = {static_cast<double>(s), static_cast<double>(vx), static_cast<double>(vy)};
    block_sum3(sums, scratch, partial + (t * parts + p) * 3);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    linear_backward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                           const double* __restrict__ coef, scalar_t* __restrict__ gx,
                           scalar_t* __restrict__ gy, int64_t tests, int64_t m, int64_t n, int64_t dim) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (d >= dim) return;  // no block-wide synchronisation below
  for (int64_t t = blockIdx.y; t < tests; t += gridDim.y) {
    const scalar_t* xt = x + t * m * dim + d;
    const scalar_t* yt = y + t * n * dim + d;
    acc_t mx, my, cx, cy;
    column_moments(xt, m, dim, mx, cx);
    column_moments(yt, n, dim, my, cy);
    const acc_t a = static_cast<acc_t>(coef[t * 3]);
    const acc_t b2 = static_cast<acc_t>(2.0 * coef[t * 3 + 1]);
    const acc_t c2 = static_cast<acc_t>(2.0 * coef[t * 3 + 2]);
    const acc_t diff = mx - my;
    const acc_t gx_mean = acc_t(2) * a * diff / static_cast<acc_t>(m);
    const acc_t gy_mean = -acc_t(2) * a * diff / static_cast<acc_t>(n);
    scalar_t* gxt = gx + t * m * dim + d;
    scalar_t* gyt = gy + t * n * dim + d;
    for (int64_t i = 0; i < m; ++i)
      gxt[i * dim] = store_value<scalar_t>(gx_mean + b2 * (to_acc(xt[i * dim]) - mx));
    for (int64_t j = 0; j < n; ++j)
      gyt[j * dim] = store_value<scalar_t>(gy_mean + c2 * (to_acc(yt[j * dim]) - my));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gram_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, double* __restrict__ partial,
                int64_t tests, int64_t m, int64_t n, int64_t dim, int64_t chunk, int64_t parts) {
  using acc_t = typename AccType<scalar_t>::type;
  __shared__ acc_t tile[kMmdMaxRows][kTile + 1];  // +1: rows start in different banks
  const int64_t p = blockIdx.x;
  const int rows = static_cast<int>(m + n);
  const int pairs = rows * (rows + 1) / 2;
  const int64_t start = p * chunk;
  const int64_t stop = start + chunk < dim ? start + chunk : dim;

  // The upper-triangle pairs (i <= j, row-major) this thread owns.
  int pi[kPairsPerThread], pj[kPairsPerThread];
#pragma unroll
  for (int q = 0; q < kPairsPerThread; ++q) {
    int rem = static_cast<int>(threadIdx.x) + q * kThreads, i = 0;
    while (rem < pairs && rem >= rows - i) {
      rem -= rows - i;
      ++i;
    }
    pi[q] = i;
    pj[q] = i + rem;
  }

  for (int64_t t = blockIdx.y; t < tests; t += gridDim.y) {
    const scalar_t* xt = x + t * m * dim;
    const scalar_t* yt = y + t * n * dim;
    double acc[kPairsPerThread];
#pragma unroll
    for (int q = 0; q < kPairsPerThread; ++q) acc[q] = 0.0;

    // Each tile iteration ends with a barrier, so the next tile (of this test or
    // the next) is written only after every thread has finished reading this one.
    for (int64_t d0 = start; d0 < stop; d0 += kTile) {
      for (int e = threadIdx.x; e < rows * kTile; e += kThreads) {
        const int r = e / kTile, c = e % kTile;
        const int64_t d = d0 + c;
        acc_t v = 0;
        if (d < stop) v = to_acc(r < m ? xt[r * dim + d] : yt[(r - m) * dim + d]);
        tile[r][c] = v;
      }
      __syncthreads();
#pragma unroll
      for (int q = 0; q < kPairsPerThread; ++q) {
        if (static_cast<int>(threadIdx.x) + q * kThreads < pairs) {
          acc_t dot = 0;
#pragma unroll 8
          for (int c = 0; c < kTile; ++c) dot += tile[pi[q]][c] * tile[pj[q]][c];
          acc[q] += static_cast<double>(dot);
        }
      }
      __syncthreads();
    }
    double* out = partial + (t * parts + p) * pairs;
#pragma unroll
    for (int q = 0; q < kPairsPerThread; ++q) {
      const int pair = static_cast<int>(threadIdx.x) + q * kThreads;
      if (pair < pairs) out[pair] = acc[q];
    }
  }
}

// Grid for `parts` D-chunks of `tests` tests; the kernels loop over the tests
// gridDim.y does not cover.
dim3 test_grid(int64_t parts, int64_t tests) {
  const int64_t grid_y = tests < kMaxGridY ? tests : kMaxGridY;
  return dim3(static_cast<unsigned int>(parts), static_cast<unsigned int>(grid_y));
}

}  // namespace

template <typename scalar_t>
cudaError_t mmd_linear_stats_launch(const scalar_t* x, const scalar_t* y, double* partial, int64_t tests,
                                    int64_t m, int64_t n, int64_t dim, int64_t chunk, int64_t parts,
                                    cudaStream_t stream) {
  if (tests == 0) return cudaSuccess;  // an empty grid is a launch error
  linear_stats_kernel<scalar_t>
      <<<test_grid(parts, tests), kThreads, 0, stream>>>(x, y, partial, tests, m, n, dim, chunk, parts);
  return last_launch_error();
}

template <typename scalar_t>
cudaError_t mmd_linear_backward_launch(const scalar_t* x, const scalar_t* y, const double* coef,
                                       scalar_t* gx, scalar_t* gy, int64_t tests, int64_t m, int64_t n,
                                       int64_t dim, cudaStream_t stream) {
  if (tests == 0) return cudaSuccess;
  const dim3 grid = test_grid(ceil_div(dim, kThreads), tests);
  linear_backward_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(x, y, coef, gx, gy, tests, m, n, dim);
  return last_launch_error();
}

template <typename scalar_t>
cudaError_t mmd_gram_launch(const scalar_t* x, const scalar_t* y, double* partial, int64_t tests, int64_t m,
                            int64_t n, int64_t dim, int64_t chunk, int64_t parts, cudaStream_t stream) {
  if (m + n > kMmdMaxRows || chunk % kTile != 0) return cudaErrorInvalidValue;
  if (tests == 0) return cudaSuccess;
  gram_kernel<scalar_t>
      <<<test_grid(parts, tests), kThreads, 0, stream>>>(x, y, partial, tests, m, n, dim, chunk, parts);
  return last_launch_error();
}

#define BK_MMD_INSTANTIATE(T)                                                                              \
  template cudaError_t mmd_linear_stats_launch<T>(const T*, const T*, double*, int64_t, int64_t, int64_t, \
                                                  int64_t, int64_t, int64_t, cudaStream_t);               \
  template cudaError_t mmd_linear_backward_launch<T>(const T*, const T*, const double*, T*, T*, int64_t,  \
                                                     int64_t, int64_t, int64_t, cudaStream_t);            \
  template cudaError_t mmd_gram_launch<T>(const T*, const T*, double*, int64_t, int64_t, int64_t, int64_t, \
                                          int64_t, int64_t, cudaStream_t);

BK_MMD_INSTANTIATE(float)
BK_MMD_INSTANTIATE(double)
BK_MMD_INSTANTIATE(__half)
BK_MMD_INSTANTIATE(__nv_bfloat16)

#undef BK_MMD_INSTANTIATE

}  // namespace brainkern
