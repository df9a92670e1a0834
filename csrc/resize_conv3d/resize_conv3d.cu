// CUDA kernels of resize_conv3d (shapes, weight layouts and which layers run where: see
// resize_conv3d.h). Torch-free: raw pointers, sizes as int64, launchers on a given stream.
//
// "gemm" kernels (forward, and the input gradient): one block of 256 threads computes a BM x BN
// tile of the GEMM (rows: low-resolution voxels; columns: output channels, or input channels for
// the gradient) for one phase (blockIdx.z; the gradient sums all 64 (phase, tap) pairs in its K).
// Tensor-core tiles are 128 x 32, 128 x 64 or 64 x 128 (32 fp32 accumulators per thread each),
// SIMT tiles 128 x 64. K is staged through shared memory in chunks of 64 bytes per row (32
// halves, 16 floats, 8 doubles), double-buffered, one __syncthreads per chunk:
//   B tile (weights, a padded layout the wrapper makes): [BK][BN + pad], 16-byte cp.async copies
//     straight into shared memory, coalesced and free of bounds checks.
//   A tile (x, or g = grad_y * act'(y)): [BK][BM + pad], voxels contiguous. Thread t stages voxel
//     t % BM for the K rows t / BM + (256 / BM) j, so a warp reads 32 consecutive voxels of one
//     channel (consecutive addresses away from the volume's edges). The voxel index is divided
//     and the neighbour masks worked out once per block; per staged element there is a
//     predicate, a 64-bit pointer step and a load. Staging is split: fetch() issues chunk c + 1's
//     loads into registers before chunk c's MMAs, finish() (act', rounding, writing g) runs after
//     them, so the loads' latency overlaps the tensor-core work.
//   K is padded per tap (per (phase, tap) pair for the gradient) to a multiple of 32, so every
//     chunk lies inside one tap: the tap's offset is worked out once per chunk.
//   Math: wmma 16x16x16 (fp16, bf16) or 16x16x8 (TF32) fragments, fp32 accumulation, 8 warps of
//     32 rows x BN / (8 / (BM / 32)) columns; or SIMT FMAs, 8 x 4 outputs per thread.
//   Epilogue: the forward adds the bias, applies the activation and writes y (and the bool mask
//     y > 0 the backward keeps) straight into the interleaved output (2d+a, 2h+b, 2w+c); the
//     accumulators go through a 1 KiB per-warp scratch because a wmma fragment's element layout
//     is unspecified. The gradient's epilogue writes grad_x.
// "small" kernels (C_out < 16): one thread per low-resolution voxel. Forward: the 27 neighbours
// of each input channel in registers, every phase of up to 4 output channels accumulated from
// them (1 for C_out = 1). Input gradient: the 4x4x4 stencil of g, a 4x4 slab at a time, against 8
// input channels; g's central 2x2x2 is this voxel's own, written once.
//
// Index math: per-sample and per-channel offsets (which pass 2^31 at 256^3) are int64 and formed
// once per block, chunk or channel; offsets inside a neighbourhood are int32 (the launchers check
// the planes are small enough). There is no 2^31 limit on the tensors (up to 2^50 voxels).
//
// Registers (ptxas -v, sm_90 and sm_80): at most 128 in every gemm kernel (two blocks per SM,
// 30-44 KiB of shared memory each), 150 in the small ones, no spills, no stack.
//
// The per-thread pieces (ThreadStage and what it calls, the fragment origins, the epilogue, the
// small kernels' bodies) are __host__ __device__: tests/ops/test_resize_conv3d_cuda_src.py
// compiles them into a host program that runs the grid on the CPU, since CI has no GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cuda_common.h"
#include "resize_conv3d/resize_conv3d.h"

namespace brainkern {
namespace resize_conv3d_detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSmallOut = static_cast<int>(kResizeConv3dSmallOut);
constexpr int kSmallIn = static_cast<int>(kResizeConv3dSmallIn);

template <typename T>
using Acc = typename resize_conv3d_acc<T>::type;

// ----------------------------------------------------------------- conversions, activation

__host__ __device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
__host__ __device__ __forceinline__ float widen(float v) { return v; }
__host__ __device__ __forceinline__ double widen(double v) { return v; }

template <typename T>
__host__ __device__ __forceinline__ T narrow(Acc<T> v) {
  return v;
}
template <>
__host__ __device__ __forceinline__ __half narrow<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__host__ __device__ __forceinline__ float tanh_acc(float v) { return tanhf(v); }
__host__ __device__ __forceinline__ double tanh_acc(double v) { return tanh(v); }

template <typename A>
__host__ __device__ __forceinline__ A activate(A v, int act, A slope) {
  switch (act) {
    case 1:
      return (v > A(0) || v != v) ? v : A(0);  // NaN passes through, as torch's relu
    case 2:
      return v > A(0) ? v : v * slope;
    case 3:
      return tanh_acc(v);
    default:
      return v;
  }
}

// grad_y * act'(y); pos = (y > 0) from the saved mask for relu / leaky_relu, y itself for tanh.
// Same formulas as ATen's threshold / leaky_relu / tanh backward, in the accumulation type.
template <typename A>
__host__ __device__ __forceinline__ A act_grad(A gy, int act, A slope, bool pos, A y) {
  switch (act) {
    case 1:
      return pos ? gy : A(0);
    case 2:
      return pos ? gy : gy * slope;
    case 3:
      return gy * (A(1) - y * y);
    default:
      return gy;
  }
}

// float -> TF32 (round to nearest, ties away; what wmma::__float_to_tf32 does), kept in a float.
__host__ __device__ __forceinline__ float round_tf32(float v) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  return nvcuda::wmma::__float_to_tf32(v);
#else
  return v;  // no TF32 before sm_80; the launchers never pick it there
#endif
#else
  unsigned bits;
  memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;  // inf / NaN as they are
  memcpy(&v, &bits, sizeof(bits));
  return v;
#endif
}

__host__ __device__ __forceinline__ unsigned round_tf32_bits(unsigned b) {
  float f;
  memcpy(&f, &b, sizeof(f));
  f = round_tf32(f);
  memcpy(&b, &f, sizeof(f));
  return b;
}

// Eight consecutive weights (16-byte aligned) with vector loads.
__host__ __device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__host__ __device__ __forceinline__ void load8(const double* p, double (&v)[8]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const double2 a = reinterpret_cast<const double2*>(p)[q];
    v[2 * q] = a.x, v[2 * q + 1] = a.y;
  }
}

// a / b and a % b for 0 <= a < 2^50 and b > 0 without a 64-bit integer division, which on the GPU
// is a subroutine call (whose calling convention made ptxas spill). The double estimate
// a * (1 / b) is within a / b * 2^-51 of a / b, so its floor is off by at most one; one integer
// step corrects it. (Below 2^50 the estimate never reaches the next integer, only the upward
// step ever runs; the downward one guards the bound.)
struct DivMod {
  int64_t b;
  double inv;
  __host__ __device__ int64_t div(int64_t a, int64_t& rem) const {
    int64_t q = static_cast<int64_t>(static_cast<double>(a) * inv);
    rem = a - q * b;
    if (rem < 0) {
      --q, rem += b;
    } else if (rem >= b) {
      ++q, rem -= b;
    }
    return q;
  }
};
constexpr int64_t kMaxVoxels = int64_t(1) << 50;

inline DivMod make_divmod(int64_t b) { return DivMod{b, 1.0 / static_cast<double>(b > 0 ? b : 1)}; }

// Voxel index m -> (n, s = offset inside the sample, d, h, w) of a D x H x W grid.
struct Voxel {
  int64_t n, s, d, h, w;
};
struct Grid {
  DivMod dhw, hw, w;
  __host__ __device__ Voxel voxel(int64_t m) const {
    Voxel v;
    int64_t r;
    v.n = dhw.div(m, v.s);
    v.d = hw.div(v.s, r);
    v.h = w.div(r, v.w);
    return v;
  }
};

// The low-resolution grid every problem below works on: M = N*D*H*W GEMM rows / threads.
struct Dims {
  Grid grid;
  int64_t m_total, dhw, hw, dd, hh, ww;
};
inline Dims make_dims(int64_t n, int64_t d, int64_t h, int64_t w) {
  const Grid grid{make_divmod(d * h * w), make_divmod(h * w), make_divmod(w)};
  return Dims{grid, n * d * h * w, d * h * w, h * w, d, h, w};
}

// ----------------------------------------------------------------- gemm tiles

// A block's tile: BM rows (voxels) x BN columns, K staged BK rows at a time. Tensor-core tiles
// are 128 x 32, 128 x 64 or 64 x 128: 32 fp32 accumulators per thread in each, which keeps the
// kernels within 128 registers (two blocks per SM) without spills.
template <typename T, int BM_, int BN_>
struct Tile {
  static constexpr int BM = BM_, BN = BN_;
  static constexpr int BK = 64 / static_cast<int>(sizeof(T));   // K rows per chunk: 64 bytes each
  static constexpr int PAD = 16 / static_cast<int>(sizeof(T));  // 16 bytes: rows stay 16-byte aligned
                                                                 // and successive rows shift 4 banks
  static constexpr int LDA = BM + PAD, LDB = BN + PAD;
  static constexpr int VEC = 16 / static_cast<int>(sizeof(T));       // weights per 16-byte copy
  static constexpr int A_STEP = kThreads / BM;                        // threads per voxel row
  static constexpr int A_REGS = BK / A_STEP;                          // staged A elements per thread
  static constexpr int B_VECS = BK * BN / VEC;                        // 16-byte copies per chunk
  static constexpr int B_COPIES = (B_VECS + kThreads - 1) / kThreads;  // ... per thread
  static_assert(kThreads % BM == 0 && BK % A_STEP == 0, "A staging must cover the tile exactly");
  static_assert(kResizeConv3dPadK % BK == 0, "a K chunk must lie inside one tap");
  static_assert(kResizeConv3dPadN % BN == 0 && BN % VEC == 0, "column tiles must be whole vectors");
};

// Raw bits of a value, to carry either a mask byte or y through one register.
template <typename U, typename V>
__host__ __device__ __forceinline__ U bits_as(V v) {
  static_assert(sizeof(U) >= sizeof(V), "bits_as widens only");
  U u = 0;
  memcpy(&u, &v, sizeof(V));
  return u;
}
template <typename V, typename U>
__host__ __device__ __forceinline__ V value_of(U u) {
  V v;
  memcpy(&v, &u, sizeof(V));
  return v;
}

// A-tile staging is split in two so that the global loads of chunk c + 1 are in flight while
// chunk c is multiplied: fetch() only issues loads (zero where outside the volume or past C_in),
// finish(), after the MMAs, turns the loaded values into the tile's elements.

// Forward GEMM of one phase p = blockIdx.z: C[m, o] = sum over (tap, i) of x[m shifted by the tap, i]
// * wt[p, tap, i, o].
template <typename T>
struct FwdGemm : Dims {
  using Elem = T;
  using A = Acc<T>;
  const T* x;
  const T* wt;  // (8, 8, k_rows, n_pad)
  const T* bias;
  T* y;
  uint8_t* mask;
  int64_t x_n_stride, y_n_stride, y_c_stride;
  int c_in, c_out, k_rows, n_pad, act;
  A slope;

  __host__ __device__ int chunks(int bk) const { return 8 * k_rows / bk; }
  __host__ __device__ int64_t b_row0(int phase) const { return int64_t(phase) * 8 * k_rows; }

  // The staging thread's voxel: offset of x[n, 0, d, h, w], and a bit per tap whose voxel is inside.
  struct Row {
    int64_t base;
    unsigned taps;
  };
  __host__ __device__ Row row(int64_t m, int phase) const {
    Row r{0, 0u};
    if (m >= m_total) return r;
    const Voxel v = grid.voxel(m);
    r.base = v.n * x_n_stride + v.s;
    for (int tap = 0; tap < 8; ++tap) {
      const int64_t id = v.d + (phase >> 2) - 1 + (tap >> 2), ih = v.h + ((phase >> 1) & 1) - 1 + ((tap >> 1) & 1),
                    iw = v.w + (phase & 1) - 1 + (tap & 1);
      if (id >= 0 && id < dd && ih >= 0 && ih < hh && iw >= 0 && iw < ww) r.taps |= 1u << tap;
    }
    return r;
  }

  // Offset of y[n, 0, 2d+a, 2h+b, 2w+c] for GEMM row m, or -1 past the end.
  __host__ __device__ int64_t out_base(int64_t m, int phase) const {
    if (m >= m_total) return -1;
    const Voxel v = grid.voxel(m);
    return v.n * y_n_stride + ((2 * v.d + (phase >> 2)) * 2 * hh + 2 * v.h + ((phase >> 1) & 1)) * 2 * ww + 2 * v.w +
           (phase & 1);
  }

  template <int N>
  struct Fetched {
    T v[N];
  };

  // Channels i0 + kA0 + STEP j of the one tap the chunk starting at K row k0 covers.
  template <int STEP, int N>
  __host__ __device__ void fetch(const Row& r, int phase, int k0, int kA0, Fetched<N>& f) const {
    const int tap = k0 / k_rows;
    const int i0 = k0 - tap * k_rows + kA0;
    const bool ok = (r.taps >> tap) & 1u;
    // Offset of the tap's voxel from the output voxel: -1, 0 or +1 per axis.
    const int od = (phase >> 2) - 1 + (tap >> 2), oh = ((phase >> 1) & 1) - 1 + ((tap >> 1) & 1),
              ow = (phase & 1) - 1 + (tap & 1);
    const int delta = static_cast<int>(od * hw + oh * ww + ow);
    const T* src = ok ? x + (r.base + delta + int64_t(i0) * dhw) : x;
    const int left = ok ? c_in - i0 : 0;  // channel i0 + STEP j exists while STEP j < left
#pragma unroll
    for (int j = 0; j < N; ++j) f.v[j] = STEP * j < left ? src[STEP * j * dhw] : narrow<T>(A(0));
  }

  template <int STEP, int N>
  __host__ __device__ void finish(const Fetched<N>& f, const Row&, int, int, int, bool, T (&v)[N]) const {
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] = f.v[j];
  }

  __host__ __device__ void store(int64_t rowbase, int col, A acc) const {
    if (rowbase < 0 || col >= c_out) return;
    if (bias) acc += widen(bias[col]);
    const T out = narrow<T>(activate(acc, act, slope));
    const int64_t e = rowbase + col * y_c_stride;
    y[e] = out;
    // Read back from the rounded output, so the mask is exactly torch's y > 0.
    if (mask) mask[e] = widen(out) > A(0) ? 1 : 0;
  }
};

// Input-gradient GEMM: C[m, i] = sum over (phase, tap, o) of g[n, o, 2 s + phase] * wt[phase, tap, o, i]
// with s = (d, h, w) - phase + 1 - tap per axis; g = grad_y * act'(y) formed while staging.
template <typename T>
struct BwdGemm : Dims {
  using Elem = T;
  using A = Acc<T>;
  using Aux = typename std::conditional<sizeof(T) <= 4, uint32_t, uint64_t>::type;  // a mask byte or y
  const T* gy;
  const uint8_t* mask;
  const T* yv;
  const T* wt;  // (8, 8, k_rows, n_pad)
  T* gx;
  T* g;
  int64_t g_n_stride, g_c_stride, gx_n_stride;
  int c_in, c_out, k_rows, n_pad, act;
  A slope;

  __host__ __device__ int chunks(int bk) const { return 64 * k_rows / bk; }
  __host__ __device__ int64_t b_row0(int /*z*/) const { return 0; }

  struct Row {
    int64_t gbase;  // offset of grad_y[n, 0, 0, 0, 0]
    int d, h, w;
    bool ok;
  };
  __host__ __device__ Row row(int64_t m, int /*z*/) const {
    Row r{0, 0, 0, 0, false};
    if (m >= m_total) return r;
    const Voxel v = grid.voxel(m);
    r = Row{v.n * g_n_stride, static_cast<int>(v.d), static_cast<int>(v.h), static_cast<int>(v.w), true};
    return r;
  }

  __host__ __device__ int64_t out_base(int64_t m, int /*z*/) const {
    if (m >= m_total) return -1;
    const Voxel v = grid.voxel(m);
    return v.n * gx_n_stride + v.s;
  }

  // Where the chunk starting at K row k0 reads: the offset of its first element for this thread,
  // and how many of the thread's channels o0 + STEP j exist there (0 outside the volume).
  struct Span {
    int64_t e0;
    int left;
    bool own;  // the (phase, tap) pair is each element's own one: tap = 1 - phase per axis, so
               // s is the voxel itself; every element of g is staged under its own pair once
  };
  __host__ __device__ Span span(const Row& r, int k0, int kA0) const {
    const int pt = k0 / k_rows;
    const int o0 = k0 - pt * k_rows + kA0;
    const int phase = pt >> 3, tap = pt & 7;
    const int pa = phase >> 2, pb = (phase >> 1) & 1, pc = phase & 1;
    const int sd = r.d - pa + 1 - (tap >> 2), sh = r.h - pb + 1 - ((tap >> 1) & 1), sw = r.w - pc + 1 - (tap & 1);
    const bool ok = r.ok && sd >= 0 && sd < dd && sh >= 0 && sh < hh && sw >= 0 && sw < ww;
    Span s;
    s.left = ok ? c_out - o0 : 0;
    s.e0 = r.gbase + int64_t(o0) * g_c_stride + ((2 * sd + pa) * 2 * hh + 2 * sh + pb) * 2 * ww + 2 * sw + pc;
    s.own = tap == 7 - phase;
    return s;
  }

  template <int N>
  struct Fetched {
    T gy[N];
    Aux aux[N];
  };

  template <int STEP, int N>
  __host__ __device__ void fetch(const Row& r, int, int k0, int kA0, Fetched<N>& f) const {
    const Span s = span(r, k0, kA0);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool in = STEP * j < s.left;
      const int64_t e = s.e0 + STEP * j * g_c_stride;
      f.gy[j] = in ? gy[e] : narrow<T>(A(0));
      f.aux[j] = !in ? Aux(0) : mask != nullptr ? Aux(mask[e]) : yv != nullptr ? bits_as<Aux>(yv[e]) : Aux(0);
    }
  }

  // g = grad_y * act'(y), rounded to T once (as ATen's activation backward); zeros stay zeros.
  // The block of the first column tile writes g out under each element's own pair.
  template <int STEP, int N>
  __host__ __device__ void finish(const Fetched<N>& f, const Row& r, int, int k0, int kA0, bool first_col_tile,
                                  T (&v)[N]) const {
    const Span s = span(r, k0, kA0);
    const bool write = g != nullptr && first_col_tile && s.own;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool pos = f.aux[j] != 0;
      const A yj = yv != nullptr ? widen(value_of<T>(f.aux[j])) : A(0);
      v[j] = narrow<T>(act_grad(widen(f.gy[j]), act, slope, pos, yj));
      if (write && STEP * j < s.left) g[s.e0 + STEP * j * g_c_stride] = v[j];
    }
  }

  __host__ __device__ void store(int64_t rowbase, int col, A acc) const {
    if (rowbase >= 0 && col < c_in) gx[rowbase + col * dhw] = narrow<T>(acc);
  }
};

template <class Cfg, bool kTf32, typename T>
__host__ __device__ __forceinline__ void store_a(T (*as)[Cfg::LDA], const T (&v)[Cfg::A_REGS], int mA, int kA0) {
#pragma unroll
  for (int j = 0; j < Cfg::A_REGS; ++j) {
    if constexpr (kTf32) {
      as[kA0 + Cfg::A_STEP * j][mA] = round_tf32(v[j]);
    } else {
      as[kA0 + Cfg::A_STEP * j][mA] = v[j];
    }
  }
}

// The weight tile of one chunk, [BK][BN] of the padded layout, by 16-byte asynchronous copies
// (cp.async) straight into shared memory: no staging registers, no bounds checks (the layout is
// padded to whole tiles). The host harness copies at once.
template <class Cfg, typename T>
__host__ __device__ __forceinline__ void copy_b(T (*bs)[Cfg::LDB], const T* wt, int64_t row0, int n_pad, int col0,
                                                int tid) {
#pragma unroll
  for (int q = 0; q < Cfg::B_COPIES; ++q) {
    const int vi = tid + q * kThreads;
    if (vi < Cfg::B_VECS) {
      const int k = vi / (Cfg::BN / Cfg::VEC), c = vi % (Cfg::BN / Cfg::VEC) * Cfg::VEC;
      const T* src = wt + (row0 + k) * n_pad + col0 + c;
#if defined(__CUDA_ARCH__)
      __pipeline_memcpy_async(&bs[k][c], src, 16);
#else
      memcpy(&bs[k][c], src, 16);
#endif
    }
  }
#if defined(__CUDA_ARCH__)
  __pipeline_commit();
#endif
}

// Waits for this thread's copies; a __syncthreads after it makes every thread's visible.
__host__ __device__ __forceinline__ void copies_done() {
#if defined(__CUDA_ARCH__)
  __pipeline_wait_prior(0);
#endif
}

// Tensor-core math: 8 warps as (BM / 32) x (8 / (BM / 32)), each a 32-row block of 16x16 fragments.
template <typename T, int BM, int BN>
struct MmaMath {
  using Cfg = Tile<T, BM, BN>;
  static constexpr bool kTf32 = std::is_same<T, float>::value;
  static constexpr bool kScratch = true;
  static constexpr int KSTEP = kTf32 ? 8 : 16;
  static constexpr int WARPS_M = BM / 32, WARPS_N = kWarps / WARPS_M;
  static constexpr int WM = 32, WN = BN / WARPS_N;
  static constexpr int FM = WM / 16, FN = WN / 16;
  static_assert(WARPS_M * WARPS_N == kWarps && FN >= 1 && WN % 16 == 0 && Cfg::BK % KSTEP == 0, "fragment tiling");

  __host__ __device__ static int warp_row(int warp) { return warp % WARPS_M * WM; }
  __host__ __device__ static int warp_col(int warp) { return warp / WARPS_M * WN; }
  // Fragment origins: A column-major (voxels contiguous, leading dimension LDA), B row-major (LDB).
  // Both are 32-byte aligned: kk is a multiple of 8 (16 for halves), LDA / LDB are 16-byte
  // multiples, so kk * LD * sizeof(T) is a multiple of 32 bytes, and the column offsets are
  // multiples of 16 elements.
  __host__ __device__ static const T* a_frag(const T (*as)[Cfg::LDA], int warp, int i, int kk) {
    return &as[kk][warp_row(warp) + 16 * i];
  }
  __host__ __device__ static const T* b_frag(const T (*bs)[Cfg::LDB], int warp, int j, int kk) {
    return &bs[kk][warp_col(warp) + 16 * j];
  }
  // Element idx (0..255) of fragment (i, j), stored column-major in the warp's scratch
  // (element (r, c) at s[r + 16 c]): lanes take consecutive rows (voxels) of one column.
  template <class P>
  __host__ __device__ static void epi_element(const P& p, const int64_t* rows, const float* s, int warp, int i, int j,
                                              int idx, int col0) {
    const int r = idx & 15, c = idx >> 4;
    p.store(rows[warp_row(warp) + 16 * i + r], col0 + warp_col(warp) + 16 * j + c, s[idx]);
  }

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using InT = typename std::conditional<kTf32, nvcuda::wmma::precision::tf32, T>::type;
  struct Accum {
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, KSTEP, float> f[FM][FN];
  };
  __device__ static void zero(Accum& acc) {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc.f[i][j], 0.0f);
  }
  __device__ static void mac(const T (*as)[Cfg::LDA], const T (*bs)[Cfg::LDB], Accum& acc, int tid) {
    namespace wmma = nvcuda::wmma;
    const int warp = tid / 32;
#pragma unroll
    for (int kk = 0; kk < Cfg::BK; kk += KSTEP) {
      wmma::fragment<wmma::matrix_a, 16, 16, KSTEP, InT, wmma::col_major> a[FM];
#pragma unroll
      for (int i = 0; i < FM; ++i) wmma::load_matrix_sync(a[i], a_frag(as, warp, i, kk), Cfg::LDA);
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, KSTEP, InT, wmma::row_major> b;
        wmma::load_matrix_sync(b, b_frag(bs, warp, j, kk), Cfg::LDB);
        if constexpr (kTf32) {
          // The weights reach shared memory by cp.async, unconverted: round them here.
#pragma unroll
          for (int t = 0; t < b.num_elements; ++t) b.x[t] = round_tf32(b.x[t]);
        }
#pragma unroll
        for (int i = 0; i < FM; ++i) wmma::mma_sync(acc.f[i][j], a[i], b, acc.f[i][j]);
      }
    }
  }
  template <class P>
  __device__ static void epilogue(const P& p, const int64_t* rows, Accum& acc, int col0, int tid,
                                  float (*scratch)[256]) {
    const int warp = tid / 32, lane = tid % 32;
    float* s = scratch[warp];
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        nvcuda::wmma::store_matrix_sync(s, acc.f[i][j], 16, nvcuda::wmma::mem_col_major);
        __syncwarp();
#pragma unroll
        for (int e = 0; e < 8; ++e) epi_element(p, rows, s, warp, i, j, lane + 32 * e, col0);
        __syncwarp();  // the next fragment overwrites the scratch
      }
  }
#else
  struct Accum {};
  __device__ static void zero(Accum&) {}
  __device__ static void mac(const T (*)[Cfg::LDA], const T (*)[Cfg::LDB], Accum&, int) { __trap(); }
  template <class P>
  __device__ static void epilogue(const P&, const int64_t*, Accum&, int, int, float (*)[256]) {}
#endif
};

// SIMT math (float without TF32, double): 16 x 16 threads, each 8 voxels x 4 columns of a 128 x 64 tile.
template <typename T>
struct SimtMath {
  using Cfg = Tile<T, 128, 64>;
  static constexpr bool kTf32 = false;
  static constexpr bool kScratch = false;
  static constexpr int TX = 16, TY = kThreads / TX, RM = Cfg::BM / TX, RN = Cfg::BN / TY;
  struct Accum {
    T v[RM][RN];
  };
  __host__ __device__ static void zero(Accum& acc) {
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) acc.v[i][j] = T(0);
  }
  __host__ __device__ static void mac(const T (*as)[Cfg::LDA], const T (*bs)[Cfg::LDB], Accum& acc, int tid) {
    const int tx = tid % TX, ty = tid / TX;
#pragma unroll 4
    for (int k = 0; k < Cfg::BK; ++k) {
      T a[RM], b[RN];
#pragma unroll
      for (int i = 0; i < RM; ++i) a[i] = as[k][tx + TX * i];
#pragma unroll
      for (int j = 0; j < RN; ++j) b[j] = bs[k][ty + TY * j];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) acc.v[i][j] += a[i] * b[j];
    }
  }
  template <class P>
  __host__ __device__ static void epilogue(const P& p, const int64_t* rows, Accum& acc, int col0, int tid,
                                           float (*)[256]) {
    const int tx = tid % TX, ty = tid / TX;
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < RN; ++j) p.store(rows[tx + TX * i], col0 + ty + TY * j, acc.v[i][j]);
  }
};

// One thread's part of a block's staging: its A row, the loads in flight, the chunk steps.
// The kernel and the host harness both drive the block through these calls.
template <class P, class Cfg, bool kTf32>
struct ThreadStage {
  using T = typename P::Elem;
  static constexpr int BM = Cfg::BM, STEP = Cfg::A_STEP;
  int tid, z, col0, mA, kA0;
  int64_t brow;
  bool first_col_tile;
  typename P::Row row;
  typename P::template Fetched<Cfg::A_REGS> fetched;
  T ra[Cfg::A_REGS];

  // Block (bx, by, z): also writes this thread's output row base (rows[] has BM entries).
  __host__ __device__ ThreadStage(const P& p, int64_t bx, int by, int z_, int tid_, int64_t* rows)
      : tid(tid_), z(z_), col0(by * Cfg::BN), mA(tid_ % BM), kA0(tid_ / BM), brow(p.b_row0(z_)),
        first_col_tile(by == 0) {
    const int64_t m0 = bx * BM;
    row = p.row(m0 + mA, z);
    if (tid < BM) rows[tid] = p.out_base(m0 + tid, z);
  }
  // Chunk c's weights into a B buffer (asynchronous on the GPU).
  __host__ __device__ void copy(const P& p, int c, T (*bs)[Cfg::LDB]) const {
    copy_b<Cfg>(bs, p.wt, brow + int64_t(c) * Cfg::BK, p.n_pad, col0, tid);
  }
  // Chunk c's A loads into registers.
  __host__ __device__ void fetch(const P& p, int c) { p.template fetch<STEP>(row, z, c * Cfg::BK, kA0, fetched); }
  // ... made tile elements and stored into an A buffer.
  __host__ __device__ void finish(const P& p, int c, T (*as)[Cfg::LDA]) {
    p.template finish<STEP>(fetched, row, z, c * Cfg::BK, kA0, first_col_tile, ra);
    store_a<Cfg, kTf32>(as, ra, mA, kA0);
  }
};

// grid: (ceil(M / BM), ceil(columns / BN), 8 phases for the forward or 1 for the gradient).
template <class P, class Math>
__global__ void __launch_bounds__(kThreads, 2) gemm_kernel(const P p) {
  using T = typename P::Elem;
  using Cfg = typename Math::Cfg;
  __shared__ __align__(128) T as[2][Cfg::BK][Cfg::LDA];
  __shared__ __align__(128) T bs[2][Cfg::BK][Cfg::LDB];
  __shared__ __align__(128) float scratch[Math::kScratch ? kWarps : 1][256];
  __shared__ int64_t rows[Cfg::BM];

  const int tid = static_cast<int>(threadIdx.x);
  ThreadStage<P, Cfg, Math::kTf32> st(p, blockIdx.x, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z), tid,
                                      rows);
  const int chunks = p.chunks(Cfg::BK);  // >= 1: K is padded to at least one chunk
  st.copy(p, 0, bs[0]);
  st.fetch(p, 0);
  st.finish(p, 0, as[0]);
  copies_done();
  __syncthreads();  // also publishes rows[]

  typename Math::Accum acc;
  Math::zero(acc);
  for (int c = 0; c + 1 < chunks; ++c) {
    const int cur = c & 1;
    // Buffers cur ^ 1 were last read in iteration c - 1, which every warp has left (the barrier
    // below), so they are refilled while buffers cur are multiplied: the weights by cp.async, the
    // A elements through registers, their loads in flight during the MMAs.
    st.copy(p, c + 1, bs[cur ^ 1]);
    st.fetch(p, c + 1);
    Math::mac(as[cur], bs[cur], acc, tid);
    st.finish(p, c + 1, as[cur ^ 1]);
    copies_done();
    __syncthreads();
  }
  Math::mac(as[(chunks - 1) & 1], bs[(chunks - 1) & 1], acc, tid);
  Math::epilogue(p, rows, acc, st.col0, tid, scratch);  // scratch and rows[] are not the tiles: no barrier
}

// ----------------------------------------------------------------- small kernels (C_out < 16)

template <typename T>
struct FwdSmall : Dims {
  using A = Acc<T>;
  const T* x;
  const A* wt;  // (C_in, o_pad, 8, 8)
  const T* bias;
  T* y;
  uint8_t* mask;
  int64_t x_n_stride, y_n_stride, y_c_stride;
  int c_in, c_out, o_pad, act;
  A slope;

  // Every phase of output channels o0 .. o0 + NO - 1 at low-resolution voxel m.
  template <int NO>
  __host__ __device__ void run(int64_t m, int o0) const {
    if (m >= m_total) return;
    const Voxel v = grid.voxel(m);
    // Bit k: neighbour k - 1 is inside the volume, per axis.
    const unsigned in_d = 2u | (v.d > 0 ? 1u : 0u) | (v.d + 1 < dd ? 4u : 0u),
                   in_h = 2u | (v.h > 0 ? 1u : 0u) | (v.h + 1 < hh ? 4u : 0u),
                   in_w = 2u | (v.w > 0 ? 1u : 0u) | (v.w + 1 < ww ? 4u : 0u);
    const int plane = static_cast<int>(hw), line = static_cast<int>(ww);
    const T* xp = x + (v.n * x_n_stride + v.s);
    A acc[NO][8];
#pragma unroll
    for (int j = 0; j < NO; ++j)
#pragma unroll
      for (int p = 0; p < 8; ++p) acc[j][p] = A(0);
    for (int i = 0; i < c_in; ++i, xp += dhw) {
      A xv[27];  // neighbours (d-1..d+1, h-1..h+1, w-1..w+1), zero outside
#pragma unroll
      for (int q = 0; q < 27; ++q) {
        const int qd = q / 9, qh = q / 3 % 3, qw = q % 3;
        const bool inside = (in_d >> qd) & (in_h >> qh) & (in_w >> qw) & 1u;
        xv[q] = inside ? widen(xp[(qd - 1) * plane + (qh - 1) * line + (qw - 1)]) : A(0);
      }
      const A* wi = wt + (int64_t(i) * o_pad + o0) * 64;  // the same for every thread: broadcast loads
#pragma unroll
      for (int j = 0; j < NO; ++j)
#pragma unroll
        for (int p = 0; p < 8; ++p) {
          A wv[8];
          load8(wi + (j * 8 + p) * 8, wv);
#pragma unroll
          for (int t = 0; t < 8; ++t) {
            // Phase p's tap t reads neighbour (a - 1 + t_d, ...): index (a + t_d) * 9 + ... in xv.
            const int q = ((p >> 2) + (t >> 2)) * 9 + (((p >> 1) & 1) + ((t >> 1) & 1)) * 3 + (p & 1) + (t & 1);
            acc[j][p] += xv[q] * wv[t];
          }
        }
    }
    const int64_t base = v.n * y_n_stride + (2 * v.d * 2 * hh + 2 * v.h) * 2 * ww + 2 * v.w;
#pragma unroll
    for (int j = 0; j < NO; ++j) {
      const int o = o0 + j;
      if (o >= c_out) continue;
      const A b = bias ? widen(bias[o]) : A(0);
#pragma unroll
      for (int p = 0; p < 8; ++p) {
        const int64_t e = base + o * y_c_stride + ((p >> 2) * 2 * hh + ((p >> 1) & 1)) * 2 * ww + (p & 1);
        const T out = narrow<T>(activate(acc[j][p] + b, act, slope));
        y[e] = out;
        if (mask) mask[e] = widen(out) > A(0) ? 1 : 0;
      }
    }
  }
};

template <typename T>
struct BwdSmall : Dims {
  using A = Acc<T>;
  const T* gy;
  const uint8_t* mask;
  const T* yv;
  const A* wt;  // (C_out, i_pad, 4, 4, 4)
  T* gx;
  T* g;
  int64_t g_n_stride, g_c_stride, gx_n_stride;
  int c_in, c_out, i_pad, act;
  A slope;

  // grad_x of input channels i0 .. i0 + NI - 1 at voxel m: the 4x4x4 stencil of g around
  // (2d - 1, 2h - 1, 2w - 1) against the transposed kernel. With write_g, also writes the
  // stencil's central 2x2x2 (the high-resolution voxels of this low-resolution voxel) to g.
  template <int NI>
  __host__ __device__ void run(int64_t m, int i0, bool write_g) const {
    if (act == 3)
      run_with<NI, 2>(m, i0, write_g);
    else if (act == 1 || act == 2)
      run_with<NI, 1>(m, i0, write_g);
    else
      run_with<NI, 0>(m, i0, write_g);
  }

  // KIND: 0 grad_y as it is, 1 through the mask (relu, leaky_relu), 2 through y (tanh). One
  // specialisation each, so that no thread keeps the loads of the other kinds live.
  template <int NI, int KIND>
  __host__ __device__ void run_with(int64_t m, int i0, bool write_g) const {
    if (m >= m_total) return;
    const Voxel v = grid.voxel(m);
    // Bit k: stencil tap k (high-resolution 2v - 1 + k) is inside the volume, per axis. Bit masks,
    // not bool arrays, so that a tap index the compiler leaves in a register needs no local memory.
    const unsigned in_d = 6u | (v.d > 0 ? 1u : 0u) | (v.d + 1 < dd ? 8u : 0u),
                   in_h = 6u | (v.h > 0 ? 1u : 0u) | (v.h + 1 < hh ? 8u : 0u),
                   in_w = 6u | (v.w > 0 ? 1u : 0u) | (v.w + 1 < ww ? 8u : 0u);
    const int plane = static_cast<int>(4 * hw), line = static_cast<int>(2 * ww);
    // May lie before the sample when d, h or w is 0: only the taps inside are added to it.
    const int64_t base = v.n * g_n_stride + ((2 * v.d - 1) * 2 * hh + 2 * v.h - 1) * 2 * ww + 2 * v.w - 1;
    A acc[NI];
#pragma unroll
    for (int j = 0; j < NI; ++j) acc[j] = A(0);
    for (int o = 0; o < c_out; ++o) {
      const A* wo = wt + (int64_t(o) * i_pad + i0) * 64;  // uniform over the block: broadcast loads
      // One 4x4 slab of the stencil at a time, not unrolled: 16 values live, not 64.
#pragma unroll 1
      for (int kd = 0; kd < 4; ++kd) {
        if (!((in_d >> kd) & 1u)) continue;
        const int64_t es = base + o * g_c_stride + kd * plane;
        const bool central_slab = write_g && g != nullptr && kd >= 1 && kd <= 2;
        A gv[16];
#pragma unroll
        for (int q = 0; q < 16; ++q) {
          const int kh = q >> 2, kw = q & 3;
          gv[q] = A(0);
          if ((in_h >> kh) & (in_w >> kw) & 1u) {
            const int64_t e = es + kh * line + kw;
            A val = widen(gy[e]);
            if constexpr (KIND == 1) val = act_grad(val, act, slope, mask[e] != 0, A(0));
            if constexpr (KIND == 2) val = act_grad(val, 3, slope, false, widen(yv[e]));
            const T t = narrow<T>(val);
            if (central_slab && kh >= 1 && kh <= 2 && kw >= 1 && kw <= 2) g[e] = t;
            gv[q] = widen(t);
          }
        }
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int q8 = 0; q8 < 2; ++q8) {
            A wv[8];
            load8(wo + j * 64 + kd * 16 + q8 * 8, wv);
#pragma unroll
            for (int t = 0; t < 8; ++t) acc[j] += gv[q8 * 8 + t] * wv[t];
          }
      }
    }
#pragma unroll
    for (int j = 0; j < NI; ++j)
      if (i0 + j < c_in) gx[v.n * gx_n_stride + (i0 + j) * dhw + v.s] = narrow<T>(acc[j]);
  }
};

template <typename T, int NO>
__global__ void __launch_bounds__(kThreads) fwd_small_kernel(const FwdSmall<T> p) {
  p.template run<NO>(static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, static_cast<int>(blockIdx.y) * NO);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_small_kernel(const BwdSmall<T> p) {
  p.template run<kSmallIn>(static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x,
                           static_cast<int>(blockIdx.y) * kSmallIn, blockIdx.y == 0);
}

// ----------------------------------------------------------------- host side

// Neighbourhood offsets are int32: a high-resolution plane (4 H W) plus the 4x4x4 stencil's span
// must fit; channel counts are int32; the voxel count must suit DivMod (< 2^50).
inline bool sizes_fit(int64_t n, int64_t c_in, int64_t c_out, int64_t d, int64_t h, int64_t w) {
  if (n < 0 || c_in < 0 || c_out < 0 || d < 0 || h < 0 || w < 0) return false;
  if (c_in > INT32_MAX / 2 || c_out > INT32_MAX / 2 || h > INT32_MAX || w > INT32_MAX) return false;
  if (16 * h * w + 8 * w + 8 > INT32_MAX) return false;
  const int64_t hw = h * w;
  return n == 0 || hw == 0 || d <= kMaxVoxels / hw / n;
}

template <typename T, typename W>
FwdGemm<T> make_fwd_gemm(const ResizeConv3dFwdArgs<T, W>& a) {
  FwdGemm<T> p;
  p.x = a.x, p.wt = a.wt, p.bias = a.bias, p.y = a.y, p.mask = a.mask;
  static_cast<Dims&>(p) = make_dims(a.n, a.d, a.h, a.w);
  p.x_n_stride = a.c_in * p.dhw, p.y_c_stride = 8 * p.dhw, p.y_n_stride = a.c_out * p.y_c_stride;
  p.c_in = static_cast<int>(a.c_in), p.c_out = static_cast<int>(a.c_out);
  p.k_rows = static_cast<int>(resize_conv3d_round_up(a.c_in, kResizeConv3dPadK));
  p.n_pad = static_cast<int>(resize_conv3d_round_up(a.c_out, kResizeConv3dPadN));
  p.act = a.act, p.slope = static_cast<Acc<T>>(a.slope);
  return p;
}

template <typename T, typename W>
BwdGemm<T> make_bwd_gemm(const ResizeConv3dBwdArgs<T, W>& a) {
  BwdGemm<T> p;
  p.gy = a.grad_y, p.mask = a.mask, p.yv = a.y, p.wt = a.wt, p.gx = a.grad_x, p.g = a.g;
  static_cast<Dims&>(p) = make_dims(a.n, a.d, a.h, a.w);
  p.g_c_stride = 8 * p.dhw, p.g_n_stride = a.c_out * p.g_c_stride, p.gx_n_stride = a.c_in * p.dhw;
  p.c_in = static_cast<int>(a.c_in), p.c_out = static_cast<int>(a.c_out);
  p.k_rows = static_cast<int>(resize_conv3d_round_up(a.c_out, kResizeConv3dPadK));
  p.n_pad = static_cast<int>(resize_conv3d_round_up(a.c_in, kResizeConv3dPadN));
  p.act = a.act, p.slope = static_cast<Acc<T>>(a.slope);
  return p;
}

template <typename T>
FwdSmall<T> make_fwd_small(const ResizeConv3dFwdArgs<T, Acc<T>>& a) {
  FwdSmall<T> p;
  p.x = a.x, p.wt = a.wt, p.bias = a.bias, p.y = a.y, p.mask = a.mask;
  static_cast<Dims&>(p) = make_dims(a.n, a.d, a.h, a.w);
  p.x_n_stride = a.c_in * p.dhw, p.y_c_stride = 8 * p.dhw, p.y_n_stride = a.c_out * p.y_c_stride;
  p.c_in = static_cast<int>(a.c_in), p.c_out = static_cast<int>(a.c_out);
  p.o_pad = static_cast<int>(resize_conv3d_round_up(a.c_out, kResizeConv3dSmallOut));
  p.act = a.act, p.slope = static_cast<Acc<T>>(a.slope);
  return p;
}

template <typename T>
BwdSmall<T> make_bwd_small(const ResizeConv3dBwdArgs<T, Acc<T>>& a) {
  BwdSmall<T> p;
  p.gy = a.grad_y, p.mask = a.mask, p.yv = a.y, p.wt = a.wt, p.gx = a.grad_x, p.g = a.g;
  static_cast<Dims&>(p) = make_dims(a.n, a.d, a.h, a.w);
  p.g_c_stride = 8 * p.dhw, p.g_n_stride = a.c_out * p.g_c_stride, p.gx_n_stride = a.c_in * p.dhw;
  p.c_in = static_cast<int>(a.c_in), p.c_out = static_cast<int>(a.c_out);
  p.i_pad = static_cast<int>(resize_conv3d_round_up(a.c_in, kResizeConv3dSmallIn));
  p.act = a.act, p.slope = static_cast<Acc<T>>(a.slope);
  return p;
}

// Column tile for the tensor-core kernels (the row tile follows: 64 rows for 128 columns, else
// 128): as wide as the columns need, narrowed while the grid would leave streaming
// multiprocessors idle (the first generator layer has only 256 voxels).
inline int pick_bn(int64_t m, int64_t cols, int64_t z, int sms) {
  int bn = cols > 64 ? 128 : cols > 32 ? 64 : 32;
  auto blocks = [&](int b) { return (m + (b == 128 ? 63 : 127)) / (b == 128 ? 64 : 128) * ((cols + b - 1) / b) * z; };
  while (bn > 32 && blocks(bn) < sms) bn /= 2;
  return bn;
}

inline bool grid_fits(int64_t blocks_x, int64_t blocks_y) { return blocks_x <= INT32_MAX && blocks_y <= 65535; }

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// What every launcher checks first: sizes the index math supports, and the weights' alignment
// for the 16-byte vector loads.
template <class Args>
cudaError_t check_args(const Args& a) {
  return sizes_fit(a.n, a.c_in, a.c_out, a.d, a.h, a.w) && aligned16(a.wt) ? cudaSuccess : cudaErrorInvalidValue;
}

// The small kernels: one thread per voxel, blockIdx.y picks a group of channels.
template <class P>
cudaError_t launch_per_voxel(void (*kernel)(P), const P& p, int64_t groups, cudaStream_t stream) {
  const int64_t blocks = (p.m_total + kThreads - 1) / kThreads;
  if (!grid_fits(blocks, groups)) return cudaErrorInvalidConfiguration;
  kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(groups)), kThreads, 0, stream>>>(p);
  return last_launch_error();
}

template <class P, class Math>
cudaError_t launch_gemm(const P& p, int64_t cols, int z, cudaStream_t stream) {
  const int64_t bx = (p.m_total + Math::Cfg::BM - 1) / Math::Cfg::BM, by = (cols + Math::Cfg::BN - 1) / Math::Cfg::BN;
  if (!grid_fits(bx, by)) return cudaErrorInvalidConfiguration;
  gemm_kernel<P, Math><<<dim3(static_cast<unsigned>(bx), static_cast<unsigned>(by), z), kThreads, 0, stream>>>(p);
  return last_launch_error();
}

template <class P>
cudaError_t launch_tensor_cores(const P& p, int64_t cols, int z, cudaStream_t stream) {
  using T = typename P::Elem;
  int dev = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  switch (pick_bn(p.m_total, cols, z, sms)) {
    case 32:
      return launch_gemm<P, MmaMath<T, 128, 32>>(p, cols, z, stream);
    case 64:
      return launch_gemm<P, MmaMath<T, 128, 64>>(p, cols, z, stream);
    default:
      return launch_gemm<P, MmaMath<T, 64, 128>>(p, cols, z, stream);
  }
}

template <class P>
cudaError_t launch_gemm_family(const P& p, int64_t cols, int z, bool tensor_cores, cudaStream_t stream) {
  using T = typename P::Elem;
  if constexpr (std::is_same<T, double>::value) {
    return tensor_cores ? cudaErrorInvalidValue : launch_gemm<P, SimtMath<double>>(p, cols, z, stream);
  } else if constexpr (std::is_same<T, float>::value) {
    return tensor_cores ? launch_tensor_cores(p, cols, z, stream) : launch_gemm<P, SimtMath<float>>(p, cols, z, stream);
  } else {
    return tensor_cores ? launch_tensor_cores(p, cols, z, stream) : cudaErrorInvalidValue;
  }
}

}  // namespace resize_conv3d_detail

#ifndef BK_RESIZE_CONV3D_NO_LAUNCHERS

template <typename T>
cudaError_t resize_conv3d_fwd_gemm_launch(const ResizeConv3dFwdArgs<T, T>& a, bool tensor_cores, cudaStream_t stream) {
  using namespace resize_conv3d_detail;
  const cudaError_t err = check_args(a);
  if (err != cudaSuccess || a.n * a.d * a.h * a.w == 0 || a.c_out == 0) return err;
  return launch_gemm_family(make_fwd_gemm(a), a.c_out, 8, tensor_cores, stream);
}

template <typename T>
cudaError_t resize_conv3d_fwd_small_launch(const ResizeConv3dFwdArgs<T, typename resize_conv3d_acc<T>::type>& a,
                                           cudaStream_t stream) {
  using namespace resize_conv3d_detail;
  const cudaError_t err = check_args(a);
  if (err != cudaSuccess || a.n * a.d * a.h * a.w == 0 || a.c_out == 0) return err;
  // C_out = 1 (the generators' last layer) gets its own instantiation: no idle accumulators.
  if (a.c_out == 1) return launch_per_voxel(fwd_small_kernel<T, 1>, make_fwd_small(a), 1, stream);
  return launch_per_voxel(fwd_small_kernel<T, kSmallOut>, make_fwd_small(a), (a.c_out + kSmallOut - 1) / kSmallOut,
                          stream);
}

template <typename T>
cudaError_t resize_conv3d_bwd_input_gemm_launch(const ResizeConv3dBwdArgs<T, T>& a, bool tensor_cores,
                                                cudaStream_t stream) {
  using namespace resize_conv3d_detail;
  const cudaError_t err = check_args(a);
  if (err != cudaSuccess || a.n * a.d * a.h * a.w == 0 || a.c_in == 0) return err;
  return launch_gemm_family(make_bwd_gemm(a), a.c_in, 1, tensor_cores, stream);
}

template <typename T>
cudaError_t resize_conv3d_bwd_input_small_launch(const ResizeConv3dBwdArgs<T, typename resize_conv3d_acc<T>::type>& a,
                                                 cudaStream_t stream) {
  using namespace resize_conv3d_detail;
  const cudaError_t err = check_args(a);
  if (err != cudaSuccess || a.n * a.d * a.h * a.w == 0 || a.c_in == 0) return err;
  return launch_per_voxel(bwd_small_kernel<T>, make_bwd_small(a), (a.c_in + kSmallIn - 1) / kSmallIn, stream);
}

#define BK_INSTANTIATE(T)                                                                                         \
  template cudaError_t resize_conv3d_fwd_gemm_launch<T>(const ResizeConv3dFwdArgs<T, T>&, bool, cudaStream_t);  \
  template cudaError_t resize_conv3d_fwd_small_launch<T>(                                                         \
      const ResizeConv3dFwdArgs<T, resize_conv3d_acc<T>::type>&, cudaStream_t);                                   \
  template cudaError_t resize_conv3d_bwd_input_gemm_launch<T>(const ResizeConv3dBwdArgs<T, T>&, bool,           \
                                                              cudaStream_t);                                      \
  template cudaError_t resize_conv3d_bwd_input_small_launch<T>(                                                   \
      const ResizeConv3dBwdArgs<T, resize_conv3d_acc<T>::type>&, cudaStream_t);
BK_INSTANTIATE(float)
BK_INSTANTIATE(double)
BK_INSTANTIATE(__half)
BK_INSTANTIATE(__nv_bfloat16)
#undef BK_INSTANTIATE

#endif  // BK_RESIZE_CONV3D_NO_LAUNCHERS

}  // namespace brainkern
