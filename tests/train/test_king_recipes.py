"""Training King et al.'s models: the spectral-norm and DiffAugment hooks, the auxiliary
classifier, and each conditioning scheme learning its classes on a small run."""

from __future__ import annotations

import pytest
import torch

from brainkern.models import build_model
from brainkern.train import recipes
from brainkern.train.config import DEFAULTS, resolve
from brainkern.train.recipes import make_recipe

GRID = (16, 16, 16)


def _train(**kw):
    return {**DEFAULTS["train"], "g_updates": 1, **kw}


def _two_sided(n: int, seed: int = 0):
    """Volumes in [-1, 1]: class 0 bright in the first half of the last axis, class 1 in the second."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.full((n, 1, *GRID), -1.0)
    x[y == 0, ..., : GRID[2] // 2] = 0.6
    x[y == 1, ..., GRID[2] // 2 :] = 0.6
    return (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1), y


def _side(volumes: torch.Tensor) -> torch.Tensor:
    half = GRID[2] // 2
    return (volumes[..., half:].mean((1, 2, 3, 4)) > volumes[..., :half].mean((1, 2, 3, 4))).long()


def _balanced_draw(x, y, per_class: int, seed: int):
    """Batches with ``per_class`` volumes of each class (a 16^3 generator's first BatchNorm
    sees one voxel per channel: a class alone in a batch could not be normalised)."""
    gen = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(y == k).flatten() for k in (0, 1)]

    def draw():
        idx = torch.cat([c[torch.randint(0, len(c), (per_class,), generator=gen)] for c in by_class])
        return {"image": x[idx], "label": y[idx]}

    return draw


def test_spectral_norm_refreshed_once_before_each_discriminator_use(monkeypatch):
    calls = []
    real_update = recipes.spectral_norm_update

    def counting(module, forwards=1):
        calls.append((type(module).__name__, forwards))
        return real_update(module, forwards=forwards)

    monkeypatch.setattr(recipes, "spectral_norm_update", counting)
    torch.manual_seed(0)
    model = build_model("alpha-sn-gan", shape=GRID, latent_dim=8, width=4, code_hidden=16)
    recipe = make_recipe(model, _train(critic_batch="same", d_updates=2), "cpu")
    x, _ = _two_sided(4)
    before = model.discriminator.head.sigma.clone()
    recipe.step({"image": x})
    # encoder-generator (both critics), 2 discriminator updates, 1 code discriminator update
    assert calls == [("SNDiscriminator", None), ("SNCodeDiscriminator", None)] + [
        ("SNDiscriminator", None)
    ] * 2 + [("SNCodeDiscriminator", None)]
    assert not torch.equal(before, model.discriminator.head.sigma)
    # Kwon's alpha-WGAN-GP has no SN layer: no hook
    assert (
        make_recipe(build_model("alpha-wgan-gp", shape=GRID, latent_dim=8, width=4), _train(), "cpu").hooks[
            "before_critic"
        ]
        == []
    )


def test_diffaugment_reaches_every_image_discriminator_input_and_only_those():
    torch.manual_seed(0)
    model = build_model("alpha-sn-gan", shape=GRID, latent_dim=8, width=4, code_hidden=16)
    policy = ["translation", "cutout", "intensity"]
    recipe = make_recipe(
        model,
        _train(critic_batch="same", diffaugment=policy, diffaugment_p=1.0, diffaugment_background=-1.0),
        "cpu",
    )
    assert recipe.diffaugment is not None and recipe.diffaugment.policy == tuple(policy)
    seen = {}
    net = model.discriminator
    hook = net.register_forward_pre_hook(lambda m, args: seen.setdefault("d", []).append(args[0].detach()))
    x, _ = _two_sided(4)
    recipe.step({"image": x})
    hook.remove()
    # the discriminator's real input is augmented: background-filled cutouts, lowered intensity
    real_seen = seen["d"][1]  # encoder-generator update first (2 fakes in one call each), then real
    assert not torch.equal(real_seen, x) and real_seen.min() >= -1.0001
    # the same step without augmentation sees the real batch unchanged
    plain = make_recipe(model, _train(critic_batch="same"), "cpu")
    assert plain.diffaugment is None and plain.hooks["critic_input"] == []
    with pytest.raises(ValueError, match="diffaugment"):
        resolve("king2024-sn-gan", [{"train": {"diffaugment": ["rotation"]}}])


def test_aux_classifier_is_trained_first_then_frozen_and_checkpointed():
    torch.manual_seed(0)
    model = build_model(
        "sn-gan", shape=GRID, latent_dim=8, width=4, conditioning="aux-classifier", num_classes=2
    )
    x, y = _two_sided(32)
    recipe = make_recipe(model, _train(aux_iters=20, aux_lr=1e-3, lr=1e-3), "cpu")
    assert recipe.losses == ("loss_g", "loss_d", "gp_d", "loss_cls")
    with pytest.raises(ValueError, match="recipe.draw"):
        recipe.step({"image": x[:4], "label": y[:4]})
    recipe.draw = _balanced_draw(x, y, 2, seed=1)
    clf = model.classifier
    start = [p.clone() for p in clf.parameters()]
    logs = recipe.step({"image": x[:4], "label": y[:4]})
    assert set(logs) == {"loss_g", "loss_d", "gp_d", "loss_cls"}
    assert bool(clf.fitted) and not any(p.requires_grad for p in clf.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(start, clf.parameters(), strict=True))
    with torch.no_grad():
        assert (clf(x).argmax(1) == y).float().mean() >= 0.9
    # fitted once: the next step leaves it alone; the flag travels in the state dict
    frozen = [p.clone() for p in clf.parameters()]
    recipe.step({"image": x[:4], "label": y[:4]})
    assert all(torch.equal(a, b) for a, b in zip(frozen, clf.parameters(), strict=True))
    assert model.state_dict()["classifier.fitted"].item() is True


@pytest.mark.parametrize("conditioning", ["projection", "aux-classifier", "separate"])
def test_conditional_samples_carry_their_class(conditioning):
    """After a short run on two classes that differ by which half is bright, the half that
    is bright in a conditional sample names its class (chance: 50%)."""
    torch.manual_seed(0)
    model = build_model(
        "sn-gan", shape=GRID, latent_dim=16, width=4, conditioning=conditioning, num_classes=2
    )
    x, y = _two_sided(64)
    recipe = make_recipe(model, _train(lr=1e-3, betas=[0.5, 0.999], aux_iters=30), "cpu")
    recipe.draw = _balanced_draw(x, y, 4, seed=1)
    for _ in range(40):
        recipe.step(recipe.draw())
    labels = torch.arange(64) % 2
    samples = model.sample(64, labels, generator=torch.Generator().manual_seed(2))
    accuracy = (_side(samples) == labels).float().mean().item()
    assert accuracy >= 0.9, f"{conditioning}: only {accuracy:.0%} of the samples show their class"


def test_king_presets_resolve_and_build_small():
    for preset in (
        "king2024-sn-gan",
        "king2024-alpha-sn-gan",
        "king2024-alpha-sn-gan-aux",
        "king2024-alpha-sn-gan-projection",
        "king2024-alpha-sn-gan-separate",
    ):
        cfg = resolve(preset, [{"model": {"width": 2, "latent_dim": 8}, "data": {"shape": [16, 16, 16]}}])
        assert cfg["train"]["batch_size"] == 4 and cfg["train"]["betas"] == [0.5, 0.999]
        model_cfg = {k: v for k, v in cfg["model"].items() if k != "name"}
        if cfg["model"].get("conditioning", "none") != "none":
            model_cfg["num_classes"] = 2
        model = build_model(cfg["model"]["name"], shape=(16, 16, 16), **model_cfg)
        recipe = make_recipe(model, cfg["train"], "cpu")
        assert recipe.loss == "hinge"
