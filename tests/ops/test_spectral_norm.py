"""spectral_norm_step and spectral_normalize: every backend against the reference and torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainkern.ops import (
    BackendError,
    spectral_norm_step,
    spectral_norm_step_reference,
    spectral_normalize,
    use_backend,
)

# float32: sigma and the vectors are sums of up to ~10^3 products, normalised; the
# fast backends accumulate in double (cpu) or float (cuda, triton), torch.mv in float.
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-6, rtol=2e-5)}

CASES = {
    "7x5": [(7, 5)],
    "1x17": [(1, 17)],
    "64x81": [(64, 27 * 3)],
    "mixed5": [(7, 5), (1, 17), (64, 81), (33, 1), (20, 130)],
}


def _make(shapes, dtype, device, strided=False):
    ws, us, vs = [], [], []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f + (3 if strided else 0), dtype=dtype, device=device)
        ws.append(w[:, :in_f] if strided else w)
        us.append(F.normalize(torch.randn(out_f, dtype=dtype, device=device), dim=0))
        vs.append(F.normalize(torch.randn(in_f, dtype=dtype, device=device), dim=0))
    return ws, us, vs


def _clone(xs):
    return [x.clone() for x in xs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend_device, case, dtype):
    backend, device = backend_device
    ws, us, vs = _make(CASES[case], dtype, device, strided=case == "mixed5")
    us_ref, vs_ref = _clone(us), _clone(vs)
    with use_backend(backend):
        sigma = spectral_norm_step(ws, us, vs)
    ref = spectral_norm_step_reference(ws, us_ref, vs_ref)
    assert sigma.shape == (len(ws),) and sigma.dtype == dtype
    torch.testing.assert_close(sigma, ref, **TOL[dtype])
    for got, want in zip(us + vs, us_ref + vs_ref, strict=True):
        torch.testing.assert_close(got, want, **TOL[dtype])
    # The fused identity: sigma = u . (W v) with the updated vectors.
    for w, u, v, s in zip(ws, us, vs, sigma, strict=True):
        torch.testing.assert_close(s, torch.vdot(u, w @ v), **TOL[dtype])


def test_reference_is_torch_parametrization_step():
    w = torch.randn(9, 4, 2, dtype=torch.float64)
    module = torch.nn.Linear(8, 9).double()
    module.weight.data.copy_(w.reshape(9, 8))
    torch.nn.utils.parametrizations.spectral_norm(module)
    sn = module.parametrizations.weight[0]
    u, v = sn._u.clone(), sn._v.clone()
    out = module.weight  # training mode: one power iteration
    sigma = spectral_norm_step_reference([w.reshape(9, 8)], [u], [v])
    torch.testing.assert_close(u, sn._u, atol=0, rtol=0)
    torch.testing.assert_close(v, sn._v, atol=0, rtol=0)
    torch.testing.assert_close(out, w.reshape(9, 8) / sigma[0], atol=0, rtol=0)


def test_sigma_converges_to_matrix_norm(backend_device):
    backend, device = backend_device
    # Spectral gap 5 : 2, so the error shrinks by (2/5)^2 per step.
    q1, _ = torch.linalg.qr(torch.randn(11, 11, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    s = torch.tensor([5.0, 2.0, 1.5, 1.0, 0.5, 0.1], dtype=torch.float64)
    w1 = (q1[:, :6] * s) @ q2.T
    w2 = torch.randn(3, 40, dtype=torch.float64)
    ws = [w1.to(device), w2.to(device)]
    us = [F.normalize(torch.randn(w.shape[0], dtype=torch.float64), dim=0).to(device) for w in ws]
    vs = [F.normalize(torch.randn(w.shape[1], dtype=torch.float64), dim=0).to(device) for w in ws]
    with use_backend(backend):
        for _ in range(60):
            sigma = spectral_norm_step(ws, us, vs)
    want = torch.stack([torch.linalg.matrix_norm(w, 2) for w in ws])
    torch.testing.assert_close(sigma, want, atol=1e-8, rtol=1e-8)


def test_zero_weight_gives_zero_like_torch(backend_device):
    backend, device = backend_device
    ws, us, vs = _make([(4, 6), (3, 5)], torch.float64, device)
    ws[0].zero_()
    us_ref, vs_ref = _clone(us), _clone(vs)
    with use_backend(backend):
        sigma = spectral_norm_step(ws, us, vs)
    ref = spectral_norm_step_reference(ws, us_ref, vs_ref)
    assert sigma[0].item() == 0.0 and ref[0].item() == 0.0
    assert not us[0].any() and not vs[0].any()
    torch.testing.assert_close(sigma, ref, **TOL[torch.float64])


def test_non_contiguous_vectors_are_updated_in_place(backend_device):
    backend, device = backend_device
    w = torch.randn(5, 7, dtype=torch.float64, device=device)
    ubuf = torch.randn(10, dtype=torch.float64, device=device)
    vbuf = torch.randn(14, dtype=torch.float64, device=device)
    u, v = ubuf[::2], vbuf[1::2]
    u_ref, v_ref = u.clone(), v.clone()
    with use_backend(backend):
        sigma = spectral_norm_step([w], [u], [v])
    ref = spectral_norm_step_reference([w], [u_ref], [v_ref])
    torch.testing.assert_close(sigma, ref, **TOL[torch.float64])
    torch.testing.assert_close(ubuf[::2], u_ref, **TOL[torch.float64])
    torch.testing.assert_close(vbuf[1::2], v_ref, **TOL[torch.float64])


def test_bad_inputs_name_the_layer():
    ws, us, vs = _make([(4, 6), (3, 5), (2, 2)], torch.float32, "cpu")
    with pytest.raises(ValueError, match="3 weights, 2 us and 3 vs"):
        spectral_norm_step(ws, us[:2], vs)
    with pytest.raises(ValueError, match="no layers"):
        spectral_norm_step([], [], [])
    with pytest.raises(ValueError, match=r"layer 1: u must have shape \(3,\)"):
        spectral_norm_step(ws, [us[0], torch.zeros(4), us[2]], vs)
    with pytest.raises(ValueError, match=r"layer 2: v must have shape \(2,\)"):
        spectral_norm_step(ws, us, [vs[0], vs[1], torch.zeros(3)])
    with pytest.raises(ValueError, match="layer 1: weight must be a 2D matrix"):
        spectral_norm_step([ws[0], torch.zeros(3, 5, 1), ws[2]], us, vs)
    with pytest.raises(TypeError, match="layer 2: v has dtype torch.float64"):
        spectral_norm_step(ws, us, [vs[0], vs[1], vs[2].double()])
    with pytest.raises(ValueError, match="layer 1: weight is on meta"):
        spectral_norm_step([ws[0], ws[1].to("meta"), ws[2]], us, vs)
    with pytest.raises(TypeError, match="list of tensors"):
        spectral_norm_step(ws[0], us, vs)


def test_forced_backend_declines_half_precision():
    ws, us, vs = _make([(4, 6)], torch.float16, "cpu")
    with use_backend("cpu"), pytest.raises(BackendError, match="float16"):
        spectral_norm_step(ws, us, vs)


def _sigma_of(w, u, v):
    return torch.vdot(u, w.reshape(w.shape[0], -1) @ v)


def test_spectral_normalize_gradients_match_torch():
    w = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    u = F.normalize(torch.randn(5, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(12, dtype=torch.float64), dim=0)
    sigma = spectral_norm_step([w.detach().reshape(5, 12)], [u], [v])[0]
    g = torch.randn_like(w)
    (grad,) = torch.autograd.grad(spectral_normalize(w, sigma, u, v), w, g)
    (want,) = torch.autograd.grad(w / _sigma_of(w, u, v), w, g)
    torch.testing.assert_close(grad, want, **TOL[torch.float64])


def test_spectral_normalize_gradcheck_and_gradgradcheck():
    u = F.normalize(torch.randn(4, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(6, dtype=torch.float64), dim=0)

    def fn(w):
        # sigma is recomputed for each perturbed w so that numerical and analytical
        # derivatives describe the same function w / (u . W v).
        return spectral_normalize(w, _sigma_of(w, u, v).detach(), u, v)

    w = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (w,))
    assert torch.autograd.gradgradcheck(fn, (w,))


def test_spectral_normalize_rejects_mismatched_vectors():
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"expected u \(4,\), v \(6,\)"):
        spectral_normalize(w, torch.tensor(1.0), torch.zeros(5), torch.zeros(6))
