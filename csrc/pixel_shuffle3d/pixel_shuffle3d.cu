// CUDA kernels of pixel_shuffle3d / pixel_unshuffle3d: one coalesced pass.
//
// The contiguous output is seen as rows (its last dimension). Each row's source
// offset `base` (where its element 0 comes from in the strided input) is worked
// out once per row; element e of the row then comes from
//     base + (e / q) * a + (e % q) * b
// with, for shuffle, q = r, a = stride_W, b = stride_C (consecutive outputs walk
// the r channels k of one low-resolution voxel, then the next voxel), and, for
// unshuffle, q = 1, a = r * stride_W, b = 0. Threads of a block run along rows,
// each storing V consecutive outputs with one vector store of up to 16 bytes, so
// writes are fully coalesced and reads touch r contiguous runs per warp; the few
// re-read sectors (unshuffle reads every r-th word) come from L1.
//
// Kernels move raw words (uint16/uint32/uint64), so float16 and bfloat16 share
// the 2-byte instantiation and results are bit-exact. Indices are uint32 when every
// offset fits (unsigned: its divisions are cheaper, and every index is >= 0), else
// int64.
#include "cuda_common.h"
#include "pixel_shuffle3d/pixel_shuffle3d.h"

#include <cstdint>

namespace brainkern {
namespace {

constexpr int kThreads = 256;

template <typename Word, int V>
struct alignas(sizeof(Word) * V) Pack {
  Word v[V];
};

template <typename I>
struct Params {
  I rows;       // output rows: N * C_out * D_out * H_out
  I row_len;    // output row length W_out
  I c_out, d_out, h_out;
  I r;
  I sn, sc, sd, sh, sw;  // input strides (elements)
  I a, b;                // per-element source steps (see the file comment)
};

// Source offset of element 0 of output row `row`.
template <typename I, bool kShuffle>
__host__ __device__ __forceinline__ I row_base(I row, const Params<I>& p) {
  const I oh = row % p.h_out;
  I t = row / p.h_out;
  const I od = t % p.d_out;
  t /= p.d_out;
  const I oc = t % p.c_out;
  const I n = t / p.c_out;
  const I r = p.r;
  if (kShuffle) {
    // Output (n, c, d*r + i, h*r + j, .) reads input channel c*r^3 + i*r^2 + j*r + k.
    const I d = od / r, i = od - d * r, h = oh / r, j = oh - h * r;
    return n * p.sn + ((oc * r + i) * r + j) * r * p.sc + d * p.sd + h * p.sh;
  }
  // Output channel oc = c*r^3 + i*r^2 + j*r + k at (od, oh) reads (c, od*r + i, oh*r + j, w*r + k).
  I rest = oc;
  const I k = rest % r;
  rest /= r;
  const I j = rest % r;
  rest /= r;
  const I i = rest % r;
  const I c = rest / r;
  return n * p.sn + c * p.sc + (od * r + i) * p.sd + (oh * r + j) * p.sh + k * p.sw;
}

// The work of one thread: output rows row0, row0 + row_step, ...; in each row the
// vectors lane, lane + lanes, ... of V elements. Q: compile-time q (1 for unshuffle,
// 2 for the common shuffle by 2), or 0 to use p.r. Host-callable so that a CPU
// harness (tests/ops/test_pixel_shuffle3d.py) can check the index arithmetic.
template <typename Word, typename I, int V, int Q, bool kShuffle>
__host__ __device__ __forceinline__ void shuffle_rows(const Word* __restrict__ x, Word* __restrict__ y,
                                                      const Params<I>& p, int64_t row0, int64_t row_step,
                                                      I lane, I lanes) {
  const I q = Q > 0 ? I(Q) : p.r;
  // The row counter is int64 so that row + row_step cannot overflow an int32 I.
  for (int64_t row64 = row0; row64 < p.rows; row64 += row_step) {
    const I row = static_cast<I>(row64);
    const I base = row_base<I, kShuffle>(row, p);
    Word* out = y + row * p.row_len;
    for (I e = lane * V; e < p.row_len; e += lanes * V) {
      I w = e / q;
      I k = e - w * q;
      Pack<Word, V> pack;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        pack.v[v] = x[base + w * p.a + k * p.b];
        if (++k == q) {
          k = 0;
          ++w;
        }
      }
      // row_len % V == 0 and y is 16-byte aligned, so this store is aligned.
      *reinterpret_cast<Pack<Word, V>*>(out + e) = pack;
    }
  }
}

template <typename Word, typename I, int V, int Q, bool kShuffle>
__global__ void __launch_bounds__(kThreads)
    pixel_shuffle3d_kernel(const Word* __restrict__ x, Word* __restrict__ y, const Params<I> p) {
  shuffle_rows<Word, I, V, Q, kShuffle>(x, y, p, static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y,
                                        static_cast<int64_t>(gridDim.x) * blockDim.y,
                                        static_cast<I>(threadIdx.x), static_cast<I>(blockDim.x));
}

unsigned int next_pow2(int64_t v) {
  unsigned int p = 1;
  while (p < v && p < kThreads) p <<= 1;
  return p;
}

template <typename Word, typename I, int V, int Q, bool kShuffle>
cudaError_t launch_typed(const void* x, void* y, const Params<I>& p, cudaStream_t stream) {
  const int64_t vectors = (static_cast<int64_t>(p.row_len) + V - 1) / V;
  const unsigned int tx = next_pow2(vectors);
  const dim3 block(tx, kThreads / tx);
  const int64_t blocks = (static_cast<int64_t>(p.rows) + block.y - 1) / block.y;
  // A grid-stride loop covers rows beyond this many blocks.
  const unsigned int grid = static_cast<unsigned int>(blocks < (int64_t{1} << 22) ? blocks : (int64_t{1} << 22));
  pixel_shuffle3d_kernel<Word, I, V, Q, kShuffle>
      <<<grid, block, 0, stream>>>(static_cast<const Word*>(x), static_cast<Word*>(y), p);
  return last_launch_error();
}

template <typename Word, typename I, int V>
cudaError_t launch_q(const void* x, void* y, const Params<I>& p, bool shuffle, cudaStream_t stream) {
  if (!shuffle) return launch_typed<Word, I, V, 1, false>(x, y, p, stream);
  if (p.r == 2) return launch_typed<Word, I, V, 2, true>(x, y, p, stream);
  return launch_typed<Word, I, V, 0, true>(x, y, p, stream);
}

// The widest vector (at most 16 bytes) that divides the row length.
template <typename Word, typename I>
cudaError_t launch_v(const void* x, void* y, const Params<I>& p, bool shuffle, cudaStream_t stream) {
  constexpr int kMax = 16 / sizeof(Word);
  const bool aligned = reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if (aligned && p.row_len % kMax == 0) return launch_q<Word, I, kMax>(x, y, p, shuffle, stream);
  if constexpr (kMax >= 4) {
    if (aligned && p.row_len % (kMax / 2) == 0) return launch_q<Word, I, kMax / 2>(x, y, p, shuffle, stream);
  }
  if constexpr (kMax >= 8) {
    if (aligned && p.row_len % (kMax / 4) == 0) return launch_q<Word, I, kMax / 4>(x, y, p, shuffle, stream);
  }
  return launch_q<Word, I, 1>(x, y, p, shuffle, stream);
}

template <typename I>
Params<I> make_params(bool shuffle, int64_t r, const int64_t sizes[5], const int64_t strides[5]) {
  int64_t c_out, d_out, h_out, w_out;
  if (shuffle) {
    c_out = sizes[1] / (r * r * r);
    d_out = sizes[2] * r;
    h_out = sizes[3] * r;
    w_out = sizes[4] * r;
  } else {
    c_out = sizes[1] * r * r * r;
    d_out = sizes[2] / r;
    h_out = sizes[3] / r;
    w_out = sizes[4] / r;
  }
  Params<I> p;
  p.rows = static_cast<I>(sizes[0] * c_out * d_out * h_out);
  p.row_len = static_cast<I>(w_out);
  p.c_out = static_cast<I>(c_out);
  p.d_out = static_cast<I>(d_out);
  p.h_out = static_cast<I>(h_out);
  p.r = static_cast<I>(r);
  p.sn = static_cast<I>(strides[0]);
  p.sc = static_cast<I>(strides[1]);
  p.sd = static_cast<I>(strides[2]);
  p.sh = static_cast<I>(strides[3]);
  p.sw = static_cast<I>(strides[4]);
  p.a = static_cast<I>(shuffle ? strides[4] : r * strides[4]);
  p.b = static_cast<I>(shuffle ? strides[1] : 0);
  return p;
}

template <typename Word>
cudaError_t launch_word(const void* x, void* y, bool shuffle, int64_t r, const int64_t sizes[5],
                        const int64_t strides[5], cudaStream_t stream) {
  int64_t numel = 1, span = 1;  // span: one past the largest input offset
  for (int d = 0; d < 5; ++d) {
    numel *= sizes[d];
    span += (sizes[d] - 1) * strides[d];
  }
  // Slack for the thread that steps one block width past the end of a row.
  const int64_t limit = (int64_t{1} << 31) - 1 - 16 * kThreads;
  if (numel < limit && span < limit) {
    return launch_v<Word, uint32_t>(x, y, make_params<uint32_t>(shuffle, r, sizes, strides), shuffle, stream);
  }
  return launch_v<Word, int64_t>(x, y, make_params<int64_t>(shuffle, r, sizes, strides), shuffle, stream);
}

}  // namespace

cudaError_t pixel_shuffle3d_launch(const void* x, void* y, int element_size, bool shuffle, int64_t r,
                                   const int64_t sizes[5], const int64_t strides[5], cudaStream_t stream) {
  for (int d = 0; d < 5; ++d) {
    if (sizes[d] == 0) return cudaSuccess;
  }
  if (r < 1) return cudaErrorInvalidValue;
  switch (element_size) {
    case 2: return launch_word<uint16_t>(x, y, shuffle, r, sizes, strides, stream);
    case 4: return launch_word<uint32_t>(x, y, shuffle, r, sizes, strides, stream);
    case 8: return launch_word<uint64_t>(x, y, shuffle, r, sizes, strides, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace brainkern
