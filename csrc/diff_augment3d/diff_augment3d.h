// DiffAugment-3D (King et al. 2024): translation, cutout and intensity of each
// sample of a batch, relative to a background value, in one pass.
//
//   x (N, C, D, H, W), shift / lo / hi (N, 3) int64, scale (N,)  ->  y (N, C, D, H, W)
//
//   y[n, c, p] = bg                                   if p - shift[n] is outside the volume,
//                                                     or lo[n] <= p < hi[n] on all three axes
//   y[n, c, p] = s * x[n, c, p - shift[n]] + (1 - s) * bg   otherwise, s = scale[n]
//
// The arithmetic runs in float32 for float16 / bfloat16 / float32 inputs and in
// float64 for float64 (bg rounded to that type), each product and sum rounded on
// its own (no fused multiply-add), and the result is rounded once to x's dtype: the
// same bits as the Python reference. x may have any non-negative strides; y is a
// new contiguous tensor. The backward is this op with (-shift, lo - shift,
// hi - shift, scale, bg = 0) on the incoming gradient.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define BK_DA_HD __host__ __device__
#else
#define BK_DA_HD
#endif

namespace brainkern {

// What one output row (n, c, d, h) of the op needs, shared by the CPU and CUDA kernels.
struct AugmentRow {
  int64_t n, c;          // sample and channel
  int64_t src_d, src_h;  // the source row's coordinates (valid only when `valid`)
  int64_t shift_w;       // the sample's shift along W
  int64_t box_lo, box_hi;  // the cutout along W, [box_lo, box_hi); empty unless the row is in the box
  bool valid;            // the source row lies inside the volume
};

// Row `row` of y in (N, C, D, H) order; shift / lo / hi are (N, 3) row-major.
BK_DA_HD inline AugmentRow augment_row(int64_t row, int64_t c_size, int64_t d_size, int64_t h_size,
                                       const int64_t* shift, const int64_t* lo, const int64_t* hi) {
  AugmentRow r;
  const int64_t h = row % h_size;
  int64_t t = row / h_size;
  const int64_t d = t % d_size;
  t /= d_size;
  r.c = t % c_size;
  r.n = t / c_size;
  const int64_t* sh = shift + 3 * r.n;
  const int64_t* l = lo + 3 * r.n;
  const int64_t* u = hi + 3 * r.n;
  r.src_d = d - sh[0];
  r.src_h = h - sh[1];
  r.shift_w = sh[2];
  r.valid = r.src_d >= 0 && r.src_d < d_size && r.src_h >= 0 && r.src_h < h_size;
  const bool in_box = l[0] <= d && d < u[0] && l[1] <= h && h < u[1];
  r.box_lo = in_box ? l[2] : 0;
  r.box_hi = in_box ? u[2] : 0;
  return r;
}

}  // namespace brainkern

#if defined(WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime.h>

namespace brainkern {

// Element types of x the CUDA launcher takes.
enum class AugmentDtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Launches one pass over y on `stream`. sizes / strides: x's (elements). shift, lo,
// hi: contiguous (N, 3) int64 on the device; scale: contiguous (N,) float32 (float64
// when dtype is kFloat64). y must hold the contiguous output.
cudaError_t diff_augment3d_launch(const void* x, void* y, AugmentDtype dtype, const int64_t sizes[5],
                                  const int64_t strides[5], const int64_t* shift, const int64_t* lo,
                                  const int64_t* hi, const void* scale, double background, cudaStream_t stream);

}  // namespace brainkern
#endif

#ifndef __CUDACC__
#include "common.h"

namespace brainkern {

// Checks the arguments (shared by the CPU and CUDA entry points).
inline void diff_augment3d_check(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& lo,
                                 const at::Tensor& hi, const at::Tensor& scale) {
  const char* op = "diff_augment3d";
  TORCH_CHECK(x.dim() == 5, op, ": x must be 5-d (N, C, D, H, W), got shape ", shape_str(x.sizes()));
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": x must be float16, bfloat16, float32 or float64, got ", dtype);
  const int64_t n = x.size(0);
  const at::Tensor* index[3] = {&shift, &lo, &hi};
  const char* names[3] = {"shift", "lo", "hi"};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& t = *index[i];
    TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", names[i], " must be int64, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == 3, op, ": ", names[i], " must have shape (N, 3) = (",
                n, ", 3), got ", shape_str(t.sizes()));
    TORCH_CHECK(t.device() == x.device(), op, ": ", names[i], " is on ", t.device(), " but x is on ", x.device());
  }
  TORCH_CHECK(at::isFloatingType(scale.scalar_type()), op, ": scale must be floating point, got ",
              scale.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == n, op, ": scale must have shape (N,) = (", n, ",), got ",
              shape_str(scale.sizes()));
  TORCH_CHECK(scale.device() == x.device(), op, ": scale is on ", scale.device(), " but x is on ", x.device());
}

// The dtype the op computes in for x's dtype.
inline at::ScalarType diff_augment3d_acc_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor diff_augment3d_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& lo, const at::Tensor& hi,
                              const at::Tensor& scale, double background);
#ifdef WITH_CUDA
at::Tensor diff_augment3d_cuda(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& lo,
                               const at::Tensor& hi, const at::Tensor& scale, double background);
#endif

}  // namespace brainkern
#endif
