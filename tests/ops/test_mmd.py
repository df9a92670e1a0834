"""brainkern.ops.mmd2 / mmd2_batched against explicit kernel matrices, MONAI, and loops."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainkern.ops import BackendError, use_backend
from brainkern.ops.mmd import mmd2, mmd2_batched, mmd2_batched_reference, mmd2_reference
from tests.conftest import BACKEND_DEVICES
from tests.guards import poisoned_outputs

KERNELS = ("linear", "rbf", "poly")
ESTIMATORS = ("biased", "unbiased")
# CUDA's limit on grid dimensions 1 and 2, and a number of tests past it.
GRID_Y_LIMIT = 65535
MANY_TESTS = 70_000


def explicit_mmd2(x, y, kernel, estimator, bandwidths=None):
    """MMD^2 of one test from a kernel matrix filled entry by entry, in float64."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    z = torch.cat([x, y])
    m, dim = x.shape
    rows = z.shape[0]
    d2 = torch.stack([torch.stack([((z[i] - z[j]) ** 2).sum() for j in range(rows)]) for i in range(rows)])
    if kernel == "rbf":
        if bandwidths is None:
            iu = torch.triu_indices(rows, rows, offset=1)
            med = d2[iu[0], iu[1]].sqrt().median()
            med = med if med > 0 else torch.ones((), dtype=torch.float64)
            bandwidths = [float(med) * s for s in (0.5, 1.0, 2.0)]
    k = torch.empty(rows, rows, dtype=torch.float64)
    for i in range(rows):
        for j in range(rows):
            dot = (z[i] * z[j]).sum()
            if kernel == "linear":
                k[i, j] = dot
            elif kernel == "poly":
                k[i, j] = (dot / dim + 1) ** 3
            else:
                k[i, j] = sum(torch.exp(-d2[i, j] / (2 * s * s)) for s in bandwidths)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    n = rows - m
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def _pair(t, m, n, spatial, dtype=torch.float64, device="cpu", shift=0.3):
    x = torch.randn(t, m, *spatial, dtype=dtype, device=device)
    y = torch.randn(t, n, *spatial, dtype=dtype, device=device) * 1.2 + shift
    return x, y


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(2, 3, 4, (7, 5, 3)), (1, 5, 2, (1, 6, 4, 3)), (3, 2, 2, (11,))])
def test_matches_explicit_kernel_matrix(backend_device, kernel, estimator, shape):
    backend, device = backend_device
    t, m, n, spatial = shape
    x, y = _pair(t, m, n, spatial, device=device)
    with use_backend(backend):
        got = mmd2_batched(x, y, kernel, estimator)
    want = torch.stack([explicit_mmd2(x[i].cpu(), y[i].cpu(), kernel, estimator) for i in range(t)])
    assert got.shape == (t,) and got.dtype == torch.float64
    torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_inputs_match_float64(backend_device, kernel):
    backend, device = backend_device
    x, y = _pair(2, 4, 3, (9, 8, 7), dtype=torch.float32, device=device)
    with use_backend(backend):
        got = mmd2_batched(x, y, kernel, "unbiased")
    want = mmd2_batched_reference(x.double(), y.double(), kernel, "unbiased")
    assert got.dtype == torch.float32
    # The statistics are accumulated in float64 (float32 over short runs in the GPU
    # kernels); what remains is the float32 rounding of the result and of the inputs.
    torch.testing.assert_close(got.double().cpu(), want.cpu(), atol=1e-5, rtol=1e-5)


def test_explicit_bandwidths(backend_device):
    backend, device = backend_device
    x, y = _pair(2, 3, 3, (4, 5), device=device)
    per_test = torch.tensor([[3.0, 7.5], [4.0, 12.0]], dtype=torch.float64)
    with use_backend(backend):
        shared = mmd2_batched(x, y, "rbf", "biased", bandwidths=[3.0, 7.5])
        both = mmd2_batched(x, y, "rbf", "unbiased", bandwidths=per_test)
    for i in range(2):
        want = explicit_mmd2(x[i].cpu(), y[i].cpu(), "rbf", "biased", [3.0, 7.5])
        torch.testing.assert_close(shared[i].cpu(), want, atol=1e-10, rtol=1e-10)
        want = explicit_mmd2(x[i].cpu(), y[i].cpu(), "rbf", "unbiased", per_test[i].tolist())
        torch.testing.assert_close(both[i].cpu(), want, atol=1e-10, rtol=1e-10)


def test_linear_biased_is_squared_distance_of_means(backend_device):
    backend, device = backend_device
    x, y = _pair(1, 5, 3, (6, 7, 2), device=device)
    with use_backend(backend):
        got = mmd2(x[0], y[0])
    want = ((x[0].mean(0) - y[0].mean(0)) ** 2).sum()
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_matches_monai_mmd_metric(backend_device):
    monai_metrics = pytest.importorskip("monai.metrics")
    backend, device = backend_device
    # MONAI's MMDMetric is the unbiased linear-kernel estimator (no y_mapping).
    y_true = torch.randn(4, 1, 7, 6, 5, dtype=torch.float64)
    y_pred = torch.randn(4, 1, 7, 6, 5, dtype=torch.float64) + 0.2
    want = monai_metrics.MMDMetric()(y_true, y_pred)
    with use_backend(backend):
        got = mmd2(y_true.to(device), y_pred.to(device), "linear", "unbiased")
    torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_batched_equals_loop(backend_device, kernel):
    backend, device = backend_device
    x, y = _pair(4, 3, 5, (5, 4, 3), device=device)
    with use_backend(backend):
        batched = mmd2_batched(x, y, kernel, "unbiased")
        loop = torch.stack([mmd2(x[i], y[i], kernel, "unbiased") for i in range(4)])
    torch.testing.assert_close(batched, loop, atol=1e-12, rtol=1e-12)


def test_non_contiguous_inputs(backend_device):
    backend, device = backend_device
    base = torch.randn(2, 6, 5, 4, 3, dtype=torch.float64, device=device)
    x = base.transpose(2, 4)  # (2, 6, 3, 4, 5), not contiguous
    y = (base.flip(1) + 0.5)[:, ::2]  # (2, 3, 5, 4, 3), strided
    assert not x.is_contiguous() and not y.is_contiguous()
    y = y.reshape(2, 3, 3, 4, 5)
    with use_backend(backend):
        for kernel in KERNELS:
            got = mmd2_batched(x, y, kernel, "biased")
            want = mmd2_batched_reference(x.contiguous(), y.contiguous(), kernel, "biased")
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_fmri_grid_and_unbiased_pairs(backend_device, request):
    backend, device = backend_device
    if backend == "triton" and device == "cpu" and "slow" not in (request.config.getoption("markexpr") or ""):
        # Multi-round reductions in the interpreter: test_triton_loops_run_several_rounds.
        pytest.skip("50 s in Triton's interpreter at 53x63x46: select it with -m slow")
    # The 53x63x46 fMRI grid, flattened; B=2 is the smallest unbiased sample.
    x, y = _pair(1, 2, 2, (1, 53, 63, 46), dtype=torch.float32, device=device)
    with use_backend(backend):
        got = {k: mmd2(x[0], y[0], k, "unbiased") for k in KERNELS}
    for kernel, value in got.items():
        want = mmd2_reference(x[0].double(), y[0].double(), kernel, "unbiased")
        torch.testing.assert_close(value.double().cpu(), want.cpu(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_constant_inputs_give_zero(backend_device, kernel):
    backend, device = backend_device
    x = torch.full((1, 3, 4, 5), 0.7, dtype=torch.float64, device=device)
    with use_backend(backend):
        biased = mmd2_batched(x, x.clone(), kernel, "biased")
        unbiased = mmd2_batched(x, x[:, :2].clone(), kernel, "unbiased")
    assert torch.isfinite(biased).all() and torch.isfinite(unbiased).all()
    torch.testing.assert_close(biased.cpu(), torch.zeros(1, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(unbiased.cpu(), torch.zeros(1, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck(backend_device, kernel, estimator):
    backend, device = backend_device
    x, y = _pair(2, 3, 2, (2, 3), device=device)
    x.requires_grad_(True)
    y.requires_grad_(True)
    # The default (median) bandwidths are detached by design, which finite
    # differences would see; fixed ones make the function gradcheck differentiates.
    bandwidths = [1.5, 4.0] if kernel == "rbf" else None

    def fn(a, b):
        with use_backend(backend):
            return mmd2_batched(a, b, kernel, estimator, bandwidths=bandwidths)

    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gradgradcheck(backend_device, kernel):
    backend, device = backend_device
    x, y = _pair(1, 3, 2, (4,), device=device)
    x.requires_grad_(True)
    y.requires_grad_(True)
    # The default (median) bandwidths are detached by design, which finite
    # differences would see; fixed ones make the function gradcheck differentiates.
    bandwidths = [1.5, 4.0] if kernel == "rbf" else None

    def fn(a, b):
        with use_backend(backend):
            return mmd2_batched(a, b, kernel, "unbiased", bandwidths=bandwidths)

    assert torch.autograd.gradgradcheck(fn, (x, y), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
def test_same_grad_output_as_reference(backend_device, kernel):
    backend, device = backend_device
    x, y = _pair(3, 4, 3, (5, 3, 2), dtype=torch.float32, device=device)
    weights = torch.randn(3, device=device)
    grads = []
    for name in (backend, "reference"):
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        with use_backend(name):
            out = mmd2_batched(a, b, kernel, "unbiased")
        out.backward(weights)
        grads.append((a.grad, b.grad))
    for got, want in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", KERNELS)
def test_half_precision_within_twice_eager_error(backend_device, kernel, dtype):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference is the eager baseline here")
    x, y = _pair(2, 4, 4, (6, 5, 4), dtype=torch.float32, device=device, shift=0.5)
    x, y = x.to(dtype), y.to(dtype)
    exact = mmd2_batched_reference(x.double(), y.double(), kernel, "biased")
    eager = mmd2_batched_reference(x, y, kernel, "biased").double()
    with use_backend(backend):
        got = mmd2_batched(x, y, kernel, "biased")
    assert got.dtype == dtype
    # Our statistics are exact to float32 or better; the last rounding to `dtype`
    # (half an ulp of the result) is the floor.
    ulp = torch.finfo(dtype).eps * exact.abs()
    bound = torch.maximum(2 * (eager - exact).abs(), ulp)
    assert ((got.double() - exact).abs() <= bound).all(), (got, exact, eager)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("kernel", KERNELS)
def test_non_finite_input_raises(backend_device, kernel, value):
    backend, device = backend_device
    x, y = _pair(2, 3, 3, (4, 3), device=device)
    y[1, 2, 3, 1] = value
    with use_backend(backend), pytest.raises(ValueError, match="NaN or infinite"):
        mmd2_batched(x, y, kernel, "biased")


def test_bad_inputs_raise():
    x = torch.randn(3, 4, 5)
    with pytest.raises(ValueError, match="same number of features"):
        mmd2(x, torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd2(x[:1], torch.randn(3, 4, 5), estimator="unbiased")
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd2_batched(x[None], torch.randn(1, 1, 4, 5), estimator="unbiased")
    with pytest.raises(ValueError, match="kernel must be one of"):
        mmd2(x, x, kernel="laplace")
    with pytest.raises(ValueError, match="estimator must be one of"):
        mmd2(x, x, estimator="linear-time")
    with pytest.raises(ValueError, match="bandwidths only apply"):
        mmd2(x, x, kernel="linear", bandwidths=[1.0])
    with pytest.raises(ValueError, match="positive"):
        mmd2(x, x, kernel="rbf", bandwidths=[1.0, -2.0])
    with pytest.raises(ValueError, match="same number of tests"):
        mmd2_batched(torch.randn(2, 3, 4), torch.randn(3, 3, 4))
    with pytest.raises(ValueError, match=r"\(T=2, S\)"):
        mmd2_batched(torch.randn(2, 3, 4), torch.randn(2, 3, 4), "rbf", bandwidths=torch.ones(3, 2))
    with pytest.raises(TypeError, match="same dtype"):
        mmd2(x, x.double())
    with pytest.raises(TypeError, match="floating-point"):
        mmd2(x.long(), x.long())
    with pytest.raises(ValueError, match="no features"):
        mmd2(torch.randn(3, 0), torch.randn(3, 0))


def test_biased_single_sample_is_allowed():
    x, y = torch.randn(1, 7), torch.randn(1, 7)
    torch.testing.assert_close(mmd2(x, y), ((x - y) ** 2).sum())


def test_forced_backend_that_declines_lists_reasons():
    x = torch.randn(1, 40, 8, dtype=torch.float64)
    y = torch.randn(1, 40, 8, dtype=torch.float64)
    with use_backend("cuda"), pytest.raises(BackendError, match="cuda"):
        mmd2_batched(x, y, "rbf")


def test_default_bandwidths_are_detached(backend_device):
    backend, device = backend_device
    x, y = _pair(1, 3, 3, (5,), device=device)
    x.requires_grad_(True)
    with use_backend(backend):
        out = mmd2_batched(x, y, "rbf", "biased")
    (grad,) = torch.autograd.grad(out.sum(), x)
    # The same bandwidths given explicitly (constants) give the same gradient.
    iu = torch.triu_indices(6, 6, offset=1)
    z = torch.cat([x[0], y[0]]).detach().cpu()
    med = torch.cdist(z, z)[iu[0], iu[1]].median().item()
    x2 = x.detach().clone().requires_grad_(True)
    with use_backend(backend):
        out2 = mmd2_batched(x2, y, "rbf", "biased", bandwidths=[0.5 * med, med, 2 * med])
    (grad2,) = torch.autograd.grad(out2.sum(), x2)
    torch.testing.assert_close(out, out2, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grad, grad2, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------- many tests per call


def _boundary_tests(t: int) -> list[int]:
    """Tests on both sides of each round of a grid of GRID_Y_LIMIT rows, and the last one."""
    return [0, 1, GRID_Y_LIMIT - 1, GRID_Y_LIMIT, GRID_Y_LIMIT + 1, t - 1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_more_tests_than_the_cuda_grid_holds(backend_device, kernel):
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        # ~40 ms per interpreted test: 70,000 would take most of an hour. The launch
        # grid at this size and the loop over tests are checked by the tests below.
        pytest.skip("70,000 tests through Triton's interpreter; see test_triton_launch_grid_*")
    x, y = _pair(MANY_TESTS, 2, 3, (3,), device=device)
    a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    weights = torch.randn(MANY_TESTS, dtype=torch.float64, device=device)
    with use_backend(backend):
        out = mmd2_batched(a, b, kernel, "unbiased")
        out.backward(weights)
    assert out.shape == (MANY_TESTS,)
    for i in _boundary_tests(MANY_TESTS):
        want = explicit_mmd2(x[i].cpu(), y[i].cpu(), kernel, "unbiased")
        torch.testing.assert_close(out[i].cpu(), want, atol=1e-10, rtol=1e-10)
        # One test per call on the same backend is the oracle for the gradients.
        a1, b1 = x[i].clone().requires_grad_(True), y[i].clone().requires_grad_(True)
        with use_backend(backend):
            (mmd2(a1, b1, kernel, "unbiased") * weights[i]).backward()
        torch.testing.assert_close(a.grad[i], a1.grad, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(b.grad[i], b1.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_tests_gives_an_empty_result(backend_device, kernel):
    backend, device = backend_device
    x, y = _pair(0, 3, 2, (4, 3), device=device)
    with use_backend(backend):
        out = mmd2_batched(x, y, kernel, "unbiased")
    assert out.shape == (0,) and out.dtype == x.dtype


class _LaunchSpy:
    """Stands in for a Triton kernel: records each launch, then runs it (``run``) or not."""

    def __init__(self, kernel, run: bool) -> None:
        self.kernel, self.run = kernel, run
        self.launches: list[tuple[tuple[int, ...], dict, dict]] = []  # (grid, arguments by name, options)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            named = dict(zip(self.kernel.arg_names, args, strict=False))
            self.launches.append((tuple(grid), named, dict(kwargs)))
            if self.run:
                self.kernel[grid](*args, **kwargs)

        return launch


_TRITON_KERNELS = ("_mmd_linear_fwd_kernel", "_mmd_linear_bwd_kernel", "_mmd_gram_fwd_kernel")


def _spy_on_kernels(monkeypatch, kmod, run: bool) -> dict[str, _LaunchSpy]:
    spies = {name: _LaunchSpy(getattr(kmod, name), run) for name in _TRITON_KERNELS}
    for name, spy in spies.items():
        monkeypatch.setattr(kmod, name, spy)
    return spies


def _meta_launches(kmod, shapes, dtypes) -> None:
    """Call every launcher on ``meta`` tensors of (T, m, n, D) shapes: nothing is allocated."""
    for (tests, m, n, dim), dtype in ((s, d) for s in shapes for d in dtypes):
        x = torch.empty(tests, m, dim, dtype=dtype, device="meta")
        y = torch.empty(tests, n, dim, dtype=dtype, device="meta")
        kmod.linear_stats(x, y)
        kmod.linear_backward(x, y, torch.empty(tests, 3, dtype=torch.float64, device="meta"))
        if m + n <= 64:
            kmod.gram(x, y)


def test_triton_launch_grid_stays_within_cuda_limits(monkeypatch):
    kmod = pytest.importorskip("brainkern.kernels.mmd")
    spies = _spy_on_kernels(monkeypatch, kmod, run=False)
    _meta_launches(kmod, [(MANY_TESTS, 2, 3, 3), (MANY_TESTS, 8, 8, 64**3)], [torch.float32])
    for spy in spies.values():
        assert len(spy.launches) == 2
        for grid, args, _ in spy.launches:
            assert grid[1] == GRID_Y_LIMIT and args["tests"] == MANY_TESTS, (grid, args["tests"])
            assert grid[0] <= 2**31 - 1


TRITON_DEVICES = [p for p in BACKEND_DEVICES if p.values[0][0] == "triton"]


@pytest.fixture(params=TRITON_DEVICES)
def triton_device(request) -> str:
    """The devices the Triton backend runs on here (the interpreter on the CPU, or a GPU)."""
    return request.param[1]


# Sizes for which every loop of every Triton kernel runs more than one round once
# the launch constants are shrunk (see small_triton_launches): 5 tests on 2 grid
# rows, D = 105 in steps of 16 split into parts of 2 steps, m = 5 and n = 3 samples
# in tiles of 2 rows.
LOOP_TESTS, LOOP_M, LOOP_N, LOOP_SPATIAL = 5, 5, 3, (7, 5, 3)


@pytest.fixture
def small_triton_launches(monkeypatch, triton_device):
    """The Triton kernel module with launch constants so small that every loop repeats.

    Every launch still runs, and is checked to use the shrunk grid limit.
    """
    kmod = pytest.importorskip("brainkern.kernels.mmd")
    monkeypatch.setattr(kmod, "_MAX_GRID_Y", 2)
    monkeypatch.setattr(kmod, "_TARGET_PROGRAMS", 1)
    monkeypatch.setattr(kmod, "_LANE_TERMS", 2)
    monkeypatch.setattr(kmod, "_LINEAR_BLOCK_D", 16)
    monkeypatch.setattr(kmod, "_ROWS", 2)
    dim = LOOP_SPATIAL[0] * LOOP_SPATIAL[1] * LOOP_SPATIAL[2]
    for block_d in (kmod._LINEAR_BLOCK_D, kmod._GRAM_BLOCK_D):
        parts, steps = kmod._split(LOOP_TESTS, dim, block_d)
        assert parts > 1 and steps > 1 and dim % block_d != 0, (parts, steps)
    assert LOOP_TESTS > 2 * kmod._MAX_GRID_Y and min(LOOP_M, LOOP_N) > kmod._ROWS
    spies = _spy_on_kernels(monkeypatch, kmod, run=True)
    yield kmod
    for spy in spies.values():
        for grid, _, _ in spy.launches:
            assert grid[1] == kmod._MAX_GRID_Y, grid


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_triton_loops_run_several_rounds(small_triton_launches, triton_device, kernel, estimator, dtype):
    kmod = small_triton_launches
    x, y = _pair(LOOP_TESTS, LOOP_M, LOOP_N, LOOP_SPATIAL, dtype=dtype, device=triton_device)
    weights = torch.randn(LOOP_TESTS, dtype=torch.float64, device=triton_device)
    a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    with use_backend("triton"), poisoned_outputs(kmod) as guard:
        out = mmd2_batched(a, b, kernel, estimator)
        out.backward(weights.to(dtype))
    assert guard.count > 0
    a64, b64 = x.double().requires_grad_(True), y.double().requires_grad_(True)
    want = mmd2_batched_reference(a64, b64, kernel, estimator)
    want.backward(weights)
    if dtype == torch.float64:
        tol = {"atol": 1e-10, "rtol": 1e-10}
    else:
        # The result is rounded to float32 (6e-8 relative) after float32 sums over a
        # few tiles: measured errors are at most 7e-8 relative. A skipped, repeated
        # or unmasked tile moves the result by far more than 1e-5.
        tol = {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(out.double(), want.detach(), **tol)
    torch.testing.assert_close(a.grad.double(), a64.grad, **tol)
    torch.testing.assert_close(b.grad.double(), b64.grad, **tol)


def test_triton_linear_takes_any_number_of_samples(triton_device):
    # More samples than one tile holds; the kernel streams them in tiles.
    x, y = _pair(1, 300, 3, (5,), device=triton_device)
    with use_backend("triton"):
        got = mmd2_batched(x, y, "linear", "unbiased")
    torch.testing.assert_close(
        got, mmd2_batched_reference(x, y, "linear", "unbiased"), atol=1e-10, rtol=1e-10
    )


# --------------------------------------------------------------------------- registers on sm_90

_PTR = {torch.float32: "*fp32", torch.float64: "*fp64", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
# (T, m, n, D): Kwon et al.'s evaluation (100 tests of 8 + 8 volumes of 64^3); row
# tiles of 1, 4 and 8 samples and Gram tiles of 16, 32 and 64 rows over many steps
# per program; many samples; many tests of one step.
SPILL_SHAPES = [
    (100, 8, 8, 64**3),
    (100, 1, 1, 10**5),
    (100, 3, 4, 10**5),
    (100, 12, 9, 10**5),
    (100, 32, 32, 10**5),
    (4, 300, 2, 4096),
    (MANY_TESTS, 2, 2, 3),
]


def sm90_resource_usage(dtype: torch.dtype) -> list[dict]:
    """Registers, stack and local memory on sm_90 of every launch the Triton launchers pick.

    The launchers run on ``meta`` tensors of SPILL_SHAPES with spies in place of
    the kernels (nothing is allocated or run); each distinct configuration is
    compiled ahead of time for sm_90 and its cubin read with ``cuobjdump``. Call
    it in a process without ``TRITON_INTERPRET=1``: the interpreter's patches of
    ``triton.language`` break the compiler.
    """
    import tempfile  # noqa: PLC0415

    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    from brainkern.kernels import mmd as kmod  # noqa: PLC0415

    spies = {name: _LaunchSpy(getattr(kmod, name), run=False) for name in _TRITON_KERNELS}
    for name, spy in spies.items():
        setattr(kmod, name, spy)
    try:
        _meta_launches(kmod, SPILL_SHAPES, [dtype])
    finally:
        for name, spy in spies.items():
            setattr(kmod, name, spy.kernel)
    configs = {}
    for name, spy in spies.items():
        for _, args, options in spy.launches:
            constexprs = dict(options)
            warps = constexprs.pop("num_warps", 4)
            sig = {k: _PTR[v.dtype] if isinstance(v, torch.Tensor) else "i32" for k, v in args.items()}
            configs[(name, tuple(sig.items()), tuple(sorted(constexprs.items())), warps)] = spy.kernel
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        for (name, sig, constexprs, warps), kernel in configs.items():
            signature = {**dict(sig), **dict.fromkeys(dict(constexprs), "constexpr")}
            src = ASTSource(fn=kernel, signature=signature, constexprs=dict(constexprs))
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            cubin.write_bytes(compiled.asm["cubin"])
            out = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True)
            usage = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", out.stdout)}
            rows.append({"kernel": name, "constexprs": dict(constexprs), "num_warps": warps, **usage})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_triton_kernels_do_not_spill_on_sm90(dtype):
    # Nothing runs on a GPU here, so a register spill would first show on one.
    # float16 and bfloat16 inputs are loaded and summed as float32.
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("Triton's NVIDIA tools (ptxas, cuobjdump) are not installed")
    script = (
        "import json, sys, torch\n"
        "from tests.ops.test_mmd import sm90_resource_usage\n"
        "print(json.dumps(sm90_resource_usage(getattr(torch, sys.argv[1]))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", script, dtype], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-4000:]
    rows = json.loads(out.stdout.splitlines()[-1])
    assert {r["kernel"] for r in rows} == set(_TRITON_KERNELS)
    spills = [r for r in rows if r["STACK"] or r["LOCAL"] or r["REG"] > 255]
    assert not spills, spills


def test_cpu_op_takes_zero_tests_and_refuses_zero_features():
    """The C++ ops called directly (not through the dispatch) with empty inputs do not crash."""
    from brainkern import _ext

    if _ext.extension_status() is not True:
        pytest.skip("the C++ extension is not built")
    stats, gram = _ext.op("mmd_linear_stats"), _ext.op("mmd_gram")
    assert stats(torch.randn(0, 4, 10), torch.randn(0, 4, 10)).shape[0] == 0
    with pytest.raises(RuntimeError, match="expected non-empty samples"):
        stats(torch.randn(2, 4, 0), torch.randn(2, 4, 0))
    assert gram(torch.randn(0, 4, 10), torch.randn(0, 4, 10)).shape[0] == 0
