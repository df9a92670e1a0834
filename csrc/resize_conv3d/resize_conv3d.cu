// CUDA kernels of resize_conv3d: the phase convolution on the low-resolution grid with
// shared-memory tiles, bias and activation fused into the epilogue, writing the
// interleaved high-resolution output directly; and the input gradient (its adjoint).
// Torch-free: raw pointers, sizes as int64, launchers on a given stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_common.h"
#include "resize_conv3d/resize_conv3d.h"

namespace brainkern {
namespace {

template <typename T>
using Acc = resize_conv3d_acc<T>;

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename acc_t>
__device__ __forceinline__ acc_t activate(acc_t v, int act, acc_t slope) {
  switch (act) {
    case 1:
      return v > acc_t(0) ? v : acc_t(0);
    case 2:
      return v > acc_t(0) ? v : v * slope;
    case 3:
      return tanh(v);
    default:
      return v;
  }
}

// Block tile: 64 low-resolution voxels x 64 channels, 256 threads of 4x4 outputs each.
constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kThreads = 256;

// Reduction rows staged in shared memory per step (32 KiB of tiles in either precision).
template <typename acc_t>
struct Stage {
  static constexpr int R = sizeof(acc_t) == 8 ? 32 : 64;
};

template <typename acc_t, int R>
__device__ __forceinline__ void tile_mac(const acc_t (*as)[kTileM], const acc_t (*bs)[kTileN], acc_t (&acc)[4][4],
                                         int tx, int ty) {
#pragma unroll 8
  for (int r = 0; r < R; ++r) {
    acc_t a[4], b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = as[r][tx + 16 * i];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = bs[r][ty + 16 * j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
  }
}

// grid: (ceil(N*D*H*W / 64), ceil(C_out / 64), 8 phases). Reduction rows are (tap, input
// channel) pairs, 8 taps x KC channels per stage.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    resize_conv3d_fwd_kernel(const T* __restrict__ x, const typename Acc<T>::type* __restrict__ w8, const T* __restrict__ bias,
                             T* __restrict__ y, int64_t n, int64_t c_in, int64_t c_out, int64_t d, int64_t h,
                             int64_t w, int act, float slope) {
  using acc_t = typename Acc<T>::type;
  constexpr int R = Stage<acc_t>::R;
  constexpr int KC = R / 8;
  __shared__ acc_t xs[R][kTileM];
  __shared__ acc_t ws[R][kTileN];

  const int phase = static_cast<int>(blockIdx.z);
  const int pa = phase >> 2, pb = (phase >> 1) & 1, pc = phase & 1;
  const int64_t dhw = d * h * w;
  const int64_t m_total = n * dhw;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t o0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;

  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  for (int64_t ci0 = 0; ci0 < c_in; ci0 += KC) {
    for (int e = static_cast<int>(threadIdx.x); e < R * kTileM; e += kThreads) {
      const int mm = e % kTileM, r = e / kTileM;
      const int tap = r / KC, kc = r % KC;
      const int64_t m = m0 + mm, ci = ci0 + kc;
      acc_t v = acc_t(0);
      if (m < m_total && ci < c_in) {
        const int64_t vw = m % w, vh = (m / w) % h, vd = (m / (w * h)) % d, vn = m / dhw;
        const int64_t id = vd + pa - 1 + (tap >> 2), ih = vh + pb - 1 + ((tap >> 1) & 1),
                      iw = vw + pc - 1 + (tap & 1);
        if (id >= 0 && id < d && ih >= 0 && ih < h && iw >= 0 && iw < w)
          v = to_acc(x[(vn * c_in + ci) * dhw + (id * h + ih) * w + iw]);
      }
      xs[r][mm] = v;
    }
    for (int e = static_cast<int>(threadIdx.x); e < R * kTileN; e += kThreads) {
      const int nn = e % kTileN, r = e / kTileN;
      const int tap = r / KC, kc = r % KC;
      const int64_t o = o0 + nn, ci = ci0 + kc;
      ws[r][nn] = (o < c_out && ci < c_in) ? w8[((phase * c_out + o) * c_in + ci) * 8 + tap] : acc_t(0);
    }
    __syncthreads();
    tile_mac<acc_t, R>(xs, ws, acc, tx, ty);
    __syncthreads();
  }

  const acc_t s = static_cast<acc_t>(slope);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + tx + 16 * i;
    if (m >= m_total) continue;
    const int64_t vw = m % w, vh = (m / w) % h, vd = (m / (w * h)) % d, vn = m / dhw;
    const int64_t base = ((2 * vd + pa) * 2 * h + 2 * vh + pb) * 2 * w + 2 * vw + pc;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t o = o0 + ty + 16 * j;
      if (o >= c_out) continue;
      acc_t v = acc[i][j] + (bias ? to_acc(bias[o]) : acc_t(0));
      y[(vn * c_out + o) * 8 * dhw + base] = from_acc<T>(activate(v, act, s));
    }
  }
}

// grid: (ceil(N*D*H*W / 64), ceil(C_in / 64)). Reduction over the 64 (phase, tap) pairs
// times C_out: input voxel d is read by phase a's tap t from low-resolution output position
// d - a + 1 - t, i.e. high-resolution voxel 2 (d - a + 1 - t) + a.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    resize_conv3d_bwd_input_kernel(const T* __restrict__ g, const typename Acc<T>::type* __restrict__ w8, T* __restrict__ gx, int64_t n,
                                   int64_t c_in, int64_t c_out, int64_t d, int64_t h, int64_t w) {
  using acc_t = typename Acc<T>::type;
  constexpr int R = Stage<acc_t>::R;
  __shared__ acc_t gs[R][kTileM];
  __shared__ acc_t ws[R][kTileN];

  const int64_t dhw = d * h * w;
  const int64_t m_total = n * dhw;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;

  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  for (int pt = 0; pt < 64; ++pt) {
    const int phase = pt >> 3, tap = pt & 7;
    const int pa = phase >> 2, pb = (phase >> 1) & 1, pc = phase & 1;
    for (int64_t o0 = 0; o0 < c_out; o0 += R) {
      for (int e = static_cast<int>(threadIdx.x); e < R * kTileM; e += kThreads) {
        const int mm = e % kTileM, r = e / kTileM;
        const int64_t m = m0 + mm, o = o0 + r;
        acc_t v = acc_t(0);
        if (m < m_total && o < c_out) {
          const int64_t vw = m % w, vh = (m / w) % h, vd = (m / (w * h)) % d, vn = m / dhw;
          const int64_t sd = vd - pa + 1 - (tap >> 2), sh = vh - pb + 1 - ((tap >> 1) & 1),
                        sw = vw - pc + 1 - (tap & 1);
          if (sd >= 0 && sd < d && sh >= 0 && sh < h && sw >= 0 && sw < w)
            v = to_acc(g[(vn * c_out + o) * 8 * dhw + ((2 * sd + pa) * 2 * h + 2 * sh + pb) * 2 * w + 2 * sw + pc]);
        }
        gs[r][mm] = v;
      }
      for (int e = static_cast<int>(threadIdx.x); e < R * kTileN; e += kThreads) {
        const int nn = e % kTileN, r = e / kTileN;
        const int64_t ci = i0 + nn, o = o0 + r;
        ws[r][nn] = (ci < c_in && o < c_out) ? w8[((phase * c_out + o) * c_in + ci) * 8 + tap] : acc_t(0);
      }
      __syncthreads();
      tile_mac<acc_t, R>(gs, ws, acc, tx, ty);
      __syncthreads();
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + tx + 16 * i;
    if (m >= m_total) continue;
    const int64_t vn = m / dhw, rest = m % dhw;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t ci = i0 + ty + 16 * j;
      if (ci < c_in) gx[(vn * c_in + ci) * dhw + rest] = from_acc<T>(acc[i][j]);
    }
  }
}

}  // namespace

template <typename T>
cudaError_t resize_conv3d_fwd_cuda_launch(const T* x, const typename Acc<T>::type* w8, const T* bias, T* y, int64_t n, int64_t c_in,
                                          int64_t c_out, int64_t d, int64_t h, int64_t w, int act, float slope,
                                          cudaStream_t stream) {
  const int64_t m = n * d * h * w;
  if (m == 0 || c_out == 0) return cudaSuccess;
  const dim3 grid(ceil_div(m, kTileM), ceil_div(c_out, kTileN), 8);
  resize_conv3d_fwd_kernel<T><<<grid, kThreads, 0, stream>>>(x, w8, bias, y, n, c_in, c_out, d, h, w, act, slope);
  return last_launch_error();
}

template <typename T>
cudaError_t resize_conv3d_bwd_input_cuda_launch(const T* g, const typename Acc<T>::type* w8, T* grad_x, int64_t n, int64_t c_in,
                                                int64_t c_out, int64_t d, int64_t h, int64_t w,
                                                cudaStream_t stream) {
  const int64_t m = n * d * h * w;
  if (m == 0 || c_in == 0) return cudaSuccess;
  const dim3 grid(ceil_div(m, kTileM), ceil_div(c_in, kTileN), 1);
  resize_conv3d_bwd_input_kernel<T><<<grid, kThreads, 0, stream>>>(g, w8, grad_x, n, c_in, c_out, d, h, w);
  return last_launch_error();
}

#define BK_INSTANTIATE(T)                                                                                        \
  template cudaError_t resize_conv3d_fwd_cuda_launch<T>(const T*, const Acc<T>::type*, const T*, T*, int64_t, int64_t,      \
                                                        int64_t, int64_t, int64_t, int64_t, int, float,          \
                                                        cudaStream_t);                                           \
  template cudaError_t resize_conv3d_bwd_input_cuda_launch<T>(const T*, const Acc<T>::type*, T*, int64_t, int64_t, int64_t, \
                                                              int64_t, int64_t, int64_t, cudaStream_t);
BK_INSTANTIATE(float)
BK_INSTANTIATE(double)
BK_INSTANTIATE(__half)
BK_INSTANTIATE(__nv_bfloat16)
#undef BK_INSTANTIATE

}  // namespace brainkern
