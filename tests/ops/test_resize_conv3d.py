"""resize_conv3d: every backend against the interpolate + conv3d reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainkern.ops import (
    BackendError,
    fold_resize_conv_weight,
    fold_resize_conv_weight_transposed,
    resize_conv3d,
    resize_conv3d_reference,
    use_backend,
)
from brainkern.ops.resize_conv3d import _DISPATCH, _phase_to_transposed, _transposed_to_phase

ACTS = [None, "relu", "leaky_relu", "tanh"]
# (N, C_in, C_out, D, H, W): batch 1 with the odd 7x5x3 grid and 3 -> 5 channels; a batch of 2
# with a non-cubic grid shrinking channels; a cube large enough for the CPU's phase-form conv.
SHAPES = [(1, 3, 5, 7, 5, 3), (2, 4, 2, 2, 3, 4), (1, 2, 3, 6, 6, 6)]
# Triton's CPU interpreter is slow: it runs the whole sweep only on this tiny shape.
TINY = (1, 2, 3, 2, 3, 2)


def _interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def _inputs(shape, dtype, device, bias=True, requires_grad=True):
    n, c_in, c_out, d, h, w = shape
    x = torch.randn(n, c_in, d, h, w, dtype=torch.float64).to(device=device, dtype=dtype)
    wt = (torch.randn(c_out, c_in, 3, 3, 3, dtype=torch.float64) / (c_in * 27) ** 0.5).to(device, dtype)
    b = torch.randn(c_out, dtype=torch.float64).to(device, dtype) if bias else None
    leaves = [x, wt] + ([b] if bias else [])
    for t in leaves:
        t.requires_grad_(requires_grad)
    return x, wt, b


def _run(backend, x, w, b, act, slope=0.2):
    with use_backend(backend):
        return resize_conv3d(x, w, b, act, slope)


def _grads(y, inputs, gy, create_graph=False):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(y, inputs, gy, create_graph=create_graph)


@pytest.mark.parametrize("shape", SHAPES + [TINY], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_reference_float64(backend_device, shape, act, bias):
    backend, device = backend_device
    if _interpreted(backend, device) and shape != TINY and not (shape == SHAPES[0] and act == "leaky_relu"):
        pytest.skip("Triton interpreter: full sweep on the tiny shape, 7x5x3 with leaky_relu only")
    x, w, b = _inputs(shape, torch.float64, device, bias)
    y = _run(backend, x, w, b, act)
    ref = resize_conv3d_reference(x, w, b, act)
    assert y.shape == ref.shape
    assert y.is_contiguous()
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    gy = torch.randn_like(ref)  # the same grad_output to both
    for got, want in zip(_grads(y, (x, w, b), gy), _grads(ref, (x, w, b), gy), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("act", ["leaky_relu", "tanh"])
def test_matches_reference_float32(backend_device, act):
    backend, device = backend_device
    shape = TINY if _interpreted(backend, device) else SHAPES[0]
    x, w, b = _inputs(shape, torch.float32, device)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        y = _run(backend, x, w, b, act)
        gy = torch.randn_like(y)
        got = _grads(y, (x, w, b), gy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = resize_conv3d_reference(x64, w64, b64, act)
    want = _grads(ref, (x64, w64, b64), gy.double())
    # Sums of C_in * 27 (forward) up to N * 8DHW (weight gradient) float32 products of O(1).
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-5)


HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_within_twice_eager_error(backend_device, dtype):
    backend, device = backend_device
    if _interpreted(backend, device) and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter truncates float32 -> bfloat16 casts (the GPU rounds to nearest)")
    shape = TINY if _interpreted(backend, device) else SHAPES[0]
    # tanh: smooth, so no element flips across a relu kink between the two roundings.
    x, w, b = _inputs(shape, dtype, device)
    y = _run(backend, x, w, b, "tanh")
    eager = resize_conv3d_reference(x, w, b, "tanh")
    gy = torch.randn_like(y)
    got = _grads(y, (x, w, b), gy)
    eager_g = _grads(eager, (x, w, b), gy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = resize_conv3d_reference(x64, w64, b64, "tanh")
    want = _grads(ref, (x64, w64, b64), gy.double())
    # One half-precision ulp of the largest value is the floor: both round to the same grid.
    for mine, theirs, exact in zip((y, *got), (eager, *eager_g), (ref, *want), strict=True):
        ulp = exact.abs().max().item() * (2.0**-10 if dtype == torch.float16 else 2.0**-7)
        err = (mine.double() - exact).abs().max().item()
        eager_err = (theirs.double() - exact).abs().max().item()
        assert err <= 2 * eager_err + ulp, (err, eager_err, ulp)


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    n, c_in, c_out, d, h, w = TINY if _interpreted(backend, device) else SHAPES[0]
    base = torch.randn(n, d, h, c_in, 2 * w, dtype=torch.float64, device=device)
    x = base[..., ::2].permute(0, 3, 1, 2, 4).requires_grad_()  # (N, C_in, D, H, W), strided
    assert not x.is_contiguous()
    _, wt, b = _inputs((n, c_in, c_out, d, h, w), torch.float64, device)
    y = _run(backend, x, wt, b, "relu")
    ref = resize_conv3d_reference(x, wt, b, "relu")
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    gy = torch.randn_like(ref).transpose(2, 4).contiguous().transpose(2, 4)  # non-contiguous grad too
    for got, want in zip(_grads(y, (x, wt, b), gy), _grads(ref, (x, wt, b), gy), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_recorded_backward_equals_fast_backward(backend_device, act):
    """create_graph=True switches to the differentiable formulation; both must agree."""
    backend, device = backend_device
    x, w, b = _inputs(TINY if _interpreted(backend, device) else SHAPES[0], torch.float64, device)
    y = _run(backend, x, w, b, act)
    gy = torch.randn_like(y)
    fast = _grads(y, (x, w, b), gy)
    y = _run(backend, x, w, b, act)
    recorded = _grads(y, (x, w, b), gy, create_graph=True)
    for f, r in zip(fast, recorded, strict=True):
        torch.testing.assert_close(f, r.detach(), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_gradcheck_and_gradgradcheck(backend_device, act):
    backend, device = backend_device
    if _interpreted(backend, device) and act in (None, "relu"):
        pytest.skip("Triton interpreter: gradcheck on leaky_relu (the mask path) and tanh only")
    x, w, b = _inputs((1, 2, 2, 2, 3, 2), torch.float64, device)
    # relu/leaky kinks: random pre-activations lie within gradcheck's 1e-6 step of 0 with
    # negligible probability (and the seed is fixed). The interpreter uses the fast mode.
    fast = _interpreted(backend, device)

    def fn(x, w, b):
        return _run(backend, x, w, b, act, 0.3)

    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=fast)


def test_double_backward_matches_reference_under_gradient_penalty(backend_device):
    """The gradient-penalty pattern: differentiate ||d y / d x|| w.r.t. the weights."""
    backend, device = backend_device
    x, w, b = _inputs(TINY if _interpreted(backend, device) else SHAPES[0], torch.float64, device)
    out = []
    for use in (backend, "reference"):
        y = _run(use, x, w, b, "tanh")
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        out.append(torch.autograd.grad(gx.square().sum(), (w, b)))
    for got, want in zip(*out, strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_fold_helpers_reproduce_the_reference():
    x = torch.randn(2, 3, 5, 4, 3, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64)
    ref = resize_conv3d_reference(x, w)
    n, c_out, (d, h, wd) = 2, 4, x.shape[2:]
    w8 = fold_resize_conv_weight(w)
    assert w8.shape == (2, 2, 2, 4, 3, 2, 2, 2)
    conv = F.conv3d(x, w8.reshape(8 * c_out, 3, 2, 2, 2), padding=1).view(
        n, 2, 2, 2, c_out, d + 1, h + 1, wd + 1
    )
    y = torch.empty_like(ref)
    for a in range(2):
        for b in range(2):
            for c in range(2):
                y[:, :, a::2, b::2, c::2] = conv[:, a, b, c, :, a : a + d, b : b + h, c : c + wd]
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
    k4 = fold_resize_conv_weight_transposed(w)
    assert k4.shape == (3, 4, 4, 4, 4)
    torch.testing.assert_close(F.conv_transpose3d(x, k4, stride=2, padding=1), ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(_phase_to_transposed(w8), k4, atol=0, rtol=0)
    torch.testing.assert_close(_transposed_to_phase(k4), w8, atol=0, rtol=0)


def test_fold_is_differentiable():
    w = torch.randn(2, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fold_resize_conv_weight, (w,))
    assert torch.autograd.gradcheck(fold_resize_conv_weight_transposed, (w,))


def test_auto_picks_cpu_on_cpu_when_built():
    x, w, b = _inputs(SHAPES[0], torch.float32, "cpu")
    chosen = _DISPATCH.select(x.device, x, w, b, None, 0.2)
    from brainkern.ops import backends

    assert chosen == ("cpu" if backends()["cpu"] is True else "reference")


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "act", "match"),
    [
        ((1, 3, 4, 4, 4), (5, 3, 3, 3, 2), (5,), None, r"\(C_out, C_in, 3, 3, 3\)"),
        ((1, 3, 4, 4, 4), (5, 3, 1, 1, 1), None, None, r"\(C_out, C_in, 3, 3, 3\)"),
        ((1, 4, 4, 4, 4), (5, 3, 3, 3, 3), None, None, r"C_in=3 input channels but x has 4"),
        ((1, 3, 4, 4), (5, 3, 3, 3, 3), None, None, r"x must have shape \(N, C_in, D, H, W\)"),
        ((1, 3, 4, 4, 4), (5, 3, 3, 3, 3), (4,), None, r"bias must have shape \(5,\)"),
        ((1, 3, 4, 4, 4), (5, 3, 3, 3, 3), None, "gelu", r"unknown activation 'gelu'"),
        ((1, 3, 0, 4, 4), (5, 3, 3, 3, 3), None, None, r"empty"),
    ],
)
def test_bad_inputs_raise(x_shape, w_shape, b_shape, act, match):
    x = torch.randn(x_shape)
    w = torch.randn(w_shape)
    b = torch.randn(b_shape) if b_shape else None
    with pytest.raises(ValueError, match=match):
        resize_conv3d(x, w, b, act)


def test_bad_dtype_and_slope_raise():
    x = torch.randn(1, 3, 2, 2, 2)
    with pytest.raises(TypeError, match="float64"):
        resize_conv3d(x, torch.randn(4, 3, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating point"):
        resize_conv3d(x.long(), torch.randn(4, 3, 3, 3, 3).long())
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        resize_conv3d(x, torch.randn(4, 3, 3, 3, 3), activation="leaky_relu", negative_slope=-0.1)


def test_forced_backend_that_cannot_run_lists_reasons():
    x = torch.randn(1, 3, 2, 2, 2)
    with use_backend("cuda"), pytest.raises(BackendError, match="cuda"):
        if torch.cuda.is_available():
            pytest.skip("cuda can run CPU inputs' check only without a GPU")
        resize_conv3d(x, torch.randn(4, 3, 3, 3, 3))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_autocast_casts_like_conv3d(backend):
    # Under autocast a float32 layer takes lower-precision activations (a generator's
    # Linear and BatchNorm give bf16): the op casts like conv3d instead of refusing.
    x, wt, b = _inputs((2, 3, 4, 3, 4, 3), torch.float32, "cpu")
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize_conv3d(x.bfloat16(), wt, b, "relu")
        expected = F.relu(F.conv3d(F.interpolate(x, scale_factor=2, mode="nearest"), wt, b, padding=1))
    assert out.dtype == torch.bfloat16 == expected.dtype
    exact = resize_conv3d_reference(x.double(), wt.double(), b.double(), "relu")
    eager_err = (expected.double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= 2 * eager_err + 1e-2
    out.float().sum().backward()
    assert wt.grad is not None and wt.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
