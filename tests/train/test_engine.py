"""The training engine end to end on a tiny embedded cohort (16^3, CPU).

Every model trains a few iterations; a resumed run reproduces an uninterrupted
one bit for bit; a NaN stops the run with the last checkpoint intact; SIGINT
writes a checkpoint; the command lines train, sample and evaluate a run whose
NIfTI samples carry the data set's affine.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkern.train import config
from brainkern.train.engine import Diverged, Trainer, load_run

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
nib = pytest.importorskip("nibabel")

REPO = Path(__file__).resolve().parents[2]


def tiny(model: str = "alpha-wgan-gp", **train) -> dict:
    """A configuration that trains in about a second per model at 16^3."""
    overrides = [
        {
            "model": {"name": model, "latent_dim": 8, "width": 4},
            "data": {"n_per_class": 3, "shape": [16, 16, 16], "cohort_shape": [16, 16, 16], "folds": None},
            "train": {"iters": 6, "batch_size": 2, "threads": 1, "gp_every": 1, **train},
            "log": {"every": 1, "checkpoint_every": 3, "picture_every": 3, "n_samples": 2, "n_pictures": 2},
            "evaluate": {"n_generated": 16, "mmd_tests": 3, "mmd_batch": 2, "ms_ssim_pairs": 6},
        }
    ]
    if model.startswith("alpha"):
        overrides.append({"model": {"code_hidden": 16}})
    return config.resolve("quick", overrides)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One cohort cache for the whole module (making it is the slow part).
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["alpha-wgan-gp", "wgan-gp", "vae-gan", "alpha-gan"])
def test_every_model_trains(model, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny(model), run, progress=False, log=None)
    trainer.fit()
    records = [r for r in _metrics(run) if "loss_d" in r]
    assert [r["iter"] for r in records] == list(range(1, 7))
    for r in records:
        assert all(math.isfinite(v) for k, v in r.items() if k.startswith(("loss", "gp")))
    if model.endswith("wgan-gp"):
        assert all(r["gp_d"] > 0 for r in records)
    if model.startswith("alpha"):
        assert all("loss_c" in r and "loss_rec" in r for r in records)
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["sample_000.nii.gz", "sample_001.nii.gz"]
    # Every weight moved (a WGAN critic's last bias has no gradient: the loss ignores a
    # constant shift), and the generator's output is a volume in [-1, 1].
    fresh = Trainer(tiny(model), tmp_path / "fresh", progress=False, log=None).model
    pairs = zip(trainer.model.named_parameters(), fresh.parameters(), strict=True)
    still = [name for (name, a), b in pairs if a.dim() > 1 and torch.equal(a, b)]
    assert not still
    x = trainer.model.sample(2)
    assert x.shape == (2, 1, 16, 16, 16) and float(x.abs().max()) <= 1.0


@pytest.mark.parametrize("loss", ["standard", "hinge"])
def test_other_adversarial_losses_train(loss, tmp_path):
    cfg = tiny("wgan-gp", iters=2, loss=loss)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    trainer.fit()
    records = [r for r in _metrics(tmp_path / "run") if "loss_d" in r]
    assert len(records) == 2 and all(r["gp_d"] == 0 for r in records)
    if loss == "standard":  # softplus terms are positive
        assert all(r["loss_d"] > 0 and r["loss_g"] > 0 for r in records)


def test_bf16_autocast_trains(tmp_path):
    # The GPU default (train.amp=auto -> bf16 on CUDA), exercised here through CPU autocast.
    trainer = Trainer(tiny(iters=2, amp="bf16"), tmp_path / "run", progress=False, log=None)
    assert trainer.recipe.amp_dtype is torch.bfloat16
    trainer.fit()
    records = [r for r in _metrics(tmp_path / "run") if "loss_d" in r]
    assert len(records) == 2
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k.startswith(("loss", "gp")))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_non_cubic_grid_on_the_fmri_cohort(tmp_path):
    cfg = tiny("alpha-wgan-gp", iters=2)
    cfg["data"].update(cohort="fmri", shape=[16, 32, 16], cohort_shape=None, n_per_class=2)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    trainer.fit()
    assert trainer.dataset.classes == ["auditory", "language", "motor", "visual"]
    img = nib.load(tmp_path / "run" / "samples" / "sample_000.nii.gz")
    assert img.shape == (16, 32, 16)
    np.testing.assert_allclose(img.affine, trainer.dataset.affine)


def test_gradient_checkpointing_trains_the_same_weights(tmp_path):
    plain = Trainer(tiny(iters=3), tmp_path / "plain", progress=False, log=None)
    plain.fit()
    ckpt = Trainer(tiny(iters=3, checkpoint=True), tmp_path / "ckpt", progress=False, log=None)
    assert ckpt.model.generator.checkpoint and ckpt.model.discriminator.checkpoint
    ckpt.fit()
    for (name, a), b in zip(plain.model.state_dict().items(), ckpt.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    whole = Trainer(tiny(), tmp_path / "whole", progress=False, log=None)
    whole.fit()
    first = Trainer(tiny(iters=3), tmp_path / "split", progress=False, log=None)
    first.fit()
    second = Trainer(tiny(iters=6), tmp_path / "split", resume=True, progress=False, log=None)
    assert second.iteration == 3
    second.fit()
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    for name, opt in whole.recipe.optimizers.items():
        other = second.recipe.optimizers[name]
        params = zip(opt.param_groups[0]["params"], other.param_groups[0]["params"], strict=True)
        for pa, pb in params:
            sa, sb = opt.state[pa], other.state[pb]
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]), name
            assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]), name

    def losses(run):
        keep = ("loss", "gp", "check")
        return [{k: v for k, v in r.items() if k.startswith(keep)} for r in _metrics(run)]

    assert losses(tmp_path / "whole") == losses(tmp_path / "split")


@pytest.mark.parametrize("critic_batch, per_iteration", [("fresh", 2), ("same", 1)])
def test_an_alpha_iteration_reads_a_fresh_batch_for_the_critics(critic_batch, per_iteration, tmp_path):
    """train.critic_batch='fresh' (Kwon et al.'s code): the discriminators train on the next
    batch of the run's own stream, so an epoch passes in half the iterations. Also the
    kwon2019 presets' data.clip=null (no quantile clipping) reaches preprocessing."""
    cfg = tiny(iters=3, critic_batch=critic_batch)
    cfg["data"]["clip"] = None
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    assert trainer.dataset.config["clip"] is None
    trainer.fit()
    # 6 training volumes in batches of 2: 3 batches an epoch, each read once per epoch.
    state = trainer.batches.state_dict()
    read = 3 * state["epoch"] + state["position"] // 2
    assert read == 3 * per_iteration


def _nan_batch_at(monkeypatch, trainer: Trainer, at: int) -> None:
    """The batches iteration ``at`` (from 1) reads come back as NaN images (an alpha
    iteration reads two: train.critic_batch='fresh')."""
    from brainkern.train import data

    original = data.Batches.__next__

    def poisoned(self):
        batch = original(self)
        if trainer.iteration == at - 1:  # the engine counts an iteration once it is done
            batch["image"] = torch.full_like(batch["image"], float("nan"))
        return batch

    monkeypatch.setattr(data.Batches, "__next__", poisoned)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(tiny(), run, progress=False, log=None)
    _nan_batch_at(monkeypatch, trainer, 5)
    with pytest.raises(Diverged, match="non-finite at iteration 5.*last good checkpoint"):
        trainer.fit()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["iter"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_divergence_between_log_lines_is_caught_before_anything_is_written(tmp_path, monkeypatch):
    """Losses are read only at logging windows; a NaN inside a window still stops the run
    before a checkpoint, and names the iteration where it appeared."""
    run = tmp_path / "run"
    cfg = tiny(iters=8)
    cfg["log"].update(every=4, checkpoint_every=6, picture_every=100)
    trainer = Trainer(cfg, run, progress=False, log=None)
    _nan_batch_at(monkeypatch, trainer, 6)
    with pytest.raises(Diverged, match="non-finite at iteration 6; no checkpoint was written yet"):
        trainer.fit()
    assert not (run / "checkpoints" / "last.pt").exists()  # the save at 6 was refused
    assert [r["iter"] for r in _metrics(run) if "loss_g" in r] == [4]


def test_a_truncated_checkpoint_is_a_one_line_error_and_previous_resumes(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny(), run, progress=False, log=None).fit()  # checkpoints at 3 and 6
    last, previous = run / "checkpoints" / "last.pt", run / "checkpoints" / "previous.pt"
    assert torch.load(previous, weights_only=False)["iter"] == 3
    assert torch.load(last, weights_only=False)["iter"] == 6
    last.write_bytes(last.read_bytes()[:1000])  # a copy cut short
    out = _cli("-m", "brainkern.train", "--resume", str(run), "--iters", "7", "--quiet", "--no-evaluate")
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "last.pt could not be read" in err[0] and "--resume-from previous" in err[0], err
    again = Trainer(tiny(iters=7), run, resume="previous", progress=False, log=None)
    assert again.iteration == 3
    again.fit()
    assert torch.load(last, weights_only=False)["iter"] == 7


def test_no_device_read_per_iteration(tmp_path, monkeypatch):
    """Between logging windows brainkern's loop never turns a tensor into a Python number.

    (Adam reads its step counter, a CPU tensor even for CUDA parameters, with
    ``.item()``: no device synchronisation, and not brainkern's code, so reads are
    counted only where brainkern itself makes them.)
    """
    import inspect

    cfg = tiny(iters=6)
    cfg["log"].update(every=6, checkpoint_every=6, picture_every=6, n_samples=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    reads = []
    package = str(REPO / "brainkern")
    for name in ("item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            if inspect.stack(0)[1].filename.startswith(package):
                reads.append((_name, trainer.iteration))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    trainer.fit()
    assert reads and {it for _, it in reads} == {6}, reads  # all at the one window, none before


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, **kwargs)


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys\n"
        "from brainkern.train.__main__ import build_parser\n"
        "build_parser().format_help()\n"
        "import brainkern.sample, brainkern.evaluate.__main__\n"
        "assert 'torch' not in sys.modules, 'torch imported by the CLI modules'\n"
    )
    assert _cli("-c", code).returncode == 0
    start = time.perf_counter()
    out = _cli("-m", "brainkern.train", "--help")
    assert out.returncode == 0 and "--resume" in out.stdout and "--preset" in out.stdout
    assert time.perf_counter() - start < 10


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _write_tiny_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(config.dump(tiny(**train)))
    return path


def test_cli_train_sample_evaluate(tmp_path):
    from brainkern import sample
    from brainkern.evaluate.__main__ import main as evaluate_main
    from brainkern.train.__main__ import main as train_main
    from brainkern.train.data import load_run_data

    cfg_path = _write_tiny_config(tmp_path)
    run = tmp_path / "run"
    assert train_main(["--config", str(cfg_path), "--out", str(run), "--quiet"]) == 0
    report = (run / "report.md").read_text()
    assert "MS-SSIM" in report and "trained" in report and "noise" in report
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert {r["model"] for r in evaluation["rows"]} >= {"trained", "untrained", "real"}
    assert (run / "pictures" / "losses.png").is_file()
    assert sorted((run / "pictures").glob("samples_*.png"))

    _, dataset = load_run_data(tiny()["data"], progress=False)
    for path in (run / "samples").glob("*.nii.gz"):
        img = nib.load(path)
        assert img.shape == (16, 16, 16)
        np.testing.assert_allclose(img.affine, dataset.affine)

    assert (
        sample.main([str(run), "--n", "5", "--batch-size", "2", "--out", str(tmp_path / "gen"), "--quiet"])
        == 0
    )
    paths = sorted((tmp_path / "gen").glob("*.nii.gz"))
    assert len(paths) == 5
    np.testing.assert_allclose(nib.load(paths[0]).affine, dataset.affine)
    volumes = np.stack([np.asarray(nib.load(p).dataobj) for p in paths])
    assert volumes.min() >= -1 and volumes.max() <= 1 and volumes.std(axis=0).mean() > 0

    (run / "evaluation.json").unlink()
    assert evaluate_main([str(run), "--quiet", "--pairs", "4"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["rows"]

    # Your own data: a labels table through --data (here the cohort's own table).
    from brainkern.train.data import cohort_table

    table = cohort_table(tiny()["data"], progress=False)
    mine = tmp_path / "mine"
    argv = ["--config", str(cfg_path), "--data", str(table), "--iters", "2", "--out", str(mine), "--quiet"]
    assert train_main([*argv, "--no-evaluate", "--set", "log.n_samples=1"]) == 0
    assert yaml_load(mine / "config.yaml")["data"]["table"] == str(table)
    assert yaml_load(mine / "config.yaml")["data"]["cohort"] is None
    assert len(list((mine / "samples").glob("*.nii.gz"))) == 1

    # An existing run is not overwritten; a bad run directory is a clear error.
    with pytest.raises(SystemExit):
        train_main(["--config", str(cfg_path), "--out", str(run), "--quiet"])
    assert sample.main([str(tmp_path), "--n", "1", "--quiet"]) == 2


def test_sigint_writes_a_checkpoint_and_resume_finishes(tmp_path):
    cfg_path = _write_tiny_config(tmp_path, iters=400)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "brainkern.train",
            "--config",
            str(cfg_path),
            "--out",
            str(run),
            "--quiet",
            "--no-evaluate",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT" in err and "--resume" in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert 1 <= state["iter"] < 400
    model, cfg, ckpt = load_run(run, device="cpu")
    assert ckpt["iter"] == state["iter"] and not model.training
    done = _cli(
        "-m",
        "brainkern.train",
        "--resume",
        str(run),
        "--iters",
        str(state["iter"] + 2),
        "--quiet",
        "--no-evaluate",
    )
    assert done.returncode == 0, done.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["iter"] == state["iter"] + 2
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from_iter"] == 0 and info["resumes"][0]["resumed_from_iter"] == state["iter"]
    assert info["versions"]["torch"] == torch.__version__ and info["seed"] == 0


def test_lazy_penalty_resumes_exactly(tmp_path):
    """train.gp_every > 1: the penalty's call counters are part of a checkpoint."""
    whole = Trainer(tiny(gp_every=2), tmp_path / "whole", progress=False, log=None)
    whole.fit()
    Trainer(tiny(gp_every=2, iters=3), tmp_path / "split", progress=False, log=None).fit()
    second = Trainer(tiny(gp_every=2), tmp_path / "split", resume=True, progress=False, log=None)
    second.fit()
    state = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)
    assert state["recipe"]["penalty_calls"] == {"discriminator": 12, "code_discriminator": 6}
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # The code discriminator is penalised once per iteration: skipped and applied alternate.
    gps = [r["gp_c"] for r in _metrics(tmp_path / "whole") if "gp_c" in r]
    assert gps[0::2] == [0.0] * 3 and all(g > 0 for g in gps[1::2]), gps
