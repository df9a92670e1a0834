"""diff_augment3d: every backend against the reference, bit for bit, and the reference by hand.

Every backend computes ``s * x + (1 - s) * background`` in float32 (float64 for
float64 inputs) with the same roundings and no fused multiply-add, so the
comparisons are ``torch.equal`` in every dtype. Triton calls allocate their
outputs inside poisoned margins (``tests.guards.poisoned_outputs``), and a sweep
with tiles of a few elements crosses every mask edge of the kernel.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch

from brainkern.ops import (
    BACKENDS,
    BackendError,
    backends,
    diff_augment3d,
    diff_augment3d_reference,
    use_backend,
)
from tests.guards import poisoned_outputs

da_module = importlib.import_module("brainkern.ops.diff_augment3d")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(2, 3, 7, 5, 3), (1, 1, 5, 6, 4), (3, 2, 4, 3, 9)]
SHAPE_IDS = ["7x5x3", "batch1-5x6x4", "4x3x9"]


def _guarded(backend: str) -> contextlib.AbstractContextManager:
    if backend != "triton":
        return contextlib.nullcontext()
    from brainkern.kernels import diff_augment3d as kernels  # noqa: PLC0415  (imports triton)

    return poisoned_outputs(kernels)


def _params(shape, device="cpu", seed=0):
    """Per-sample parameters that cover every case: shifts within, at and beyond the
    volume, both signs; boxes inside, crossing the border, outside and empty; scales
    below and above 1 and exactly 1."""
    gen = torch.Generator().manual_seed(seed)
    n, _, *sizes = shape
    size = torch.tensor(sizes)
    shift = (torch.rand(n, 3, generator=gen) * 1.6 * size - 0.8 * size).round().long()
    if n > 1:
        shift[1] = torch.tensor([0, -sizes[1] - 1, 1])  # one sample's source entirely outside
    lo = (torch.rand(n, 3, generator=gen) * (size + 2) - 2).floor().long()
    hi = lo + (torch.rand(n, 3, generator=gen) * size).ceil().long()
    if n > 2:
        hi[2, 0] = lo[2, 0]  # an empty box
    scale = torch.rand(n, generator=gen) * 0.6 + 0.7
    scale[0] = 1.0
    return shift.to(device), lo.to(device), hi.to(device), scale.to(device)


def _rand(shape, dtype, device):
    return (torch.rand(shape, dtype=torch.float64) * 2 - 1).to(device=device, dtype=dtype)


def _views(x: torch.Tensor) -> dict[str, torch.Tensor]:
    n, c, d, h, w = x.shape
    padded = torch.zeros(n, c + 1, d, h, 2 * w, dtype=x.dtype, device=x.device)
    padded[:, 1:, :, :, ::2] = x
    return {
        "channels_last": x.contiguous(memory_format=torch.channels_last_3d),
        "permuted": x.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0),
        "sliced": padded[:, 1:, :, :, ::2],
    }


# ----------------------------------------------------------------------------- reference oracle


def test_reference_follows_the_formula():
    shape = (3, 2, 4, 3, 5)
    x = _rand(shape, torch.float64, "cpu")
    shift, lo, hi, scale = _params(shape)
    bg = -1.0
    y = diff_augment3d_reference(x, shift, lo, hi, scale, bg)
    expected = torch.empty_like(x)
    for n in range(3):
        s = scale[n].item()
        for d in range(4):
            for h in range(3):
                for w in range(5):
                    p = (d, h, w)
                    src = [p[k] - shift[n, k].item() for k in range(3)]
                    inside = all(0 <= src[k] < shape[2 + k] for k in range(3))
                    cut = all(lo[n, k] <= p[k] < hi[n, k] for k in range(3))
                    for c in range(2):
                        v = x[n, c, src[0], src[1], src[2]].item() if inside else bg
                        expected[n, c, d, h, w] = bg if cut else bg + s * (v - bg)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- forward, every backend


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_is_bit_exact(backend_device, shape, dtype):
    backend, device = backend_device
    x = _rand(shape, dtype, device)
    params = _params(shape, device)
    expected = diff_augment3d_reference(x, *params, -1.0)
    with use_backend(backend), _guarded(backend):
        y = diff_augment3d(x, *params, -1.0)
    assert y.dtype == dtype and y.device == x.device and y.is_contiguous()
    assert torch.equal(y, expected)


@pytest.mark.parametrize("layout", ["channels_last", "permuted", "sliced"])
def test_non_contiguous_inputs(backend_device, layout):
    backend, device = backend_device
    shape = SHAPES[0]
    x = _views(_rand(shape, torch.float32, device))[layout]
    params = _params(shape, device, seed=1)
    assert not x.is_contiguous()
    with use_backend(backend), _guarded(backend):
        y = diff_augment3d(x, *params, 0.25)
    assert y.is_contiguous() and torch.equal(y, diff_augment3d_reference(x.contiguous(), *params, 0.25))


def test_identity_parameters_return_x_exactly(backend_device):
    backend, device = backend_device
    x = torch.tensor([1e-8, -0.3, 0.7, 1.0 - 2**-24, 3.0, -2.0], device=device).reshape(1, 1, 1, 2, 3)
    zeros = torch.zeros(1, 3, dtype=torch.int64, device=device)
    with use_backend(backend), _guarded(backend):
        y = diff_augment3d(x, zeros, zeros, zeros, torch.ones(1, device=device), -1.0)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_bfloat16_rounds_ties_to_even(backend_device):
    # float32 results exactly halfway between two bfloat16 values (7 mantissa bits):
    # 1.5 * (1 + 2^-7) = 1.5 + 1.5 ulp -> 1.5 + 2 ulp (even); truncation would give 1.5 + 1 ulp.
    backend, device = backend_device
    one = 1 + 2**-7
    x = torch.tensor([one, -one, one], dtype=torch.bfloat16, device=device).reshape(3, 1, 1, 1, 1)
    zeros = torch.zeros(3, 3, dtype=torch.int64, device=device)
    scale = torch.tensor([1.5, 1.5, 0.75], device=device)
    with use_backend(backend), _guarded(backend):
        y = diff_augment3d(x, zeros, zeros, zeros, scale, 0.0)
    expected = torch.tensor([1.515625, -1.515625, 0.7578125], dtype=torch.bfloat16, device=device)
    assert torch.equal(y.flatten(), expected)
    assert torch.equal(y, diff_augment3d_reference(x, zeros, zeros, zeros, scale, 0.0))


def test_empty_batch(backend_device):
    backend, device = backend_device
    x = torch.randn(0, 2, 3, 4, 5, device=device)
    idx = torch.zeros(0, 3, dtype=torch.int64, device=device)
    with use_backend(backend), _guarded(backend):
        assert diff_augment3d(x, idx, idx, idx, torch.ones(0, device=device)).shape == x.shape


# ----------------------------------------------------------------------------- Triton tiles and masks

# (shape, _TILE): row blocks of 8 over rows of 3 and 7 (partial row blocks); column
# blocks of 4 over rows of 9 (a partial column block with a single live lane).
TILE_CASES = [((2, 3, 3, 5, 3), 8), ((3, 1, 2, 5, 7), 16), ((2, 2, 1, 3, 9), 4)]


@pytest.mark.parametrize(("shape", "tile"), TILE_CASES, ids=["rows3", "rows7", "cols9"])
def test_triton_small_tiles_stay_inside_the_output(backend_device, monkeypatch, shape, tile):
    backend, device = backend_device
    if backend != "triton":
        pytest.skip("the tile and mask logic of the Triton kernel")
    from brainkern.kernels import diff_augment3d as kernels  # noqa: PLC0415  (imports triton)

    monkeypatch.setattr(kernels, "_TILE", tile)
    x = _views(_rand(shape, torch.float64, device))["sliced"].requires_grad_()
    params = _params(shape, device, seed=2)
    g = _rand(shape, torch.float64, device)
    with use_backend("triton"), poisoned_outputs(kernels) as guard:
        y = diff_augment3d(x, *params, -1.0)
        (gx,) = torch.autograd.grad(y, x, g)
    assert guard.count == 2
    assert torch.equal(y, diff_augment3d_reference(x.detach(), *params, -1.0))
    (gx_ref,) = torch.autograd.grad(diff_augment3d_reference(x, *params, -1.0), x, g)
    assert torch.equal(gx, gx_ref)


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_backward_matches_the_reference(backend_device, dtype):
    backend, device = backend_device
    shape = SHAPES[2]
    x = _rand(shape, dtype, device).requires_grad_()
    params = _params(shape, device, seed=3)
    grad = _views(_rand(shape, dtype, device))["permuted"]  # a non-contiguous grad_output
    with use_backend(backend), _guarded(backend):
        (gx,) = torch.autograd.grad(diff_augment3d(x, *params, -1.0), x, grad)
    (gx_ref,) = torch.autograd.grad(diff_augment3d_reference(x, *params, -1.0), x, grad)
    assert torch.equal(gx, gx_ref)


def test_gradient_is_the_adjoint_gather():
    # grad_x[q] = scale * keep(q + shift) * grad_y[q + shift], written out for one sample.
    x = torch.zeros(1, 1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    shift, lo, hi = torch.tensor([[1, 0, -1]]), torch.tensor([[2, 0, 0]]), torch.tensor([[3, 2, 2]])
    scale = torch.tensor([0.5], dtype=torch.float64)
    g = torch.arange(24, dtype=torch.float64).reshape(x.shape) + 1
    (gx,) = torch.autograd.grad(diff_augment3d(x, shift, lo, hi, scale, -1.0), x, g)
    expected = torch.zeros_like(x)
    for d in range(3):
        for h in range(2):
            for w in range(4):
                p = (d + 1, h, w - 1)
                if 0 <= p[0] < 3 and 0 <= p[2] < 4 and not (p[0] == 2 and p[2] < 2):
                    expected[0, 0, d, h, w] = 0.5 * g[0, 0, p[0], p[1], p[2]]
    assert torch.equal(gx, expected)


def test_gradcheck_and_gradgradcheck(backend_device):
    backend, device = backend_device
    shape = (3, 1, 2, 3, 2)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    shift, lo, hi, scale = _params(shape, device, seed=4)
    scale = scale.double()

    def fn(t):
        return diff_augment3d(t, shift, lo, hi, scale, -1.0)

    # Under the interpreter each evaluation is a kernel launch: fast mode checks the
    # Jacobian along random directions (a few launches instead of two per element).
    fast = backend == "triton" and device == "cpu"
    with use_backend(backend), _guarded(backend):
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=fast)
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=fast)


def test_third_derivative_through_a_nonlinearity(backend_device):
    # f(x) = sum(aug(x)^3) with background 0 and shift 0: aug(x) = s * keep * x, so
    # d^3f/dx^3 along v = 6 * s^3 * keep * v^3 (elementwise sum), and the gradient of
    # its sum is that expression's coefficient per voxel.
    backend, device = backend_device
    x = torch.randn(2, 1, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    zeros = torch.zeros(2, 3, dtype=torch.int64, device=device)
    lo = torch.tensor([[0, 0, 0], [1, 0, 1]], device=device)
    hi = torch.tensor([[1, 2, 1], [2, 1, 3]], device=device)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64, device=device)
    v = torch.randn_like(x)
    with use_backend(backend), _guarded(backend):
        f = diff_augment3d(x, zeros, lo, hi, scale, 0.0).pow(3).sum()
        (g1,) = torch.autograd.grad(f, x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * v).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad((g2 * v).sum(), x)
    keep = torch.ones_like(x)
    keep[0, :, 0, 0:2, 0] = 0
    keep[1, :, 1, 0, 1:3] = 0
    expected = 6 * scale.view(2, 1, 1, 1, 1) ** 3 * keep * v**2
    torch.testing.assert_close(g3, expected, rtol=1e-12, atol=1e-12)


def test_forward_and_backward_stay_on_the_forced_backend(backend_device, monkeypatch):
    backend, device = backend_device
    seen: list[str] = []
    real_run = da_module._run

    def spy(name, *args):
        seen.append(name)
        return real_run(name, *args)

    monkeypatch.setattr(da_module, "_run", spy)
    shape = (2, 1, 3, 2, 2)
    x = torch.randn(shape, device=device, requires_grad=True)
    with use_backend(backend), _guarded(backend):
        y = diff_augment3d(x, *_params(shape, device), -1.0)
    y.backward(torch.ones_like(y))  # outside the block, maybe on another thread
    assert seen == ([] if backend == "reference" else [backend, backend])


# ----------------------------------------------------------------------------- dispatch and compiler


def test_auto_choice_on_cpu(monkeypatch):
    monkeypatch.delenv("BRAINKERN_BACKEND", raising=False)
    x = torch.randn(1, 1, 2, 2, 2)
    args = (x, *_params(x.shape), 0.0)
    expected = (
        "cpu" if backends()["cpu"] is True and hasattr(torch.ops.brainkern, "diff_augment3d") else "reference"
    )
    assert da_module._DISPATCH.select(x.device, *args) == expected


def test_unsupported_dtype_falls_back_and_forced_backend_explains():
    x = torch.randn(1, 1, 2, 2, 3).to(torch.float8_e4m3fn)
    params = _params(x.shape)
    y = diff_augment3d(x, *params, 0.0)
    assert torch.equal(y.view(torch.uint8), diff_augment3d_reference(x, *params, 0.0).view(torch.uint8))
    with use_backend("cuda"), pytest.raises(BackendError) as info:
        diff_augment3d(torch.randn(1, 1, 2, 2, 2), *_params((1, 1, 2, 2, 2)))
    message = str(info.value)
    assert "brainkern.ops.diff_augment3d: backend 'cuda' was forced" in message
    assert all(f"\n  {name}: " in message for name in BACKENDS)


def test_custom_op_passes_opcheck(backend_device):
    backend, device = backend_device
    shape = (2, 1, 2, 3, 2)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    params = _params(shape, device, seed=5)
    code = BACKENDS.index(backend)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    with use_backend(backend):
        for args in ((x, *params, -1.0, -1), (x.detach()[:, :, :, :2], *params, 0.5, code)):
            test_utils = checks if backend != "triton" else checks[:2]  # the interpreter: fewer runs
            result = torch.library.opcheck(da_module._augment_op, args, test_utils=test_utils)
            assert set(result.values()) == {"SUCCESS"}, result


def test_compiles_into_one_graph_and_chooses_the_backend_when_it_runs():
    from torch._dynamo.testing import CompileCounterWithBackend  # noqa: PLC0415

    shape = (2, 1, 3, 2, 4)
    params = _params(shape)
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x: diff_augment3d(x, *params, -1.0) * 2, fullgraph=True, backend=counter)
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    (g_ref,) = torch.autograd.grad(diff_augment3d_reference(x, *params, -1.0) * 2, x, g)
    for name in ("cpu", "reference"):
        if backends()[name] is not True:
            continue
        with use_backend(name):
            y = fn(x)
        (gx,) = torch.autograd.grad(y, x, g)
        assert torch.equal(y, diff_augment3d_reference(x.detach(), *params, -1.0) * 2)
        assert torch.equal(gx, g_ref)
    assert counter.frame_count == 1


_needs_op = pytest.mark.skipif(
    backends()["cpu"] is not True or not hasattr(torch.ops.brainkern, "diff_augment3d"),
    reason="brainkern._C is not built with diff_augment3d",
)


@_needs_op
def test_extension_op_passes_opcheck_and_has_a_meta_kernel():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 1, 2, 3, 2).to(dtype)
        result = torch.library.opcheck(
            torch.ops.brainkern.diff_augment3d.default, (x, *_params(x.shape), -1.0)
        )
        assert set(result.values()) == {"SUCCESS"}, result
    meta = torch.empty(2, 3, 4, 5, 6, device="meta", dtype=torch.float16)
    idx = torch.zeros(2, 3, dtype=torch.int64, device="meta")
    y = torch.ops.brainkern.diff_augment3d(meta, idx, idx, idx, torch.ones(2, device="meta"), 0.0)
    assert y.shape == meta.shape and y.dtype == torch.float16 and y.is_contiguous()


@_needs_op
def test_extension_op_checks_its_inputs():
    op = torch.ops.brainkern.diff_augment3d
    x = torch.randn(2, 1, 2, 2, 2)
    idx = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"x must be 5-d"):
        op(torch.randn(2, 2, 2, 2), idx, idx, idx, torch.ones(2), 0.0)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64, got Int"):
        op(x.int(), idx, idx, idx, torch.ones(2), 0.0)
    with pytest.raises(RuntimeError, match=r"lo must have shape \(N, 3\) = \(2, 3\), got \[3, 3\]"):
        op(x, idx, torch.zeros(3, 3, dtype=torch.int64), idx, torch.ones(2), 0.0)
    with pytest.raises(RuntimeError, match="shift must be int64, got Int"):
        op(x, idx.int(), idx, idx, torch.ones(2), 0.0)
    with pytest.raises(RuntimeError, match=r"scale must have shape \(N,\)"):
        op(x, idx, idx, idx, torch.ones(3), 0.0)


# ----------------------------------------------------------------------------- errors


def _call(x=None, shift=None, lo=None, hi=None, scale=None, background=0.0):
    x = torch.randn(2, 1, 3, 3, 3) if x is None else x
    idx = torch.zeros(2, 3, dtype=torch.int64)
    return lambda: diff_augment3d(
        x,
        idx if shift is None else shift,
        idx if lo is None else lo,
        idx if hi is None else hi,
        torch.ones(2) if scale is None else scale,
        background,
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (_call(x=torch.randn(2, 3, 3, 3)), ValueError, r"5-d \(N, C, D, H, W\), got shape \(2, 3, 3, 3\)"),
        (_call(x=torch.ones(2, 1, 3, 3, 3, dtype=torch.int64)), TypeError, "floating-point.*int64"),
        (_call(x=[[1.0]]), TypeError, "x must be a torch.Tensor, got list"),
        (_call(shift=torch.zeros(2, 3, dtype=torch.int32)), TypeError, "shift must be int64, got.*int32"),
        (_call(lo=torch.zeros(2, 2, dtype=torch.int64)), ValueError, r"lo must have shape \(N, 3\) = \(2, 3"),
        (_call(hi=torch.zeros(3, 3, dtype=torch.int64)), ValueError, r"hi must have shape.*got \(3, 3\)"),
        (_call(scale=torch.ones(2, dtype=torch.int64)), TypeError, "scale must be a floating-point"),
        (_call(scale=torch.ones(1)), ValueError, r"scale must have shape \(N,\) = \(2,\), got \(1,\)"),
        (_call(scale=torch.ones(2, requires_grad=True)), ValueError, "scale requires grad"),
        (_call(shift=torch.zeros(2, 3, dtype=torch.int64, device="meta")), ValueError, "shift is on meta"),
        (_call(background="black"), TypeError, "background must be a float, got str"),
    ],
    ids=["ndim4", "int-x", "list", "int32-shift", "lo-shape", "hi-batch", "int-scale", "scale-shape",
         "scale-grad", "device", "background"],
)  # fmt: skip
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
