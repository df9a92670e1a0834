// CPU kernels of the batch MMD^2 statistics (see mmd.h), and the op schemas.
//
// Work is split into (test, D-part) items run by at::parallel_for; each item
// streams its part of D in blocks of kBlock features, converting to float64 on
// the fly, and writes its own partial sums, which are then added in a fixed
// order (the result does not depend on the thread count).
#include <ATen/OpMathType.h>
#include "mmd/mmd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace brainkern {
namespace {

constexpr int64_t kBlock = 256;

struct Split {
  int64_t parts;       // D-parts per test
  int64_t per_part;    // features per part (a multiple of kBlock)
};

// Enough items to keep every thread busy when there are few tests.
// Zero tests or zero features still give a valid split (no division by zero).
Split split_features(int64_t tests, int64_t dim) {
  tests = std::max<int64_t>(tests, 1);
  const int64_t blocks = std::max<int64_t>((dim + kBlock - 1) / kBlock, 1);
  const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + tests - 1) / tests);
  const int64_t per = (blocks + std::min(want, blocks) - 1) / std::min(want, blocks);
  return {(blocks + per - 1) / per, per * kBlock};
}

// Column means of `rows` rows of length len (row stride dim) into mean[0..len).
template <typename scalar_t>
void column_mean(const scalar_t* base, int64_t rows, int64_t dim, int64_t len, double* mean) {
  std::fill(mean, mean + len, 0.0);
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t* row = base + i * dim;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) mean[k] += static_cast<double>(row[k]);
  }
  const double inv = 1.0 / static_cast<double>(rows);
#pragma omp simd
  for (int64_t k = 0; k < len; ++k) mean[k] *= inv;
}

template <typename scalar_t>
double centered_squares(const scalar_t* base, int64_t rows, int64_t dim, int64_t len, const double* mean) {
  double acc = 0.0;
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t* row = base + i * dim;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < len; ++k) {
      const double v = static_cast<double>(row[k]) - mean[k];
      acc += v * v;
    }
  }
  return acc;
}

template <typename scalar_t>
void linear_stats_kernel(const scalar_t* x, const scalar_t* y, double* out, int64_t tests, int64_t m,
                         int64_t n, int64_t dim) {
  const Split sp = split_features(tests, dim);
  std::vector<double> partial(tests * sp.parts * 3, 0.0);
  at::parallel_for(0, tests * sp.parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> mx(kBlock), my(kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / sp.parts, p = item % sp.parts;
      const scalar_t* xt = x + t * m * dim;
      const scalar_t* yt = y + t * n * dim;
      const int64_t stop = std::min(dim, (p + 1) * sp.per_part);
      double s = 0.0, vx = 0.0, vy = 0.0;
      for (int64_t d = p * sp.per_part; d < stop; d += kBlock) {
        const int64_t len = std::min(kBlock, stop - d);
        column_mean(xt + d, m, dim, len, mx.data());
        column_mean(yt + d, n, dim, len, my.data());
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < len; ++k) s += (mx[k] - my[k]) * (mx[k] - my[k]);
        vx += centered_squares(xt + d, m, dim, len, mx.data());
        vy += centered_squares(yt + d, n, dim, len, my.data());
      }
      double* dst = partial.data() + item * 3;
      dst[0] = s;
      dst[1] = vx;
      dst[2] = vy;
    }
  });
  for (int64_t t = 0; t < tests; ++t) {
    double acc[3] = {0.0, 0.0, 0.0};
    for (int64_t p = 0; p < sp.parts; ++p)
      for (int c = 0; c < 3; ++c) acc[c] += partial[(t * sp.parts + p) * 3 + c];
    for (int c = 0; c < 3; ++c) out[t * 3 + c] = acc[c];
  }
}

template <typename scalar_t>
void linear_backward_kernel(const scalar_t* x, const scalar_t* y, const double* coef, scalar_t* gx,
                            scalar_t* gy, int64_t tests, int64_t m, int64_t n, int64_t dim) {
  const Split sp = split_features(tests, dim);
  // The means are accumulated in double; the per-element gradient is an affine map of
  // the element, evaluated in the op-math type (float for float and half types), so the
  // inner loops vectorise. For the biased estimator (b = c = 0) it does not depend on the
  // element at all and the second read of x and y is skipped.
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, tests * sp.parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> mx(kBlock), my(kBlock);
    std::vector<acc_t> base_x(kBlock), base_y(kBlock), mean_x(kBlock), mean_y(kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / sp.parts, p = item % sp.parts;
      const double a = coef[t * 3], b = coef[t * 3 + 1], c = coef[t * 3 + 2];
      const double ax = 2.0 * a / static_cast<double>(m), ay = -2.0 * a / static_cast<double>(n);
      const acc_t bx = static_cast<acc_t>(2.0 * b), cy = static_cast<acc_t>(2.0 * c);
      const int64_t stop = std::min(dim, (p + 1) * sp.per_part);
      for (int64_t d = p * sp.per_part; d < stop; d += kBlock) {
        const int64_t len = std::min(kBlock, stop - d);
        column_mean(x + t * m * dim + d, m, dim, len, mx.data());
        column_mean(y + t * n * dim + d, n, dim, len, my.data());
        for (int64_t k = 0; k < len; ++k) {
          base_x[k] = static_cast<acc_t>(ax * (mx[k] - my[k]));
          base_y[k] = static_cast<acc_t>(ay * (mx[k] - my[k]));
          mean_x[k] = static_cast<acc_t>(mx[k]);
          mean_y[k] = static_cast<acc_t>(my[k]);
        }
        for (int64_t i = 0; i < m; ++i) {
          const scalar_t* src = x + (t * m + i) * dim + d;
          scalar_t* dst = gx + (t * m + i) * dim + d;
          if (b == 0.0) {
            for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<scalar_t>(base_x[k]);
          } else {
#pragma omp simd
            for (int64_t k = 0; k < len; ++k)
              dst[k] = static_cast<scalar_t>(base_x[k] + bx * (static_cast<acc_t>(src[k]) - mean_x[k]));
          }
        }
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t* src = y + (t * n + j) * dim + d;
          scalar_t* dst = gy + (t * n + j) * dim + d;
          if (c == 0.0) {
            for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<scalar_t>(base_y[k]);
          } else {
#pragma omp simd
            for (int64_t k = 0; k < len; ++k)
              dst[k] = static_cast<scalar_t>(base_y[k] + cy * (static_cast<acc_t>(src[k]) - mean_y[k]));
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void gram_kernel(const scalar_t* x, const scalar_t* y, double* out, int64_t tests, int64_t m, int64_t n,
                 int64_t dim) {
  const int64_t rows = m + n;
  const Split sp = split_features(tests, dim);
  std::vector<double> partial(tests * sp.parts * rows * rows, 0.0);
  at::parallel_for(0, tests * sp.parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buf(rows * kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / sp.parts, p = item % sp.parts;
      double* acc = partial.data() + item * rows * rows;
      const int64_t stop = std::min(dim, (p + 1) * sp.per_part);
      for (int64_t d = p * sp.per_part; d < stop; d += kBlock) {
        const int64_t len = std::min(kBlock, stop - d);
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* src = r < m ? x + (t * m + r) * dim + d : y + (t * n + r - m) * dim + d;
          double* dst = buf.data() + r * kBlock;
#pragma omp simd
          for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<double>(src[k]);
        }
        for (int64_t i = 0; i < rows; ++i) {
          const double* zi = buf.data() + i * kBlock;
          for (int64_t j = i; j < rows; ++j) {
            const double* zj = buf.data() + j * kBlock;
            double dot = 0.0;
#pragma omp simd reduction(+ : dot)
            for (int64_t k = 0; k < len; ++k) dot += zi[k] * zj[k];
            acc[i * rows + j] += dot;
          }
        }
      }
    }
  });
  for (int64_t t = 0; t < tests; ++t) {
    double* g = out + t * rows * rows;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = i; j < rows; ++j) {
        double s = 0.0;
        for (int64_t p = 0; p < sp.parts; ++p) s += partial[((t * sp.parts + p) * rows + i) * rows + j];
        g[i * rows + j] = s;
        g[j * rows + i] = s;
      }
  }
}

}  // namespace

void mmd_check_inputs(const at::Tensor& x, const at::Tensor& y, const char* op) {
  BK_CHECK_DIM(x, 3, "x");
  BK_CHECK_DIM(y, 3, "y");
  BK_CHECK_FLOAT(x, "x");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype, got ",
              x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(x.device() == y.device(), op, ": x and y must be on the same device, got ", x.device(), " and ",
              y.device());
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), op,
              ": expected x (T, m, D) and y (T, n, D) with the same T and D, got x ",
              shape_str(x.sizes()), " and y ", shape_str(y.sizes()));
  TORCH_CHECK(x.size(1) > 0 && y.size(1) > 0 && x.size(2) > 0, op,
              ": expected non-empty samples, got x ", shape_str(x.sizes()), " and y ", shape_str(y.sizes()));
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous(), op, ": x and y must be contiguous");
}

void mmd_check_coef(const at::Tensor& coef, const at::Tensor& x) {
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == x.size(0) && coef.size(1) == 3,
              "mmd_linear_backward: coef must have shape [T, 3] = [", x.size(0), ", 3], got ",
              shape_str(coef.sizes()));
  TORCH_CHECK(coef.scalar_type() == at::kDouble && coef.is_contiguous(),
              "mmd_linear_backward: coef must be a contiguous float64 tensor, got ", coef.scalar_type());
  TORCH_CHECK(coef.device() == x.device(), "mmd_linear_backward: coef must be on ", x.device(), ", got ",
              coef.device());
}

at::Tensor mmd_linear_stats_cpu(const at::Tensor& x, const at::Tensor& y) {
  mmd_check_inputs(x, y, "mmd_linear_stats");
  BK_CHECK_CPU(x, "x");
  auto out = at::empty({x.size(0), 3}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mmd_linear_stats_cpu", [&] {
    linear_stats_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                  out.mutable_data_ptr<double>(), x.size(0), x.size(1), y.size(1), x.size(2));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mmd_linear_backward_cpu(const at::Tensor& x, const at::Tensor& y,
                                                           const at::Tensor& coef) {
  mmd_check_inputs(x, y, "mmd_linear_backward");
  BK_CHECK_CPU(x, "x");
  mmd_check_coef(coef, x);
  auto gx = at::empty_like(x);
  auto gy = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mmd_linear_backward_cpu", [&] {
    linear_backward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                     coef.const_data_ptr<double>(), gx.mutable_data_ptr<scalar_t>(),
                                     gy.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1), y.size(1),
                                     x.size(2));
  });
  return {gx, gy};
}

at::Tensor mmd_gram_cpu(const at::Tensor& x, const at::Tensor& y) {
  mmd_check_inputs(x, y, "mmd_gram");
  BK_CHECK_CPU(x, "x");
  const int64_t rows = x.size(1) + y.size(1);
  auto out = at::empty({x.size(0), rows, rows}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mmd_gram_cpu", [&] {
    gram_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                          out.mutable_data_ptr<double>(), x.size(0), x.size(1), y.size(1), x.size(2));
  });
  return out;
}

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  m.def("mmd_linear_stats(Tensor x, Tensor y) -> Tensor");
  m.def("mmd_linear_backward(Tensor x, Tensor y, Tensor coef) -> (Tensor, Tensor)");
  m.def("mmd_gram(Tensor x, Tensor y) -> Tensor");
}

TORCH_LIBRARY_IMPL(brainkern, CPU, m) {
  m.impl("mmd_linear_stats", &brainkern::mmd_linear_stats_cpu);
  m.impl("mmd_linear_backward", &brainkern::mmd_linear_backward_cpu);
  m.impl("mmd_gram", &brainkern::mmd_gram_cpu);
}
