"""gradient_penalty: fused pieces per backend, and the whole penalty against the plain autograd form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import brainkern.nn as bnn
from brainkern.ops import BackendError, gradient_penalty, gradient_penalty_reference, use_backend
from brainkern.ops.gradient_penalty import MODES, interpolate, norm_penalty
from tests.guards import poisoned_outputs


@pytest.fixture(autouse=True)
def _triton_outputs_guarded(request):
    """On the Triton backend, every kernel output of the test sits inside poisoned margins.

    A kernel writing past its output then fails the test that ran it (at teardown,
    naming the buffer) instead of corrupting the heap for a later test.
    """
    callspec = getattr(request.node, "callspec", None)
    pair = callspec.params.get("backend_device") if callspec is not None else None
    if pair is None or pair[0] != "triton":
        yield
        return
    from brainkern.kernels import gradient_penalty as tk  # noqa: PLC0415  (imports triton)

    with poisoned_outputs(tk):
        yield


# ---------------------------------------------------------------------------
# discriminators built here, after the seed papers


class KwonDiscriminator(nn.Module):
    """Kwon et al. (2019): 4x4x4 convs, stride 2, BatchNorm + LeakyReLU; scaled down for 16^3."""

    def __init__(self, conv=nn.Conv3d, width=4, checkpointed=False):
        super().__init__()
        w = width
        self.checkpointed = checkpointed
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(conv(1, w, 4, 2, 1), nn.LeakyReLU(0.2)),  # 16 -> 8
                nn.Sequential(conv(w, 2 * w, 4, 2, 1), nn.BatchNorm3d(2 * w), nn.LeakyReLU(0.2)),  # 8 -> 4
                nn.Sequential(
                    conv(2 * w, 4 * w, 4, 2, 1), nn.BatchNorm3d(4 * w), nn.LeakyReLU(0.2)
                ),  # 4 -> 2
                conv(4 * w, 1, 2, 1, 0),  # 2 -> 1
            ]
        )

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointed else block(x)
        return x.flatten(1)


class ICWDiscriminator(nn.Module):
    """Zhuang et al. (2019) ICW-GAN: one-hot labels as constant channels on every layer's input."""

    def __init__(self, classes=3, conv=nn.Conv3d, width=4):
        super().__init__()
        self.classes = classes
        self.convs = nn.ModuleList(
            [
                conv(1 + classes, width, 4, 2, 1),
                conv(width + classes, 2 * width, 4, 2, 1),
                conv(2 * width + classes, 1, 3),
            ]
        )

    def forward(self, x, labels):
        onehot = nn.functional.one_hot(labels, self.classes).to(x.dtype)
        for i, c in enumerate(self.convs):
            planes = onehot[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
            x = c(torch.cat([x, planes], dim=1))
            if i < len(self.convs) - 1:
                x = nn.functional.leaky_relu(x, 0.2)
        return x.flatten(1)


def code_discriminator(latent=12, hidden=16):
    """Kwon et al.'s code discriminator: three linear layers with BatchNorm + LeakyReLU between them."""
    return nn.Sequential(
        nn.Linear(latent, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, 1),
    )


def sn_discriminator(conv=nn.Conv3d):
    from torch.nn.utils.parametrizations import spectral_norm

    return nn.Sequential(
        spectral_norm(conv(1, 4, 3, 2, 1)),
        nn.LeakyReLU(0.2),
        spectral_norm(conv(4, 8, 3, 2, 1)),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        spectral_norm(nn.Linear(8 * 2 * 2 * 2, 1)),
    )


# ---------------------------------------------------------------------------
# helpers


def _flat_grads(module):
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in module.parameters()]
    )


def _assert_same_penalty(D, real, fake, rtol, *, check_inputs=False, **kwargs):
    """Penalty value and every parameter gradient of the fused form equal the plain form's."""
    D_ref = copy.deepcopy(D)  # identical state (BatchNorm statistics, spectral-norm vectors)
    p = gradient_penalty(D, real, fake, **kwargs)
    p.backward()
    real_grad = None if real.grad is None else real.grad.clone()
    if real.grad is not None:
        real.grad = None
    r = gradient_penalty_reference(D_ref, real, fake, **kwargs)
    r.backward()
    assert torch.isfinite(r) and r.abs() > 0
    torch.testing.assert_close(p, r, rtol=rtol, atol=0)
    got, want = _flat_grads(D), _flat_grads(D_ref)
    scale = want.abs().max()
    assert scale > 0, "the test would be vacuous: no parameter gradient"
    assert (got - want).abs().max() <= rtol * scale, (
        f"max |diff| {(got - want).abs().max():.3e} vs scale {scale:.3e}"
    )
    if check_inputs:
        torch.testing.assert_close(real_grad, real.grad, rtol=rtol, atol=rtol * real.grad.abs().max())
    return p, r


# ---------------------------------------------------------------------------
# fused piece 1: interpolation, every backend

SHAPES = [(1, 1, 7, 5, 3), (3, 2, 7, 5, 3), (2, 1, 53, 63, 46), (5, 12)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _interp_ref64(real, fake, eps):
    e = eps.double().reshape(-1, *([1] * (real.dim() - 1)))
    return e * real.double() + (1 - e) * fake.double()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_interpolate_matches_reference(backend_device, shape, dtype):
    backend, device = backend_device
    if backend == "triton" and shape[2:] == (53, 63, 46) and dtype != torch.float32:
        pytest.skip("the 53x63x46 grid runs once (float32) under the slow Triton interpreter")
    real = torch.randn(shape, device=device).to(dtype)
    fake = torch.randn(shape, device=device).to(dtype)
    eps = torch.rand(shape[0], device=device).to(dtype)
    with use_backend(backend):
        out = interpolate(real, fake, eps)
    ref = _interp_ref64(real, fake, eps)
    assert out.dtype == dtype and out.shape == real.shape
    # eager PyTorch in the same dtype rounds each of its 4 ops; the kernel rounds once.
    eager = interpolate.__globals__["_interp_reference"](real, fake, eps)
    err, eager_err = (out.double() - ref).abs().max(), (eager.double() - ref).abs().max()
    assert err <= max(2 * eager_err, 1e-12 if dtype == torch.float64 else 1e-6)


def test_interpolate_non_contiguous(backend_device):
    backend, device = backend_device
    real = torch.randn(2, 3, 6, 5, 4, device=device).transpose(2, 4)
    fake = torch.randn(2, 3, 4, 5, 12, device=device)[..., ::2]
    eps = torch.rand(2, device=device)
    with use_backend(backend):
        out = interpolate(real, fake, eps)
    torch.testing.assert_close(out, _interp_ref64(real, fake, eps).float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_interpolate_backward_and_double_backward(backend_device, needs):
    backend, device = backend_device
    # small: every numerical Jacobian column is a kernel launch (slow under the Triton interpreter)
    real = torch.randn(3, 2, 3, dtype=torch.float64, device=device, requires_grad=needs[0])
    fake = torch.randn(3, 2, 3, dtype=torch.float64, device=device, requires_grad=needs[1])
    eps = torch.rand(3, dtype=torch.float64, device=device)
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda r, f: interpolate(r, f, eps), (real, fake))
        assert torch.autograd.gradgradcheck(lambda r, f: interpolate(r, f, eps), (real, fake))


def test_interpolate_eps_with_grad_falls_back_to_reference():
    real, fake = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    eps = torch.rand(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: interpolate(real, fake, e), (eps,))
    with use_backend("cpu"), pytest.raises(BackendError, match="eps requires grad"):
        interpolate(real, fake, eps)


# ---------------------------------------------------------------------------
# fused piece 2: norm, penalty and backward, every backend


def _norm_ref64(grad, weight, center, mode):
    n = grad.double().flatten(1).norm(dim=1)
    d = n if mode == "r1" else n - center
    if mode == "one-sided":
        d = d.clamp(min=0)
    return weight * d.square().mean()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    "shape", [(1, 1, 7, 5, 3), (4, 2, 7, 5, 3), (2, 1, 53, 63, 46), (6, 12), (3, 20000)], ids=str
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_norm_penalty_matches_reference(backend_device, mode, shape, dtype):
    backend, device = backend_device
    if (
        backend == "triton"
        and (shape[-1] == 46 or shape[-1] == 20000)
        and (dtype != torch.float32 or mode != "r1")
    ):
        pytest.skip("large shapes run once under the slow Triton interpreter")
    numel = torch.Size(shape[1:]).numel()
    # norms spread around the centre so every branch of f is used
    grad = torch.randn(shape, device=device) * torch.linspace(0.2, 2.0, shape[0]).view(
        -1, *[1] * (len(shape) - 1)
    )
    grad = (grad / numel**0.5).to(dtype).requires_grad_(True)
    center = 0.9
    with use_backend(backend):
        p = norm_penalty(grad, 3.0, center, mode)
        go = torch.tensor(1.7, dtype=dtype, device=device)
        (dg,) = torch.autograd.grad(p, grad, go)
    g64 = grad.detach().double().requires_grad_(True)
    ref = _norm_ref64(g64, 3.0, center, mode)
    (dref,) = torch.autograd.grad(ref, g64, go.double())
    eager = _norm_ref64(grad.detach(), 3.0, center, mode) if dtype == torch.float64 else None
    assert p.dtype == dtype and p.shape == ()
    if dtype == torch.float64:
        torch.testing.assert_close(p.double(), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dg, dref, rtol=1e-12, atol=1e-12)
        assert eager is not None
        return
    # eager PyTorch in the same dtype, against float64: the fused error is at most twice it
    ge = grad.detach().clone().requires_grad_(True)
    e = norm_penalty.__globals__["_norm_penalty_reference"](ge, 3.0, center, MODES[mode])
    (de,) = torch.autograd.grad(e, ge, go)
    floor = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    assert (p.double() - ref).abs() <= 2 * (e.double() - ref).abs() + floor * ref.abs()
    scale = dref.abs().max()
    assert (dg.double() - dref).abs().max() <= 2 * (de.double() - dref).abs().max() + floor * scale


@pytest.mark.parametrize("mode", list(MODES))
def test_norm_penalty_gradgradcheck(backend_device, mode):
    backend, device = backend_device
    grad = torch.randn(3, 2, 3, dtype=torch.float64, device=device)
    grad = grad * torch.tensor([0.1, 0.3, 1.0], dtype=torch.float64, device=device).view(3, 1, 1)
    grad.requires_grad_(True)
    with use_backend(backend):
        fn = lambda g: norm_penalty(g, 2.5, 0.9, mode)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (grad,))
        assert torch.autograd.gradgradcheck(fn, (grad,))


def test_norm_penalty_zero_and_nan_samples(backend_device):
    backend, device = backend_device
    grad = torch.randn(3, 4, 5, device=device)
    grad[1] = 0
    grad.requires_grad_(True)
    with use_backend(backend):
        p = norm_penalty(grad, 10.0, 1.0, "two-sided")
        (dg,) = torch.autograd.grad(p, grad)
    assert torch.isfinite(p) and torch.isfinite(dg).all()
    assert (dg[1] == 0).all()
    bad = grad.detach().clone()
    bad[2, 1, 1] = float("nan")
    bad.requires_grad_(True)
    for mode in MODES:
        with use_backend(backend):
            p = norm_penalty(bad, 10.0, 1.0, mode)
            (dg,) = torch.autograd.grad(p, bad)
        assert torch.isnan(p), f"{mode}: a NaN gradient norm was hidden"
        assert torch.isnan(dg[2]).all() or mode == "r1"
        assert torch.isnan(dg[2, 1, 1])


# ---------------------------------------------------------------------------
# Triton: many programs and chunks per sample, outputs inside poisoned buffers


@pytest.fixture
def small_tiles(backend_device, monkeypatch):
    """The Triton kernels' module with tiles of a few elements (Triton backends only).

    16-element programs, 32-element partial sums and a 2 x 2 finishing tile make
    every loop and mask edge of the kernels appear on inputs of a few hundred elements.
    """
    if backend_device[0] != "triton":
        pytest.skip("the tiling of the Triton kernels")
    from brainkern.kernels import gradient_penalty as tk  # noqa: PLC0415  (imports triton)

    monkeypatch.setattr(tk, "_BLOCK", 16)
    monkeypatch.setattr(tk, "_NORM_CHUNK", 32)
    monkeypatch.setattr(tk, "_FINISH_B", 2)
    monkeypatch.setattr(tk, "_FINISH_C", 2)
    return tk


# With the small tiles: 210 elements a sample are 14 programs (the last with 2 live
# lanes of 16) and 7 partial sums (the last of 18), 3 samples take 2 finishing steps
# (the second half empty) and 7 chunks 4 (the last half empty); 64 elements a sample
# divide evenly (no partial edge anywhere); 12 (latent codes) fit one partial program.
TILE_SHAPES = [(3, 2, 5, 7, 3), (4, 1, 4, 4, 4), (5, 12)]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=str)
def test_triton_small_tiles_stay_inside_the_outputs(backend_device, small_tiles, shape, dtype, mode):
    _, device = backend_device
    B, numel = shape[0], torch.Size(shape[1:]).numel()
    per_sample = (-1, *[1] * (len(shape) - 1))
    real = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    fake = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    eps = torch.rand(B, dtype=dtype, device=device)
    G = torch.randn(shape, dtype=dtype, device=device)
    # norms from 0.3 to 2 around the centre 0.9, so every branch of the penalty is used
    spread = torch.linspace(0.3, 2.0, B, dtype=dtype, device=device).view(per_sample)
    grad = (torch.randn(shape, dtype=dtype, device=device) * spread / numel**0.5).requires_grad_(True)
    go = torch.tensor(1.7, dtype=dtype, device=device)
    with use_backend("triton"), poisoned_outputs(small_tiles) as guard:
        x = interpolate(real, fake, eps)
        gr, gf = torch.autograd.grad(x, (real, fake), G)
        p = norm_penalty(grad, 3.0, 0.9, mode)
        (dg,) = torch.autograd.grad(p, grad, go)
    # interpolation 1, its backward 2, the norm 3 (partial sums, norms, penalty), its backward 1
    assert guard.count == 7, "the launchers did not allocate through the guarded torch"
    # float32: each output element is one rounding of a two-term sum; the norms sum
    # at most 210 squares in float32, far inside 1e-5 relative.
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    e = eps.view(per_sample)
    torch.testing.assert_close(x, _interp_ref64(real, fake, eps).to(dtype), rtol=tol, atol=tol)
    torch.testing.assert_close(gr, e * G, rtol=tol, atol=tol)
    torch.testing.assert_close(gf, (1 - e) * G, rtol=tol, atol=tol)
    g64 = grad.detach().double().requires_grad_(True)
    ref = _norm_ref64(g64, 3.0, 0.9, mode)
    (dref,) = torch.autograd.grad(ref, g64, go.double())
    torch.testing.assert_close(p.double(), ref, rtol=tol, atol=0)
    torch.testing.assert_close(dg.double(), dref, rtol=tol, atol=tol * dref.abs().max().item())


def test_triton_whole_penalty_over_many_chunks(backend_device, small_tiles, monkeypatch):
    """Kwon's discriminator at 16^3, batch 3: 64 programs and 32 partial sums a sample."""
    _, device = backend_device
    monkeypatch.setattr(small_tiles, "_BLOCK", 64)  # fewer programs: the interpreter runs each in turn
    monkeypatch.setattr(small_tiles, "_NORM_CHUNK", 128)
    D = KwonDiscriminator(bnn.Conv3d).to(device, torch.float64)
    real = torch.randn(3, 1, 16, 16, 16, device=device, dtype=torch.float64)
    fake = torch.randn_like(real)
    eps = torch.rand(3, device=device, dtype=torch.float64)
    with use_backend("triton"), poisoned_outputs(small_tiles) as guard:
        _assert_same_penalty(D, real, fake, 1e-9, eps=eps)
    assert guard.count >= 5


# ---------------------------------------------------------------------------
# the whole penalty against the plain torch.autograd.grad form

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("conv", [nn.Conv3d, bnn.Conv3d], ids=["nn.Conv3d", "brainkern.Conv3d"])
def test_kwon_discriminator(backend_device, dtype, conv):
    backend, device = backend_device
    D = KwonDiscriminator(conv).to(device, dtype)
    real = torch.randn(3, 1, 16, 16, 16, device=device, dtype=dtype)
    fake = torch.randn_like(real)
    eps = torch.rand(3, device=device, dtype=dtype)
    with use_backend(backend):
        _assert_same_penalty(D, real, fake, TOL[dtype], eps=eps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_icw_gan_conditional_discriminator(dtype):
    D = ICWDiscriminator(conv=bnn.Conv3d).to(dtype)
    real = torch.randn(4, 1, 16, 14, 13, dtype=dtype)  # odd grid, like 53x63x46 in miniature
    fake = torch.randn_like(real)
    labels = torch.tensor([0, 2, 1, 2])
    _assert_same_penalty(D, real, fake, TOL[dtype], labels=labels, eps=torch.rand(4, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_code_discriminator_on_latents(backend_device, dtype):
    backend, device = backend_device
    D = code_discriminator().to(device, dtype)
    real = torch.randn(6, 12, device=device, dtype=dtype)
    fake = torch.randn_like(real)
    with use_backend(backend):
        _assert_same_penalty(D, real, fake, TOL[dtype], eps=torch.rand(6, device=device, dtype=dtype))


@pytest.mark.parametrize("conv", [nn.Conv3d, bnn.Conv3d], ids=["nn.Conv3d", "brainkern.Conv3d"])
def test_spectral_norm_discriminator(conv):
    D = sn_discriminator(conv).double()
    real = torch.randn(3, 1, 8, 8, 8, dtype=torch.float64)
    _assert_same_penalty(D, real, torch.randn_like(real), 1e-9, eps=torch.rand(3, dtype=torch.float64))


def test_brainkern_spectral_norm_discriminator():
    """brainkern's own SN layers (power iteration in the forward, W / sigma with its custom backward)."""
    D = nn.Sequential(
        bnn.SNConv3d(1, 4, 3, 2, 1),
        nn.LeakyReLU(0.2),
        bnn.SNConv3d(4, 8, 3, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        bnn.SNLinear(8 * 2 * 2 * 2, 1),
    ).double()
    real = torch.randn(3, 1, 8, 8, 8, dtype=torch.float64)
    _assert_same_penalty(D, real, torch.randn_like(real), 1e-9, eps=torch.rand(3, dtype=torch.float64))


@pytest.mark.parametrize("conv", [nn.Conv3d, bnn.Conv3d], ids=["nn.Conv3d", "brainkern.Conv3d"])
def test_checkpointed_discriminator(conv):
    D = KwonDiscriminator(conv, checkpointed=True).double()
    real = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    _assert_same_penalty(D, real, torch.randn_like(real), 1e-9, eps=torch.rand(2, dtype=torch.float64))
    # and the checkpointed model gives the same penalty as the plain one
    plain = KwonDiscriminator(conv).double()
    plain.load_state_dict(D.state_dict())
    eps = torch.rand(2, dtype=torch.float64)
    fake = torch.randn_like(real)
    torch.testing.assert_close(
        gradient_penalty(D, real, fake, eps=eps), gradient_penalty(plain, real, fake, eps=eps)
    )


def test_real_and_fake_requiring_grad():
    D = KwonDiscriminator(bnn.Conv3d).double()
    real = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64, requires_grad=True)
    fake_src = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64, requires_grad=True)
    fake = fake_src * 1.5  # a generator output: non-leaf
    eps = torch.rand(2, dtype=torch.float64)
    D_ref = copy.deepcopy(D)
    p = gradient_penalty(D, real, fake, eps=eps)
    gr, gf = torch.autograd.grad(p, [real, fake_src], retain_graph=True)  # fake's graph is shared
    r = gradient_penalty_reference(D_ref, real, fake, eps=eps)
    rr, rf = torch.autograd.grad(r, [real, fake_src])
    torch.testing.assert_close(p, r, rtol=1e-9, atol=0)
    torch.testing.assert_close(gr, rr, rtol=1e-9, atol=1e-9 * rr.abs().max())
    torch.testing.assert_close(gf, rf, rtol=1e-9, atol=1e-9 * rf.abs().max())


def test_bf16_autocast():
    """Under CPU bf16 autocast, the fused penalty's error against float64 is at most ~2x the plain form's.

    Both run the same bf16 convolutions; the fused kernels only add float32
    roundings of the interpolation and the norm, far below bf16's 2^-8.
    """
    D = KwonDiscriminator(bnn.Conv3d)
    D64 = copy.deepcopy(D).double()
    D_plain = copy.deepcopy(D)
    real = torch.randn(3, 1, 16, 16, 16)
    fake = torch.randn_like(real)
    eps = torch.rand(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = gradient_penalty(D, real, fake, eps=eps)
        q = gradient_penalty_reference(D_plain, real, fake, eps=eps)
    p.backward()
    q.backward()
    r = gradient_penalty_reference(D64, real.double(), fake.double(), eps=eps.double())
    r.backward()
    assert p.dtype == torch.float32
    err_p, err_q = (p.double() - r).abs(), (q.double() - r).abs()
    assert err_p <= 2 * err_q + 2e-3 * r.abs(), (err_p, err_q, r)
    gp, gq, gr = _flat_grads(D).double(), _flat_grads(D_plain).double(), _flat_grads(D64)
    err_p, err_q = (gp - gr).norm(), (gq - gr).norm()
    assert err_p <= 2 * err_q + 2e-3 * gr.norm(), (err_p, err_q, gr.norm())
    assert err_q < 0.1 * gr.norm()  # bf16 is close, not wildly off


def test_one_sided_mode():
    D = KwonDiscriminator(bnn.Conv3d).double()
    real = torch.randn(4, 1, 16, 16, 16, dtype=torch.float64)
    fake = torch.randn_like(real)
    eps = torch.rand(4, dtype=torch.float64)
    x = (eps.view(-1, 1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1, 1)) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(copy.deepcopy(D)(x).sum(), x)
    norms = g.flatten(1).norm(dim=1).sort().values
    center = float((norms[1] + norms[2]) / 2)  # two samples below the centre, two above
    _assert_same_penalty(D, real, fake, 1e-9, eps=eps, mode="one-sided", center=center)
    zero = gradient_penalty(D, real, fake, eps=eps, mode="one-sided", center=float(norms[-1]) + 1)
    assert zero.item() == 0


def test_r1_mode():
    D = KwonDiscriminator(bnn.Conv3d).double()
    real = torch.randn(3, 1, 16, 16, 16, dtype=torch.float64)
    p, r = _assert_same_penalty(D, real, None, 1e-9, mode="r1", weight=5.0)
    x = real.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(copy.deepcopy(D)(x).sum(), x)
    torch.testing.assert_close(p, 5.0 * g.flatten(1).square().sum(1).mean(), rtol=1e-9, atol=0)


def test_every_k_lazy_regularisation():
    D = code_discriminator().double()
    real = torch.randn(5, 12, dtype=torch.float64)
    fake = torch.randn_like(real)
    eps = torch.rand(5, dtype=torch.float64)
    full = gradient_penalty(copy.deepcopy(D), real, fake, eps=eps).detach()
    calls = []
    D.register_forward_hook(lambda *a: calls.append(1))
    values = []
    for _ in range(6):
        p = gradient_penalty(D, real, fake, eps=eps, every=3)
        p.backward()  # a skipped call's zero still supports backward
        values.append(p.detach())
    assert [v.item() == 0 for v in values] == [True, True, False, True, True, False]
    torch.testing.assert_close(values[2], 3 * full, rtol=1e-12, atol=0)
    torch.testing.assert_close(values[5], 3 * full, rtol=1e-12, atol=0)
    assert len(calls) == 2, "the discriminator ran on a skipped call"
    # counted per discriminator: another module starts at its first call
    other = code_discriminator().double()
    assert gradient_penalty(other, real, fake, every=2).item() == 0
    assert gradient_penalty(other, real, fake, every=2).item() != 0


def test_eps_is_drawn_from_the_global_seed():
    D = code_discriminator().double()
    real, fake = torch.randn(4, 12, dtype=torch.float64), torch.randn(4, 12, dtype=torch.float64)
    torch.manual_seed(123)
    a = gradient_penalty(copy.deepcopy(D), real, fake)
    torch.manual_seed(123)
    b = gradient_penalty_reference(copy.deepcopy(D), real, fake)
    torch.manual_seed(123)
    eps = torch.rand(4, dtype=torch.float64)
    c = gradient_penalty(copy.deepcopy(D), real, fake, eps=eps)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    d = gradient_penalty(copy.deepcopy(D), real, fake)  # a new draw
    assert d != a


def test_nan_gradient_norm_is_not_hidden():
    def D(x):
        return torch.sqrt(x).sum(dim=1)  # NaN gradients at negative inputs

    real = -torch.rand(2, 5) - 0.5
    fake = -torch.rand(2, 5) - 0.5
    assert torch.isnan(gradient_penalty(D, real, fake))
    assert torch.isnan(gradient_penalty_reference(D, real, fake))


def test_errors():
    D = code_discriminator()
    real, fake = torch.randn(4, 12), torch.randn(4, 12)
    with pytest.raises(ValueError, match="mode must be one of"):
        gradient_penalty(D, real, fake, mode="two_sided")
    with pytest.raises(ValueError, match="weight must be >= 0"):
        gradient_penalty(D, real, fake, weight=-1.0)
    with pytest.raises(ValueError, match="weight must be finite"):
        gradient_penalty(D, real, fake, weight=float("nan"))
    with pytest.raises(TypeError, match="weight must be a real number"):
        gradient_penalty(D, real, fake, weight=True)
    with pytest.raises(ValueError, match="center must be finite"):
        gradient_penalty(D, real, fake, center=float("inf"))
    with pytest.raises(ValueError, match="every must be >= 1"):
        gradient_penalty(D, real, fake, every=0)
    with pytest.raises(TypeError, match="every must be an int"):
        gradient_penalty(D, real, fake, every=1.5)
    with pytest.raises(ValueError, match=r"same shape, got \(4, 12\) and \(4, 11\)"):
        gradient_penalty(D, real, torch.randn(4, 11))
    with pytest.raises(ValueError, match="at least 1 sample"):
        gradient_penalty(D, real[:0], fake[:0])
    with pytest.raises(ValueError, match="must be batched"):
        gradient_penalty(D, real[0], fake[0])
    with pytest.raises(TypeError, match="floating-point"):
        gradient_penalty(D, real.long(), fake.long())
    with pytest.raises(ValueError, match=r"eps must have shape \(4,\)"):
        gradient_penalty(D, real, fake, eps=torch.rand(3))
    with pytest.raises(ValueError, match="fake is required"):
        gradient_penalty(D, real, None)
    with pytest.raises(TypeError, match="must return a tensor"):
        gradient_penalty(lambda x: (x.sum(1),), real, fake)
    with pytest.raises(ValueError, match="does not depend on its input"):
        gradient_penalty(lambda x: D[0].weight.sum().expand(4), real, fake)
    with pytest.raises(ValueError, match="does not require grad"):
        gradient_penalty(lambda x: torch.zeros(4), real, fake)
    with pytest.raises(TypeError, match="weakly referenced"):
        gradient_penalty(_NoWeakref(), real, fake, every=2)


class _NoWeakref:
    __slots__ = ()

    def __call__(self, x):
        return x.sum(1)


def test_lazy_counts_can_be_saved_and_restored():
    """A run resumed with every > 1 penalises on the same calls as an uninterrupted one."""
    from brainkern.ops.gradient_penalty import lazy_count, set_lazy_count

    D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 1))
    real, fake = torch.randn(2, 8), torch.randn(2, 8)
    hits = [bool(gradient_penalty(D, real, fake, every=3).detach() != 0) for _ in range(4)]
    assert hits == [False, False, True, False] and lazy_count(D) == 4
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 1))
    set_lazy_count(other, lazy_count(D))
    nxt = [bool(gradient_penalty(other, real, fake, every=3).detach() != 0) for _ in range(3)]
    assert nxt == [False, True, False]  # calls 5, 6, 7: the 6th penalises
    with pytest.raises(ValueError, match="count must be >= 0"):
        set_lazy_count(other, -1)
