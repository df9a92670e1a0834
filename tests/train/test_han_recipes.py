"""Han et al.'s (2018, seed 002) training: the WGAN loss, RMSprop, weight clipping, the presets,
and a few steps of the 2D models through the ``gan`` recipe."""

from __future__ import annotations

import copy

import pytest
import torch

from brainkern.models import build_model
from brainkern.train import config
from brainkern.train.config import DEFAULTS, merge
from brainkern.train.objectives import discriminator_loss, generator_loss
from brainkern.train.recipes import make_recipe

SIDE = 16


def model_of(name: str = "wgan2d", channels: int = 2, **extra):
    torch.manual_seed(0)
    return build_model(name, shape=(SIDE, SIDE), channels=channels, latent_dim=8, width=4, **extra)


def recipe_of(model, **train):
    cfg = merge(DEFAULTS["train"], {"amp": "off", **train}, where="train")
    return make_recipe(model, cfg, "cpu")


def images(seed: int, n: int = 4, channels: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, channels, SIDE, SIDE, generator=gen) * 2 - 1,
        "label": torch.zeros(n).long(),
    }


# ---------------------------------------------------------------------------
# the loss


def test_wgan_loss_by_hand():
    real = torch.tensor([[1.0], [3.0]])  # mean 2
    fake = torch.tensor([[-1.0], [0.5], [2.0], [0.5]])  # mean 0.5
    other = torch.tensor([4.0, 0.0])  # mean 2
    assert discriminator_loss("wgan", real, [fake]).item() == pytest.approx(0.5 - 2.0)
    # two fake sets: the real term counted twice, 0.5 + 2 - 2 * 2
    assert discriminator_loss("wgan", real, [fake, other]).item() == pytest.approx(-1.5)
    assert generator_loss("wgan", [fake]).item() == pytest.approx(-0.5)
    assert generator_loss("wgan", [fake, other]).item() == pytest.approx(-2.5)
    # the same values as wgan-gp's (whose penalty is the recipe's, not the loss's)
    assert torch.equal(discriminator_loss("wgan", real, [fake]), discriminator_loss("wgan-gp", real, [fake]))


def test_wgan_adds_no_penalty():
    recipe = recipe_of(model_of(), weight_clip=0.01)
    logs = recipe.step(images(0))
    assert logs["gp_d"].item() == 0.0


# ---------------------------------------------------------------------------
# optimisers


def test_adam_by_default_rmsprop_when_asked():
    adam = recipe_of(model_of(), lr=1e-3, betas=[0.5, 0.999])
    assert all(type(o) is torch.optim.Adam for o in adam.optimizers.values())
    assert adam.optimizers["generator"].param_groups[0]["betas"] == (0.5, 0.999)
    rms = recipe_of(model_of(), optimizer="rmsprop", lr=5e-5)
    assert set(rms.optimizers) == {"generator", "discriminator"}
    for opt in rms.optimizers.values():
        assert type(opt) is torch.optim.RMSprop
        group = opt.param_groups[0]
        assert group["lr"] == 5e-5 and group["momentum"] == 0 and not group["centered"]
    assert rms.state_dict()["optimizer"] == "rmsprop"


def test_per_network_lr_applies_to_rmsprop_and_betas_are_refused():
    rms = recipe_of(model_of(), optimizer="rmsprop", lr=5e-5, optim={"discriminator": {"lr": 1e-4}})
    assert rms.optimizers["discriminator"].param_groups[0]["lr"] == 1e-4
    assert rms.optimizers["generator"].param_groups[0]["lr"] == 5e-5
    with pytest.raises(ValueError, match=r"train.optim.generator: unknown key\(s\) \['betas'\].*no betas"):
        recipe_of(model_of(), optimizer="rmsprop", optim={"generator": {"betas": [0.0, 0.9]}})
    adam = recipe_of(model_of(), optim={"generator": {"lr": 3e-4, "betas": [0.0, 0.9]}})
    assert adam.optimizers["generator"].param_groups[0]["betas"] == (0.0, 0.9)
    with pytest.raises(ValueError, match="train.optimizer must be one of"):
        recipe_of(model_of(), optimizer="sgd")


def test_resume_checks_the_optimizer():
    rms = recipe_of(model_of(), optimizer="rmsprop", weight_clip=0.01)
    rms.step(images(0))
    state = copy.deepcopy(rms.state_dict())
    again = recipe_of(model_of(), optimizer="rmsprop", weight_clip=0.01)
    again.load_state_dict(state)
    assert torch.equal(
        again.optimizers["discriminator"].state_dict()["state"][0]["square_avg"],
        rms.optimizers["discriminator"].state_dict()["state"][0]["square_avg"],
    )
    with pytest.raises(ValueError, match="optimiser states are 'rmsprop'.*train.optimizer is 'adam'"):
        recipe_of(model_of()).load_state_dict(state)


# ---------------------------------------------------------------------------
# weight clipping


def test_weight_clipping_bounds_the_discriminator_only():
    c = 0.01
    model = model_of()
    recipe = recipe_of(model, optimizer="rmsprop", lr=5e-3, weight_clip=c, d_updates=2, g_updates=1)
    D, G = model.discriminator, model.generator
    assert max(p.abs().max().item() for p in D.parameters()) > c  # BatchNorm scales start at 1
    g_before = {k: v.clone() for k, v in G.state_dict().items()}
    # the generator's own update, run alone, moves weights past c: clipping must not touch them
    with torch.no_grad():
        G.net[0].weight.mul_(10)
    recipe.step(images(1))
    for p in D.parameters():
        assert p.abs().max().item() <= c
    # the clamp acted: some parameters sit on the bound (BatchNorm's scales started at 1)
    assert any(bool((p.abs() == c).any()) for p in D.parameters())
    assert D.net[3].weight.max().item() <= c
    big = max(p.abs().max().item() for p in G.parameters())
    assert big > 0.1  # the generator is not clipped
    assert any(not torch.equal(g_before[k], v) for k, v in G.state_dict().items())


def test_weight_clip_refused_with_the_gradient_penalty_and_without_a_discriminator():
    with pytest.raises(ValueError, match="the gradient penalty replaces weight clipping"):
        recipe_of(model_of(), weight_clip=0.01, loss="wgan-gp")
    with pytest.raises(ValueError, match="weight_clip must be a number > 0"):
        recipe_of(model_of(), weight_clip=-1.0)
    cvae = build_model("cvae", shape=(16, 16, 16), latent_dim=4, num_classes=2)
    with pytest.raises(ValueError, match="trains no discriminator to clip"):
        recipe_of(cvae, weight_clip=0.01)


# ---------------------------------------------------------------------------
# steps of the two models


@pytest.mark.parametrize(
    ("name", "train"),
    [
        ("dcgan2d", {"lr": 2e-4, "betas": [0.5, 0.999], "g_updates": 1, "d_updates": 1}),
        ("wgan2d", {"optimizer": "rmsprop", "lr": 5e-5, "weight_clip": 0.01, "g_updates": 1, "d_updates": 5}),
    ],
)
def test_one_step_of_each_model(name, train):
    model = model_of(name, channels=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = recipe_of(model, **train)
    steps = {n: 0 for n in recipe.optimizers}
    for n, opt in recipe.optimizers.items():
        opt.register_step_post_hook(lambda *_a, _n=n: steps.__setitem__(_n, steps[_n] + 1))
    logs = recipe.step(images(2, channels=4))
    assert set(logs) == {"loss_g", "loss_d", "gp_d"}
    assert all(torch.isfinite(v) for v in logs.values())
    assert steps == {"generator": 1, "discriminator": train["d_updates"]}
    for key in ("generator.net.0.weight", "discriminator.net.0.weight", "discriminator.net.2.weight"):
        assert not torch.equal(before[key], model.state_dict()[key]), key


def test_dcgan2d_moves_towards_a_two_mode_toy_data_set():
    """Images that are all -1 or all +1 (one channel): 200 steps must bring the generated
    images from flat zeros (N(0, 0.02) weights) towards one of the two modes each, and
    keep both modes (no collapse onto one sign)."""
    torch.manual_seed(0)
    model = build_model("dcgan2d", shape=(SIDE, SIDE), channels=1, latent_dim=8, width=8)
    recipe = recipe_of(model, lr=1e-3, betas=[0.5, 0.999], g_updates=1, d_updates=1)
    signs = (torch.arange(16) % 2 * 2 - 1).float()
    batch = {"image": signs.view(-1, 1, 1, 1).expand(16, 1, SIDE, SIDE).contiguous()}

    def stats() -> tuple[float, float, float]:
        """Mean distance of each image to its nearer mode, fraction of images with a positive
        mean, and the mean size of an image's mean."""
        x = model.sample(64, generator=torch.Generator().manual_seed(0)).flatten(1)
        nearer = torch.minimum((x - 1).abs().mean(1), (x + 1).abs().mean(1))
        means = x.mean(1)
        return nearer.mean().item(), (means > 0).float().mean().item(), means.abs().mean().item()

    dist0, _, size0 = stats()
    assert dist0 > 0.95 and size0 < 0.05
    for _ in range(200):
        recipe.step(batch)
    dist, positive, size = stats()
    assert dist < 0.7, dist  # 0.62 when written
    assert 0.2 < positive < 0.8, positive  # 0.50
    assert size > 0.5, size  # 0.93: whole images pushed to a sign, not zero-mean noise


# ---------------------------------------------------------------------------
# presets

HAN = {
    "han2018-dcgan-64": ("dcgan2d", 64),
    "han2018-dcgan-128": ("dcgan2d", 128),
    "han2018-wgan-64": ("wgan2d", 64),
    "han2018-wgan-128": ("wgan2d", 128),
}


@pytest.mark.parametrize("preset", sorted(HAN))
def test_presets_have_han_et_al_settings(preset):
    name, side = HAN[preset]
    cfg = config.resolve(preset)
    model, data, train = cfg["model"], cfg["data"], cfg["train"]
    assert model == {"name": name, "latent_dim": 100, "width": 32}
    assert data["cohort"] == "smri" and data["sequences"] == ["t1", "t1c", "t2", "flair"]
    assert data["lesions"] == 1.0 and data["n_per_class"] == 110
    assert data["shape"] == [side] * 3 and data["slices"]["size"] == side
    assert data["slices"]["plane"] == "sagittal" and data["slices"]["central"] == 0.5
    assert data["flip"] is False and data["intensity"] is None and (data["folds"], data["fold"]) == (5, 0)
    assert train["batch_size"] == 64 and train["g_updates"] == 1
    if name == "dcgan2d":
        assert train["optimizer"] == "adam" and train["lr"] == 2e-4 and train["betas"] == [0.5, 0.999]
        assert train["d_updates"] == 1 and train["weight_clip"] is None
    else:
        assert train["optimizer"] == "rmsprop" and train["lr"] == 5e-5
        assert train["weight_clip"] == 0.01 and train["d_updates"] == 5
    # a single sequence, as Han et al.'s per-sequence models
    one = config.resolve(preset, [{"data": {"sequences": ["t2"]}}])
    assert one["data"]["sequences"] == ["t2"]
    # the preset's model builds at its size with the channels the engine passes
    built = build_model(
        model["name"], shape=(side, side), channels=4, **{k: v for k, v in model.items() if k != "name"}
    )
    assert built.loss == ("standard" if name == "dcgan2d" else "wgan")
