"""resize_conv3d (nearest x2 upsample + 3x3x3 conv + bias + leaky_relu) against its baselines.

Providers (DESIGN.md, resize_conv3d row):
- ``brainkern``: :func:`brainkern.ops.resize_conv3d` (automatic backend);
- ``interpolate+conv3d``: the literal reference, materialising the 8x upsampled input;
- ``conv_transpose3d``: the same weight folding done through cuDNN / oneDNN,
  ``conv_transpose3d(x, K, stride=2, padding=1)`` with the folded 4x4x4 kernel ``K``
  (:func:`brainkern.ops.fold_resize_conv_weight_transposed`), then the activation.

Modes: forward, backward (of a forward done in setup), full (forward + backward).
Shapes: the blocks of Kwon et al.'s 64^3 generator at N=4 (512 -> 256 channels at
4^3 -> 8^3, then 256 -> 128 at 8^3, 128 -> 64 at 16^3, 64 -> 32 at 32^3), the
N=2, 64 -> 32, 16^3 case the issue sets targets for, and one block reaching 128^3.
Each record carries the peak memory of one full step and the bytes autograd saves
for backward (``saved_bytes``: the activation memory a training step keeps).

    pytest benchmarks/bench_resize_conv3d.py --benchmark-enable -k "N2-64to32-16cube and full"
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks._util import bench_device, peak_memory, record, saved_tensor_bytes, sync, timed
from brainkern.ops import fold_resize_conv_weight_transposed, resize_conv3d, resize_conv3d_reference

ACT, SLOPE = "leaky_relu", 0.2
# (N, C_in, C_out, D): cubic low-resolution input D^3 -> output (2D)^3.
CASES = [
    (4, 512, 256, 4),
    (4, 256, 128, 8),
    (4, 128, 64, 16),
    (2, 64, 32, 16),
    (4, 64, 32, 32),
    (1, 32, 16, 64),
]
SMOKE_CASES = [(2, 8, 4, 4), (1, 4, 3, 6)]
PROVIDERS = ["brainkern", "interpolate+conv3d", "conv_transpose3d"]
MODES = ["forward", "backward", "full"]


def _case_id(case) -> str:
    n, c_in, c_out, d = case
    return f"N{n}-{c_in}to{c_out}-{d}cube"


def _forward(provider: str):
    if provider == "brainkern":
        return lambda x, w, b: resize_conv3d(x, w, b, ACT, SLOPE)
    if provider == "interpolate+conv3d":
        return lambda x, w, b: resize_conv3d_reference(x, w, b, ACT, SLOPE)

    def transposed(x, w, b):
        y = F.conv_transpose3d(x, fold_resize_conv_weight_transposed(w), b, stride=2, padding=1)
        return F.leaky_relu(y, SLOPE)

    return transposed


def setup(provider: str, case, mode: str, device: torch.device, dtype=torch.float32):
    """The timed closure of one (provider, case, mode), and a full step for memory figures."""
    n, c_in, c_out, d = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, d, d, d, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(c_out, c_in, 3, 3, 3, generator=gen) / (27 * c_in) ** 0.5).to(device, dtype)
    w.requires_grad_()
    b = torch.randn(c_out, generator=gen).to(device, dtype).requires_grad_()
    gy = torch.randn(n, c_out, 2 * d, 2 * d, 2 * d, generator=gen).to(device, dtype)
    fwd = _forward(provider)
    # The output gradient comes in the memory format of the provider's output (channels-last for
    # oneDNN's transposed convolution and brainkern's cpu backend), as the next layer's backward
    # would hand it over.
    with torch.no_grad():
        gy = torch.empty_like(fwd(x, w, b)).copy_(gy)  # empty_like keeps the memory format

    # autograd.grad rather than .backward(): no .grad accumulation inside the timing.
    def full():
        torch.autograd.grad(fwd(x, w, b), (x, w, b), gy)

    if mode == "forward":
        fn = lambda: fwd(x, w, b)  # noqa: E731
    elif mode == "backward":
        y = fwd(x, w, b)
        fn = lambda: torch.autograd.grad(y, (x, w, b), gy, retain_graph=True)  # noqa: E731
    else:
        fn = full
    saved = saved_tensor_bytes(lambda: fwd(x, w, b))
    return fn, full, saved


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_resize_conv3d(benchmark, smoke, case, provider, mode):
    device = bench_device()
    if smoke:
        case = SMOKE_CASES[CASES.index(case) % len(SMOKE_CASES)]
    fn, full, saved = setup(provider, case, mode, device)
    peak = peak_memory(full, device)
    sync(device)
    n, c_in, c_out, d = case
    record(
        benchmark,
        group=f"resize_conv3d {_case_id(case)} {mode}",
        provider=provider,
        device=device,
        peak_bytes=peak,
        saved_bytes=saved,
        shape=f"({n}, {c_in}, {d}^3) -> ({n}, {c_out}, {2 * d}^3)",
        activation=ACT,
    )
    benchmark.pedantic(timed(fn, device), rounds=1 if smoke else 5, warmup_rounds=0 if smoke else 1)
