"""SNConv3d / SNConv2d / SNLinear against torch.nn.utils.parametrizations.spectral_norm."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from brainkern.nn import SNConv2d, SNConv3d, SNLinear, spectral_norm_update
from brainkern.ops import use_backend

TOL = dict(atol=1e-10, rtol=1e-10)  # float64 throughout

# (brainkern class, torch class, constructor args, input shape)
LAYERS = {
    "conv3d": (
        SNConv3d,
        nn.Conv3d,
        dict(in_channels=3, out_channels=5, kernel_size=(3, 2, 3), padding=1),
        (2, 3, 7, 5, 3),
    ),
    "conv2d": (
        SNConv2d,
        nn.Conv2d,
        dict(in_channels=3, out_channels=4, kernel_size=3, stride=2),
        (1, 3, 7, 9),
    ),
    "linear": (SNLinear, nn.Linear, dict(in_features=17, out_features=6), (3, 17)),
}


def _pair(kind, **extra):
    ours_cls, torch_cls, kwargs, shape = LAYERS[kind]
    torch.manual_seed(1)
    ours = ours_cls(**kwargs, dtype=torch.float64, **extra)
    torch.manual_seed(1)
    ref = spectral_norm(torch_cls(**kwargs, dtype=torch.float64), **extra)
    return ours, ref, shape


def _ref_state(ref):
    sn = ref.parametrizations.weight[0]
    return ref.parametrizations.weight.original, sn._u, sn._v


@pytest.mark.parametrize("kind", list(LAYERS))
def test_same_initialisation_as_torch(kind):
    ours, ref, _ = _pair(kind)
    w, u, v = _ref_state(ref)
    torch.testing.assert_close(ours.weight, w, atol=0, rtol=0)
    torch.testing.assert_close(ours.bias, ref.bias, atol=0, rtol=0)
    # 15 warm-up iterations each, by different kernels: equal to rounding.
    torch.testing.assert_close(ours.u, u, **TOL)
    torch.testing.assert_close(ours.v, v, **TOL)


@pytest.mark.parametrize("n_iter", [1, 2])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_training_step_matches_torch(backend_device, kind, n_iter):
    backend, device = backend_device
    ours, ref, shape = _pair(kind, n_power_iterations=n_iter)
    ours, ref = ours.to(device), ref.to(device)
    w_ref, u_ref, v_ref = _ref_state(ref)
    ours.u.copy_(u_ref)
    ours.v.copy_(v_ref)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with use_backend(backend):
        y = ours(x)
    y_ref = ref(x_ref)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(ours.u, u_ref, **TOL)
    torch.testing.assert_close(ours.v, v_ref, **TOL)
    sigma_ref = torch.vdot(u_ref, w_ref.reshape(w_ref.shape[0], -1) @ v_ref)
    torch.testing.assert_close(ours.sigma, sigma_ref, **TOL)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    grads_ref = torch.autograd.grad(y_ref, (x_ref, w_ref, ref.bias), g)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_eval_uses_stored_estimate(kind):
    ours, ref, shape = _pair(kind)
    _, u_ref, v_ref = _ref_state(ref)
    ours.u.copy_(u_ref)
    ours.v.copy_(v_ref)
    ours.eval()
    ref.eval()
    u0, v0 = ours.u.clone(), ours.v.clone()
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    assert torch.equal(ours.u, u0) and torch.equal(ours.v, v0)
    torch.testing.assert_close(ours.normalized_weight(), ref.weight, **TOL)
    ours.train()
    ours(x)
    assert not torch.equal(ours.v, v0)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_normalized_weight_is_last_training_weight(kind):
    ours, _, shape = _pair(kind)
    ours(torch.randn(shape, dtype=torch.float64))
    w_sn = ours.normalized_weight()
    torch.testing.assert_close(w_sn, ours.weight / ours.sigma, **TOL)
    sv = torch.linalg.matrix_norm(w_sn.reshape(w_sn.shape[0], -1), 2)
    assert sv.item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_state_dict_round_trip(kind):
    ours, _, shape = _pair(kind)
    x = torch.randn(shape, dtype=torch.float64)
    ours(x)
    state = ours.state_dict()
    assert set(state) == {"weight", "bias", "u", "v", "sigma"}
    ours_cls, _, kwargs, _ = LAYERS[kind]
    torch.manual_seed(123)
    fresh = ours_cls(**kwargs, dtype=torch.float64)
    fresh.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    torch.testing.assert_close(fresh(x), ours(x), atol=0, rtol=0)


def _discriminator():
    torch.manual_seed(3)
    return nn.Sequential(
        SNConv3d(1, 4, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        SNConv3d(4, 6, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        SNLinear(6 * 2 * 2 * 2, 1),
    ).double()


def test_grouped_update_equals_per_layer_iteration(backend_device):
    backend, device = backend_device
    grouped = _discriminator().to(device)
    per_layer = copy.deepcopy(grouped)
    x = torch.randn(2, 1, 7, 5, 6, dtype=torch.float64, device=device)
    with use_backend(backend):
        sigmas = spectral_norm_update(grouped)
        state = {k: v.clone() for k, v in grouped.state_dict().items()}
        y = grouped(x)
        # The forward consumed the grouped result: no further iteration.
        for key, value in grouped.state_dict().items():
            assert torch.equal(value, state[key]), key
        y_ref = per_layer(x)
    assert sigmas.shape == (3,)
    torch.testing.assert_close(y, y_ref, **TOL)
    for (key, value), (_, want) in zip(
        grouped.state_dict().items(), per_layer.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(value, want, **TOL, msg=key)
    # forwards=1 (default): the second forward iterates again, as torch does.
    v_before = grouped[0].v.clone()
    grouped(x)
    assert not torch.equal(grouped[0].v, v_before)
    # forwards=None: every forward until the next update reuses the result.
    spectral_norm_update(grouped, forwards=None)
    v_before = grouped[0].v.clone()
    for _ in range(3):
        grouped(x)
    assert torch.equal(grouped[0].v, v_before)


def test_gradient_penalty_matches_torch():
    """Double backward through W / sigma (WGAN-GP on an SN discriminator)."""
    ours, ref, shape = _pair("conv3d")
    w_ref, u_ref, v_ref = _ref_state(ref)
    ours.u.copy_(u_ref)
    ours.v.copy_(v_ref)

    def penalty(module, weight):
        x = torch.randn(
            shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
        ).requires_grad_()
        out = module(x).square().sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        gp = (gx.flatten(1).norm(dim=1) - 1).square().mean()
        return torch.autograd.grad(gp, weight)[0]

    torch.testing.assert_close(penalty(ours, ours.weight), penalty(ref, w_ref), **TOL)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_power_iterations must be positive"):
        SNLinear(3, 4, n_power_iterations=0)
    with pytest.raises(ValueError, match="eps must be positive"):
        SNConv2d(3, 4, 3, eps=0.0)
    with pytest.raises(ValueError, match="forwards must be None or a non-negative integer"):
        spectral_norm_update(SNLinear(3, 4), forwards=-2)
    assert spectral_norm_update(nn.Linear(3, 4)).numel() == 0


def test_training_loop_hits_the_triton_layout_cache():
    """Every call of a training step (grouped and per layer) reuses its layout: no rebuilds.

    Ten SN layers, more than the old cache held, each called on its own by the
    second forward of a step (``forwards=1``) besides the grouped update.
    """
    from brainkern.ops._backend import interpreter_enabled  # noqa: PLC0415

    if not interpreter_enabled():
        pytest.skip("triton on the CPU needs TRITON_INTERPRET=1")
    import brainkern.kernels.spectral_norm as kmod  # noqa: PLC0415

    torch.manual_seed(4)
    disc = nn.Sequential(
        SNConv3d(1, 2, 2, stride=2),
        nn.Flatten(),
        *[m for _ in range(8) for m in (SNLinear(16, 16), nn.LeakyReLU(0.2))],
        SNLinear(16, 1),
    ).double()
    opt = torch.optim.SGD(disc.parameters(), lr=1e-2)
    real, fake = (torch.randn(2, 1, 4, 4, 4, dtype=torch.float64) for _ in range(2))
    kmod.layout_cache_clear()
    misses = []
    with use_backend("triton"):
        for _ in range(3):
            spectral_norm_update(disc)
            loss = disc(fake).mean() - disc(real).mean()  # the second forward iterates per layer
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            misses.append(kmod.layout_cache_info().misses)
    kmod.layout_cache_clear()
    assert misses == [11, 11, 11]  # one grouped call and ten single layers, built once
