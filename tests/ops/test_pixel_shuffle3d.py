"""pixel_shuffle3d / pixel_unshuffle3d: every backend against the reference, bit for bit.

Both ops only move data, so every comparison is ``torch.equal`` (no tolerance),
in every dtype. The reference itself is checked against an explicit index
formula and against MONAI's ``pixelshuffle`` / ``pixelunshuffle``.

Every Triton call allocates its output inside poisoned margins
(``tests.guards.poisoned_outputs``), so a kernel that writes one element past its
output fails the test that made it, instead of corrupting the heap for a later
one; a sweep with tiles shrunk to a few elements makes every mask edge (partial
row blocks, partial column blocks) appear on small inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from brainkern.ops import (
    BACKENDS,
    BackendError,
    backends,
    pixel_shuffle3d,
    pixel_shuffle3d_reference,
    pixel_unshuffle3d,
    pixel_unshuffle3d_reference,
    use_backend,
)
from tests.guards import poisoned_outputs

# The submodule, which the function of the same name shadows as an attribute of brainkern.ops.
ps_module = importlib.import_module("brainkern.ops.pixel_shuffle3d")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# (low-resolution shape (N, C*r^3, D, H, W), r): odd sizes, batch 1, r = 1, 2, 3,
# and the 53x63x46 fMRI grid's neighbour 54x64x46 reached by shuffling 27x32x23
# (53x63x46 itself is not divisible by 2, see test_unshuffle_rejects_indivisible_grid).
CASES = [
    ((1, 8 * 3, 7, 5, 3), 2),
    ((2, 27, 5, 3, 4), 3),
    ((2, 5, 3, 4, 2), 1),
    ((1, 8, 27, 32, 23), 2),
]
CASE_IDS = ["7x5x3-r2", "5x3x4-r3", "r1", "27x32x23-r2"]


def _guarded(backend: str) -> contextlib.AbstractContextManager:
    """For ``triton``: its outputs sit inside poisoned margins, checked on exit. Others: nothing."""
    if backend != "triton":
        return contextlib.nullcontext()
    from brainkern.kernels import pixel_shuffle3d as kernels  # noqa: PLC0415  (imports triton)

    return poisoned_outputs(kernels)


def _rand(shape, dtype, device):
    return torch.randn(shape, dtype=torch.float64).to(device=device, dtype=dtype)


def _views(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``x`` itself and non-contiguous tensors with the same values."""
    n, c, d, h, w = x.shape
    padded = torch.zeros(n, c + 1, d, h, 2 * w, dtype=x.dtype, device=x.device)
    padded[:, 1:, :, :, ::2] = x
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last_3d),
        "permuted": x.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0),
        "sliced": padded[:, 1:, :, :, ::2],
    }


# ----------------------------------------------------------------------------- reference oracle


@pytest.mark.parametrize("r", [1, 2, 3])
def test_reference_follows_the_index_formula(r):
    n, c, d, h, w = 2, 2, 3, 2, 4
    x = torch.arange(n * c * r**3 * d * h * w, dtype=torch.float64).reshape(n, c * r**3, d, h, w)
    y = pixel_shuffle3d_reference(x, r)
    assert y.shape == (n, c, d * r, h * r, w * r)
    expected = torch.empty_like(y)
    for ci in range(c):
        for i in range(r):
            for j in range(r):
                for k in range(r):
                    channel = ci * r**3 + i * r**2 + j * r + k
                    expected[:, ci, i::r, j::r, k::r] = x[:, channel]
    assert torch.equal(y, expected)
    assert torch.equal(pixel_unshuffle3d_reference(y, r), x)


@pytest.mark.parametrize(("shape", "r"), CASES, ids=CASE_IDS)
def test_reference_matches_monai(shape, r):
    monai_utils = pytest.importorskip("monai.networks.utils")
    x = torch.randn(shape)
    y = pixel_shuffle3d_reference(x, r)
    assert torch.equal(y, monai_utils.pixelshuffle(x, spatial_dims=3, scale_factor=r))
    assert torch.equal(pixel_unshuffle3d_reference(y, r), monai_utils.pixelunshuffle(y, 3, r))


def test_public_op_matches_monai_on_every_backend(backend_device):
    monai_utils = pytest.importorskip("monai.networks.utils")
    backend, device = backend_device
    x = torch.randn(2, 16, 3, 5, 4, device=device)
    with use_backend(backend), _guarded(backend):
        y = pixel_shuffle3d(x, 2)
        z = pixel_unshuffle3d(y, 2)
    assert torch.equal(y, monai_utils.pixelshuffle(x, 3, 2))
    assert torch.equal(z, monai_utils.pixelunshuffle(y, 3, 2))


# ----------------------------------------------------------------------------- forward, every backend


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(("shape", "r"), CASES, ids=CASE_IDS)
def test_shuffle_and_unshuffle_are_bit_exact(backend_device, shape, r, dtype):
    backend, device = backend_device
    x = _rand(shape, dtype, device)
    expected = pixel_shuffle3d_reference(x, r)
    with use_backend(backend), _guarded(backend):
        y = pixel_shuffle3d(x, r)
        z = pixel_unshuffle3d(expected, r)
    assert y.dtype == dtype and y.device == x.device and y.is_contiguous()
    assert torch.equal(y, expected)
    assert z.is_contiguous() and torch.equal(z, pixel_unshuffle3d_reference(expected, r))
    assert torch.equal(z, x)


@pytest.mark.parametrize("layout", ["channels_last", "permuted", "sliced"])
@pytest.mark.parametrize(("shape", "r"), CASES[:3], ids=CASE_IDS[:3])
def test_non_contiguous_inputs(backend_device, shape, r, layout):
    backend, device = backend_device
    x = _views(_rand(shape, torch.float32, device))[layout]
    hi = _views(pixel_shuffle3d_reference(x.contiguous(), r))[layout]
    assert not x.is_contiguous()
    with use_backend(backend), _guarded(backend):
        y = pixel_shuffle3d(x, r)
        z = pixel_unshuffle3d(hi, r)
    assert y.is_contiguous() and torch.equal(y, pixel_shuffle3d_reference(x, r))
    assert z.is_contiguous() and torch.equal(z, pixel_unshuffle3d_reference(hi, r))


def test_broadcast_input_with_zero_strides(backend_device):
    backend, device = backend_device
    x = torch.randn(1, 8, 1, 3, 1, device=device).expand(2, 8, 3, 3, 5)
    with use_backend(backend), _guarded(backend):
        y = pixel_shuffle3d(x, 2)
        z = pixel_unshuffle3d(x[:, :, :2, :2, :4], 2)
    assert torch.equal(y, pixel_shuffle3d_reference(x, 2))
    assert torch.equal(z, pixel_unshuffle3d_reference(x[:, :, :2, :2, :4], 2))


@pytest.mark.parametrize("r", [1, 2, 3])
def test_round_trip_is_identity(backend_device, r):
    backend, device = backend_device
    x = torch.randn(1, 2 * r**3, 3, 2, 5, device=device)
    hi = torch.randn(2, 3, 2 * r, 3 * r, r, device=device)
    with use_backend(backend), _guarded(backend):
        assert torch.equal(pixel_unshuffle3d(pixel_shuffle3d(x, r), r), x)
        assert torch.equal(pixel_shuffle3d(pixel_unshuffle3d(hi, r), r), hi)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "unshuffle"])
@pytest.mark.parametrize("shape", [(2, 8, 3, 2, 4), (1, 8, 1, 1, 1)], ids=["3x2x4", "1x1x1"])
def test_result_never_aliases_the_input(backend_device, shape, shuffle):
    # r = 1 is the identity, and a 1x1x1 shuffle is a pure reshape: both would be
    # views of x in the reference; the op documents a new tensor on every backend.
    backend, device = backend_device
    x = torch.randn(shape, device=device)
    op = pixel_shuffle3d if shuffle else pixel_unshuffle3d
    with use_backend(backend), _guarded(backend):
        y = op(x, 1)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
        if shuffle:
            y2 = op(x, 2)
            assert y2.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    y.add_(1)
    assert not torch.equal(y, x)


def test_empty_batch(backend_device):
    backend, device = backend_device
    x = torch.randn(0, 16, 3, 2, 2, device=device)
    with use_backend(backend), _guarded(backend):
        assert pixel_shuffle3d(x, 2).shape == (0, 2, 6, 4, 4)
        assert pixel_unshuffle3d(torch.randn(0, 2, 6, 4, 4, device=device), 2).shape == (0, 16, 3, 2, 2)


# ----------------------------------------------------------------------------- Triton tiles and masks

# (low-resolution shape, r, _TILE), chosen so that every mask edge of the kernels is
# crossed on a small input (BLOCK_E x BLOCK_R per program, rows of the output):
# - "cols": shuffle rows of 14 in blocks of 8 (the second column block has 6 live
#   lanes of 8), unshuffle rows of 7 in one block of 8; odd H and W.
# - "rows": shuffle rows of 2, 8 rows a program over 180 rows (the last block holds 4),
#   unshuffle rows of 1, 16 a program over 360 rows (the last holds 8); 40 input
#   channels spread over 23 programs each way.
# - "r3": r = 3, shuffle rows of 6 in a block of 8, unshuffle 4 rows of 2 a program
#   over 54 rows (the last holds 2).
# Every case has a batch > 1.
TILE_CASES = [
    ((2, 8, 1, 3, 7), 2, 8),
    ((3, 40, 3, 1, 1), 2, 16),
    ((2, 27, 1, 1, 2), 3, 8),
]
TILE_IDS = ["cols", "rows", "r3"]
# Each word size once, each input layout once.
TILE_INPUTS = [(torch.float16, "sliced"), (torch.float32, "contiguous"), (torch.float64, "permuted")]


@pytest.mark.parametrize(
    ("dtype", "layout"), TILE_INPUTS, ids=["float16-sliced", "float32", "float64-permuted"]
)
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "unshuffle"])
@pytest.mark.parametrize(("shape", "r", "tile"), TILE_CASES, ids=TILE_IDS)
def test_triton_small_tiles_stay_inside_the_output(
    backend_device, monkeypatch, shape, r, tile, shuffle, dtype, layout
):
    """Forward and backward on tiles of a few elements, outputs in poisoned buffers, bit-exact."""
    backend, device = backend_device
    if backend != "triton":
        pytest.skip("the tile and mask logic of the Triton kernels")
    from brainkern.kernels import pixel_shuffle3d as kernels  # noqa: PLC0415  (imports triton)

    monkeypatch.setattr(kernels, "_TILE", tile)
    lo = _rand(shape, dtype, device)
    x = _views(lo if shuffle else pixel_shuffle3d_reference(lo, r))[layout].requires_grad_()
    op, ref = (
        (pixel_shuffle3d, pixel_shuffle3d_reference)
        if shuffle
        else (pixel_unshuffle3d, pixel_unshuffle3d_reference)
    )
    expected = ref(x.detach(), r)
    g = _rand(expected.shape, dtype, device)
    with use_backend("triton"), poisoned_outputs(kernels) as guard:
        y = op(x, r)
        (gx,) = torch.autograd.grad(y, x, g)
    assert guard.count == 2, "the launcher did not allocate through the guarded torch"
    assert torch.equal(y, expected)
    (gx_ref,) = torch.autograd.grad(ref(x, r), x, g)
    assert torch.equal(gx, gx_ref)


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("shape", "r"), CASES[:3], ids=CASE_IDS[:3])
def test_backward_is_the_inverse_op(backend_device, shape, r, dtype):
    backend, device = backend_device
    x = _rand(shape, dtype, device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out_shape = pixel_shuffle3d_reference(x_ref, r).shape
    grad = _views(_rand(out_shape, dtype, device))["permuted"]  # a non-contiguous grad_output
    with use_backend(backend), _guarded(backend):
        (gx,) = torch.autograd.grad(pixel_shuffle3d(x, r), x, grad)
        hi = pixel_shuffle3d_reference(x_ref.detach(), r).requires_grad_()
        (ghi,) = torch.autograd.grad(pixel_unshuffle3d(hi, r), hi, x_ref.detach())
    (gx_ref,) = torch.autograd.grad(pixel_shuffle3d_reference(x_ref, r), x_ref, grad)
    assert torch.equal(gx, gx_ref)
    assert torch.equal(ghi, pixel_shuffle3d_reference(x_ref.detach(), r))


@pytest.mark.parametrize(("shape", "r"), [((1, 8, 1, 2, 1), 2), ((1, 27, 1, 1, 1), 3), ((2, 3, 1, 1, 2), 1)])
def test_gradcheck_and_gradgradcheck(backend_device, shape, r):
    backend, device = backend_device
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    hi = torch.randn(pixel_shuffle3d_reference(x, r).shape, dtype=torch.float64, device=device)
    hi.requires_grad_()
    with use_backend(backend), _guarded(backend):
        assert torch.autograd.gradcheck(lambda t: pixel_shuffle3d(t, r), (x,))
        assert torch.autograd.gradgradcheck(lambda t: pixel_shuffle3d(t, r), (x,))
        assert torch.autograd.gradcheck(lambda t: pixel_unshuffle3d(t, r), (hi,))
        assert torch.autograd.gradgradcheck(lambda t: pixel_unshuffle3d(t, r), (hi,))


def test_third_derivative_through_a_nonlinearity(backend_device):
    # f(x) = sum(shuffle(x)^4): d^3f/dx^3 along v = 24 * sum(x * v^3), through
    # three nested backward passes of the op.
    backend, device = backend_device
    x = torch.randn(1, 8, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    v = torch.randn_like(x)
    with use_backend(backend), _guarded(backend):
        f = pixel_shuffle3d(x, 2).pow(4).sum()
        (g1,) = torch.autograd.grad(f, x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * v).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad((g2 * v).sum(), x)
    torch.testing.assert_close(g3, 24 * x.detach() * v**2, rtol=1e-12, atol=1e-12)


def test_forward_and_backward_stay_on_the_forced_backend(backend_device, monkeypatch):
    backend, device = backend_device
    seen: list[tuple[str, bool]] = []
    real_run = ps_module._run

    def spy(name, x, r, shuffle):
        seen.append((name, shuffle))
        return real_run(name, x, r, shuffle)

    monkeypatch.setattr(ps_module, "_run", spy)
    x = torch.randn(1, 8, 2, 2, 2, device=device, requires_grad=True)
    with use_backend(backend), _guarded(backend):
        y = pixel_shuffle3d(x, 2)
    # Backward runs outside the block, maybe on another thread: still the same backend.
    y.backward(torch.ones_like(y))
    if backend == "reference":
        assert seen == []  # torch autograd through reshape/permute
    else:
        assert seen == [(backend, True), (backend, False)]


# ----------------------------------------------------------------------------- dispatch


def test_auto_choice_on_cpu(monkeypatch):
    monkeypatch.delenv("BRAINKERN_BACKEND", raising=False)
    x = torch.randn(1, 8, 2, 2, 2)
    expected = "cpu" if backends()["cpu"] is True else "reference"
    assert ps_module._SHUFFLE_DISPATCH.select(x.device, x, 2) == expected
    assert ps_module._UNSHUFFLE_DISPATCH.select(x.device, x, 2) == expected


def test_forcing_cuda_on_a_cpu_tensor_lists_every_backend():
    x = torch.randn(1, 8, 2, 2, 2)
    with use_backend("cuda"), pytest.raises(BackendError) as info:
        pixel_shuffle3d(x, 2)
    message = str(info.value)
    assert "brainkern.ops.pixel_shuffle3d: backend 'cuda' was forced" in message
    for name in BACKENDS:
        assert f"\n  {name}: " in message
    assert "  reference: can run it" in message


def test_dtypes_the_kernels_do_not_move_fall_back_to_the_reference(monkeypatch):
    monkeypatch.delenv("BRAINKERN_BACKEND", raising=False)
    x = torch.randn(1, 8, 2, 3, 2).to(torch.float8_e4m3fn)
    y = pixel_shuffle3d(x, 2)
    assert y.dtype == torch.float8_e4m3fn
    assert torch.equal(y.view(torch.uint8), pixel_shuffle3d_reference(x, 2).view(torch.uint8))
    with use_backend("cpu"), pytest.raises(BackendError, match="float8_e4m3fn is not one of float16"):
        pixel_shuffle3d(x, 2)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_indivisible_channels_name_the_numbers(backend):
    x = torch.randn(1, 24, 2, 2, 2)
    message = r"input channels \(24\) must be divisible by upscale_factor\*\*3 \(3\*\*3=27\).* 27"
    with use_backend(backend), pytest.raises(ValueError, match=message):
        pixel_shuffle3d(x, 3)
    with pytest.raises(ValueError, match=r"\(30\).*\(2\*\*3=8\).*24 or 32"):
        pixel_shuffle3d(torch.randn(1, 30, 2, 2, 2), 2)


def test_integer_like_factors_are_accepted():
    np = pytest.importorskip("numpy")
    x = torch.randn(1, 8, 2, 3, 2)
    expected = pixel_shuffle3d_reference(x, 2)
    assert torch.equal(pixel_shuffle3d(x, np.int64(2)), expected)
    assert torch.equal(pixel_unshuffle3d(expected, torch.tensor(2)), x)


def test_unshuffle_rejects_indivisible_grid():
    x = torch.randn(1, 1, 53, 63, 46)
    with pytest.raises(ValueError, match=r"\(53, 63, 46\).*downscale_factor \(2\).*D=53, H=63"):
        pixel_unshuffle3d(x, 2)


def _x(*shape, dtype=torch.float32):
    return torch.ones(shape, dtype=dtype)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pixel_shuffle3d(torch.randn(8, 2, 2, 2), 2), ValueError, r"5-d tensor.*\(8, 2, 2, 2\)"),
        (lambda: pixel_unshuffle3d(torch.randn(1, 1, 1, 8, 2, 2), 2), ValueError, "5-d tensor"),
        (lambda: pixel_shuffle3d(torch.ones(1, 8, 2, 2, 2, dtype=torch.int64), 2), TypeError, "torch.int64"),
        (lambda: pixel_unshuffle3d(torch.ones(1, 1, 2, 2, 2, dtype=torch.bool), 2), TypeError, "floating"),
        (lambda: pixel_shuffle3d(_x(1, 8, 2, 2, 2), 0), ValueError, "upscale_factor must be >= 1, got 0"),
        (lambda: pixel_unshuffle3d(torch.randn(1, 1, 2, 2, 2), -2), ValueError, "must be >= 1, got -2"),
        (lambda: pixel_shuffle3d(_x(1, 8, 2, 2, 2), 2.0), TypeError, r"must be an int, got float \(2.0\)"),
        (lambda: pixel_shuffle3d(torch.randn(1, 8, 2, 2, 2), True), TypeError, "must be an int, got bool"),
        (lambda: pixel_shuffle3d([[1.0]], 2), TypeError, "expected a torch.Tensor, got list"),
    ],
    ids=["ndim4", "ndim6", "int64", "bool", "r0", "r-2", "float-r", "bool-r", "list"],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(backends()["cpu"] is not True, reason="brainkern._C is not built")
def test_compiled_op_checks_its_inputs():
    # Calls that bypass the Python validation still get messages from the C++ boundary.
    op = torch.ops.brainkern
    with pytest.raises(RuntimeError, match=r"input channels \(24\) must be divisible by r\^3 \(3\^3=27\)"):
        op.pixel_shuffle3d(torch.randn(1, 24, 2, 2, 2), 3)
    with pytest.raises(RuntimeError, match=r"spatial size must be divisible by r \(2\).*\[1, 1, 3, 2, 2\]"):
        op.pixel_unshuffle3d(torch.randn(1, 1, 3, 2, 2), 2)
    with pytest.raises(RuntimeError, match="must be 5-d"):
        op.pixel_shuffle3d(torch.randn(8, 2, 2, 2), 2)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64, got Int"):
        op.pixel_shuffle3d(torch.ones(1, 8, 2, 2, 2, dtype=torch.int32), 2)
    with pytest.raises(RuntimeError, match="must be >= 1, got 0"):
        op.pixel_unshuffle3d(torch.randn(1, 1, 2, 2, 2), 0)


@pytest.mark.skipif(backends()["cpu"] is not True, reason="brainkern._C is not built")
def test_compiled_op_has_meta_kernels_for_tracing():
    op = torch.ops.brainkern
    y = op.pixel_shuffle3d(torch.empty(2, 16, 3, 4, 5, device="meta", dtype=torch.bfloat16), 2)
    assert y.shape == (2, 2, 6, 8, 10) and y.dtype == torch.bfloat16 and y.device.type == "meta"
    assert op.pixel_unshuffle3d(torch.empty(2, 1, 6, 3, 9, device="meta"), 3).shape == (2, 27, 2, 1, 3)
    with pytest.raises(RuntimeError, match="must be divisible by r"):
        op.pixel_unshuffle3d(torch.empty(2, 1, 5, 4, 4, device="meta"), 2)


# ----------------------------------------------------------------------------- CUDA kernel, host harness

HARNESS = Path(__file__).with_name("pixel_shuffle3d_harness.cu")
ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    exe = tmp_path_factory.mktemp("pixel_shuffle3d") / "harness"
    cmd = [NVCC, "-std=c++17", "-O1", "-I", str(ROOT / "csrc"), str(HARNESS), "-o", str(exe)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return exe


# (dtype, shuffle, r, vector width V, index bits, simulated blocks, layout)
HARNESS_CASES = [
    (torch.float32, True, 2, 2, 32, 3, "contiguous"),
    (torch.float32, True, 2, 1, 64, 1, "permuted"),
    (torch.float32, True, 3, 1, 32, 2, "sliced"),
    (torch.float16, True, 2, 8, 32, 2, "contiguous"),
    (torch.bfloat16, True, 1, 4, 64, 2, "channels_last"),
    (torch.float64, True, 3, 2, 64, 4, "contiguous"),
    (torch.float32, False, 2, 4, 32, 3, "sliced"),
    (torch.float16, False, 3, 2, 64, 2, "permuted"),
    (torch.float64, False, 2, 2, 32, 1, "channels_last"),
    (torch.float32, False, 1, 1, 32, 5, "contiguous"),
]


@pytest.mark.parametrize(("dtype", "shuffle", "r", "vec", "bits", "blocks", "layout"), HARNESS_CASES)
def test_cuda_kernel_index_math_on_the_host(harness, dtype, shuffle, r, vec, bits, blocks, layout):
    """Runs csrc/pixel_shuffle3d/pixel_shuffle3d.cu's per-thread loop on the CPU (no GPU here)."""
    if shuffle:
        x = _rand((2, 2 * r**3, 3, 5, 8), dtype, "cpu")
    else:
        x = _rand((2, 3, 3 * r, 5 * r, 8 * r), dtype, "cpu")
    x = _views(x)[layout]
    span = 1 + sum((s - 1) * t for s, t in zip(x.shape, x.stride(), strict=True))
    words = torch.as_strided(x, (span,), (1,), x.storage_offset()).contiguous().view(_WORDS[x.element_size()])
    args = [str(harness), str(x.element_size()), str(int(shuffle)), str(r), str(vec), str(bits), str(blocks)]
    args += [str(s) for s in x.shape] + [str(t) for t in x.stride()]
    out = subprocess.run(args, input=words.numpy().tobytes(), capture_output=True, check=False)
    assert out.returncode == 0, f"harness exited with {out.returncode}"
    expected = (pixel_shuffle3d_reference if shuffle else pixel_unshuffle3d_reference)(x, r)
    got = torch.frombuffer(bytearray(out.stdout), dtype=_WORDS[x.element_size()]).view(dtype)
    assert torch.equal(got.reshape(expected.shape), expected)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device with > 20 GB")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_more_than_2_31_elements_on_gpu(backend):
    if backends()[backend] is not True:
        pytest.skip(f"{backend}: {backends()[backend]}")
    x = torch.randn(1, 8, 512, 1024, 520, device="cuda", dtype=torch.float16)  # 2.18e9 elements
    with use_backend(backend):
        y = pixel_shuffle3d(x, 2)
        assert torch.equal(y[0, 0, -2:, -2:, -2:].flatten(), x[0, :, -1, -1, -1])
        assert torch.equal(y[0, 0, :2, :2, :2].flatten(), x[0, :, 0, 0, 0])
        z = pixel_unshuffle3d(y, 2)
        del y
        assert torch.equal(z, x)
