"""brainkern.ops.mmd2 / mmd2_batched against explicit kernel matrices, MONAI, and loops."""

from __future__ import annotations

import pytest
import torch

from brainkern.ops import BackendError, use_backend
from brainkern.ops.mmd import mmd2, mmd2_batched, mmd2_batched_reference, mmd2_reference

KERNELS = ("linear", "rbf", "poly")
ESTIMATORS = ("biased", "unbiased")


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


def test_fmri_grid_and_unbiased_pairs(backend_device):
    backend, device = backend_device
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
