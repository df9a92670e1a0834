// CUDA kernel of diff_augment3d: one pass, threads along the rows of the output.
//
// Threads of a block run along output rows (the W axis; blockDim.x lanes per row,
// blockDim.y rows per block, a grid-stride loop over rows). A row's coordinates
// (n, c, d, h), its sample's shift, box and scale and its source row are worked out
// once; each lane then writes elements lane, lane + lanes, ... of the row
// (coalesced stores, and coalesced loads when x's W stride is 1). Products and sums
// use the _rn intrinsics so nvcc cannot contract them into a fused multiply-add:
// the result is bit-identical to the CPU kernel and the PyTorch reference.
#include "cuda_common.h"
#include "diff_augment3d/diff_augment3d.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace brainkern {
namespace {

constexpr int kThreads = 256;

// The compute type per element type: float64 for double, float32 for the rest.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Conversions, and products and sums that nvcc may not contract into an FMA.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void from_acc(float v, float* out) { *out = v; }
__device__ __forceinline__ void from_acc(double v, double* out) { *out = v; }
__device__ __forceinline__ void from_acc(float v, __half* out) { *out = __float2half_rn(v); }
__device__ __forceinline__ void from_acc(float v, __nv_bfloat16* out) { *out = __float2bfloat16_rn(v); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

struct Params {
  int64_t rows;           // N * C * D * H
  int64_t c, d, h, w;     // sizes of x but N
  int64_t sn, sc, sd, sh, sw;  // strides of x
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    diff_augment3d_kernel(const T* __restrict__ x, T* __restrict__ y, const Params p,
                          const int64_t* __restrict__ shift, const int64_t* __restrict__ lo,
                          const int64_t* __restrict__ hi, const typename AccOf<T>::type* __restrict__ scale,
                          const double background) {
  using Acc = typename AccOf<T>::type;
  const Acc bg = static_cast<Acc>(background);
  T fill;
  from_acc(bg, &fill);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; row < p.rows; row += step) {
    const AugmentRow r = augment_row(row, p.c, p.d, p.h, shift, lo, hi);
    const Acc s = scale[r.n];
    const Acc cst = mul_rn(add_rn(Acc(1), -s), bg);
    const T* in = x + r.n * p.sn + r.c * p.sc + (r.valid ? r.src_d * p.sd + r.src_h * p.sh : 0);
    T* out = y + row * p.w;
    for (int64_t w = threadIdx.x; w < p.w; w += blockDim.x) {
      const int64_t src_w = w - r.shift_w;
      const bool keep = r.valid && src_w >= 0 && src_w < p.w && !(r.box_lo <= w && w < r.box_hi);
      T v = fill;
      if (keep) from_acc(add_rn(mul_rn(s, to_acc(in[src_w * p.sw])), cst), &v);
      out[w] = v;
    }
  }
}

unsigned int lanes_for(int64_t w) {
  unsigned int lanes = 1;
  while (lanes < w && lanes < 128) lanes <<= 1;
  return lanes < 32 ? 32 : lanes;
}

template <typename T>
cudaError_t launch_typed(const void* x, void* y, const Params& p, const int64_t* shift, const int64_t* lo,
                         const int64_t* hi, const void* scale, double background, cudaStream_t stream) {
  const unsigned int tx = lanes_for(p.w);
  const dim3 block(tx, kThreads / tx);
  const int64_t blocks = (p.rows + block.y - 1) / block.y;
  const unsigned int grid = static_cast<unsigned int>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
  diff_augment3d_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), p, shift, lo,
                                                       hi, static_cast<const typename AccOf<T>::type*>(scale),
                                                       background);
  return last_launch_error();
}

}  // namespace

cudaError_t diff_augment3d_launch(const void* x, void* y, AugmentDtype dtype, const int64_t sizes[5],
                                  const int64_t strides[5], const int64_t* shift, const int64_t* lo,
                                  const int64_t* hi, const void* scale, double background, cudaStream_t stream) {
  for (int d = 0; d < 5; ++d) {
    if (sizes[d] == 0) return cudaSuccess;
  }
  Params p;
  p.rows = sizes[0] * sizes[1] * sizes[2] * sizes[3];
  p.c = sizes[1];
  p.d = sizes[2];
  p.h = sizes[3];
  p.w = sizes[4];
  p.sn = strides[0];
  p.sc = strides[1];
  p.sd = strides[2];
  p.sh = strides[3];
  p.sw = strides[4];
  switch (dtype) {
    case AugmentDtype::kFloat32: return launch_typed<float>(x, y, p, shift, lo, hi, scale, background, stream);
    case AugmentDtype::kFloat64: return launch_typed<double>(x, y, p, shift, lo, hi, scale, background, stream);
    case AugmentDtype::kFloat16: return launch_typed<__half>(x, y, p, shift, lo, hi, scale, background, stream);
    case AugmentDtype::kBFloat16:
      return launch_typed<__nv_bfloat16>(x, y, p, shift, lo, hi, scale, background, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace brainkern
