"""Zhuang et al. (2019, seed 000) through the engine: the ``cvae`` and ``em`` recipes, ICW-GAN
on the ``gan`` recipe, conditional checks and samples, the presets.

A tiny simulated fMRI cohort (3 classes x 6 maps at 12 x 14 x 10, [0, 1] scaling, no
trimming or augmentation) read through ``data.table``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from brainkern.train import config
from brainkern.train.engine import Trainer, load_run
from brainkern.train.objectives import bce_reconstruction, reconstruction_loss
from brainkern.train.recipes import make_recipe

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

REPO = Path(__file__).resolve().parents[2]
GRID = [12, 14, 10]
CLASSES = ["auditory", "motor", "visual"]
SMALL = {
    "icw-gan": {"latent_dim": 8, "width": 4},
    "cvae": {"latent_dim": 8, "width": 4},
    "gmm": {"n_components": 4, "n_mixture": 2},
}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    from brainkern.data import cohorts

    return cohorts.fmri(tmp_path_factory.mktemp("cohort"), n_per_class=6, n_classes=3, shape=tuple(GRID))


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny(model: str, table: Path, preset: str | None = None, **train) -> dict:
    overrides = [
        {
            "model": {"name": model, **SMALL[model]},
            "data": {
                "cohort": None,
                "table": str(table),
                "shape": GRID,
                "scale": "[0,1]",
                "trim": False,
                "flip": False,
                "intensity": None,
                "folds": None,
            },
            "train": {"iters": 4, "batch_size": 4, "threads": 1, "device": "cpu", **train},
            "log": {"every": 1, "checkpoint_every": 2, "picture_every": 2, "n_samples": 4, "n_pictures": 2},
            "evaluate": {"enabled": False},
        }
    ]
    cfg = config.resolve(preset, overrides)
    if preset is None and model == "gmm":  # the defaults latent_dim and width are not gmm's
        cfg["model"] = {k: v for k, v in cfg["model"].items() if k not in ("latent_dim", "width")}
    return cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------
# objectives


def test_bce_reconstruction_matches_torch_and_sums_per_volume():
    torch.manual_seed(0)
    x, p = torch.rand(3, 1, 4, 5, 6), torch.rand(3, 1, 4, 5, 6)
    expected = torch.nn.functional.binary_cross_entropy(p, x, reduction="none")
    torch.testing.assert_close(bce_reconstruction(x, p), expected)
    torch.testing.assert_close(reconstruction_loss("bce", x, p, "sum"), expected.flatten(1).sum(1).mean())
    torch.testing.assert_close(reconstruction_loss("mse", x, p, "sum"), (x - p).pow(2).sum() / 3)
    # A saturated sigmoid gives a large finite loss, not inf.
    assert math.isfinite(float(bce_reconstruction(torch.ones(1), torch.zeros(1))))
    with pytest.raises(ValueError, match="unknown reduction 'max'"):
        reconstruction_loss("bce", x, p, "max")
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l2'"):
        reconstruction_loss("l2", x, p)


# ---------------------------------------------------------------------------
# each model trains through the engine


@pytest.mark.parametrize("model", ["icw-gan", "cvae", "gmm"])
def test_trains_checks_and_saves_class_named_samples(model, table, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny(model, table), run, progress=False, log=None)
    assert trainer.dataset.classes == CLASSES
    # num_classes comes from the data set and is written into the run's configuration.
    assert trainer.model.num_classes == 3 and trainer.cfg["model"]["num_classes"] == 3
    trainer.fit()
    records = _metrics(run)
    losses = [r for r in records if "iter" in r and "check_mmd2" not in r]
    assert [r["iter"] for r in losses] == [1, 2, 3, 4]
    names = trainer.recipe.losses
    assert all(math.isfinite(r[k]) for r in losses for k in names)
    checks = [r for r in records if "check_mmd2" in r]
    assert [r["iter"] for r in checks] == [2, 4] and all(math.isfinite(r["check_mmd2"]) for r in checks)
    files = sorted(p.name for p in (run / "samples").iterdir())
    assert files == [
        "sample_000_auditory.nii.gz",
        "sample_001_motor.nii.gz",
        "sample_002_visual.nii.gz",
        "sample_003_auditory.nii.gz",
    ]
    img = nib.load(run / "samples" / files[0])
    assert img.shape == tuple(GRID)
    volume = img.get_fdata()
    assert volume.min() >= 0.0 and volume.max() <= 1.0
    again, cfg, ckpt = load_run(run, device="cpu")
    assert again.num_classes == 3 and ckpt["iter"] == 4
    y = torch.tensor([0, 1, 2])
    gen = torch.Generator()
    torch.testing.assert_close(
        again.sample(3, y, generator=gen.manual_seed(0)),
        trainer.model.eval().sample(3, y, generator=gen.manual_seed(0)),
    )


def test_icw_gan_trains_with_the_penalty_and_moves_every_weight(table, tmp_path):
    trainer = Trainer(
        tiny("icw-gan", table, iters=2, d_updates=2), tmp_path / "run", progress=False, log=None
    )
    fresh = Trainer(tiny("icw-gan", table), tmp_path / "fresh", progress=False, log=None).model
    trainer.fit()
    assert all(r["gp_d"] > 0 for r in _metrics(tmp_path / "run") if "gp_d" in r)
    pairs = zip(trainer.model.named_parameters(), fresh.parameters(), strict=True)
    # Every weight matrix moved, the label volumes' included, but one: the label volume
    # beside the critic's linear head adds a per-class constant to the critic value,
    # which the Wasserstein loss cancels (real and fake batches carry the same labels),
    # as it cancels the head's bias.
    still = [name for (name, a), b in pairs if a.dim() > 1 and torch.equal(a, b)]
    assert still == ["discriminator.labels.3.linear.weight"]


@pytest.mark.parametrize("model", ["icw-gan", "cvae"])
def test_resume_continues_bit_for_bit(model, table, tmp_path):
    whole = Trainer(tiny(model, table, iters=4), tmp_path / "whole", progress=False, log=None)
    whole.fit()
    Trainer(tiny(model, table, iters=2), tmp_path / "split", progress=False, log=None).fit()
    second = Trainer(tiny(model, table, iters=4), tmp_path / "split", resume=True, progress=False, log=None)
    assert second.iteration == 2
    second.fit()
    for (name, a), b in zip(
        whole.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

    def losses(run):
        return [{k: v for k, v in r.items() if k.startswith(("loss", "gp", "check"))} for r in _metrics(run)]

    assert losses(tmp_path / "whole") == losses(tmp_path / "split")


# ---------------------------------------------------------------------------
# the cvae recipe


def test_cvae_elbo_decreases(table, tmp_path):
    cfg = tiny("cvae", table, iters=40, lr=3e-3, reconstruction="bce")
    cfg["log"].update(every=10, checkpoint_every=40, picture_every=40, n_samples=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    assert trainer.recipe.reconstruction == "bce" and trainer.recipe.loss == "elbo"
    model = trainer.model
    x = torch.from_numpy(trainer.dataset.volumes[:].copy()).unsqueeze(1)
    y = torch.as_tensor(trainer.dataset.labels)

    def negative_elbo() -> float:
        # All training maps, the same reparameterisation noise each time, batch statistics.
        model.train()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(0)
            mu, logvar = model.encoder(x, y)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            rec = reconstruction_loss("bce", x, model.generator(z, y), "sum")
            return float(rec + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean())

    before = negative_elbo()
    trainer.fit()
    after = negative_elbo()
    # Binary cross-entropy of continuous targets cannot reach 0: its floor is the maps'
    # own entropy, sum_v H(x_v). What lies above it falls from ~129 to ~99 nats (most of
    # the rest is each map's own smooth noise, which no 8-number code reproduces).
    p = x.double().clamp(1e-12, 1 - 1e-12)
    floor = float(-(p * p.log() + (1 - p) * (1 - p).log()).flatten(1).sum(1).mean())
    assert floor < after < before
    assert after - floor < 0.85 * (before - floor), (floor, before, after)
    windows = [r for r in _metrics(tmp_path / "run") if "loss" in r]
    assert len(windows) == 4
    for r in windows:
        assert r["loss"] == pytest.approx(r["loss_rec"] + r["loss_kl"], rel=1e-6)
        assert r["loss_kl"] >= 0
    values = [r["loss"] for r in windows]
    assert values == sorted(values, reverse=True), values


def test_cvae_step_is_the_negative_elbo(table, tmp_path):
    """One step's loss recomputed by hand from the same noise."""
    trainer = Trainer(tiny("cvae", table, reconstruction="mse", lambda_kl=0.5), tmp_path / "r", log=None)
    recipe, model = trainer.recipe, trainer.model
    batch = next(trainer.batches)
    x, y = batch["image"], batch["label"]
    torch.manual_seed(5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logs = recipe.step(batch)
    model.load_state_dict(state)
    torch.manual_seed(5)
    with torch.no_grad():
        mu, logvar = model.encoder(x, y)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = (model.generator(z, y) - x).pow(2).flatten(1).sum(1).mean()
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(1).mean()
    torch.testing.assert_close(logs["loss_rec"], rec)
    torch.testing.assert_close(logs["loss_kl"], kl)
    torch.testing.assert_close(logs["loss"], rec + 0.5 * kl)


def test_non_adversarial_recipes_refuse_train_loss(table, tmp_path):
    for model in ("cvae", "gmm"):
        with pytest.raises(ValueError, match=r"train.loss='hinge'.*trains no adversarial loss"):
            Trainer(tiny(model, table, loss="hinge"), tmp_path / model, log=None)


def test_vae_gan_refuses_bce(table):
    from brainkern.models import build_model

    model = build_model("vae-gan", shape=(16, 16, 16), latent_dim=4, width=2)
    train = config.resolve(None, [{"train": {"reconstruction": "bce"}}])["train"]
    with pytest.raises(ValueError, match=r"train.reconstruction must be one of \('l1', 'mse'\)"):
        make_recipe(model, train, "cpu")


# ---------------------------------------------------------------------------
# the em recipe


def test_em_fits_once_on_the_whole_training_set(table, tmp_path):
    cfg = tiny("gmm", table, iters=1)
    cfg["log"].update(every=1, checkpoint_every=1, picture_every=1)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    assert trainer.recipe.optimizers == {} and trainer.recipe.whole_data
    assert trainer.batches.batch_size == 18 == len(trainer.indices)
    assert not bool(trainer.model.generator.fitted)
    trainer.fit()
    g = trainer.model.generator
    assert bool(g.fitted) and int(g.mask.sum()) > 0
    [record] = [r for r in _metrics(tmp_path / "run") if "loss_nll" in r]
    assert math.isfinite(record["loss_nll"])
    # The fit saw every training volume: the PCA mean is the mean training volume.
    volumes = torch.from_numpy(trainer.dataset.volumes[:].copy()).double()
    torch.testing.assert_close(g.mean, volumes.flatten(1).mean(0).float(), rtol=0, atol=1e-6)
    low, high = float(volumes.min()), float(volumes.max())
    torch.testing.assert_close(g.data_range, torch.tensor([low, high]))


def test_em_refuses_a_fit_it_cannot_make(table, tmp_path):
    cfg = tiny("gmm", table)
    cfg["model"]["n_components"] = 18  # 18 training volumes: at most 17 axes
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    with pytest.raises(ValueError, match="n_components=18 PCA axes need at least 19 training volumes"):
        trainer.fit()


def test_em_refuses_several_processes(table):
    from brainkern.models import build_model
    from brainkern.train.distributed import World

    model = build_model("gmm", shape=tuple(GRID), num_classes=3, n_components=2)
    train = config.resolve()["train"]
    with pytest.raises(ValueError, match="in one process; run it without torchrun"):
        make_recipe(model, train, "cpu", World(rank=0, size=2))


def test_num_classes_must_match_the_data(table, tmp_path):
    cfg = tiny("cvae", table)
    cfg["model"]["num_classes"] = 5
    with pytest.raises(ValueError, match=r"model.num_classes=5, but the data set has 3 classes"):
        Trainer(cfg, tmp_path / "run", progress=False, log=None)


# ---------------------------------------------------------------------------
# presets


@pytest.mark.parametrize("preset", ["zhuang2019-gmm", "zhuang2019-cvae", "zhuang2019-icw-gan"])
def test_presets_load_and_say_where_values_come_from(preset):
    cfg = config.resolve(preset)
    data = cfg["data"]
    assert data["cohort"] == "fmri" and data["n_per_class"] == 100 and data["shape"] == [53, 63, 46]
    assert data["scale"] == "[0,1]" and not data["trim"] and not data["flip"] and data["intensity"] is None
    text = (REPO / "brainkern" / "configs" / f"{preset}.yaml").read_text()
    assert "paper" in text and "brainkern" in text
    name = cfg["model"]["name"]
    if name == "gmm":
        assert cfg["train"]["iters"] == 1 and cfg["log"]["every"] == cfg["log"]["checkpoint_every"] == 1
    else:
        assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["batch_size"] == 50
        assert cfg["model"]["latent_dim"] == 128
    if name == "icw-gan":
        assert (cfg["train"]["d_updates"], cfg["train"]["g_updates"]) == (5, 1)
        assert cfg["train"]["betas"] == [0.0, 0.9] and cfg["train"]["lambda_gp"] == 10
    if name == "cvae":
        assert cfg["train"]["reconstruction"] == "bce" and cfg["train"]["lambda_kl"] == 1


def test_presets_train_a_shrunk_run_and_are_listed(table, tmp_path):
    for preset, model in (("zhuang2019-icw-gan", "icw-gan"), ("zhuang2019-gmm", "gmm")):
        cfg = tiny(model, table, preset=preset, iters=1, batch_size=4)
        Trainer(cfg, tmp_path / preset, progress=False, log=None).fit()
    out = subprocess.run(
        [sys.executable, "-m", "brainkern.train", "--list"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    for name in ("icw-gan", "cvae", "gmm", "zhuang2019-gmm", "zhuang2019-cvae", "zhuang2019-icw-gan"):
        assert name in out.stdout
