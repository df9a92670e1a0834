"""Benchmark: DiffAugment-3D, the fused op against the composed PyTorch version.

King et al. (2024) augment every discriminator input (real and generated) at 64^3;
the case here is a batch of 4 one-channel 64^3 volumes in float32 with every
element drawn (p = 1, so each sample is translated, cut out and scaled), with a
small odd volume in smoke mode.

Providers (both compute the same tensor, checked before timing):

- ``brainkern``: :func:`brainkern.ops.diff_augment3d` on the automatic backend for
  the device (``cpu``, or ``cuda`` on a GPU); ``brainkern-triton`` forces ``triton``
  on a GPU;
- ``torch``: :func:`brainkern.ops.diff_augment3d_reference`, the composed version
  (an index gather, ``torch.where`` masks and the scale, through autograd).

Modes: ``forward`` (no grad) and ``full`` (forward then the gradient of ``x``).
Peak memory and saved activations are recorded beside the times.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks._util import assert_matches, bench_device, peak_memory, record, saved_tensor_bytes, timed
from brainkern.augment import DiffAugment3d
from brainkern.ops import diff_augment3d, diff_augment3d_reference, use_backend

FULL_SHAPE = (4, 1, 64, 64, 64)
SMOKE_SHAPE = (3, 2, 9, 7, 5)
PROVIDERS = ["brainkern", "brainkern-triton", "torch"]
MODES = ["forward", "full"]


def _op(provider: str):
    if provider == "torch":
        return diff_augment3d_reference
    if provider == "brainkern-triton":

        def triton_op(*args):
            with use_backend("triton"):
                return diff_augment3d(*args)

        return triton_op
    return diff_augment3d


def setup(provider: str, mode: str, shape, device: torch.device):
    """The timed callable for one (provider, mode), its input, gradient and parameters."""
    op = _op(provider)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen).mul(2).sub(1).to(device).requires_grad_(mode != "forward")
    grad = torch.randn(shape, generator=gen).to(device)
    p = DiffAugment3d(p=1.0, background=-1.0).draw(shape[0], shape, device=device, generator=gen)
    args = (p.shift, p.lo, p.hi, p.scale, -1.0)
    if mode == "forward":

        def fn():
            with torch.no_grad():
                return op(x, *args)

        return fn, x, grad, args

    def fn():
        return torch.autograd.grad(op(x, *args), x, grad)

    return fn, x, grad, args


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_diff_augment3d(benchmark, smoke, provider, mode):
    device = bench_device()
    if provider == "brainkern-triton" and device.type != "cuda":
        pytest.skip("Triton is timed on a GPU only (the CPU interpreter is a correctness tool)")
    shape = SMOKE_SHAPE if smoke else FULL_SHAPE
    fn, x, grad, args = setup(provider, mode, shape, device)
    # The same result as the reference before anything is timed.
    if mode == "forward":
        assert_matches(fn(), diff_augment3d_reference(x.detach(), *args), what=provider, rtol=0)
    else:
        ref = x.detach().requires_grad_()
        assert_matches(
            fn(), torch.autograd.grad(diff_augment3d_reference(ref, *args), ref, grad), what=provider
        )
    peak = peak_memory(fn, device)
    saved = saved_tensor_bytes(lambda: _op(provider)(x, *args)) if mode != "forward" else 0
    record(
        benchmark,
        group=f"diff_augment3d-{'x'.join(map(str, shape))}-{mode}",
        provider=provider,
        device=device,
        peak_bytes=peak,
        saved_bytes=saved,
        shape=list(shape),
        smoke=smoke,
    )
    benchmark(timed(fn, device))
