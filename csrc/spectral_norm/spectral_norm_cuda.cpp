// Torch-side wrapper of the CUDA spectral-norm step: checks, workspace, launch.
//
// Launches per call: one zero fill of the workspace, then one fused kernel per
// group of kSNMaxLayersPerLaunch layers (a single launch for any discriminator
// with at most 32 spectral-normalised layers).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "common.h"
#include "spectral_norm/spectral_norm.h"

namespace brainkern {
namespace {

// Rows per block: at least 4 (fewer would turn W^T d into nearly one atomic per
// weight element), at most 32, aiming at ~16k weight elements per block so that
// a discriminator's large layers spread over every SM.
int64_t rows_per_block(int64_t out, int64_t in) {
  const int64_t target = std::max<int64_t>(1, 16384 / std::max<int64_t>(in, 1));
  return std::min<int64_t>(out, std::min<int64_t>(32, std::max<int64_t>(4, target)));
}

}  // namespace

at::Tensor spectral_norm_step_cuda(at::TensorList weights, at::TensorList us, at::TensorList vs, double eps) {
  spectral_norm_check_inputs(weights, us, vs, /*cuda=*/true);
  const c10::cuda::CUDAGuard guard(weights[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t L = static_cast<int64_t>(weights.size());

  int64_t total_in = 0;
  for (const at::Tensor& w : weights) total_in += w.size(1);
  // W^T d accumulators, then one completion counter per layer (a 4-byte slot
  // inside a float/double element): one zero fill for both.
  at::Tensor work = at::zeros({total_in + L}, weights[0].options());
  at::Tensor sigma = at::empty({L}, weights[0].options());

  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "spectral_norm_step_cuda", [&] {
    scalar_t* work_ptr = work.data_ptr<scalar_t>();
    unsigned int* counters = reinterpret_cast<unsigned int*>(work_ptr + total_in);
    int64_t work_offset = 0;
    for (int64_t first = 0; first < L; first += kSNMaxLayersPerLaunch) {
      const int64_t count = std::min<int64_t>(kSNMaxLayersPerLaunch, L - first);
      // Layers with the most work per block go first, so the long blocks start early.
      std::vector<int64_t> order(count);
      std::iota(order.begin(), order.end(), first);
      std::vector<int64_t> offsets(count);
      for (int64_t k = 0; k < count; ++k) {
        offsets[k] = work_offset;
        work_offset += weights[first + k].size(1);
      }
      auto block_work = [&](int64_t l) {
        const int64_t out = weights[l].size(0), in = weights[l].size(1);
        return rows_per_block(out, in) * in;
      };
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return block_work(a) > block_work(b); });
      std::vector<SNLayerDesc> descs(count);
      int64_t blocks = 0;
      for (int64_t k = 0; k < count; ++k) {
        const int64_t l = order[k];
        const at::Tensor& w = weights[l];
        SNLayerDesc& d = descs[k];
        d.w = w.const_data_ptr<scalar_t>();
        d.u = us[l].mutable_data_ptr<scalar_t>();
        d.v = vs[l].mutable_data_ptr<scalar_t>();
        d.out = w.size(0);
        d.in = w.size(1);
        d.ld = w.stride(0);
        d.work_offset = offsets[l - first];
        d.rows_per_block = rows_per_block(d.out, d.in);
        d.block_begin = blocks;
        d.slot = l;
        blocks += (d.out + d.rows_per_block - 1) / d.rows_per_block;
      }
      const cudaError_t err = spectral_norm_step_cuda_launch<scalar_t>(
          descs.data(), static_cast<int>(count), blocks, work_ptr, counters, sigma.data_ptr<scalar_t>(), eps,
          stream);
      TORCH_CHECK(err == cudaSuccess, "spectral_norm_step: CUDA launch failed: ", cudaGetErrorString(err));
    }
  });
  return sigma;
}

}  // namespace brainkern

TORCH_LIBRARY_IMPL(brainkern, CUDA, m) { m.impl("spectral_norm_step", &brainkern::spectral_norm_step_cuda); }
