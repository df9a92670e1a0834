"""resize_conv3d (nearest x2 upsample + 3x3x3 conv + bias + leaky_relu) against its baselines.

Providers (the baselines docs/design.md names for resize_conv3d):
- ``brainkern``: :func:`brainkern.ops.resize_conv3d` with its automatic choice (on a GPU,
  the per-shape table of :func:`brainkern.ops.resize_conv3d.resize_conv3d_impl_order`; the
  record's ``impl`` says which implementation it took);
- ``triton``, ``cuda``, ``cudnn``: each GPU implementation forced through
  ``use_resize_conv_impl``, so that one GPU run measures the three side by side and the
  table can be set from it. GPU only: skipped on the CPU (Triton would run in its
  interpreter, ``cuda`` needs a GPU, and ``cudnn`` there is oneDNN, which the cpu
  backend already runs), and where an implementation cannot run (the extension not built);
- ``interpolate+conv3d``: the literal reference, materialising the 8x upsampled input;
- ``conv_transpose3d``: the same weight folding in plain PyTorch,
  ``conv_transpose3d(x, K, b, stride=2, padding=1)`` with the folded 4x4x4 kernel ``K``
  (:func:`brainkern.ops.fold_resize_conv_weight_transposed`), then the activation.

Precisions: float32 (TF32 where ``torch.backends.cudnn.allow_tf32``, torch's default; the
record says which) and ``bf16-autocast``: bfloat16 activations with float32 parameters
under ``torch.autocast(dtype=torch.bfloat16)``, as Kwon et al.'s generator trains on the
GPU. On the CPU bf16-autocast runs only in smoke mode (the cpu backend computes half
types in float32, so it would time casts).

Modes: forward, backward (of a forward done in setup), full (forward + backward).
Shapes: the blocks of Kwon et al.'s 64^3 generator at N=4 (512 -> 256 channels at
4^3 -> 8^3, 256 -> 128 at 8^3, 128 -> 64 at 16^3, 64 -> 1 at 32^3), the N=2, 64 -> 32,
16^3 case the issue sets targets for, and one block reaching 128^3. Each record carries
the peak memory of one full step and the bytes autograd saves for backward
(``saved_bytes``: the activation memory a training step keeps).

    pytest benchmarks/bench_resize_conv3d.py --benchmark-enable -k "N4-128to64-16cube and bf16 and full"
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F

from benchmarks._util import (
    assert_matches,
    bench_device,
    peak_memory,
    record,
    saved_tensor_bytes,
    sync,
    timed,
)
from brainkern.ops import (
    fold_resize_conv_weight_transposed,
    resize_conv3d,
    resize_conv3d_reference,
    use_backend,
)

# The module itself (brainkern.ops.resize_conv3d as an attribute is the function).
rc = importlib.import_module("brainkern.ops.resize_conv3d")

ACT, SLOPE = "leaky_relu", 0.2
# (N, C_in, C_out, D): cubic low-resolution input D^3 -> output (2D)^3.
CASES = [
    (4, 512, 256, 4),
    (4, 256, 128, 8),
    (4, 128, 64, 16),
    (4, 64, 1, 32),
    (2, 64, 32, 16),
    (1, 32, 16, 64),
]
SMOKE_CASES = [(2, 8, 4, 4), (1, 4, 3, 6)]
PROVIDERS = ["brainkern", *rc.IMPLS, "interpolate+conv3d", "conv_transpose3d"]
PRECISIONS = ["float32", "bf16-autocast"]
MODES = ["forward", "backward", "full"]


def _case_id(case) -> str:
    n, c_in, c_out, d = case
    return f"N{n}-{c_in}to{c_out}-{d}cube"


def _forward(provider: str):
    if provider == "brainkern":
        return lambda x, w, b: resize_conv3d(x, w, b, ACT, SLOPE)
    if provider in rc.IMPLS:

        def forced(x, w, b):
            with use_backend("auto"), rc.use_resize_conv_impl(provider):
                return resize_conv3d(x, w, b, ACT, SLOPE)

        return forced
    if provider == "interpolate+conv3d":
        return lambda x, w, b: resize_conv3d_reference(x, w, b, ACT, SLOPE)

    def transposed(x, w, b):
        y = F.conv_transpose3d(x, fold_resize_conv_weight_transposed(w), b, stride=2, padding=1)
        return F.leaky_relu(y, SLOPE)

    return transposed


def _precision_context(precision: str, device: torch.device):
    if precision == "bf16-autocast":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def setup(provider: str, case, mode: str, device: torch.device, precision: str = "float32"):
    """The timed closure of one (provider, case, mode, precision), a full step for memory
    figures, the saved bytes, and the implementation the op ran (``None`` for baselines)."""
    n, c_in, c_out, d = case
    gen = torch.Generator().manual_seed(0)
    act_dtype = torch.bfloat16 if precision == "bf16-autocast" else torch.float32
    x = torch.randn(n, c_in, d, d, d, generator=gen).to(device, act_dtype).requires_grad_()
    w = (torch.randn(c_out, c_in, 3, 3, 3, generator=gen) / (27 * c_in) ** 0.5).to(device)
    w.requires_grad_()
    b = torch.randn(c_out, generator=gen).to(device).requires_grad_()
    gy = torch.randn(n, c_out, 2 * d, 2 * d, 2 * d, generator=gen).to(device, act_dtype)
    ctx = _precision_context(precision, device)
    impl = None
    if provider == "brainkern" or provider in rc.IMPLS:
        # What the op sees after autocast's cast; provider implementations that cannot run skip.
        args = (x.detach(), w.detach().to(act_dtype), b.detach().to(act_dtype), ACT, SLOPE)
        if provider in rc.IMPLS:
            why = rc._impl_reason(provider, *args)
            if why is not None:
                pytest.skip(f"{provider}: {why}")
            impl = provider
        else:
            impl = rc._select(*args)
    base = _forward(provider)

    def fwd(x, w, b):
        with ctx():
            return base(x, w, b)

    # The output gradient comes in the memory format of the provider's output (channels-last for
    # oneDNN's transposed convolution), as the next layer's backward would hand it over.
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
    return fn, full, saved, impl


def _result(provider: str, case, device: torch.device, precision: str) -> list[torch.Tensor]:
    """The output and the gradients of x, w and b for one fixed output gradient."""
    forward, *_ = setup(provider, case, "forward", device, precision)
    backward, *_ = setup(provider, case, "backward", device, precision)
    return [forward(), *backward()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_resize_conv3d(benchmark, smoke, case, provider, precision, mode):
    device = bench_device()
    if provider in rc.IMPLS and device.type != "cuda":
        pytest.skip(f"{provider}: the GPU implementations are compared on a GPU")
    if precision == "bf16-autocast" and device.type != "cuda" and not smoke:
        pytest.skip("bf16-autocast: timed on the GPU (the cpu backend computes half types in float32)")
    if smoke:
        if CASES.index(case) >= len(SMOKE_CASES):
            pytest.skip("smoke mode: the small cases already ran")
        case = SMOKE_CASES[CASES.index(case)]
        if mode == "full" and provider != "interpolate+conv3d":
            # Every provider against the literal upsample + conv3d, output and gradients
            # (bf16: both round to 8-bit mantissas in different places, so 5%; a wrong
            # index or tile is off by the whole norm).
            assert_matches(
                _result(provider, case, device, precision),
                _result("interpolate+conv3d", case, device, precision),
                what=f"resize_conv3d {_case_id(case)} {precision}, {provider}",
                rtol=5e-2 if precision == "bf16-autocast" else 1e-4,
            )
    fn, full, saved, impl = setup(provider, case, mode, device, precision)
    peak = peak_memory(full, device)
    sync(device)
    n, c_in, c_out, d = case
    record(
        benchmark,
        group=f"resize_conv3d {_case_id(case)} {precision} {mode}",
        provider=provider,
        device=device,
        peak_bytes=peak,
        saved_bytes=saved,
        shape=f"({n}, {c_in}, {d}^3) -> ({n}, {c_out}, {2 * d}^3)",
        activation=ACT,
        precision=precision,
        tf32=bool(device.type == "cuda" and torch.backends.cudnn.allow_tf32),
        impl=impl,
    )
    benchmark.pedantic(timed(fn, device), rounds=1 if smoke else 5, warmup_rounds=0 if smoke else 1)
