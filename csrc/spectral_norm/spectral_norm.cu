// CUDA kernels of the fused spectral-norm step (see spectral_norm.h).
//
// Three kernels per group of up to kSNMaxLayersPerLaunch layers, no atomics:
//   1. row_block_kernel, one block per (layer, R rows): each warp forms
//      d_i = W_i . v for its rows; then each thread takes columns and sums
//      d_i W_ic over the block's R rows (the first phase just streamed them,
//      so this pass reads mostly from L1/L2, as long as the call's weights are
//      not much larger than L2) and writes that partial W^T d as one row of a
//      (row blocks, in) workspace; thread 0 writes the block's sum of d_i^2.
//   2. column_chunk_kernel, one block per (layer, kChunk columns): g = W^T d as
//      the sum of the layer's partial rows in block order, and the chunk's
//      sum of g^2.
//   3. finish_kernel, one block per (layer, chunk): ||d||^2 and ||g||^2 from the
//      per-block and per-chunk sums (every block of a layer adds the same
//      values in the same order, so all agree bit for bit), then v for the
//      chunk and, in chunk 0, u and sigma.
// Every sum runs in double whatever the weights' dtype, in an order fixed by the
// shapes alone: repeated calls give bit-identical results. The descriptors are a
// by-value kernel argument, so a call makes no host-to-device copy and never
// waits for the GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cuda_common.h"
#include "spectral_norm/spectral_norm.h"

namespace brainkern {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRowsPerBlock = 32;
constexpr int kChunk = kThreads;  // columns per column-chunk / finish block: one per thread

// One layer as the kernels see it (offsets in doubles into the workspace).
struct LayerPlan {
  const void* w;
  void* u;
  void* v;
  int64_t out, in, ld;
  int64_t rows_per_block;  // R, at most kMaxRowsPerBlock
  int64_t row_blocks;      // ceil(out / R)
  int64_t chunks;          // ceil(in / kChunk)
  int64_t block_begin;     // first row block of the layer in its group's grid
  int64_t chunk_begin;     // first column chunk of the layer in its group's grid
  int64_t partial_offset;  // (row_blocks, in) partial W^T d
  int64_t d_offset;        // (out,) d = W v
  int64_t g_offset;        // (in,) g = W^T d
  int64_t dsq_offset;      // (row_blocks,) sums of d_i^2
  int64_t gsq_offset;      // (chunks,) sums of g_c^2
  int64_t slot;            // position in the call: index of sigma
  int64_t vec;             // 1 when w, v and ld allow 16-byte loads
};

struct Batch {
  LayerPlan layer[kSNMaxLayersPerLaunch];
  int num_layers;
};
// Kernel parameters are limited to 4 KiB; the other arguments need a few dozen bytes.
static_assert(sizeof(Batch) <= 4096 - 64, "spectral-norm descriptors exceed the kernel parameter space");

// Rows per block: about 32k weights (128 KiB of float32) per block for narrow
// layers, at most 32 (the shared d buffer); at least 8, so that the float64
// partial row a block writes (8 bytes per column) stays at or below a quarter of
// the float32 weight bytes it summarises. A discriminator's wide layers (512 x
// 16384) then take 8 rows: 64 blocks for that layer, about one block per SM for
// the whole network on a 132-SM device. Fewer rows would mean more partial
// traffic, more rows fewer busy SMs.
int64_t rows_per_block(int64_t out, int64_t in) {
  const int64_t target = std::max<int64_t>(8, (int64_t{1} << 15) / std::max<int64_t>(in, 1));
  return std::min<int64_t>(out, std::min<int64_t>(kMaxRowsPerBlock, target));
}

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Shapes and workspace offsets of every layer, in call order; returns the
// workspace size, or -1 for an empty list or a layer with an empty or
// overlapping-row shape (the torch wrapper has rejected those already).
int64_t plan_layers(const SNLayer* layers, int64_t num_layers, std::vector<LayerPlan>* plans) {
  if (num_layers <= 0) return -1;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (layers[l].out <= 0 || layers[l].in <= 0 || layers[l].ld < layers[l].in) return -1;
  }
  int64_t partials = 0, outs = 0, ins = 0, blocks = 0, chunks = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    LayerPlan p{};
    p.w = layers[l].w;
    p.u = layers[l].u;
    p.v = layers[l].v;
    p.out = layers[l].out;
    p.in = layers[l].in;
    p.ld = layers[l].ld;
    p.rows_per_block = rows_per_block(p.out, p.in);
    p.row_blocks = div_up(p.out, p.rows_per_block);
    p.chunks = div_up(p.in, kChunk);
    p.slot = l;
    p.partial_offset = partials;
    partials += p.row_blocks * p.in;
    p.d_offset = outs;
    outs += p.out;
    p.g_offset = ins;
    ins += p.in;
    p.dsq_offset = blocks;
    blocks += p.row_blocks;
    p.gsq_offset = chunks;
    chunks += p.chunks;
    if (plans != nullptr) plans->push_back(p);
  }
  // The regions follow one another: partials, d, g, d^2 sums, g^2 sums.
  if (plans != nullptr) {
    for (LayerPlan& p : *plans) {
      p.d_offset += partials;
      p.g_offset += partials + outs;
      p.dsq_offset += partials + outs + ins;
      p.gsq_offset += partials + outs + ins + blocks;
    }
  }
  return partials + outs + ins + blocks + chunks;
}

// A run of V elements loaded with one instruction (16 bytes for V = 16 / sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T x[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

__device__ __forceinline__ double warp_sum(double x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Sum over the block, in a fixed order; every thread gets the same value.
// `scratch` holds kWarps doubles. Every thread of the block must call it.
__device__ double block_sum(double x, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum(x);  // butterfly: every lane ends with the same bits (a + b == b + a)
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  double total = 0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) total += scratch[k];
  return total;
}

// The layer of grid block `block`: layers' ranges [begin, begin + count) tile the grid in order.
template <int64_t LayerPlan::*Begin>
__device__ __forceinline__ int find_layer(const Batch& batch, int64_t block) {
  int l = 0;
  while (l + 1 < batch.num_layers && block >= batch.layer[l + 1].*Begin) ++l;
  return l;
}

// d_i = W_i . v for one row, by one warp: four independent 16-byte loads per lane
// in flight, a fixed order of partial sums per lane, then the butterfly.
template <typename T, int V>
__device__ __forceinline__ double row_dot(const T* __restrict__ row, const T* __restrict__ v, int64_t in,
                                          int lane) {
  const int64_t packs = in / V;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = lane;
  for (; k + 96 < packs; k += 128) {
    const Pack<T, V> a0 = load_pack<T, V>(row + k * V), a1 = load_pack<T, V>(row + (k + 32) * V);
    const Pack<T, V> a2 = load_pack<T, V>(row + (k + 64) * V), a3 = load_pack<T, V>(row + (k + 96) * V);
    const Pack<T, V> b0 = load_pack<T, V>(v + k * V), b1 = load_pack<T, V>(v + (k + 32) * V);
    const Pack<T, V> b2 = load_pack<T, V>(v + (k + 64) * V), b3 = load_pack<T, V>(v + (k + 96) * V);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      s0 += static_cast<double>(a0.x[e]) * static_cast<double>(b0.x[e]);
      s1 += static_cast<double>(a1.x[e]) * static_cast<double>(b1.x[e]);
      s2 += static_cast<double>(a2.x[e]) * static_cast<double>(b2.x[e]);
      s3 += static_cast<double>(a3.x[e]) * static_cast<double>(b3.x[e]);
    }
  }
  for (; k < packs; k += 32) {
    const Pack<T, V> a = load_pack<T, V>(row + k * V), b = load_pack<T, V>(v + k * V);
#pragma unroll
    for (int e = 0; e < V; ++e) s0 += static_cast<double>(a.x[e]) * static_cast<double>(b.x[e]);
  }
  // Columns past the last whole pack (fewer than V).
  for (int64_t c = packs * V + lane; c < in; c += 32) {
    s0 += static_cast<double>(row[c]) * static_cast<double>(v[c]);
  }
  return warp_sum((s0 + s1) + (s2 + s3));
}

// The block's partial W^T d over its `rows` rows starting at `w` (row stride ld):
// thread-strided packs of V columns, rows summed in order. The columns go last
// group first: the first phase streamed them forwards, so the last ones are the
// likeliest still in L1/L2 (each column's sum is one thread's, so the order of the
// groups changes no result).
template <typename T, int V>
__device__ __forceinline__ void partial_row(const T* __restrict__ w, int64_t ld, int64_t in, int rows,
                                            const double* d_sh, double* __restrict__ out) {
  const int64_t packs = in / V;
  for (int64_t k0 = packs > 0 ? (packs - 1) / kThreads * kThreads : -1; k0 >= 0; k0 -= kThreads) {
    const int64_t k = k0 + threadIdx.x;
    if (k >= packs) continue;
    double a[V];
#pragma unroll
    for (int e = 0; e < V; ++e) a[e] = 0;
    const T* col = w + k * V;
#pragma unroll 4
    for (int r = 0; r < rows; ++r) {
      const Pack<T, V> p = load_pack<T, V>(col + r * ld);
      const double dr = d_sh[r];
#pragma unroll
      for (int e = 0; e < V; ++e) a[e] += dr * static_cast<double>(p.x[e]);
    }
#pragma unroll
    for (int e = 0; e < V; ++e) out[k * V + e] = a[e];
  }
  for (int64_t c = packs * V + threadIdx.x; c < in; c += kThreads) {
    double a = 0;
    for (int r = 0; r < rows; ++r) a += d_sh[r] * static_cast<double>(w[r * ld + c]);
    out[c] = a;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) row_block_kernel(const Batch batch, double* __restrict__ work) {
  __shared__ double d_sh[kMaxRowsPerBlock];
  const int64_t block = blockIdx.x;
  const LayerPlan& p = batch.layer[find_layer<&LayerPlan::block_begin>(batch, block)];
  const int64_t b = block - p.block_begin;  // row block within the layer
  const int64_t r0 = b * p.rows_per_block;
  const int rows = static_cast<int>(min(p.rows_per_block, p.out - r0));
  const T* __restrict__ w = static_cast<const T*>(p.w) + r0 * p.ld;
  const T* __restrict__ v = static_cast<const T*>(p.v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kVec = 16 / sizeof(T);

  for (int r = warp; r < rows; r += kWarps) {
    const T* row = w + r * p.ld;
    const double s = p.vec ? row_dot<T, kVec>(row, v, p.in, lane) : row_dot<T, 1>(row, v, p.in, lane);
    if (lane == 0) {
      d_sh[r] = s;
      work[p.d_offset + r0 + r] = s;
    }
  }
  __syncthreads();

  double* out = work + p.partial_offset + b * p.in;
  if (p.vec)
    partial_row<T, kVec>(w, p.ld, p.in, rows, d_sh, out);
  else
    partial_row<T, 1>(w, p.ld, p.in, rows, d_sh, out);
  if (threadIdx.x == 0) {
    double q = 0;
    for (int r = 0; r < rows; ++r) q += d_sh[r] * d_sh[r];
    work[p.dsq_offset + b] = q;
  }
}

__global__ void __launch_bounds__(kThreads)
    column_chunk_kernel(const Batch batch, double* __restrict__ work) {
  __shared__ double scratch[kWarps];
  const int64_t block = blockIdx.x;
  const LayerPlan& p = batch.layer[find_layer<&LayerPlan::chunk_begin>(batch, block)];
  const int64_t chunk = block - p.chunk_begin;
  const int64_t c = chunk * kChunk + threadIdx.x;
  double g = 0;
  if (c < p.in) {
    const double* col = work + p.partial_offset + c;
#pragma unroll 8
    for (int64_t b = 0; b < p.row_blocks; ++b) g += col[b * p.in];
    work[p.g_offset + c] = g;
  }
  const double sq = block_sum(g * g, scratch);
  if (threadIdx.x == 0) work[p.gsq_offset + chunk] = sq;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    finish_kernel(const Batch batch, const double* __restrict__ work, T* __restrict__ sigma, double eps) {
  __shared__ double scratch[kWarps];
  const int64_t block = blockIdx.x;
  const LayerPlan& p = batch.layer[find_layer<&LayerPlan::chunk_begin>(batch, block)];
  const int64_t chunk = block - p.chunk_begin;

  double dd = 0;
  for (int64_t i = threadIdx.x; i < p.row_blocks; i += kThreads) dd += work[p.dsq_offset + i];
  dd = block_sum(dd, scratch);
  double gg = 0;
  for (int64_t i = threadIdx.x; i < p.chunks; i += kThreads) gg += work[p.gsq_offset + i];
  gg = block_sum(gg, scratch);

  const double n = fmax(sqrt(dd), eps);
  const double t = sqrt(gg) / n;
  const double tv = fmax(t, eps);
  const double v_scale = 1.0 / (n * tv);
  const int64_t c = chunk * kChunk + threadIdx.x;
  if (c < p.in) static_cast<T*>(p.v)[c] = static_cast<T>(work[p.g_offset + c] * v_scale);
  if (chunk == 0) {
    T* u = static_cast<T*>(p.u);
    for (int64_t i = threadIdx.x; i < p.out; i += kThreads) u[i] = static_cast<T>(work[p.d_offset + i] / n);
    if (threadIdx.x == 0) sigma[p.slot] = static_cast<T>(t * t / tv);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

int64_t spectral_norm_workspace_size(const SNLayer* layers, int64_t num_layers) {
  return plan_layers(layers, num_layers, nullptr);
}

template <typename scalar_t>
cudaError_t spectral_norm_step_cuda_launch(const SNLayer* layers, int64_t num_layers, double* work,
                                           scalar_t* sigma, double eps, cudaStream_t stream) {
  std::vector<LayerPlan> plans;
  if (plan_layers(layers, num_layers, &plans) < 0) return cudaErrorInvalidValue;
  constexpr int64_t kVec = 16 / sizeof(scalar_t);
  for (LayerPlan& p : plans) p.vec = aligned16(p.w) && aligned16(p.v) && p.ld % kVec == 0;
  for (int64_t first = 0; first < num_layers; first += kSNMaxLayersPerLaunch) {
    const int64_t count = std::min<int64_t>(kSNMaxLayersPerLaunch, num_layers - first);
    // Layers with the most weights per block first, so the longest blocks start early.
    std::vector<int64_t> order(static_cast<size_t>(count));
    std::iota(order.begin(), order.end(), first);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return plans[a].rows_per_block * plans[a].in > plans[b].rows_per_block * plans[b].in;
    });
    Batch batch;
    batch.num_layers = static_cast<int>(count);
    int64_t blocks = 0, chunks = 0;
    for (int64_t k = 0; k < count; ++k) {
      LayerPlan p = plans[order[k]];
      p.block_begin = blocks;
      p.chunk_begin = chunks;
      blocks += p.row_blocks;
      chunks += p.chunks;
      batch.layer[k] = p;
    }
    if (blocks > 0x7fffffff || chunks > 0x7fffffff) return cudaErrorInvalidValue;
    row_block_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(batch, work);
    cudaError_t err = last_launch_error();
    if (err != cudaSuccess) return err;
    column_chunk_kernel<<<static_cast<unsigned int>(chunks), kThreads, 0, stream>>>(batch, work);
    err = last_launch_error();
    if (err != cudaSuccess) return err;
    finish_kernel<scalar_t>
        <<<static_cast<unsigned int>(chunks), kThreads, 0, stream>>>(batch, work, sigma, eps);
    err = last_launch_error();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template cudaError_t spectral_norm_step_cuda_launch<float>(const SNLayer*, int64_t, double*, float*, double,
                                                           cudaStream_t);
template cudaError_t spectral_norm_step_cuda_launch<double>(const SNLayer*, int64_t, double*, double*, double,
                                                            cudaStream_t);

}  // namespace brainkern
