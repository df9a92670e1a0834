// CUDA kernel of the fused spectral-norm step (see spectral_norm.h).
//
// One launch covers every layer (up to kSNMaxLayersPerLaunch; the descriptors
// are a by-value kernel argument, so there is no host-to-device copy). Block b
// finds its layer l from the descriptors' block ranges and takes rows
// [r0, r0 + R) of W_l:
//   1. each warp computes d_i = W_i . v for its rows (warp shuffles), writes d_i
//      into u (raw, normalised later);
//   2. each thread owns columns c, c + blockDim, ... and sums d_i W_ic over the
//      block's R rows (the rows were just fetched by phase 1, so this pass hits
//      L1/L2, not DRAM), then adds the partial W^T d to the layer's accumulator
//      in the workspace with one atomicAdd per column;
//   3. the block bumps the layer's completion counter; the last block of the
//      layer (threadfence-reduction pattern) normalises u and v and writes sigma.
// So the whole step is one kernel launch (plus the zero fill of the workspace
// done by the caller), and each weight element is read from DRAM once.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda_common.h"
#include "spectral_norm/spectral_norm.h"

namespace brainkern {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRowsPerBlock = 32;

struct SNBatch {
  SNLayerDesc layer[kSNMaxLayersPerLaunch];
  int num_layers;
};

template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Sum over the block; every thread gets the result. `scratch` holds kWarps values.
template <typename T>
__device__ T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T total = 0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) total += scratch[k];
  return total;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    spectral_norm_step_kernel(const SNBatch batch, scalar_t* __restrict__ work,
                              unsigned int* __restrict__ counters, scalar_t* __restrict__ sigma,
                              scalar_t eps) {
  __shared__ scalar_t d_sh[kMaxRowsPerBlock];
  __shared__ scalar_t scratch[kWarps];
  __shared__ bool is_last;

  const int64_t block = blockIdx.x;
  int l = 0;
  while (l + 1 < batch.num_layers && block >= batch.layer[l + 1].block_begin) ++l;
  const SNLayerDesc& desc = batch.layer[l];
  const scalar_t* __restrict__ w = static_cast<const scalar_t*>(desc.w);
  scalar_t* __restrict__ u = static_cast<scalar_t*>(desc.u);
  scalar_t* __restrict__ v = static_cast<scalar_t*>(desc.v);
  const int64_t in = desc.in, ld = desc.ld, out = desc.out;
  const int64_t r0 = (block - desc.block_begin) * desc.rows_per_block;
  const int rows = static_cast<int>(min(desc.rows_per_block, out - r0));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Phase 1: d_i = W_i . v, one warp per row.
  for (int r = warp; r < rows; r += kWarps) {
    const scalar_t* row = w + (r0 + r) * ld;
    scalar_t s0 = 0, s1 = 0;
    int64_t c = lane;
    for (; c + 32 < in; c += 64) {
      s0 += row[c] * v[c];
      s1 += row[c + 32] * v[c + 32];
    }
    if (c < in) s0 += row[c] * v[c];
    const scalar_t s = warp_sum(s0 + s1);
    if (lane == 0) {
      d_sh[r] = s;
      u[r0 + r] = s;
    }
  }
  __syncthreads();

  // Phase 2: this block's share of W^T d, one atomic per column.
  scalar_t* acc = work + desc.work_offset;
  for (int64_t c = threadIdx.x; c < in; c += kThreads) {
    scalar_t a = 0;
    for (int r = 0; r < rows; ++r) a += d_sh[r] * w[(r0 + r) * ld + c];
    atomicAdd(acc + c, a);
  }

  // Phase 3: the last block of this layer finishes it.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int blocks = static_cast<unsigned int>((out + desc.rows_per_block - 1) / desc.rows_per_block);
    is_last = atomicAdd(counters + desc.slot, 1u) == blocks - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();

  // Other blocks' u entries and atomics are read through L2 (__ldcg), never a stale L1 line.
  scalar_t dd = 0;
  for (int64_t i = threadIdx.x; i < out; i += kThreads) {
    const scalar_t di = __ldcg(u + i);
    dd += di * di;
  }
  dd = block_sum(dd, scratch);
  scalar_t gg = 0;
  for (int64_t c = threadIdx.x; c < in; c += kThreads) {
    const scalar_t g = __ldcg(acc + c);
    gg += g * g;
  }
  gg = block_sum(gg, scratch);

  const scalar_t n = max(sqrt(dd), eps);
  const scalar_t t = sqrt(gg) / n;
  const scalar_t tv = max(t, eps);
  const scalar_t inv_n = scalar_t(1) / n;
  const scalar_t v_scale = scalar_t(1) / (n * tv);
  for (int64_t i = threadIdx.x; i < out; i += kThreads) u[i] = __ldcg(u + i) * inv_n;
  for (int64_t c = threadIdx.x; c < in; c += kThreads) v[c] = __ldcg(acc + c) * v_scale;
  if (threadIdx.x == 0) sigma[desc.slot] = t * t / tv;
}

}  // namespace

template <typename scalar_t>
cudaError_t spectral_norm_step_cuda_launch(const SNLayerDesc* layers, int num_layers, int64_t num_blocks,
                                           scalar_t* work, unsigned int* counters, scalar_t* sigma,
                                           double eps, cudaStream_t stream) {
  if (num_layers <= 0 || num_layers > kSNMaxLayersPerLaunch || num_blocks <= 0) return cudaErrorInvalidValue;
  SNBatch batch;
  for (int l = 0; l < num_layers; ++l) {
    if (layers[l].rows_per_block <= 0 || layers[l].rows_per_block > kMaxRowsPerBlock) return cudaErrorInvalidValue;
    batch.layer[l] = layers[l];
  }
  batch.num_layers = num_layers;
  spectral_norm_step_kernel<scalar_t><<<static_cast<unsigned int>(num_blocks), kThreads, 0, stream>>>(
      batch, work, counters, sigma, static_cast<scalar_t>(eps));
  return last_launch_error();
}

template cudaError_t spectral_norm_step_cuda_launch<float>(const SNLayerDesc*, int, int64_t, float*,
                                                           unsigned int*, float*, double, cudaStream_t);
template cudaError_t spectral_norm_step_cuda_launch<double>(const SNLayerDesc*, int, int64_t, double*,
                                                            unsigned int*, double*, double, cudaStream_t);

}  // namespace brainkern
