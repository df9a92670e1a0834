"""The reconstruction models: Seeliger et al.'s (2018) ensemble of linear maps to a fixed generator's
latent space, and the ridge-to-pixels and nearest-training-image baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("sklearn")

from brainkern.reconstruct.features import FeatureNet  # noqa: E402
from brainkern.reconstruct.loss import ReconstructionLoss  # noqa: E402
from brainkern.reconstruct.model import (  # noqa: E402
    LatentEnsemble,
    fit_latent_ensemble,
    nearest_training,
    reconstruct,
    ridge_pixels,
)

SIDE, LATENT = 32, 6


class LinearGenerator(nn.Module):
    """A stand-in for the DCGAN generator: ``z (N, L)`` -> ``tanh(z A + c)`` as ``(N, 1, S, S)``."""

    def __init__(self, latent_dim: int = LATENT, side: int = SIDE, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.latent_dim, self.side = latent_dim, side
        self.fc = nn.Linear(latent_dim, side * side)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(side * side, latent_dim, generator=gen) * 1.5)
            self.fc.bias.copy_(torch.randn(side * side, generator=gen) * 0.1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(z)).view(-1, 1, self.side, self.side)


class ZeroLoss(nn.Module):
    """A loss with no gradient from the data: only the L2 penalty can move the weights."""

    def targets(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": x}

    def forward(self, x, y, targets=None) -> dict[str, torch.Tensor]:
        zero = (y * 0.0).sum()
        return {"loss": zero, "pixel": zero.detach(), "presence": zero.detach(), "magnitude": zero.detach()}


def _sphere(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=-1, keepdim=True)


def _problem(n: int = 24, p: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, LinearGenerator]:
    """Components ``(n, p)`` and the images ``(n, S, S)`` the generator makes of a linear map of them."""
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(n, p, generator=gen)
    true_map = torch.randn(p, LATENT, generator=gen)
    g = LinearGenerator(seed=seed)
    with torch.no_grad():
        images = g(_sphere(x @ true_map)).squeeze(1)
    return x.numpy(), images.numpy(), g


def _feature_loss() -> ReconstructionLoss:
    torch.manual_seed(0)
    net = FeatureNet(2, side=SIDE, widths=(4, 4, 4, 4, 4), hidden=8)
    return ReconstructionLoss(net)


# ----------------------------------------------------------------------------- LatentEnsemble


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_every_member_code_has_unit_norm(scale):
    ens = LatentEnsemble(7, LATENT, members=4, seed=3)
    x = torch.randn(9, 7, generator=torch.Generator().manual_seed(1)) * scale
    codes = ens(x)
    assert codes.shape == (4, 9, LATENT)
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(4, 9))
    torch.testing.assert_close(ens.average(x).norm(dim=-1), torch.ones(9))


def test_average_is_the_renormalised_mean_of_the_members_codes():
    ens = LatentEnsemble(5, LATENT, members=3, seed=0)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        codes = ens(x)
        mean = codes.mean(0)
        expected = mean / mean.norm(dim=-1, keepdim=True)
    avg = ens.average(x)
    assert avg.shape == (8, LATENT)
    torch.testing.assert_close(avg, expected)


def test_average_by_hand_two_orthogonal_members():
    # member 0 maps onto the first axis, member 1 onto the second (different lengths): their unit
    # codes are e1 and e2, so the ensemble's code is (e1 + e2) / sqrt(2)
    ens = LatentEnsemble(1, 3, members=2, seed=0)
    with torch.no_grad():
        ens.weight.zero_()
        ens.bias.zero_()
        ens.weight[0, 0, 0] = 2.0
        ens.weight[1, 0, 1] = 5.0
    x = torch.tensor([[1.0], [3.0]])
    codes = ens(x)
    torch.testing.assert_close(codes[0], torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    torch.testing.assert_close(codes[1], torch.tensor([[0, 1.0, 0], [0, 1.0, 0]]))
    h = float(1 / np.sqrt(2))
    torch.testing.assert_close(ens.average(x), torch.tensor([[h, h, 0.0], [h, h, 0.0]]))


def test_members_differ_at_init_and_the_seed_fixes_them():
    a = LatentEnsemble(6, LATENT, members=3, seed=5)
    b = LatentEnsemble(6, LATENT, members=3, seed=5)
    c = LatentEnsemble(6, LATENT, members=3, seed=6)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)
    assert not torch.allclose(a.weight, c.weight)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(a.weight[i], a.weight[j])
            assert not torch.allclose(a.bias[i], a.bias[j])
    # nn.Linear's range: uniform in +-1/sqrt(P)
    assert a.weight.abs().max() <= 1 / np.sqrt(6)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    codes = a(x)
    assert not torch.allclose(codes[0], codes[1])


def test_shape_errors():
    ens = LatentEnsemble(5, LATENT, members=2)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        ens(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        ens(torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        ens(torch.zeros(2, 3, 5))
    for args in ((0, LATENT, 2), (5, 0, 2), (5, LATENT, 0)):
        with pytest.raises(ValueError, match=">= 1"):
            LatentEnsemble(*args)


# ----------------------------------------------------------------------------- fit_latent_ensemble


def test_fit_lowers_the_image_loss_and_leaves_the_generator_alone():
    x, images, g = _problem()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    ens, hist = fit_latent_ensemble(
        x, images, g, _feature_loss(), members=3, epochs=12, batch_size=6, lr=2e-2, seed=0, progress=False
    )
    assert isinstance(ens, LatentEnsemble) and ens.members == 3 and ens.n_inputs == 5
    assert ens.latent_dim == LATENT
    assert len(hist["loss"]) == 12 and len(hist["pixel"]) == 12
    # the presence term has a floor of its own (about 50 of the ~59 here, see loss.py): the
    # pixel and magnitude terms carry the fall
    assert all(b < a for a, b in zip(hist["loss"], hist["loss"][1:], strict=False)), hist["loss"]
    assert hist["loss"][0] - hist["loss"][-1] > 5, hist["loss"]
    assert hist["pixel"][-1] < 0.3 * hist["pixel"][0], hist["pixel"]
    assert hist["members"] == 3 and hist["batch_size"] == 6 and hist["seconds"] >= 0
    for k, v in g.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(not p.requires_grad and p.grad is None for p in g.parameters())
    # the fitted map reproduces the training images better than a fresh one
    fresh = LatentEnsemble(5, LATENT, members=3, seed=0)
    err_fit = np.mean((reconstruct(ens, x, g) - images) ** 2)
    err_fresh = np.mean((reconstruct(fresh, x, g) - images) ** 2)
    assert err_fit < 0.7 * err_fresh, (err_fit, err_fresh)


def test_fit_is_deterministic_by_seed():
    x, images, g = _problem(n=12)
    kw = {"members": 2, "epochs": 2, "batch_size": 4, "lr": 1e-2, "progress": False}
    a, ha = fit_latent_ensemble(x, images, g, _feature_loss(), seed=1, **kw)
    b, hb = fit_latent_ensemble(x, images, g, _feature_loss(), seed=1, **kw)
    c, _ = fit_latent_ensemble(x, images, g, _feature_loss(), seed=2, **kw)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=0)
    assert ha["loss"] == hb["loss"]
    assert not torch.allclose(a.weight, c.weight)


def test_weight_decay_shrinks_the_weights_but_not_the_biases():
    x, images, g = _problem(n=12)
    init = LatentEnsemble(5, LATENT, members=2, seed=0)
    kw = {"members": 2, "epochs": 3, "batch_size": 4, "lr": 1e-3, "seed": 0, "progress": False}
    ens, _ = fit_latent_ensemble(x, images, g, ZeroLoss(), weight_decay=0.01, **kw)
    # no data gradient: the biases keep their initial values exactly
    torch.testing.assert_close(ens.bias, init.bias, rtol=0, atol=0)
    # 9 Adam steps of about lr each, towards zero, on every weight larger than that
    big = init.weight.abs() > 0.02
    assert big.float().mean() > 0.8
    shrink = init.weight.abs() - ens.weight.abs()
    assert torch.all(shrink[big] > 0.5 * 9 * 1e-3)
    assert torch.all(shrink[big] < 1.5 * 9 * 1e-3)
    # without the penalty nothing moves
    still, _ = fit_latent_ensemble(x, images, g, ZeroLoss(), weight_decay=0.0, **kw)
    torch.testing.assert_close(still.weight, init.weight, rtol=0, atol=0)


def test_fit_refuses_mismatched_rows():
    x, images, g = _problem(n=12)
    with pytest.raises(ValueError, match="12 response rows but 11 images"):
        fit_latent_ensemble(x, images[:11], g, ZeroLoss(), members=1, epochs=1, progress=False)


# ----------------------------------------------------------------------------- reconstruct


def test_reconstruct_ensemble_and_member():
    x, _, g = _problem(n=7)
    ens = LatentEnsemble(5, LATENT, members=3, seed=4)
    whole = reconstruct(ens, x, g)
    one = reconstruct(ens, x, g, member=2)
    assert whole.shape == one.shape == (7, SIDE, SIDE)
    xt = torch.as_tensor(x)
    with torch.no_grad():
        np.testing.assert_allclose(whole, g(ens.average(xt)).squeeze(1).numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(one, g(ens(xt)[2]).squeeze(1).numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(whole, one)


# ----------------------------------------------------------------------------- ridge_pixels


def _linear_pixels(n_train=150, n_test=30, voxels=20, side=6, seed=0):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(n_train + n_test, voxels))
    b = rng.normal(size=(voxels, side * side)) / np.sqrt(voxels)
    images = r @ b  # linear in the responses
    images = (images / np.abs(images).max() * 0.95).reshape(-1, side, side).astype(np.float32)
    return r[:n_train], images[:n_train], r[n_train:], images[n_train:]


def test_ridge_recovers_a_linear_pixel_map():
    tr, tr_img, te, te_img = _linear_pixels()
    pred, info = ridge_pixels(tr, tr_img, te)
    assert pred.shape == te_img.shape and pred.dtype == np.float32
    assert pred.min() >= -1 and pred.max() <= 1
    corr = np.corrcoef(pred.ravel(), te_img.ravel())[0, 1]
    assert corr > 0.95, corr
    assert info["alpha"] == pytest.approx(0.1)  # the smallest penalty: the data are noiseless


def test_ridge_chooses_a_large_penalty_for_unrelated_pixels():
    tr, _, te, _ = _linear_pixels(seed=1)
    noise = np.random.default_rng(9).uniform(-1, 1, (len(tr), 6, 6)).astype(np.float32)
    _, info = ridge_pixels(tr, noise, te)
    assert info["alpha"] >= 1e3


def test_ridge_alpha_comes_from_training_data_only():
    tr, tr_img, te, _ = _linear_pixels(seed=2)
    noisy = tr_img + np.random.default_rng(3).normal(0, 0.3, tr_img.shape).astype(np.float32)
    pred, info = ridge_pixels(tr, noisy, te)
    pred_far, info_far = ridge_pixels(tr, noisy, te + 1e6)
    pred_few, info_few = ridge_pixels(tr, noisy, te[:3])
    assert info["alpha"] == info_far["alpha"] == info_few["alpha"]
    assert 0.1 < info["alpha"] < 1e6  # noise moves it off the grid's ends
    np.testing.assert_allclose(pred_few, pred[:3], rtol=0, atol=1e-6)
    assert not np.allclose(pred_far, pred)  # the offset rows are predicted (and clipped), not ignored


# ----------------------------------------------------------------------------- nearest_training


def test_nearest_training_returns_the_matching_training_images():
    rng = np.random.default_rng(0)
    tr = rng.normal(size=(40, 30))
    tr_img = rng.uniform(-1, 1, (40, 5, 5)).astype(np.float32)
    pick = np.array([3, 17, 17, 0, 39, 22])
    te = tr[pick] + rng.normal(0, 0.05, (len(pick), 30))
    out = nearest_training(tr, tr_img, te)
    assert out.shape == (6, 5, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out, tr_img[pick])
    # a response scaled and shifted is the same pattern to a correlation
    np.testing.assert_array_equal(nearest_training(tr, tr_img, 3 * te + 2), tr_img[pick])


def test_nearest_training_only_ever_answers_with_training_images():
    rng = np.random.default_rng(1)
    tr = rng.normal(size=(25, 12))
    tr_img = rng.uniform(-1, 1, (25, 4, 4)).astype(np.float32)
    out = nearest_training(tr, tr_img, rng.normal(size=(15, 12)))
    flat = tr_img.reshape(25, -1)
    for row in out.reshape(15, -1):
        assert any(np.array_equal(row, t) for t in flat)
