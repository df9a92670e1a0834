// CPU kernel of the fused spectral-norm step (see spectral_norm.h).
//
// The work is a flat list of row chunks over all layers; at::parallel_for runs
// them on every thread. Each thread accumulates W^T d into its own slice of a
// (threads, sum_l in_l) double buffer, so a row is read once (dot product, then
// the axpy while it is still in L1/L2) and no atomics are needed; a second,
// cheap pass sums the per-thread slices. Sums run in double for float32 and
// float64 weights alike (float32 rounding of a 10^4-term dot product would
// otherwise be visible against the float64 oracle).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "spectral_norm/spectral_norm.h"

namespace brainkern {
namespace {

struct Chunk {
  int64_t layer;
  int64_t row_begin;
  int64_t row_end;
};

// The two inner loops, per dtype, compiled for AVX2 and AVX-512 besides the
// baseline ISA (GCC function multi-versioning picks one at load time), so that
// the double accumulation runs at full vector width.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BK_SN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BK_SN_CLONES
#endif

// Dot product of one row with v (widened to double); 8 independent partial sums
// so that the loop vectorises without reassociating a single chain.
#define BK_SN_DOT(NAME, T)                                                                     \
  BK_SN_CLONES double NAME(const T* w, const double* v, int64_t n) {                           \
    double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                 \
    int64_t c = 0;                                                                             \
    for (; c + 8 <= n; c += 8) {                                                               \
      for (int k = 0; k < 8; ++k) part[k] += static_cast<double>(w[c + k]) * v[c + k];         \
    }                                                                                          \
    double s = 0;                                                                              \
    for (; c < n; ++c) s += static_cast<double>(w[c]) * v[c];                                 \
    return s + ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7])); \
  }
// acc += d * w, in double.
#define BK_SN_AXPY(NAME, T)                                                                    \
  BK_SN_CLONES void NAME(double d, const T* w, double* acc, int64_t n) {                       \
    for (int64_t c = 0; c < n; ++c) acc[c] += d * static_cast<double>(w[c]);                   \
  }

BK_SN_DOT(row_dot_f32, float)
BK_SN_DOT(row_dot_f64, double)
BK_SN_AXPY(row_axpy_f32, float)
BK_SN_AXPY(row_axpy_f64, double)

inline double row_dot(const float* w, const double* v, int64_t n) { return row_dot_f32(w, v, n); }
inline double row_dot(const double* w, const double* v, int64_t n) { return row_dot_f64(w, v, n); }
inline void row_axpy(double d, const float* w, double* acc, int64_t n) { row_axpy_f32(d, w, acc, n); }
inline void row_axpy(double d, const double* w, double* acc, int64_t n) { row_axpy_f64(d, w, acc, n); }

template <typename scalar_t>
void step_kernel(const std::vector<at::Tensor>& weights, at::TensorList us, at::TensorList vs, double eps,
                 scalar_t* sigma_out) {
  const int64_t L = static_cast<int64_t>(weights.size());
  std::vector<int64_t> in_off(L + 1, 0), out_off(L + 1, 0);
  for (int64_t l = 0; l < L; ++l) {
    in_off[l + 1] = in_off[l] + weights[l].size(1);
    out_off[l + 1] = out_off[l] + weights[l].size(0);
  }
  const int64_t total_in = in_off[L];

  // v widened once; d kept in double until it is normalised into u.
  std::vector<double> v_d(total_in), d(out_off[L]);
  for (int64_t l = 0; l < L; ++l) {
    const scalar_t* v = vs[l].const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < weights[l].size(1); ++c) v_d[in_off[l] + c] = static_cast<double>(v[c]);
  }

  // Chunks of about 32k elements: enough to amortise the task, small enough to balance.
  std::vector<Chunk> chunks;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = weights[l].size(0), in = weights[l].size(1);
    const int64_t rows = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(in, 1));
    for (int64_t r = 0; r < out; r += rows) chunks.push_back({l, r, std::min(out, r + rows)});
  }

  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  std::vector<double> partial(static_cast<size_t>(threads * total_in), 0.0);

  // Grain of 8 chunks (~256k weights): smaller problems run inline, without waking the pool.
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 8, [&](int64_t begin, int64_t end) {
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), threads - 1);
    double* acc_base = partial.data() + tid * total_in;
    for (int64_t k = begin; k < end; ++k) {
      const Chunk& ch = chunks[k];
      const at::Tensor& w_t = weights[ch.layer];
      const int64_t in = w_t.size(1), ld = w_t.stride(0);
      const scalar_t* w = w_t.const_data_ptr<scalar_t>();
      const double* v = v_d.data() + in_off[ch.layer];
      double* acc = acc_base + in_off[ch.layer];
      for (int64_t r = ch.row_begin; r < ch.row_end; ++r) {
        const scalar_t* row = w + r * ld;
        const double di = row_dot(row, v, in);
        d[out_off[ch.layer] + r] = di;
        row_axpy(di, row, acc, in);
      }
    }
  });

  // Sum the per-thread slices into slice 0.
  if (threads > 1) {
    at::parallel_for(0, total_in, int64_t{1} << 16, [&](int64_t begin, int64_t end) {
      for (int64_t t = 1; t < threads; ++t) {
        const double* src = partial.data() + t * total_in;
        for (int64_t c = begin; c < end; ++c) partial[c] += src[c];
      }
    });
  }

  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = weights[l].size(0), in = weights[l].size(1);
    const double* dl = d.data() + out_off[l];
    const double* g = partial.data() + in_off[l];
    double dd = 0, gg = 0;
    for (int64_t i = 0; i < out; ++i) dd += dl[i] * dl[i];
    for (int64_t c = 0; c < in; ++c) gg += g[c] * g[c];
    const double n = std::max(std::sqrt(dd), eps);
    const double t = std::sqrt(gg) / n;
    const double tv = std::max(t, eps);
    scalar_t* u = us[l].mutable_data_ptr<scalar_t>();
    scalar_t* v = vs[l].mutable_data_ptr<scalar_t>();
    for (int64_t i = 0; i < out; ++i) u[i] = static_cast<scalar_t>(dl[i] / n);
    const double scale = 1.0 / (n * tv);
    for (int64_t c = 0; c < in; ++c) v[c] = static_cast<scalar_t>(g[c] * scale);
    sigma_out[l] = static_cast<scalar_t>(t * t / tv);
  }
}

}  // namespace

void spectral_norm_check_inputs(at::TensorList weights, at::TensorList us, at::TensorList vs, bool cuda) {
  TORCH_CHECK(weights.size() == us.size() && us.size() == vs.size(),
              "spectral_norm_step: weights, us and vs must have one entry per layer, got ", weights.size(),
              ", ", us.size(), " and ", vs.size());
  TORCH_CHECK(!weights.empty(), "spectral_norm_step: got no layers");
  const auto dtype = weights[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "spectral_norm_step: weights must be float32 or float64, got ", dtype);
  const auto device = weights[0].device();
  for (size_t l = 0; l < weights.size(); ++l) {
    const at::Tensor &w = weights[l], &u = us[l], &v = vs[l];
    TORCH_CHECK(w.dim() == 2, "spectral_norm_step: layer ", l, ": weight must be 2D, got shape ",
                shape_str(w.sizes()));
    TORCH_CHECK(w.size(0) > 0 && w.size(1) > 0, "spectral_norm_step: layer ", l, ": empty weight ",
                shape_str(w.sizes()));
    TORCH_CHECK(w.stride(1) == 1 && w.stride(0) >= w.size(1), "spectral_norm_step: layer ", l,
                ": weight rows must have unit column stride, got strides ", shape_str(w.strides()));
    TORCH_CHECK(u.dim() == 1 && u.size(0) == w.size(0), "spectral_norm_step: layer ", l, ": u must have shape [",
                w.size(0), "], got ", shape_str(u.sizes()));
    TORCH_CHECK(v.dim() == 1 && v.size(0) == w.size(1), "spectral_norm_step: layer ", l, ": v must have shape [",
                w.size(1), "], got ", shape_str(v.sizes()));
    TORCH_CHECK(u.is_contiguous() && v.is_contiguous(), "spectral_norm_step: layer ", l,
                ": u and v must be contiguous");
    for (const at::Tensor* t : {&w, &u, &v}) {
      TORCH_CHECK(t->scalar_type() == dtype, "spectral_norm_step: layer ", l, ": dtype ", t->scalar_type(),
                  " differs from layer 0's weight dtype ", dtype);
      TORCH_CHECK(t->device() == device, "spectral_norm_step: layer ", l, ": tensor on ", t->device(),
                  " but layer 0's weight is on ", device);
    }
  }
  TORCH_CHECK(cuda ? device.is_cuda() : device.is_cpu(), "spectral_norm_step: expected ",
              cuda ? "CUDA" : "CPU", " tensors, got ", device);
}

at::Tensor spectral_norm_step_cpu(at::TensorList weights, at::TensorList us, at::TensorList vs, double eps) {
  spectral_norm_check_inputs(weights, us, vs, /*cuda=*/false);
  std::vector<at::Tensor> ws(weights.begin(), weights.end());
  at::Tensor sigma = at::empty({static_cast<int64_t>(ws.size())}, ws[0].options());
  AT_DISPATCH_FLOATING_TYPES(ws[0].scalar_type(), "spectral_norm_step_cpu", [&] {
    step_kernel<scalar_t>(ws, us, vs, eps, sigma.mutable_data_ptr<scalar_t>());
  });
  return sigma;
}

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  m.def("spectral_norm_step(Tensor[] weights, Tensor(a!)[] us, Tensor(b!)[] vs, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(brainkern, CPU, m) { m.impl("spectral_norm_step", &brainkern::spectral_norm_step_cpu); }
