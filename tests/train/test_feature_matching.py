"""The GAN recipe's feature matching (``train.feature_matching``) and every recipe's gradient
clipping (``train.grad_clip``), as Seeliger et al. (2018, seed 004) train their image prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from brainkern.models import GenerativeModel, build_model
from brainkern.train.config import DEFAULTS, merge
from brainkern.train.objectives import discriminator_loss, generator_loss
from brainkern.train.recipes import make_recipe

SIDE = 16


def recipe_of(model, **train):
    cfg = merge(DEFAULTS["train"], {"amp": "off", "g_updates": 1, "d_updates": 1, **train}, where="train")
    return make_recipe(model, cfg, "cpu")


def seeliger(seed: int = 0) -> GenerativeModel:
    torch.manual_seed(seed)
    return build_model("seeliger-dcgan", shape=(SIDE, SIDE), latent_dim=6, width=4, d_width=4)


def real_batch(seed: int, n: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 1, SIDE, SIDE, generator=gen) * 2 - 1}


class _Image(nn.Module):
    """A generator that ignores its code: every sample is the learnt image ``p (1, 1, 2, 2)``."""

    def __init__(self, p: torch.Tensor) -> None:
        super().__init__()
        self.p = nn.Parameter(p.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.p.expand(z.shape[0], -1, -1, -1)


class _Linear(nn.Module):
    """``D(x) = a mean(x) + b``; ``features(x) = a x``."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a * x.mean((1, 2, 3)) + self.b)[:, None]


def _toy(p: np.ndarray, a: float, b: float) -> GenerativeModel:
    nets = {"generator": _Image(torch.tensor(p)), "discriminator": _Linear(a, b)}
    return GenerativeModel(
        name="toy-fm", shape=(2, 2), latent_dim=3, family="gan", loss="standard", networks=nets
    )


def test_feature_matching_term_and_gradient_by_hand():
    p = np.array([[[[0.5, -0.25], [1.0, 0.0]]]])
    real = np.array([[[[1.0, 0.0], [0.5, -1.0]]], [[[0.0, 1.0], [-0.5, 0.0]]], [[[0.5, 0.5], [1.0, 1.0]]]])
    a, b, w = 2.0, 0.3, 0.7
    model = _toy(p, a, b)
    recipe = recipe_of(model, feature_matching=w, dtype="float64")
    assert recipe.losses == ("loss_g", "loss_d", "gp_d", "loss_fm")
    logs = recipe.step({"image": torch.tensor(real)})
    assert set(logs) == set(recipe.losses)
    # by hand: the mean real image rbar, features a x; term = mean over pixels (a rbar - a p)^2
    rbar = real.mean(0)
    fm = np.mean((a * rbar - a * p[0]) ** 2)
    assert logs["loss_fm"].item() == pytest.approx(fm, rel=1e-12)
    # the non-saturating loss softplus(-D(p)) with D(p) = a mean(p) + b
    logit = a * p.mean() + b
    assert logs["loss_g"].item() == pytest.approx(math.log1p(math.exp(-logit)), rel=1e-12)
    # the generator's gradient (kept after its step): d/dp of loss_g + w fm, P = 4 pixels
    sig = 1 / (1 + math.exp(logit))
    grad = -sig * a / 4 + w * 2 * a**2 * (p[0] - rbar) / 4
    assert np.allclose(model.generator.p.grad.numpy()[0], grad, rtol=1e-12, atol=0)


def test_feature_matching_pulls_the_generated_features_towards_the_real_ones():
    # the same step at three weights: the generator's gradients differ by the weight times
    # the feature term's gradient, which points from the generated image towards the real mean
    p = np.zeros((1, 1, 2, 2))
    real = np.ones((2, 1, 2, 2))
    grads = []
    for w in (0.0, 1.0, 3.0):
        model = _toy(p, 1.0, 0.0)
        recipe_of(model, feature_matching=w, dtype="float64").step({"image": torch.tensor(real)})
        grads.append(model.generator.p.grad.clone())
    # fm gradient per pixel: 2 a^2 (p - rbar) / 4 = -0.5, scaled by the weight
    assert torch.allclose(grads[1] - grads[0], torch.full((1, 1, 2, 2), -0.5, dtype=torch.float64))
    assert torch.allclose(grads[2] - grads[0], torch.full((1, 1, 2, 2), -1.5, dtype=torch.float64))


def test_feature_matching_leaves_the_discriminators_running_statistics_alone():
    model = seeliger()
    recipe = recipe_of(model, feature_matching=1.0)
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    real = real_batch(0)["image"]
    fake = model.generate(model.sample_latent(4))
    term = recipe._feature_matching(real, fake)
    assert term.item() > 0 and term.requires_grad
    after = model.discriminator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _old_gan_step(model: GenerativeModel, opt_g, opt_d, real: torch.Tensor) -> None:
    """The GAN recipe's step as it was before feature matching and gradient clipping."""
    G, D = model.generator, model.discriminator
    D.requires_grad_(False)
    fake = G(model.sample_latent(real.shape[0]))
    loss_g = generator_loss("standard", [D(fake)])
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    D.requires_grad_(True)
    with torch.no_grad():
        fake = G(model.sample_latent(real.shape[0]))
    loss_d = discriminator_loss("standard", D(real), [D(fake)])
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()


def test_defaults_leave_the_step_byte_identical_to_the_plain_gan_step():
    ours, ref = seeliger(), seeliger()
    recipe = recipe_of(ours, lr=1e-3, betas=[0.5, 0.999])
    assert recipe.feature_matching == 0.0 and recipe.grad_clip is None
    assert recipe.losses == ("loss_g", "loss_d", "gp_d")
    opt_g = torch.optim.Adam(ref.generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(ref.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    for i in range(3):
        batch = real_batch(i)
        torch.manual_seed(100 + i)
        logs = recipe.step(batch)
        torch.manual_seed(100 + i)
        _old_gan_step(ref, opt_g, opt_d, batch["image"])
        assert set(logs) == {"loss_g", "loss_d", "gp_d"}
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_feature_matching_is_refused_where_it_cannot_apply():
    toy = GenerativeModel(
        name="toy-vae",
        shape=(2, 2),
        latent_dim=3,
        family="cvae",
        loss="elbo",
        networks={"generator": nn.Linear(3, 4)},
    )
    with pytest.raises(ValueError, match="train.feature_matching is not used by the 'cvae' recipe"):
        recipe_of(toy, feature_matching=1.0)
    torch.manual_seed(0)
    dcgan = build_model("dcgan2d", shape=(SIDE, SIDE), latent_dim=4, width=4)
    with pytest.raises(ValueError, match="has no features"):
        recipe_of(dcgan, feature_matching=0.5)
    assert recipe_of(dcgan, feature_matching=0.0).losses == ("loss_g", "loss_d", "gp_d")
    for bad in (-1.0, float("inf"), True):
        with pytest.raises(ValueError, match="train.feature_matching must be a finite number >= 0"):
            make_recipe(seeliger(), {**DEFAULTS["train"], "feature_matching": bad}, "cpu")


def _grads(model: GenerativeModel, name: str) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model[name].parameters()])


def test_grad_clip_rescales_each_networks_gradient_to_the_threshold():
    clip = 1e-3  # far below the gradients' norms here, so every update is clipped
    runs = {}
    for c in (None, clip):
        model = seeliger()
        recipe = recipe_of(model, grad_clip=c, feature_matching=1.0)
        assert recipe.grad_clip == c
        torch.manual_seed(5)
        recipe.step(real_batch(0))
        runs[c] = model
    # the generator's first update saw the same gradient g in both runs: clipped to c g / |g|
    g = _grads(runs[None], "generator")
    assert g.norm() > 100 * clip
    clipped = _grads(runs[clip], "generator")
    assert torch.allclose(clipped, g * clip / (g.norm() + 1e-6), rtol=1e-4, atol=1e-12)
    # the discriminator's gradient (after the clipped generator moved) is bounded too
    assert _grads(runs[clip], "discriminator").norm() <= clip * (1 + 1e-4)
    assert _grads(runs[None], "discriminator").norm() > clip


def test_grad_clip_above_the_gradient_norm_changes_nothing():
    states = []
    for c in (None, 1e9):
        model = seeliger()
        torch.manual_seed(5)
        recipe_of(model, grad_clip=c).step(real_batch(0))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, float("inf"), True, "10"])
def test_grad_clip_must_be_positive(bad):
    with pytest.raises(ValueError, match="train.grad_clip must be a finite number > 0 or None"):
        make_recipe(seeliger(), {**DEFAULTS["train"], "grad_clip": bad}, "cpu")
