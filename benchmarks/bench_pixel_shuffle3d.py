"""3D pixel shuffle: brainkern vs MONAI's ``pixelshuffle`` vs reshape-permute-contiguous.

Shapes are the sub-pixel upsampling stages of the 3D generators of Kwon et al.
and King et al. at 64^3 (512 channels at 8^3 up to 64 channels at 32^3) and at
128^3 (64 channels at 64^3), all with r = 2, in float32; a case is named
``vol<output size>-<input channels>ch-at<input size>``.

Providers (all compute the same tensor, checked before timing):

- ``brainkern``: :func:`brainkern.ops.pixel_shuffle3d` with the automatic backend
  for the benchmark device (``cuda`` on a GPU, ``cpu`` on the CPU);
- ``monai``: ``monai.networks.utils.pixelshuffle(x, 3, r)``;
- ``torch``: ``x.reshape(...).permute(...).contiguous().view(...)``, which is also
  what brainkern's ``reference`` backend runs.

Modes: ``forward``; ``backward`` (the gradient of a kept forward, ``retain_graph``);
``full`` (forward then backward). Peak memory and saved activations are recorded.
On CUDA the brainkern provider also records ``ceiling_copy_fraction``: bytes read
plus written per second, over the bandwidth of a device-to-device ``copy_`` of
the same bytes measured in the same run (goal: 0.85 or more).
"""

from __future__ import annotations

import functools

import pytest
import torch

from benchmarks._util import bench_device, peak_memory, record, saved_tensor_bytes, sync, timed
from brainkern.ops import pixel_shuffle3d, pixel_unshuffle3d_reference

FULL_SHAPES = {
    "vol64-512ch-at8": ((4, 512, 8, 8, 8), 2),
    "vol64-256ch-at16": ((4, 256, 16, 16, 16), 2),
    "vol64-64ch-at32": ((4, 64, 32, 32, 32), 2),
    "vol128-64ch-at64": ((2, 64, 64, 64, 64), 2),
}
SMOKE_SHAPES = {
    "vol64-512ch-at8": ((1, 16, 4, 4, 4), 2),
    "vol64-256ch-at16": ((1, 8, 6, 5, 3), 2),
    "vol64-64ch-at32": ((1, 27, 3, 2, 3), 3),
    "vol128-64ch-at64": ((1, 8, 5, 4, 4), 2),
}
PROVIDERS = ["brainkern", "monai", "torch"]
MODES = ["forward", "backward", "full"]


def _torch_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    n, cr3, d, h, w = x.shape
    c = cr3 // r**3
    y = x.reshape(n, c, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4).contiguous()
    return y.view(n, c, d * r, h * r, w * r)


def _monai_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    from monai.networks.utils import pixelshuffle  # noqa: PLC0415  (optional baseline)

    return pixelshuffle(x, spatial_dims=3, scale_factor=r)


OPS = {"brainkern": pixel_shuffle3d, "monai": _monai_shuffle, "torch": _torch_shuffle}


def setup(provider: str, mode: str, shape, r: int, device: torch.device):
    """The timed callable for one (provider, mode, case), the bytes one call moves, its input and grad."""
    op = OPS[provider]
    x = torch.randn(shape, device=device, requires_grad=mode != "forward")
    out_shape = (shape[0], shape[1] // r**3, shape[2] * r, shape[3] * r, shape[4] * r)
    grad = torch.randn(out_shape, device=device)
    nbytes = x.numel() * x.element_size()
    if mode == "forward":

        def fn():
            with torch.no_grad():
                return op(x, r)

        return fn, 2 * nbytes, x, grad
    if mode == "backward":
        y = op(x, r)

        def fn():
            return torch.autograd.grad(y, x, grad, retain_graph=True)

        return fn, 2 * nbytes, x, grad

    def fn():
        return torch.autograd.grad(op(x, r), x, grad)

    return fn, 4 * nbytes, x, grad


def _cuda_median_seconds(fn, device: torch.device, reps: int = 30) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


@functools.cache
def _copy_bandwidth(device: torch.device) -> float:
    """Bytes read plus written per second by ``dst.copy_(src)`` of 256 MiB on ``device``."""
    src = torch.empty(2**26, device=device)
    dst = torch.empty_like(src)
    seconds = _cuda_median_seconds(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / seconds


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(FULL_SHAPES))
def test_pixel_shuffle3d(benchmark, smoke, case, provider, mode):
    if provider == "monai":
        pytest.importorskip("monai")
    device = bench_device()
    shape, r = (SMOKE_SHAPES if smoke else FULL_SHAPES)[case]
    fn, moved_bytes, x, grad = setup(provider, mode, shape, r, device)
    # The same result as the reference before anything is timed.
    out = fn()
    if mode == "forward":
        assert torch.equal(out, _torch_shuffle(x.detach(), r))
    else:
        assert torch.equal(out[0], pixel_unshuffle3d_reference(grad, r))
    peak = peak_memory(fn, device)
    saved = saved_tensor_bytes(lambda: OPS[provider](x, r)) if mode != "forward" else 0
    info = {}
    if device.type == "cuda" and provider == "brainkern":
        seconds = _cuda_median_seconds(fn, device)
        info["ceiling_copy_fraction"] = round(moved_bytes / seconds / _copy_bandwidth(device), 3)
        info["copy_bandwidth_GBps"] = round(_copy_bandwidth(device) / 1e9, 1)
    # record() before benchmark(): pytest-benchmark copies the group when the timing starts.
    record(
        benchmark,
        group=f"pixel_shuffle3d-{case}-r{r}-{mode}",
        provider=provider,
        device=device,
        peak_bytes=peak,
        saved_bytes=saved,
        shape=list(shape),
        moved_bytes=moved_bytes,
        smoke=smoke,
        **info,
    )
    benchmark(timed(fn, device))


def test_backward_gradients_agree(smoke):
    """Every provider's gradient is the unshuffle of the upstream gradient (sanity for the timings)."""
    device = bench_device()
    shape, r = SMOKE_SHAPES["vol64-64ch-at32"]
    grads = []
    for provider in PROVIDERS:
        if provider == "monai":
            pytest.importorskip("monai")
        torch.manual_seed(0)
        fn, _, _, _ = setup(provider, "full", shape, r, device)
        grads.append(fn()[0])
    for g in grads[1:]:
        assert torch.equal(g, grads[0])
