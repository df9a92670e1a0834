"""Training HA-GAN and alpha-HA-GAN (recipes "ha" and "alpha-ha"): every network learns, each
loss reaches only the networks it updates, per-sample slab positions, the global-batch draws,
DiffAugment on both discriminators, and resuming from a state dict."""

from __future__ import annotations

import copy

import pytest
import torch

from brainkern.models import build_model
from brainkern.models.ha_gan import low_resolution, slabs_at
from brainkern.train.config import DEFAULTS
from brainkern.train.distributed import World
from brainkern.train.recipes import AlphaHARecipe, HARecipe, make_recipe

GRID = (64, 64, 64)
LAST = 64 - 8  # the last slab start


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str):
    torch.manual_seed(0)
    extra = {"code_hidden": 16} if name == "alpha-ha-gan" else {}
    return build_model(name, shape=GRID, latent_dim=8, width=2, **extra)


def _train(**kw):
    return {**DEFAULTS["train"], "g_updates": 1, "d_updates": 1, **kw}


def _volumes(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Smooth volumes in [-1, 1] that differ along depth (so slabs at different starts differ)."""
    gen = torch.Generator().manual_seed(seed)
    depth = torch.linspace(-1, 1, 64).view(1, 1, 64, 1, 1)
    noise = torch.nn.functional.avg_pool3d(torch.randn(n, 1, *GRID, generator=gen), 5, 1, 2)
    return (0.8 * depth + 2 * noise).clamp(-1, 1)


@pytest.mark.parametrize("name", ["ha-gan", "alpha-ha-gan"])
def test_a_few_iterations_train_every_network_and_each_loss_reaches_only_its_networks(name, monkeypatch):
    model = _model(name)
    recipe = make_recipe(model, _train(), "cpu")
    assert isinstance(recipe, AlphaHARecipe if name == "alpha-ha-gan" else HARecipe)
    nets = model.networks()
    seen: list[tuple[str, ...]] = []
    original = recipe._update

    def checked(loss, *names):
        # Before the backward: no parameter holds a gradient; after it, only the updated ones do.
        for net in nets.values():
            for p in net.parameters():
                p.grad = None
        original(loss, *names)
        reached = sorted(k for k, net in nets.items() if any(p.grad is not None for p in net.parameters()))
        assert reached == sorted(names), (names, reached)
        seen.append(names)

    monkeypatch.setattr(recipe, "_update", checked)
    before = copy.deepcopy(model.state_dict())
    x = _volumes()
    for _ in range(2):
        logs = recipe.step({"image": x})
        assert list(logs) == list(recipe.losses)
        assert all(torch.isfinite(v) and v.dim() == 0 for v in logs.values()), logs
    expected = [("discriminator_high", "discriminator_low"), ("generator",)]
    if name == "alpha-ha-gan":
        # eq. 3, eq. 2 (E^H gets no gradient there), eq. 1 (the generator none), eq. 4
        expected = [
            ("discriminator_high", "discriminator_low"),
            ("generator", "encoder_low"),
            ("encoder_high",),
            ("code_discriminator",),
        ]
    assert seen == expected * 2
    for key, net in nets.items():
        params = [k for k, _ in net.named_parameters()]
        assert any(not torch.equal(before[f"{key}.{k}"], net.state_dict()[k]) for k in params), key


def test_the_slab_encoder_update_leaves_the_generator_as_it_was(monkeypatch):
    """Eq. 1 runs the generator in training mode but frozen: no gradient (above), and no
    BatchNorm statistics move either."""
    model = _model("alpha-ha-gan")
    recipe = make_recipe(model, _train(), "cpu")
    original, checked = recipe._update, {}

    def spy(loss, *names):
        if names == ("generator", "encoder_low"):
            original(loss, *names)
            checked["after_g"] = copy.deepcopy(model.generator.state_dict())
            return
        if names == ("encoder_high",):
            # the forward of eq. 1 has run: the generator's buffers are those the G update left
            for k, v in model.generator.state_dict().items():
                assert torch.equal(v, checked["after_g"][k]), k
            checked["eh"] = True
        original(loss, *names)

    monkeypatch.setattr(recipe, "_update", spy)
    recipe.step({"image": _volumes()})
    assert checked.get("eh") and any("running_mean" in k for k in checked["after_g"])


def test_the_discriminators_see_per_sample_slabs_at_their_positions():
    model = _model("ha-gan")
    recipe = make_recipe(model, _train(), "cpu")
    calls: dict[str, list] = {"high": [], "low": []}
    hooks = [
        model.discriminator_high.register_forward_pre_hook(
            lambda m, args: calls["high"].append((args[0].detach().clone(), args[1].clone()))
        ),
        model.discriminator_low.register_forward_pre_hook(
            lambda m, args: calls["low"].append(args[0].clone())
        ),
    ]
    x = _volumes()
    torch.manual_seed(3)
    recipe.step({"image": x})
    for h in hooks:
        h.remove()
    # the discriminator update first: the real slabs, then the fakes at the same positions
    (real_slab, pos), (fake_slab, fake_pos) = calls["high"][:2]
    starts = (pos * LAST).round().long()
    assert torch.equal(pos, fake_pos) and pos.shape == (4,) and len(set(starts.tolist())) > 1
    assert torch.allclose(pos * LAST, starts.to(pos.dtype))
    assert torch.equal(real_slab, slabs_at(x, starts, 8))
    assert torch.equal(calls["low"][0], low_resolution(x)) and calls["low"][0].shape == (4, 1, 16, 16, 16)
    assert fake_slab.shape == real_slab.shape and not torch.equal(fake_slab, real_slab)
    # the generator's update draws its own positions
    assert not torch.equal(calls["high"][2][1], pos)


def test_diffaugment_reaches_both_discriminators():
    model = _model("ha-gan")
    train = _train(diffaugment=["translation", "cutout"], diffaugment_p=1.0, diffaugment_background=-1.0)
    recipe = make_recipe(model, train, "cpu")
    seen: dict[str, tuple] = {}

    def keep(key):
        def hook(module, args):
            seen.setdefault(key, tuple(a.detach().clone() for a in args))

        return hook

    hooks = [model.discriminator_high.register_forward_pre_hook(keep("high"))]
    hooks.append(model.discriminator_low.register_forward_pre_hook(keep("low")))
    x = _volumes()
    recipe.step({"image": x})
    for h in hooks:
        h.remove()
    slab, pos = seen["high"]
    assert not torch.equal(slab, slabs_at(x, (pos * LAST).round().long(), 8))
    assert not torch.equal(seen["low"][0], low_resolution(x))


@pytest.mark.parametrize("rank", [0, 1])
def test_slab_starts_are_drawn_for_the_global_batch_and_sliced(rank):
    model = _model("ha-gan")
    mine = make_recipe(model, _train(), "cpu", World(rank, 2))
    whole = make_recipe(model, _train(), "cpu")
    torch.manual_seed(5)
    part, part_pos = mine._starts(3)
    torch.manual_seed(5)
    full, full_pos = whole._starts(6)
    assert torch.equal(part, full[3 * rank : 3 * rank + 3]) and torch.equal(
        part_pos, full_pos[3 * rank : 3 * rank + 3]
    )
    assert int(full.min()) >= 0 and int(full.max()) <= LAST


@pytest.mark.parametrize("name", ["ha-gan", "alpha-ha-gan"])
def test_resuming_from_the_state_dicts_continues_exactly(name):
    model = _model(name)
    recipe = make_recipe(model, _train(), "cpu")
    x = _volumes()
    torch.manual_seed(1)
    recipe.step({"image": x})
    saved_model, saved_recipe = copy.deepcopy(model.state_dict()), copy.deepcopy(recipe.state_dict())
    torch.manual_seed(2)
    logs = recipe.step({"image": x})
    resumed = _model(name)
    resumed.load_state_dict(saved_model)
    again = make_recipe(resumed, _train(), "cpu")
    again.load_state_dict(saved_recipe)
    torch.manual_seed(2)
    logs2 = again.step({"image": x})
    assert {k: v.item() for k, v in logs.items()} == {k: v.item() for k, v in logs2.items()}
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="train.loss=wgan-gp needs a gradient penalty"):
        make_recipe(_model("ha-gan"), _train(loss="wgan-gp"), "cpu")
    with pytest.raises(ValueError, match="train.lambda_rec is not used by the 'ha' recipe"):
        make_recipe(_model("ha-gan"), _train(lambda_rec=1.0), "cpu")
    make_recipe(_model("alpha-ha-gan"), _train(lambda_rec=1.0, loss="hinge"), "cpu")
    with pytest.raises(ValueError, match="train.optim"):
        make_recipe(_model("ha-gan"), _train(optim={"encoder_high": {"lr": 1e-4}}), "cpu")
    sn = build_model("sn-gan", shape=(16, 16, 16), latent_dim=8, width=2)
    with pytest.raises(ValueError, match="needs the networks"):
        HARecipe(sn, _train(), torch.device("cpu"))


HAGAN_CRITICS = ("discriminator_high", "discriminator_low")
PRESETS = {
    # preset: (side, slab depth, latent, lr, betas, discriminators' lr)
    "king2024-ha-gan": (64, 8, 1000, 2e-4, [0.5, 0.999], None),
    "king2024-alpha-ha-gan": (64, 8, 1000, 2e-4, [0.5, 0.999], None),
    "sun2022-ha-gan-128": (128, 16, 1024, 1e-4, [0.0, 0.999], 4e-4),
    "sun2022-ha-gan-256": (256, 32, 1024, 1e-4, [0.0, 0.999], 4e-4),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_have_their_papers_settings_and_make_a_recipe(preset):
    from brainkern.train import config
    from brainkern.train.engine import recipe_train

    side, depth, latent, lr, betas, d_lr = PRESETS[preset]
    cfg = config.resolve(preset)
    model_cfg, train = dict(cfg["model"]), cfg["train"]
    assert cfg["data"]["shape"] == [side] * 3 and cfg["data"]["cohort"] == "smri"
    assert (model_cfg["sub_depth"], model_cfg["latent_dim"]) == (depth, latent)
    assert train["batch_size"] == 4 and train["loss"] == "standard"
    assert train["lr"] == pytest.approx(lr) and train["betas"] == betas
    assert train["iters"] == (12000 if preset.startswith("king") else 200000)
    optim = train["optim"]
    if d_lr is None:
        assert optim == {}
    else:
        assert {k: v["lr"] for k, v in optim.items()} == {
            "discriminator_high": d_lr,
            "discriminator_low": d_lr,
        }
    # the preset's model and training section at a tiny width and grid make a recipe
    name = model_cfg.pop("name")
    small = {**model_cfg, "latent_dim": 8, "width": 2, "sub_depth": 8}
    model = build_model(name, shape=GRID, **small)
    recipe = make_recipe(model, recipe_train(cfg), "cpu")
    assert recipe.family == ("alpha-ha" if name == "alpha-ha-gan" else "ha")
    groups = recipe.optimizers["discriminator_low"].param_groups
    assert groups[0]["lr"] == pytest.approx(d_lr or lr) and list(groups[0]["betas"]) == betas
