"""resize_conv3d: every backend against the interpolate + conv3d reference.

Besides the shared backends, the sweep runs the ``cudnn`` implementation (ATen's
``conv_transpose3d`` + in-place activation, ``convolution_backward``), through
``use_resize_conv_impl``; on the CPU the same calls run on oneDNN.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F

from brainkern.ops import (
    BackendError,
    backends,
    fold_resize_conv_weight,
    fold_resize_conv_weight_transposed,
    resize_conv3d,
    resize_conv3d_reference,
    use_backend,
)
from brainkern.ops.resize_conv3d import (
    _DISPATCH,
    IMPL_ENV_VAR,
    IMPLS,
    _fold_for,
    _phase_to_transposed,
    _select,
    _transposed_to_phase,
    resize_conv3d_impl_order,
    use_resize_conv_impl,
)
from tests.conftest import BACKEND_DEVICES
from tests.guards import poisoned_outputs, recording

# The module (brainkern.ops.resize_conv3d as an attribute is the function of that name).
rc = importlib.import_module("brainkern.ops.resize_conv3d")

ACTS = [None, "relu", "leaky_relu", "tanh"]
# (N, C_in, C_out, D, H, W): batch 1 with the odd 7x5x3 grid and 3 -> 5 channels; a batch of 2
# with a non-cubic grid shrinking channels; a cube large enough for the CPU's phase-form conv.
SHAPES = [(1, 3, 5, 7, 5, 3), (2, 4, 2, 2, 3, 4), (1, 2, 3, 6, 6, 6)]
# Triton's CPU interpreter is slow: it runs the whole sweep only on this tiny shape.
TINY = (1, 2, 3, 2, 3, 2)

_NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDNN = [
    pytest.param(("cudnn", "cpu"), id="cudnn-cpu"),
    pytest.param(("cudnn", "cuda"), marks=_NO_GPU, id="cudnn-cuda"),
]


@pytest.fixture(params=BACKEND_DEVICES + CUDNN)
def backend_device(request) -> tuple[str, str]:
    """The shared (backend, device) pairs plus the cudnn implementation."""
    return request.param


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
    if backend == "cudnn":  # an implementation of automatic dispatch, not a backend
        with use_backend("auto"), use_resize_conv_impl("cudnn"):
            return resize_conv3d(x, w, b, act, slope)
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
    if backend == "cudnn" and act in (None, "relu"):
        # Its double backward is the shared differentiable path the other backends check;
        # leaky_relu (the mask) and tanh (the saved output) cover its own first-order backward.
        pytest.skip("cudnn: gradcheck on leaky_relu and tanh only")
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


# ---------------------------------------------------- batches, channel tiles, odd sizes

# (N, C_in, C_out, D, H, W): several samples (a wrong batch stride moves one sample onto
# another), C_in over three 16-channel tiles, C_out over two 16-channel tiles (a dropped tile
# offset repeats tile 0) or a single output channel (every column but one masked), odd
# spatial sizes. Small grids: Triton's interpreter pays per loop step, not per element.
WIDE = [(2, 37, 20, 1, 2, 3), (3, 20, 1, 1, 3, 1)]


@contextlib.contextmanager
def _poisoned(backend: str):
    """For Triton, the kernels' outputs inside poisoned margins (the guard); else nothing."""
    if backend != "triton":
        yield None
        return
    with poisoned_outputs(pytest.importorskip("brainkern.kernels.resize_conv3d")) as guard:
        yield guard


def _small_tiles(kmod, monkeypatch) -> None:
    # Every tile at the tl.dot minimum of 16, so that the loops over channel tiles run
    # several times at these sizes: 3 reduction steps over C_in = 37 and 2 column tiles over
    # C_out = 20 in the forward, 3 column tiles and 2 steps in the backward.
    small = {kind: t._replace(block_m=16, block_n=16, block_k=16) for kind, t in kmod._TILES.items()}
    monkeypatch.setattr(kmod, "_TILES", small)


@pytest.mark.parametrize("shape", WIDE, ids=lambda s: "x".join(map(str, s)))
def test_batches_and_channel_tiles_match_reference(backend_device, shape):
    """float64, NCDHW operands. The shipped float64 tiles (64, 32, 16) already split C_in = 37
    into three reduction steps, and in the backward C_in and C_out into two tiles each."""
    backend, device = backend_device
    x, w, b = _inputs(shape, torch.float64, device)
    gy = torch.randn(shape[0], shape[2], *(2 * s for s in shape[3:]), dtype=torch.float64, device=device)
    with _poisoned(backend) as guard:
        y = _run(backend, x, w, b, "leaky_relu")
        got = _grads(y, (x, w, b), gy)
    if guard is not None:
        assert guard.count == 2  # y and the input gradient went through the poisoned buffers
    ref = resize_conv3d_reference(x, w, b, "leaky_relu")
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    for g, r in zip(got, _grads(ref, (x, w, b), gy), strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)


def test_half_channels_last_operands_over_batches_and_tiles(backend_device, monkeypatch):
    """float16 takes the tensor-core layout in Triton (channels-last x and output gradient);
    16-wide tiles split both channel counts (the shipped half tiles are 64 wide)."""
    backend, device = backend_device
    if backend != "triton":
        pytest.skip("the channels-last operand path is Triton's")
    _small_tiles(pytest.importorskip("brainkern.kernels.resize_conv3d"), monkeypatch)
    shape = WIDE[0]
    x, w, b = _inputs(shape, torch.float16, device)
    gy = torch.randn(shape[0], shape[2], *(2 * s for s in shape[3:]), device=device).half()
    with _poisoned(backend) as guard:
        y = _run(backend, x, w, b, "tanh")
        got = _grads(y, (x, w, b), gy)
    assert guard.count == 2
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = resize_conv3d_reference(x64, w64, b64, "tanh")
    want = _grads(ref, (x64, w64, b64), gy.double())
    # Indexing bugs give errors of the size of the values; float16 rounding (of x, the folded
    # weights and the output; 2^-11 relative each) over sums of up to 8 * 37 products of O(1)
    # stays far below 2% of the largest value.
    for mine, exact in zip((y, *got), (ref, *want), strict=True):
        torch.testing.assert_close(mine.double(), exact, atol=2e-2 * exact.abs().max().item(), rtol=0)


def test_triton_splits_a_batch_past_the_offset_limit(monkeypatch):
    """Batches whose tensors pass 32-bit offsets run in launches of whole samples."""
    kmod = pytest.importorskip("brainkern.kernels.resize_conv3d")
    from brainkern.ops._backend import interpreter_enabled

    if not interpreter_enabled() and not torch.cuda.is_available():
        pytest.skip("Triton needs a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (3, 5, 4, 2, 3, 2)
    n, c_in, c_out, d, h, w = shape
    per_sample = max(c_in * d * h * w, 8 * c_out * d * h * w, 64 * c_in * c_out)
    monkeypatch.setattr(kmod, "_INDEX_LIMIT", 2 * per_sample)  # 2 samples, then 1
    launches = []
    for name in ("_resize_conv3d_fwd_kernel", "_resize_conv3d_bwd_kernel"):
        kernel = getattr(kmod, name)
        monkeypatch.setattr(kmod, name, _Counting(kernel, launches, name))
    assert kmod.samples_per_launch(n, per_sample) == 2
    x, wt, b = _inputs(shape, torch.float64, device)
    with poisoned_outputs(kmod):
        y = _run("triton", x, wt, b, "relu")
        gy = torch.randn_like(y)
        got = _grads(y, (x, wt, b), gy)
    assert launches == ["_resize_conv3d_fwd_kernel"] * 2 + ["_resize_conv3d_bwd_kernel"] * 2
    ref = resize_conv3d_reference(x, wt, b, "relu")
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    for g, r in zip(got, _grads(ref, (x, wt, b), gy), strict=True):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="one sample"):
        kmod.samples_per_launch(n, 2 * per_sample + 1)


class _Counting:
    """A Triton kernel whose launches are recorded by name."""

    def __init__(self, kernel, log: list, name: str) -> None:
        self.kernel, self.log, self.name = kernel, log, name

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


# ---------------------------------------------------------------- weight layouts


def test_folded_weights_per_implementation():
    w = torch.randn(5, 3, 3, 3, 3, dtype=torch.float64)
    k4 = fold_resize_conv_weight_transposed(w)
    assert k4.is_contiguous() and fold_resize_conv_weight(w).is_contiguous()
    kt = _fold_for("triton", w, torch.float64)
    assert kt.shape == (3, 5, 4, 4, 4) and kt.permute(2, 3, 4, 0, 1).is_contiguous()
    torch.testing.assert_close(kt, k4, atol=0, rtol=0)
    # Half types: folded in float32, rounded once to the input's dtype (tensor-core operands),
    # and the cast keeps the Triton layout.
    wh = w.half()
    kh = _fold_for("triton", wh, torch.float16)
    assert kh.dtype == torch.float16 and kh.permute(2, 3, 4, 0, 1).is_contiguous()
    torch.testing.assert_close(kh, fold_resize_conv_weight_transposed(wh.float()).half(), atol=0, rtol=0)
    # cuDNN on a GPU multiplies half operands; on the CPU ATen's path computes in float32.
    assert _fold_for("cudnn", wh, torch.float16).dtype == torch.float32
    if torch.cuda.is_available():
        assert _fold_for("cudnn", wh.cuda(), torch.float16).dtype == torch.float16
    # The extension and the cpu backend read float32 weights for half inputs.
    assert _fold_for("cuda", wh, torch.float16).shape == (2, 2, 2, 5, 3, 2, 2, 2)
    assert _fold_for("cuda", wh, torch.float16).dtype == torch.float32
    assert _fold_for("cpu", wh, torch.float16).dtype == torch.float32


# ---------------------------------------------------------------- host synchronisation


@contextlib.contextmanager
def _cuda_syncs_raise(device: str):
    if device != "cuda":
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


INTERPRETED_SYNC_CASES = [(torch.float32, "leaky_relu"), (torch.bfloat16, "tanh")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ["leaky_relu", "tanh", None])
def test_forward_and_backward_never_wait_for_the_device(backend_device, dtype, act):
    """A training step's forward and backward of the op only queue work.

    Recorded on the CPU with a dispatch mode (every backend that runs here); on a GPU the
    same step also runs under ``torch.cuda.set_sync_debug_mode("error")``.
    """
    backend, device = backend_device
    if _interpreted(backend, device) and (dtype, act) not in INTERPRETED_SYNC_CASES:
        pytest.skip("Triton interpreter: float32 leaky_relu and bfloat16 tanh only")
    x, w, b = _inputs(TINY, dtype, device)
    gy = torch.randn(1, 3, 4, 6, 4, device=device, dtype=dtype)
    if device == "cuda":
        _grads(_run(backend, x, w, b, act), (x, w, b), gy)  # warm-up: Triton's compilation, cuDNN plans
    with recording() as rec, _cuda_syncs_raise(device):
        y = _run(backend, x, w, b, act)
        _grads(y, (x, w, b), gy)
    assert not rec.events, "\n".join(map(str, rec.events))


# ---------------------------------------------------------------- dispatch on the GPU


def test_gpu_order_follows_the_documented_table():
    def order(dtype, c_out):
        return resize_conv3d_impl_order(
            torch.empty(1, 8, 2, 2, 2, dtype=dtype), torch.empty(c_out, 8, 3, 3, 3, dtype=dtype)
        )

    assert order(torch.bfloat16, 256)[0] == order(torch.float16, 16)[0] == "triton"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        assert order(torch.float32, 64)[0] == "triton"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        assert order(torch.float32, 64)[0] == "cudnn"
    assert order(torch.bfloat16, 1)[:2] == ("cuda", "cudnn")  # Kwon et al.'s last layer, 64 -> 1
    assert order(torch.float64, 64)[0] == "cuda"
    # Every order names all three, so cudnn (which runs every non-empty input) is always tried.
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for c_out in (1, 15, 16, 512):
            assert sorted(order(dtype, c_out)) == sorted(IMPLS)


def test_impl_override_and_its_precedence(monkeypatch):
    x, w, b = _inputs(TINY, torch.float64, "cpu")
    args = (x, w, b, "relu", 0.2)
    auto = "cpu" if backends()["cpu"] is True else "reference"
    assert _select(*args) == auto  # on the CPU the table is not used
    with use_resize_conv_impl("cudnn"):
        assert _select(*args) == "cudnn"
        with use_backend("reference"):  # a forced backend wins over the implementation
            assert _select(*args) == "reference"
    monkeypatch.setenv(IMPL_ENV_VAR, "cudnn")
    assert _select(*args) == "cudnn"
    with use_resize_conv_impl("auto"):  # the context manager wins over the environment
        assert _select(*args) == auto
    monkeypatch.setenv(IMPL_ENV_VAR, "cublas")
    with pytest.raises(
        ValueError, match=r"unknown implementation 'cublas' from \$BRAINKERN_RESIZE_CONV_IMPL"
    ):
        resize_conv3d(*args)
    with pytest.raises(ValueError, match="unknown implementation"), use_resize_conv_impl("cublas"):
        pass


def test_forced_impl_that_cannot_run_lists_reasons():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-side reasons")
    x, w, b = _inputs(TINY, torch.float64, "cpu")
    with use_resize_conv_impl("cuda"), pytest.raises(BackendError) as err:
        resize_conv3d(x, w, b)
    message = str(err.value)
    assert "implementation 'cuda' was forced" in message
    cuda_line = next(line for line in message.splitlines() if line.strip().startswith("cuda:"))
    # Either the extension lacks CUDA here or the input is on the CPU: the line says which.
    assert "without CUDA" in cuda_line or "no CUDA device" in cuda_line or "on CUDA devices only" in cuda_line
    assert "cudnn: can run it" in message


def test_sizes_past_32_bits_go_to_a_path_that_works(monkeypatch):
    """Shrunk limits stand in for 2^31 elements (which would not fit in a test)."""
    # y and the folded weight: 256 elements per sample, 512 for the batch.
    x, w, b = _inputs((2, 1, 4, 2, 2, 2), torch.float64, "cpu")
    args = (x, w, b, "relu", 0.2)
    monkeypatch.setattr(rc, "_INT32", 300)  # the batch is past it, each sample is not
    assert rc._check_triton(*args) is None  # Triton splits the batch between samples
    assert rc._check_cuda(*args) is None  # the extension kernel's offsets are 64-bit: any size
    assert rc._impl_reason("cudnn", *args) is None
    monkeypatch.setattr(rc, "_INT32", 100)  # now one sample is past it too
    assert "32-bit offsets" in rc._check_triton(*args)
    assert rc._impl_reason("triton", *args) is not None and rc._check_cuda(*args) is None
    assert rc._impl_reason("cudnn", *args) is None  # never the reference that upsamples
    torch.testing.assert_close(
        _run("cudnn", x, w, b, "relu"), resize_conv3d_reference(x, w, b, "relu"), atol=1e-10, rtol=1e-10
    )


@_NO_GPU
def test_gpu_large_inputs_run_cudnn_not_the_reference(monkeypatch):
    x, w, b = _inputs((2, 3, 4, 2, 2, 2), torch.float32, "cuda")
    args = (x, w, b, "relu", 0.2)
    monkeypatch.setattr(rc, "_INT32", 100)
    assert _select(*args) == "cudnn"
    if backends()["cuda"] is True:
        with use_backend("cuda"):  # the cuda backend's own path past the extension's offsets
            assert _select(*args) == "cudnn"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        y = resize_conv3d(*args)
    torch.testing.assert_close(y, resize_conv3d_reference(x, w, b, "relu"), atol=1e-5, rtol=1e-5)
