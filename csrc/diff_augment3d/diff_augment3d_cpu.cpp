// CPU kernel of diff_augment3d: one pass over rows (n, c, d, h) of the output.
//
// Along a row (the W axis) the output splits into at most five runs: background
// where the source w - shift_w is outside the volume, the scaled source, background
// where the row crosses the cutout box, the scaled source again, background. The
// run bounds are worked out once per row, so the inner loops have no branches and
// read x contiguously when its W stride is 1. A row whose source (d, h) is
// outside the volume is all background.
#include "diff_augment3d/diff_augment3d.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace brainkern {
namespace {

struct Geometry {
  int64_t c, d, h, w;  // sizes of x (and y) but N
  int64_t s[5];        // strides of x
};

template <typename T, typename Acc>
void run_rows(const T* x, T* y, const Geometry& g, const int64_t* shift, const int64_t* lo, const int64_t* hi,
              const Acc* scale, Acc bg, int64_t begin, int64_t end) {
  const T fill = static_cast<T>(bg);
  for (int64_t row = begin; row < end; ++row) {
    const AugmentRow r = augment_row(row, g.c, g.d, g.h, shift, lo, hi);
    T* out = y + row * g.w;
    if (!r.valid) {
      std::fill(out, out + g.w, fill);
      continue;
    }
    const Acc s = scale[r.n];
    const Acc cst = (Acc(1) - s) * bg;
    const int64_t sw = g.s[4];
    const T* in = x + r.n * g.s[0] + r.c * g.s[1] + r.src_d * g.s[2] + r.src_h * g.s[3];
    // Valid source: a <= w < b. Cutout along this row: cl <= w < cu (empty unless the row is in the box).
    const int64_t a = std::clamp<int64_t>(r.shift_w, 0, g.w);
    const int64_t b = std::clamp<int64_t>(g.w + r.shift_w, 0, g.w);
    const bool cut = r.box_lo < r.box_hi;
    const int64_t cl = cut ? std::clamp<int64_t>(r.box_lo, 0, g.w) : b;
    const int64_t cu = cut ? std::clamp<int64_t>(r.box_hi, 0, g.w) : b;
    const int64_t m1 = std::max(a, std::min(b, cl));                // end of the first kept run
    const int64_t m2 = std::max(m1, std::min(b, std::max(a, cu)));  // start of the second
    auto scaled = [&](int64_t from, int64_t to) {
      for (int64_t w = from; w < to; ++w) {
        const Acc v = s * static_cast<Acc>(in[(w - r.shift_w) * sw]);
        out[w] = static_cast<T>(v + cst);
      }
    };
    std::fill(out, out + a, fill);
    scaled(a, m1);
    std::fill(out + m1, out + m2, fill);
    scaled(m2, b);
    std::fill(out + b, out + g.w, fill);
  }
}

template <typename T, typename Acc>
void launch_typed(const at::Tensor& x, at::Tensor& y, const at::Tensor& shift, const at::Tensor& lo,
                  const at::Tensor& hi, const at::Tensor& scale, double background) {
  Geometry g{};
  g.c = x.size(1);
  g.d = x.size(2);
  g.h = x.size(3);
  g.w = x.size(4);
  for (int d = 0; d < 5; ++d) g.s[d] = x.stride(d);
  const int64_t rows = x.size(0) * g.c * g.d * g.h;
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const int64_t* shp = shift.const_data_ptr<int64_t>();
  const int64_t* lop = lo.const_data_ptr<int64_t>();
  const int64_t* hip = hi.const_data_ptr<int64_t>();
  const Acc* sp = scale.const_data_ptr<Acc>();
  const Acc bg = static_cast<Acc>(background);
  // About 32 KiB of output per task, so small tensors run on one thread.
  const int64_t row_bytes = std::max<int64_t>(g.w * static_cast<int64_t>(sizeof(T)), 1);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / row_bytes);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    run_rows<T, Acc>(xp, yp, g, shp, lop, hip, sp, bg, begin, end);
  });
}

at::Tensor diff_augment3d_meta(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& lo,
                               const at::Tensor& hi, const at::Tensor& scale, double background) {
  diff_augment3d_check(x, shift, lo, hi, scale);
  return at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace

at::Tensor diff_augment3d_cpu(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& lo, const at::Tensor& hi,
                              const at::Tensor& scale, double background) {
  BK_CHECK_CPU(x, "diff_augment3d: x");
  diff_augment3d_check(x, shift, lo, hi, scale);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  const at::Tensor sh = shift.contiguous(), l = lo.contiguous(), u = hi.contiguous();
  const at::Tensor s = scale.to(diff_augment3d_acc_type(x)).contiguous();
  switch (x.scalar_type()) {
    case at::kFloat: launch_typed<float, float>(x, y, sh, l, u, s, background); break;
    case at::kDouble: launch_typed<double, double>(x, y, sh, l, u, s, background); break;
    case at::kHalf: launch_typed<at::Half, float>(x, y, sh, l, u, s, background); break;
    case at::kBFloat16: launch_typed<at::BFloat16, float>(x, y, sh, l, u, s, background); break;
    default: TORCH_CHECK(false, "diff_augment3d: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  m.def("diff_augment3d(Tensor x, Tensor shift, Tensor lo, Tensor hi, Tensor scale, float background) -> Tensor");
}

TORCH_LIBRARY_IMPL(brainkern, Meta, m) { m.impl("diff_augment3d", &brainkern::diff_augment3d_meta); }

TORCH_LIBRARY_IMPL(brainkern, CPU, m) { m.impl("diff_augment3d", &brainkern::diff_augment3d_cpu); }
