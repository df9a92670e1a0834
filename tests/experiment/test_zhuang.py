"""The augmentation experiment (Zhuang et al. 2019): splits, conditions, statistics, outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

# A bare GPU image (benchmarks/gpu.sh's test stages) may lack these: skip, not fail to collect.
stats = pytest.importorskip("scipy.stats")
pytest.importorskip("sklearn")

from brainkern.experiment import zhuang  # noqa: E402


def _design(n_subjects: int = 24, per_subject: int = 2, n_classes: int = 3, seed: int = 0):
    """Labels and subjects: each subject has ``per_subject`` maps of different classes."""
    rng = np.random.default_rng(seed)
    labels, subjects = [], []
    for s in range(n_subjects):
        for c in rng.choice(n_classes, size=per_subject, replace=False):
            labels.append(int(c))
            subjects.append(f"sub-{s:03d}")
    return np.array(labels), subjects


def test_cells_are_disjoint_by_subject_and_cover_everything():
    labels, subjects = _design()
    cells = zhuang.make_cells(labels, subjects, folds=3, repeats=2, seed=5, val_fraction=0.25)
    assert [(c.repeat, c.fold) for c in cells] == [(r, f) for r in range(2) for f in range(3)]
    subj = np.array(subjects)
    for c in cells:
        parts = [set(subj[c.train]), set(subj[c.val]), set(subj[c.test])]
        assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(np.concatenate([c.train, c.val, c.test]).tolist()) == list(range(len(labels)))
        for part in (c.train, c.val, c.test):  # every class in every part (stratified)
            assert set(labels[part]) == {0, 1, 2}
    for r in range(2):  # each repeat's test parts partition the data
        tests = np.concatenate([c.test for c in cells if c.repeat == r])
        assert sorted(tests.tolist()) == list(range(len(labels)))
    first, second = cells[0].test.tolist(), cells[3].test.tolist()
    assert first != second  # repeats shuffle anew
    again = zhuang.make_cells(labels, subjects, folds=3, repeats=2, seed=5, val_fraction=0.25)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(cells, again, strict=True))


def test_cells_refuse_too_few_subjects():
    labels, subjects = _design(n_subjects=4, per_subject=1, n_classes=2)
    with pytest.raises(ValueError, match="fewer than n_splits"):
        zhuang.make_cells(labels, subjects, folds=3, repeats=1, seed=0, val_fraction=0.25)


def test_noisy_copies_per_class_with_the_right_variance():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, size=(6, 1, 10, 10, 10)).astype(np.float32)
    y = np.array([0, 0, 0, 1, 1, 2])
    out, labels = zhuang.noisy_copies(x, y, k=4, variance=0.01, value_range=(0.0, 1.0), seed=1)
    assert out.shape == (12, 1, 10, 10, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))
    for i in range(12):  # each copy is a training map of its own class plus noise of SD 0.1
        residual = [np.abs(out[i] - x[j]).mean() for j in range(6)]
        source = int(np.argmin(residual))
        assert y[source] == labels[i]
        assert abs(float((out[i] - x[source]).std()) - 0.1) < 0.01
    clipped, _ = zhuang.noisy_copies(x, y, k=2, variance=1.0, value_range=(0.0, 1.0), seed=1)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    again, _ = zhuang.noisy_copies(x, y, k=4, variance=0.01, value_range=(0.0, 1.0), seed=1)
    np.testing.assert_array_equal(out, again)


def test_score_is_macro():
    s = zhuang.score(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]))
    assert s["accuracy"] == 0.75
    assert s["precision"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["recall"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert s["f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_mean_ci_and_the_corrected_test():
    m, lo, hi = zhuang.mean_ci([0.7, 0.8, 0.9])
    assert m == pytest.approx(0.8)
    assert hi - m == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert math.isnan(zhuang.mean_ci([0.5])[1])
    d = np.array([0.02, 0.05, 0.01, 0.04, 0.03, 0.06, 0.0, 0.02, 0.04])
    t, p = zhuang.corrected_paired_test(d, 0.5)
    assert t == pytest.approx(d.mean() / math.sqrt((1 / 9 + 0.5) * d.var(ddof=1)))
    plain = stats.ttest_rel(d, np.zeros_like(d))
    assert p > plain.pvalue  # the correction is more conservative than the plain paired test
    assert zhuang.corrected_paired_test(np.zeros(4), 0.5) == (0.0, 1.0)
    assert zhuang.corrected_paired_test(np.full(3, 0.1), 0.5)[1] == 0.0


def _rows():
    rows = []
    for r in range(2):
        for f in range(3):
            for cond, shift in (("real", 0.0), ("real+noise", 0.02)):
                for clf in ("svm", "dnn3d"):
                    acc = 0.6 + 0.05 * f + shift + (0.1 if clf == "dnn3d" else 0.0)
                    rows.append(
                        {
                            "condition": cond,
                            "classifier": clf,
                            "repeat": r,
                            "fold": f,
                            "accuracy": acc,
                            "f1": acc,
                            "precision": acc,
                            "recall": acc,
                            "n_train_real": 60,
                            "n_extra": 0,
                            "n_val": 10,
                            "n_test": 35,
                            "seconds": 1.0,
                        }
                    )
    return rows


def test_summary_fold_variance_and_paired_difference():
    summary = zhuang.summarise(_rows(), ["real", "real+noise"], ["svm", "dnn3d"])
    assert [(e["classifier"], e["condition"]) for e in summary] == [
        ("svm", "real"),
        ("svm", "real+noise"),
        ("dnn3d", "real"),
        ("dnn3d", "real+noise"),
    ]
    svm_real, svm_noise = summary[0], summary[1]
    assert svm_real["accuracy"] == pytest.approx(0.65)
    assert svm_real["accuracy_fold_var"] == pytest.approx(np.var([0.6, 0.65, 0.7]))
    assert svm_noise["accuracy_diff"] == pytest.approx(0.02)
    assert svm_noise["accuracy_p"] == 0.0  # a constant improvement
    assert "accuracy_p" not in svm_real
    lines = zhuang.direction_lines(summary, [])
    assert any("DNN" in line and "above SVM" in line for line in lines)


def test_config_presets_and_errors(tmp_path):
    assert {"quick", "zhuang2019"} <= set(zhuang.augmentation_presets())
    cfg = zhuang.augmentation_config("zhuang2019")
    assert cfg["cv"] == {"folds": 3, "repeats": 3, "seed": 0, "val_fraction": 0.125}
    assert cfg["augment"]["k"] == 100 and cfg["data"]["scale"] == "[0,1]"
    assert list(cfg["generators"]) == ["gmm", "cvae", "icw-gan"]
    with pytest.raises(KeyError, match="cv.fold"):
        zhuang.augmentation_config("zhuang2019", [{"cv": {"fold": 2}}])
    with pytest.raises(ValueError, match="data.trim"):
        zhuang.augmentation_config("zhuang2019", [{"data": {"trim": True}}])
    with pytest.raises(ValueError, match="not a registered classifier"):
        zhuang.augmentation_config("zhuang2019", [{"classifiers": {"icw-gan": {}}}])
    with pytest.raises(ValueError, match="augment.k"):
        zhuang.augmentation_config("zhuang2019", [{"augment": {"k": 0}}])
    with pytest.raises(FileNotFoundError, match="known: "):
        zhuang.augmentation_config("nope")


# ----------------------------------------------------------------------------- a tiny real run


def _tiny_table(root):
    """A tiny fmri cohort (2 classes x 6 maps, 12x14x10) whose subjects have two maps each,
    one per class, so a split that ignored subjects would leak."""
    import csv

    from brainkern.data import cohorts

    table = cohorts.fmri(root / "cohort", n_per_class=6, n_classes=2, shape=(12, 14, 10), seed=3)
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["subject"] = f"sub-{i % 6:02d}"
    out = root / "labels.csv"
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {"path": str(table.parent / row["path"]), "label": row["label"], "subject": row["subject"]}
            )
    return out


def _tiny_config(table, cache):
    return zhuang.augmentation_config(
        "quick",
        [
            {
                "data": {
                    "cohort": None,
                    "table": str(table),
                    "shape": [12, 14, 10],
                    "cohort_shape": None,
                    "cache_dir": str(cache),
                },
                "cv": {"folds": 3, "repeats": 1, "val_fraction": 0.34},
                "augment": {"k": 3},
                "generators": {
                    "gmm": {
                        "preset": "zhuang2019-gmm",
                        "set": {"model.n_components": 2, "model.n_mixture": 1},
                    },
                    "cvae": {"preset": "zhuang2019-cvae", "set": {"train.iters": 2, "train.batch_size": 2}},
                    "icw-gan": {
                        "preset": "zhuang2019-icw-gan",
                        "set": {"train.iters": 2, "train.batch_size": 2},
                    },
                },
                "classifiers": {"svm": {}, "dnn3d": {"epochs": 2}},
                "threads": 1,
            }
        ],
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("augmentation")
    cfg = _tiny_config(_tiny_table(root), root / "cache")
    out = zhuang.run_augmentation(cfg, root / "exp", progress=False, log=None)
    return cfg, out


def test_tiny_run_writes_every_output(tiny_run):
    import csv

    cfg, out = tiny_run
    for name in (
        "config.yaml",
        "run.json",
        "splits.json",
        "results.csv",
        "summary.csv",
        "table.md",
        "bars.png",
        "figure2.png",
    ):
        assert (out / name).is_file(), name
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    conditions = ["real", "real+noise", "real+gmm", "real+cvae", "real+icw-gan"]
    assert sorted({r["condition"] for r in rows}) == sorted(conditions)
    assert len(rows) == 3 * len(conditions) * 2  # cells x conditions x classifiers
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        assert int(r["n_extra"]) == (0 if r["condition"] == "real" else 3 * 2)
    with open(out / "fidelity.csv") as fh:  # real-trained classifiers scored on every generator's samples
        fidelity = list(csv.DictReader(fh))
    assert len(fidelity) == 3 * 3 * 2  # cells x generators x classifiers
    assert {r["generator"] for r in fidelity} == {"gmm", "cvae", "icw-gan"}
    assert all(int(r["n_samples"]) == 3 * 2 for r in fidelity)
    table = (out / "table.md").read_text()
    assert "Do the samples carry their class?" in table
    assert "| Real+Synth. | ICW-GAN | dnn3d |" in table and "Table 3" in table
    assert "The paper's direction" in table


def test_tiny_run_never_lets_a_held_out_subject_in(tiny_run):
    import json

    _, out = tiny_run
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["cells"]) == 3
    for cell in splits["cells"]:
        parts = {p: set(cell["subjects"][p]) for p in ("train", "val", "test")}
        assert not (
            parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"]
        )
        for name, trained_on in cell["generators"].items():
            assert set(trained_on) == parts["train"], name
            # ... and what the generator's own run directory says it trained on
            run_split = json.loads(
                (out / "generators" / f"r{cell['repeat']}-f{cell['fold']}" / name / "split.json").read_text()
            )
            files = set(run_split["files"]["train"])
            assert files == set(cell["files"]["train"]), name
            assert not files & set(cell["files"]["test"]) and not files & set(cell["files"]["val"])


def test_resume_recomputes_only_missing_cells(tiny_run, monkeypatch):
    import csv

    cfg, out = tiny_run
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    keep = rows[:-4]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    ckpts = sorted((out / "generators").rglob("last.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    fits = []
    real_classifier = zhuang.make_classifier
    monkeypatch.setattr(
        zhuang, "make_classifier", lambda *a, **k: fits.append(a[0]) or real_classifier(*a, **k)
    )
    zhuang.run_augmentation(cfg, out, progress=False, log=None)
    assert len(fits) == 4
    with open(out / "results.csv") as fh:
        again = list(csv.DictReader(fh))
    assert len(again) == len(rows)
    metrics = ("condition", "classifier", "repeat", "fold", "accuracy", "f1")
    assert [tuple(r[m] for m in metrics) for r in again] == [tuple(r[m] for m in metrics) for r in rows]
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps  # no generator retrained


def test_a_changed_config_is_refused(tiny_run):
    cfg, out = tiny_run
    other = dict(cfg, seed=cfg["seed"] + 1)
    with pytest.raises(ValueError, match="another configuration"):
        zhuang.run_augmentation(other, out, progress=False, log=None)


# ----------------------------------------------------------------------------- labels obeyed

LABEL_RUNS = {  # brief CPU trainings that are enough at a 12x14x10 grid (measured)
    "gmm": ["model.n_components=6", "model.n_mixture=1"],
    "cvae": [
        "train.iters=300",
        "train.batch_size=8",
        "train.lr=1e-3",
        "model.width=8",
        "model.latent_dim=16",
    ],
    # At 300 iterations of batch 8 (or 800 at learning rates 2e-4 / 8e-4) every sample fell
    # in one class; at 800 of batch 16 and 5e-4 / 2e-3, 27 of 30 were recognised.
    "icw-gan": [
        "train.iters=800",
        "train.batch_size=16",
        "model.width=8",
        "train.d_updates=1",
        "train.lr=5e-4",
        "train.betas=[0.5,0.9]",
        "train.optim={discriminator: {lr: 2.0e-3}}",
    ],
}


@pytest.fixture(scope="module")
def label_cohort(tmp_path_factory):
    from brainkern.data import VolumeDataset, cohorts

    root = tmp_path_factory.mktemp("labels")
    table = cohorts.fmri(root / "cohort", n_per_class=12, n_classes=3, shape=(12, 14, 10), seed=4, noise=0.5)
    ds = VolumeDataset.from_table(table, scale="[0,1]", trim=False, mask=None)
    return table, ds


@pytest.mark.parametrize("name", list(LABEL_RUNS))
def test_conditional_samples_carry_their_class(name, label_cohort, tmp_path):
    """A classifier trained on real maps recognises the class of each generator's conditional
    samples well above chance (1/3), after a short training on a tiny cohort."""
    import torch

    from brainkern.models import build_model
    from brainkern.train.config import parse_override, resolve
    from brainkern.train.engine import Trainer, load_run

    table, ds = label_cohort
    data = {"cohort": None, "table": str(table), "shape": [12, 14, 10], "cache_dir": str(tmp_path / "cache")}
    fixed = {"data": data, "evaluate": {"enabled": False}, "log": {"n_samples": 0}, "train": {"threads": 2}}
    cfg = resolve(f"zhuang2019-{name}", [*(parse_override(o) for o in LABEL_RUNS[name]), fixed])
    Trainer(cfg, tmp_path / "run", progress=False, log=None).fit()
    model = load_run(tmp_path / "run", "last", "cpu")[0]
    real = np.asarray(ds.volumes)[:, None]
    svm = build_model("svm").fit(real, ds.labels)
    assert (svm.predict(real) == ds.labels).mean() == 1.0
    labels = np.repeat(np.arange(3), 10)
    samples = model.sample(30, labels=torch.as_tensor(labels), generator=torch.Generator().manual_seed(0))
    accuracy = float((svm.predict(samples.numpy()) == labels).mean())
    assert accuracy >= 0.7, accuracy


def test_a_neurovault_folder_needs_its_label_field(tmp_path):
    """``--data`` given a Neurovault download reads its images with the metadata field as label."""
    import json
    import shutil

    import pandas as pd

    from brainkern.data import cohorts

    table = cohorts.fmri(tmp_path / "cohort", n_per_class=2, n_classes=2, shape=(12, 14, 10), seed=1)
    folder = tmp_path / "neurovault" / "collection_1"
    folder.mkdir(parents=True)
    for i, row in enumerate(pd.read_csv(table).itertuples()):
        shutil.copy(table.parent / row.path, folder / f"image_{100 + i}.nii.gz")
        (folder / f"image_{100 + i}_metadata.json").write_text(json.dumps({"task": row.label, "id": 100 + i}))
    cfg = zhuang.augmentation_config("quick", [{"data": {"cohort": None, "table": str(folder.parent)}}])
    with pytest.raises(ValueError, match="--label-field"):
        zhuang.experiment_records(cfg, progress=False)
    records, source = zhuang.experiment_records(dict(cfg, label_field="task"), progress=False)
    assert source == folder.parent
    assert sorted(r.label for r in records) == ["motor", "motor", "visual", "visual"]


def test_command_line_errors_are_one_line(capsys, tmp_path):
    from brainkern.experiment.zhuang_cli import main

    assert main(["--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no augmentation preset 'nope'" in capsys.readouterr().err
    assert main(["--set", "cv.folds=1", "--out", str(tmp_path / "x")]) == 2
    assert "cv.folds must be an integer >= 2" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not (tmp_path / "x" / "config.yaml").exists()  # a failed start does not claim the folder
