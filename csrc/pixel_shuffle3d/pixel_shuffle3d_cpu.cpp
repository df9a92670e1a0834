// CPU kernels of pixel_shuffle3d / pixel_unshuffle3d: one pass, any input strides.
//
// Work is split over the rows of the high-resolution tensor, (n, c, D', H') with
// D' = d*r + i and H' = h*r + j. Each such row of length r*W pairs with r rows of
// the low-resolution tensor (channels c*r^3 + i*r^2 + j*r + k, k < r, at (d, h)):
// shuffle interleaves those r rows into the contiguous output row, unshuffle
// de-interleaves an input row into r contiguous output rows. Everything one row
// touches stays in L1, and each element is read and written exactly once.
#include "pixel_shuffle3d/pixel_shuffle3d.h"

#include <ATen/Parallel.h>

#include <cstdint>

namespace brainkern {
namespace {

struct Geometry {
  int64_t rows;          // N * C * (r*D) * (r*H): high-resolution rows
  int64_t hi_d, hi_h;    // r*D, r*H
  int64_t w, r;          // low-resolution row length W and factor
  int64_t channels;      // C (high-resolution channels)
};

// Offsets of one high-resolution row and of its r low-resolution partner rows,
// in the strides of whichever of the two tensors is the (strided) input.
template <typename Word, bool kShuffle>
void run_rows(const Word* x, Word* y, const Geometry& g, const int64_t* s, int64_t begin, int64_t end) {
  const int64_t r = g.r, r3 = r * r * r, w = g.w;
  const int64_t lo_d = g.hi_d / r, lo_h = g.hi_h / r;
  // Decompose the first row once, then step the coordinates: no divisions per row
  // (rows are short, 2*W elements, so they would cost as much as the copy).
  int64_t hh = begin % g.hi_h;
  int64_t t = begin / g.hi_h;
  int64_t hd = t % g.hi_d;
  t /= g.hi_d;
  int64_t c = t % g.channels;
  int64_t n = t / g.channels;
  int64_t d = hd / r, i = hd % r, h = hh / r, j = hh % r;
  for (int64_t row = begin; row < end; ++row) {
    if (row != begin) {
      ++hh;
      if (++j == r) {
        j = 0;
        ++h;
      }
      if (hh == g.hi_h) {
        hh = h = j = 0;
        ++hd;
        if (++i == r) {
          i = 0;
          ++d;
        }
        if (hd == g.hi_d) {
          hd = d = i = 0;
          if (++c == g.channels) {
            c = 0;
            ++n;
          }
        }
      }
    }
    const int64_t lo_c0 = c * r3 + i * r * r + j * r;  // channel of k = 0
    if (kShuffle) {
      // x is the low-resolution input (strided); y the contiguous high-resolution output.
      Word* out = y + row * w * r;
      const Word* in0 = x + n * s[0] + lo_c0 * s[1] + d * s[2] + h * s[3];
      const int64_t sc = s[1], sw = s[4];
      if (r == 2 && sw == 1) {
        const Word* a = in0;
        const Word* b = in0 + sc;
        for (int64_t q = 0; q < w; ++q) {
          out[2 * q] = a[q];
          out[2 * q + 1] = b[q];
        }
      } else {
        for (int64_t k = 0; k < r; ++k) {
          const Word* in = in0 + k * sc;
          for (int64_t q = 0; q < w; ++q) out[q * r + k] = in[q * sw];
        }
      }
    } else {
      // x is the high-resolution input (strided); y the contiguous low-resolution output.
      const Word* in = x + n * s[0] + c * s[1] + hd * s[2] + hh * s[3];
      const int64_t sw = s[4];
      Word* out0 = y + (((n * g.channels * r3 + lo_c0) * lo_d + d) * lo_h + h) * w;
      const int64_t out_sc = lo_d * lo_h * w;  // next channel (k + 1) in the output
      if (r == 2 && sw == 1) {
        Word* a = out0;
        Word* b = out0 + out_sc;
        for (int64_t q = 0; q < w; ++q) {
          a[q] = in[2 * q];
          b[q] = in[2 * q + 1];
        }
      } else {
        for (int64_t k = 0; k < r; ++k) {
          Word* out = out0 + k * out_sc;
          for (int64_t q = 0; q < w; ++q) out[q] = in[(q * r + k) * sw];
        }
      }
    }
  }
}

template <bool kShuffle>
at::Tensor launch(const at::Tensor& x, int64_t r) {
  BK_CHECK_CPU(x, kShuffle ? "pixel_shuffle3d: x" : "pixel_unshuffle3d: x");
  const auto out_sizes = pixel_shuffle3d_output_sizes(x, r, kShuffle);
  at::Tensor y = at::empty(out_sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  if (r == 1) {
    // Identity: TensorIterator's strided copy already is one pass over x.
    y.copy_(x);
    return y;
  }
  const at::Tensor& hi = kShuffle ? y : x;
  Geometry g{};
  g.channels = hi.size(1);
  g.hi_d = hi.size(2);
  g.hi_h = hi.size(3);
  g.w = hi.size(4) / r;
  g.r = r;
  g.rows = hi.size(0) * g.channels * g.hi_d * g.hi_h;
  int64_t strides[5];
  for (int d = 0; d < 5; ++d) strides[d] = x.stride(d);
  // About 32 KiB of output per task, so small tensors run on one thread.
  const int64_t row_bytes = g.w * r * x.element_size();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(row_bytes, 1));
  const void* xp = x.const_data_ptr();
  void* yp = y.mutable_data_ptr();
  auto body = [&](auto word) {
    using Word = decltype(word);
    at::parallel_for(0, g.rows, grain, [&](int64_t begin, int64_t end) {
      run_rows<Word, kShuffle>(static_cast<const Word*>(xp), static_cast<Word*>(yp), g, strides, begin, end);
    });
  };
  switch (x.element_size()) {
    case 2: body(uint16_t{}); break;
    case 4: body(uint32_t{}); break;
    case 8: body(uint64_t{}); break;
    default: TORCH_CHECK(false, "pixel_shuffle3d: unsupported element size ", x.element_size());
  }
  return y;
}

// Shapes only, for tracing (torch.compile's fake tensors, the meta device).
at::Tensor shuffle_meta(const at::Tensor& x, int64_t r) {
  return at::empty(pixel_shuffle3d_output_sizes(x, r, true), x.options());
}
at::Tensor unshuffle_meta(const at::Tensor& x, int64_t r) {
  return at::empty(pixel_shuffle3d_output_sizes(x, r, false), x.options());
}

}  // namespace

at::Tensor pixel_shuffle3d_cpu(const at::Tensor& x, int64_t r) { return launch<true>(x, r); }
at::Tensor pixel_unshuffle3d_cpu(const at::Tensor& x, int64_t r) { return launch<false>(x, r); }

}  // namespace brainkern

TORCH_LIBRARY_FRAGMENT(brainkern, m) {
  m.def("pixel_shuffle3d(Tensor x, int r) -> Tensor");
  m.def("pixel_unshuffle3d(Tensor x, int r) -> Tensor");
}

TORCH_LIBRARY_IMPL(brainkern, Meta, m) {
  m.impl("pixel_shuffle3d", &brainkern::shuffle_meta);
  m.impl("pixel_unshuffle3d", &brainkern::unshuffle_meta);
}

TORCH_LIBRARY_IMPL(brainkern, CPU, m) {
  m.impl("pixel_shuffle3d", &brainkern::pixel_shuffle3d_cpu);
  m.impl("pixel_unshuffle3d", &brainkern::pixel_unshuffle3d_cpu);
}
