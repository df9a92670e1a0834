"""2D runs on a stimulus image domain (``data.images``): Seeliger et al.'s (2018) image prior
trained through the engine on scikit-learn's digits at 32x32, in seconds.

The prior trains on the domain's images outside the experiment's stimuli; the run writes PNG
samples and logs the feature matching term; image settings that belong to brain data are
refused before any run directory is written; without reserved stimuli, data.folds splits the
images; the evaluation command treats the run as 2D.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from brainkern.data.stimuli import experiment_parts, load_domain  # noqa: E402
from brainkern.train import config  # noqa: E402
from brainkern.train.data import load_run_data, training_indices  # noqa: E402

PRESET = "seeliger2018-prior-digits"
IMAGES = {"domain": "digits", "size": 32, "stimuli": [290, 70]}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny(images: dict | None = None, **data) -> dict:
    """Seeliger et al.'s digits prior shrunk to seconds: 32x32, widths 8, 4 iterations of 16."""
    return config.resolve(
        PRESET,
        [
            {
                "model": {"latent_dim": 8, "width": 8, "d_width": 8},
                "data": {"cohort": None, "images": dict(images or IMAGES), **data},
                "train": {
                    "iters": 4,
                    "batch_size": 16,
                    "threads": 1,
                    "feature_matching": 1.0,
                    "grad_clip": 10.0,
                },
                "log": {
                    "every": 1,
                    "checkpoint_every": 4,
                    "picture_every": 4,
                    "n_samples": 3,
                    "n_pictures": 2,
                },
                "evaluate": {"enabled": False},
            }
        ],
    )


def test_a_digits_prior_trains_outside_the_experiments_stimuli(tmp_path):
    from brainkern.evaluate.__main__ import _is_slice_run
    from brainkern.experiment.han import SliceReport
    from brainkern.train.engine import Trainer, load_run

    run = tmp_path / "run"
    lines: list[str] = []
    trainer = Trainer(tiny(), run, progress=False, log=lines.append, callbacks=[SliceReport(evaluate=False)])
    trainer.fit()
    assert trainer.model.name == "seeliger-dcgan" and trainer.model.shape == (32, 32)
    assert trainer.model.channels == 1
    header = lines[0]
    assert "images 32x32" in header and "1437 training images" in header and "batch 16" in header
    # The prior saw none of the 70 test or 290 experiment-training stimuli.
    parts = experiment_parts(load_domain("digits", size=32, progress=False), 290, 70, seed=0)
    split = json.loads((run / "split.json").read_text())
    assert split["method"] == "stimuli"
    assert split["trained_on"] == parts["prior"].tolist() == split["parts"]["train"]
    assert split["parts"]["test"] == parts["test"].tolist()
    assert len(split["experiment_train"]) == 290 and len(split["subjects"]["test"]) == 70
    assert split["files"]["test"] == [f"digits-{i:04d}" for i in parts["test"]]
    seen = set(split["trained_on"])
    assert not seen & set(parts["test"].tolist()) and not seen & set(parts["train"].tolist())
    # Samples: PNGs and one array of generated grey images in [-1, 1] (tanh).
    samples = np.load(run / "samples" / "samples.npy")
    assert samples.shape == (3, 1, 32, 32) and np.isfinite(samples).all()
    assert np.abs(samples).max() <= 1.0 and samples.std() > 0
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [f"sample_00{i}.png" for i in range(3)]
    assert (run / "pictures" / "samples_0000004.png").is_file()
    # The feature matching term is logged at every step (beside the check's MMD^2 records).
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss_g" in r]
    assert [r["iter"] for r in steps] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss_fm"]) and r["loss_fm"] > 0 for r in steps)
    # The run reloads as 2D, and the evaluation command takes it for one.
    model, cfg, _ = load_run(run, device="cpu")
    assert cfg["data"]["images"]["stimuli"] == [290, 70] and cfg["data"]["cohort"] is None
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 32, 32)
    assert _is_slice_run(run)
    # The machine observer's table (tiny: 16 samples, 2 permutations) against the 70 test stimuli.
    from brainkern.evaluate.__main__ import main as evaluate

    assert evaluate([str(run), "--quiet", "--n-generated", "16", "--permutations", "2"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    rows = {r["source"]: r for r in evaluation["rows"]}
    assert evaluation["real"].startswith("held-out test images (70,") and "digits" in evaluation["images"]
    assert rows["model"]["n_other"] == 16
    assert rows["model"]["accuracy"] > 0.75  # four iterations of training are easy to tell from digits
    assert all(0 <= r["ci"][0] <= r["accuracy"] <= r["ci"][1] <= 1 for r in rows.values())
    assert "C2ST accuracy" in (run / "report.md").read_text()
    (run / "config.yaml").write_text("data: {cohort: smri, images: null}\n")
    assert not _is_slice_run(run)
    assert not _is_slice_run(tmp_path / "nothing")


def _cli(tmp_path, capsys, *sets: str) -> tuple[int, str]:
    """``python -m brainkern.train`` in process on the tiny prior with ``--set`` overrides;
    returns the exit code and stderr (argparse's errors exit; their code is returned too)."""
    from brainkern.train.__main__ import main

    argv = ["--preset", PRESET, "--iters", "1", "--out", str(tmp_path / "run"), "--quiet", "--no-evaluate"]
    argv += ["--set", "data.images={domain: digits, size: 32, stimuli: [290, 70]}", "--set", "model.width=8"]
    for s in sets:
        argv += ["--set", s]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("data.cohort=smri",), "data.images trains on a stimulus image domain: set data.cohort"),
        (("data.slices={size: 32}",), "leave data.slices, data.sequences and data.lesions unset"),
        (("data.folds=5",), "leave data.folds and data.split_file unset"),
        (("data.images={domain: faces, size: 32}",), "images.domain must be one of"),
    ],
)
def test_refusals_write_no_run(tmp_path, capsys, sets, message):
    code, err = _cli(tmp_path, capsys, *sets)
    assert code == 2
    assert message in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]  # one line says what is wrong
    assert not (tmp_path / "run").exists()


def test_without_reserved_stimuli_folds_split_the_images():
    cfg = tiny({"domain": "digits", "size": 16, "stimuli": [0, 0]}, folds=5, fold=2)
    split, ds = load_run_data(cfg["data"], progress=False)
    assert split["method"] == "stratified-group-kfold" and (split["folds"], split["fold"]) == (5, 2)
    train, test = np.asarray(split["parts"]["train"]), np.asarray(split["parts"]["test"])
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    assert abs(test.size - 1797 / 5) <= 10
    # Stratified: each digit's share of the held-out fold is about a fifth.
    share = np.bincount(ds.labels[test], minlength=10) / np.bincount(ds.labels, minlength=10)
    assert np.all(np.abs(share - 0.2) < 0.03)
    assert split["subjects"]["test"] == sorted(ds.subjects[i] for i in test)
    np.testing.assert_array_equal(training_indices(ds, None, split), np.sort(train))
    # No folds: no split, every image trains.
    none, ds = load_run_data(
        tiny({"domain": "digits", "size": 16, "stimuli": [0, 0]})["data"], progress=False
    )
    assert none is None and training_indices(ds, None, none).size == 1797


def test_folds_over_natural_patches_keep_each_photograph_on_one_side():
    # Patches of one photograph overlap: a fold split by patch would leak between train and test.
    data = {
        "images": {"domain": "natural", "size": 16, "n": 300, "stimuli": [0, 0]},
        "folds": 3,
        "fold": 1,
        "split_seed": 0,
        "split_file": None,
        "slices": None,
        "sequences": ["t1"],
        "lesions": 0,
    }
    split, dataset = load_run_data(data, progress=False)
    groups = dataset.stimuli.groups
    train, test = (set(groups[split["parts"][p]].tolist()) for p in ("train", "test"))
    assert train and test and not train & test
    assert len(split["parts"]["train"]) + len(split["parts"]["test"]) == 300
