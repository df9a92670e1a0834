"""The contract between models, recipes, batches and the engine (what every model family stands on).

Toy families are registered here the way a new paper's family would be: one
recipe class and a model factory, no change to the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from brainkern.models import GenerativeModel, build_model, model_kind, model_summaries, register_model
from brainkern.models import registry as registry_mod
from brainkern.models.classifier import Classifier, SklearnClassifier, TorchClassifier
from brainkern.train import recipes as recipes_mod
from brainkern.train.config import DEFAULTS, merge, parse_override, resolve
from brainkern.train.data import Batches, collate
from brainkern.train.recipes import GANRecipe, Recipe, make_recipe, register_recipe

SHAPE = (4, 4, 4)
LATENT = 3


class ToyGenerator(nn.Module):
    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(LATENT + num_classes, int(np.prod(SHAPE)))

    def forward(self, z, labels=None):
        if self.num_classes:
            z = torch.cat([z, nn.functional.one_hot(labels, self.num_classes).float()], 1)
        return torch.tanh(self.fc(z)).view(-1, 1, *SHAPE)


class ToyCritic(nn.Module):
    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(int(np.prod(SHAPE)) + num_classes, 1)

    def forward(self, x, labels=None):
        h = x.flatten(1)
        if self.num_classes:
            h = torch.cat([h, nn.functional.one_hot(labels, self.num_classes).to(h.dtype)], 1)
        return self.fc(h)


def toy_model(family="gan", num_classes=0, extra: dict | None = None) -> GenerativeModel:
    torch.manual_seed(0)
    nets = {"generator": ToyGenerator(num_classes), "discriminator": ToyCritic(num_classes), **(extra or {})}
    return GenerativeModel(
        name="toy",
        shape=SHAPE,
        latent_dim=LATENT,
        family=family,
        loss="wgan-gp",
        networks=nets,
        num_classes=num_classes,
    )


def train_cfg(**over):
    return merge(DEFAULTS["train"], over, where="train")


def batch(n=4, num_classes=0):
    out = {"image": torch.rand(n, 1, *SHAPE) * 2 - 1, "index": torch.arange(n)}
    if num_classes:
        out["label"] = torch.arange(n) % num_classes
    return out


@pytest.fixture
def scratch_registries(monkeypatch):
    """Register toy families and models without leaking them into other tests."""
    monkeypatch.setattr(recipes_mod, "RECIPES", dict(recipes_mod.RECIPES))
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))
    monkeypatch.setattr(registry_mod, "_KIND", dict(registry_mod._KIND))


# ---------------------------------------------------------------------- networks and optimisers


def test_a_new_family_with_three_networks_is_one_recipe(scratch_registries):
    @register_recipe("toy-three")
    class ThreeRecipe(Recipe):
        networks = ("generator", "discriminator", "helper")
        losses = ("loss_h",)

        def step(self, b):
            real = self.images(b)
            loss = self.model.helper(real).mean() + self.model.generate(self._latent(len(real))).mean()
            self._update(loss, "helper", "generator")
            return {"loss_h": loss.detach()}

    model = toy_model("toy-three", extra={"helper": ToyCritic()})
    recipe = make_recipe(model, train_cfg(optim={"helper": {"lr": 0.5, "betas": [0.1, 0.2]}}), "cpu")
    assert list(recipe.optimizers) == ["generator", "discriminator", "helper"]
    group = recipe.optimizers["helper"].param_groups[0]
    assert group["lr"] == 0.5 and group["betas"] == (0.1, 0.2)
    assert recipe.optimizers["generator"].param_groups[0]["lr"] == DEFAULTS["train"]["lr"]
    before = model.helper.fc.weight.detach().clone()
    logs = recipe.step(batch())
    assert set(logs) == {"loss_h"} and not torch.equal(before, model.helper.fc.weight)
    assert set(recipe.state_dict()["optimizers"]) == {"generator", "discriminator", "helper"}


def test_a_trainable_network_without_optimiser_is_an_error_at_start():
    model = toy_model("gan", extra={"spare": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match=r"\['spare'\] have trainable parameters.*no optimiser"):
        make_recipe(model, train_cfg(), "cpu")
    model.spare.requires_grad_(False)  # a frozen network (a fixed feature extractor) is fine
    assert list(make_recipe(model, train_cfg(), "cpu").optimizers) == ["generator", "discriminator"]


def test_missing_network_unknown_family_and_optim_typos():
    model = GenerativeModel(
        name="g-only", shape=SHAPE, latent_dim=LATENT, family="alpha", loss="hinge",
        networks={"generator": ToyGenerator(), "discriminator": ToyCritic()},
    )  # fmt: skip
    with pytest.raises(
        ValueError, match="family 'alpha' needs.*missing \\['encoder', 'code_discriminator'\\]"
    ):
        make_recipe(model, train_cfg(), "cpu")
    with pytest.raises(ValueError, match="no training recipe for model family 'nope'"):
        make_recipe(toy_model("nope"), train_cfg(), "cpu")
    with pytest.raises(ValueError, match="train.optim: \\['generater'\\] is not a network"):
        make_recipe(toy_model(), train_cfg(optim={"generater": {"lr": 1e-3}}), "cpu")
    with pytest.raises(ValueError, match="train.optim.generator: unknown key.*momentum"):
        make_recipe(toy_model(), train_cfg(optim={"generator": {"momentum": 0.9}}), "cpu")
    with pytest.raises(ValueError, match="needs a network named 'generator'"):
        GenerativeModel(name="x", shape=SHAPE, latent_dim=1, family="gan", loss="hinge", networks={})


def test_two_time_scale_optimiser_settings_from_the_command_line():
    cfg = resolve(
        "quick",
        [
            parse_override("train.optim.discriminator={lr: 4e-4, betas: [0.0, 0.9]}"),
            parse_override("train.optim.generator.lr=1e-4"),
        ],
    )
    assert cfg["train"]["optim"] == {
        "discriminator": {"lr": 4e-4, "betas": [0.0, 0.9]},
        "generator": {"lr": 1e-4},
    }
    model = build_model("alpha-wgan-gp", shape=(16, 16, 16), latent_dim=4, width=2, code_hidden=8)
    recipe = make_recipe(model, cfg["train"], "cpu")
    assert recipe.optimizers["discriminator"].param_groups[0]["lr"] == 4e-4
    assert recipe.optimizers["generator"].param_groups[0]["lr"] == 1e-4
    assert recipe.optimizers["encoder"].param_groups[0]["lr"] == cfg["train"]["lr"]


# ---------------------------------------------------------------------- batches, labels, hooks


def test_hooks_see_every_critic_input_including_the_penalty():
    recipe = make_recipe(toy_model(), train_cfg(g_updates=1, d_updates=1), "cpu")
    seen: list[tuple[str, int, bool]] = []
    before: list[str] = []

    def mark(x, name):
        seen.append((name, x.shape[0], x.requires_grad))
        return x * 0.5  # a toy differentiable augmentation

    recipe.add_hook("critic_input", mark)
    recipe.add_hook("before_critic", lambda r, name: before.append(name))
    logs = recipe.step(batch())
    assert before == ["discriminator", "discriminator"]  # before the G update and the D update
    # G step: one fake; D step: real, fake, then the penalty's interpolates (with grad).
    assert [s[0] for s in seen] == ["discriminator"] * 4
    assert seen[-1][2] is True
    assert torch.isfinite(torch.stack(list(logs.values()))).all()
    with pytest.raises(ValueError, match="unknown hook kind"):
        recipe.add_hook("after_everything", mark)


def test_a_hook_changes_what_the_critic_learns():
    def run(hook):
        recipe = make_recipe(toy_model(), train_cfg(), "cpu")
        if hook:
            recipe.add_hook("critic_input", lambda x, name: x.flip(-1))
        torch.manual_seed(1)
        recipe.step(batch())
        return recipe.model.discriminator.fc.weight.detach().clone()

    assert not torch.equal(run(False), run(True))


def test_conditional_model_trains_and_samples_by_label():
    model = toy_model(num_classes=3)
    recipe = make_recipe(model, train_cfg(), "cpu")
    logs = recipe.step(batch(6, num_classes=3))
    assert torch.isfinite(torch.stack(list(logs.values()))).all()
    with pytest.raises(ValueError, match="conditional: its batches need a 'label'"):
        recipe.step(batch(6))
    x = model.sample(5, labels=torch.tensor([0, 1, 2, 0, 1]))
    assert x.shape == (5, 1, *SHAPE)
    # The class changes the sample for the same latent code.
    gen = torch.Generator().manual_seed(3)
    a = model.sample(2, torch.tensor([0, 0]), generator=gen)
    b = model.sample(2, torch.tensor([1, 1]), generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="conditional \\(3 classes\\): give labels"):
        model.sample(2)
    with pytest.raises(ValueError, match="labels must lie in 0 .. 2"):
        model.sample(2, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="unconditional: it takes no labels"):
        toy_model().sample(2, torch.tensor([0, 1]))


def test_batches_read_items_through_the_dataset_and_its_transform():
    class Items:
        transform = None

        def __len__(self):
            return 6

        def __getitem__(self, i):
            item = {
                "image": torch.full((1, *SHAPE), float(i) / 10),
                "label": i % 2,
                "index": i,
                "subject": "s",
            }
            return item if self.transform is None else self.transform(item)

    data = Items()
    batches = Batches(data, np.arange(6), 3, seed=0, flip=False, intensity=None)
    b = next(batches)
    assert set(b) == {"image", "label", "index"}  # strings stay out of the batch
    assert b["image"].shape == (3, 1, *SHAPE) and b["label"].dtype == torch.int64
    torch.testing.assert_close(b["image"][:, 0, 0, 0, 0], b["index"].float() / 10)
    torch.testing.assert_close(b["label"], b["index"] % 2)
    data.transform = lambda item: {**item, "image": item["image"] * 0 - 1}
    assert float(next(batches)["image"].max()) == -1.0
    with pytest.raises(ValueError, match="each with an 'image'"):
        collate([{"label": 1}])


# ---------------------------------------------------------------------- one registry for both kinds


def test_classifiers_share_the_registry_and_round_trip(scratch_registries, tmp_path):
    from sklearn.linear_model import LogisticRegression

    @register_model("toy-logreg", kind="classifier")
    def toy_logreg(c: float = 1.0) -> Classifier:
        """Logistic regression on flattened volumes (a test classifier)."""
        return SklearnClassifier(LogisticRegression(C=c, max_iter=500))

    @register_model("toy-net", kind="classifier")
    def toy_net(epochs: int = 30) -> Classifier:
        """A linear torch network on volumes (a test classifier)."""
        torch.manual_seed(0)
        return TorchClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), epochs=epochs, lr=0.05)

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 1, *SHAPE, generator=gen) + y.view(-1, 1, 1, 1, 1) * 1.5
    assert model_kind("toy-logreg") == "classifier" and model_kind("alpha-wgan-gp") == "generative"
    rows = {name: (kind, line) for name, kind, line in model_summaries()}
    assert rows["toy-net"] == ("classifier", "A linear torch network on volumes (a test classifier).")
    for name in ("toy-logreg", "toy-net"):
        clf = build_model(name).fit(x, y)
        assert clf.name == name and clf.config["name"] == name
        p = clf.predict_proba(x)
        assert p.shape == (40, 2) and np.allclose(p.sum(1), 1)
        assert (clf.predict(x) == y.numpy()).mean() > 0.9
        back = Classifier.load(clf.save(tmp_path / f"{name}.pt"))
        assert type(back) is type(clf) and np.allclose(back.predict_proba(x), p)
    with pytest.raises(TypeError, match="returned GenerativeModel, not a Classifier"):
        register_model("bad", kind="classifier")(lambda: toy_model())
        build_model("bad")
    with pytest.raises(RuntimeError, match="not a saved brainkern classifier"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        Classifier.load(tmp_path / "junk.pt")


def test_list_names_every_registered_model(capsys):
    from brainkern.train.__main__ import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("alpha-wgan-gp", "wgan-gp", "vae-gan", "alpha-gan", "quick", "classifier models"):
        assert name in out


def test_gan_recipe_is_registered_once():
    assert recipes_mod.RECIPES["gan"] is GANRecipe and GANRecipe.family == "gan"
    with pytest.raises(ValueError, match="already registered"):
        register_recipe("gan")(type("Again", (Recipe,), {"networks": ("generator",), "losses": ("x",)}))


def test_a_recipe_refuses_another_familys_keys():
    """train.lambda_kl means something to the VAE-GAN only: set on a GAN it is an error."""
    with pytest.raises(
        ValueError, match="train.lambda_kl is not used by the 'gan' recipe.*only by 'cvae', 'vae-gan'"
    ):
        make_recipe(toy_model(), train_cfg(lambda_kl=2.0), "cpu")
    with pytest.raises(ValueError, match="train.lambda_rec is not used by the 'gan' recipe"):
        make_recipe(toy_model(), train_cfg(lambda_rec=1.0), "cpu")
    make_recipe(toy_model(), train_cfg(lambda_gp=5.0), "cpu")  # a key every family reads
