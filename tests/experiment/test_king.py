"""The diagnosis experiment (King et al. 2024): training sets, metrics, statistics, a tiny run."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

# A bare GPU image (benchmarks/gpu.sh's test stages) may lack these: skip, not fail to collect.
stats = pytest.importorskip("scipy.stats")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from brainkern.experiment import king  # noqa: E402
from brainkern.experiment.zhuang import make_cells  # noqa: E402

# ----------------------------------------------------------------------------- the sets


def test_set_sizes_follow_table1():
    """King et al.'s Table 1 with their training part (55 controls, 61 patients)."""
    sizes = {name: king.set_sizes(name, [55, 61], 5) for name in king.SETS}
    assert sizes["real"] == sizes["augmented"] == [(55, 0), (61, 0)]
    assert sizes["mixed-small"] == [(28, 27), (31, 30)]  # the paper's 28/27 and 31/30
    assert sizes["synthetic-small"] == [(0, 55), (0, 61)]
    assert sizes["mixed-large"] == [(55, 275), (61, 305)]  # the paper's 275 and 305
    # 6x: 330 and 366 (the paper's table says 328 and 367, as large as Mixed (large) in all)
    assert sizes["synthetic-large"] == [(0, 330), (0, 366)]
    assert sizes["infinite"] == [(0, 0), (0, 0)]


def _pool(counts, shape=(2, 2, 2)):
    """Synthetic volumes whose value says class and rank: 100 * (c + 1) + i."""
    return [
        np.stack([np.full((1, *shape), 100.0 * (c + 1) + i, dtype=np.float32) for i in range(n)])
        for c, n in enumerate(counts)
    ]


def test_build_set_takes_real_and_synthetic_volumes_per_class():
    y = np.array([0] * 5 + [1] * 7)
    x = np.arange(12, dtype=np.float32).reshape(12, 1, 1, 1, 1) * np.ones((1, 1, 2, 2, 2), np.float32)
    pool = _pool([12, 14])
    for name in ("mixed-small", "synthetic-small", "mixed-large", "synthetic-large"):
        xs, ys, n_real, n_syn = king.build_set(name, x, y, pool, 1, seed=3)
        per_class = king.set_sizes(name, [5, 7], 1)
        assert (n_real, n_syn) == (sum(r for r, _ in per_class), sum(s for _, s in per_class))
        assert xs.shape == (n_real + n_syn, 1, 2, 2, 2) and xs.dtype == np.float32
        for c, (k_real, k_syn) in enumerate(per_class):
            values = xs[ys == c, 0, 0, 0, 0]
            real = values[values < 100]
            synthetic = values[values >= 100]
            assert len(real) == k_real and len(synthetic) == k_syn
            assert set(y[real.astype(int)]) <= {c}  # real volumes keep their labels
            np.testing.assert_array_equal(synthetic, 100.0 * (c + 1) + np.arange(k_syn))  # the pool's first
    again = king.build_set("mixed-small", x, y, pool, 1, seed=3)[0]
    other = king.build_set("mixed-small", x, y, pool, 1, seed=4)[0]
    np.testing.assert_array_equal(again, king.build_set("mixed-small", x, y, pool, 1, seed=3)[0])
    assert not np.array_equal(again, other)  # the kept real half is drawn by the seed
    with pytest.raises(ValueError, match="is a stream"):
        king.build_set("infinite", x, y, pool, 1, seed=0)
    with pytest.raises(ValueError, match="14 synthetic volumes of class 1 needed, the pool has 13"):
        king.build_set("synthetic-large", x, y, _pool([12, 13]), 1, seed=0)


class _Recorder:
    """A conditional model stand-in: a sample's value is its label plus its code."""

    def __init__(self):
        self.calls = []

    def sample(self, n, labels, *, generator, batch_size):
        self.calls.append(labels.clone())
        z = torch.rand(n, generator=generator)
        return (labels.float() + 0.5 * z).view(n, 1, 1, 1, 1).expand(n, 1, 2, 2, 2).clone()


def test_infinite_stream_draws_fresh_batches_in_the_class_proportions():
    model = _Recorder()
    draw = king.infinite_stream(model, [0.25, 0.75], 12, seed=5)
    batches = [draw() for _ in range(50)]
    assert all(x.shape == (12, 1, 2, 2, 2) and y.shape == (12,) for x, y in batches)
    assert not torch.equal(batches[0][0], batches[1][0])  # fresh each call
    for x, y in batches:  # each volume is generated for its own label
        torch.testing.assert_close(x[:, 0, 0, 0, 0].floor(), y.float())
    share = torch.cat([y for _, y in batches]).float().mean().item()
    assert abs(share - 0.75) < 0.07
    again = king.infinite_stream(_Recorder(), [0.25, 0.75], 12, seed=5)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[:3], [again() for _ in range(3)], strict=True))


def test_folds_are_60_20_20_and_grouped():
    labels = np.repeat([0, 1], 50)
    subjects = [f"s{i}" for i in range(100)]
    cells = make_cells(labels, subjects, folds=5, repeats=1, seed=0, val_fraction=1 / 4)
    assert [len(c.train) for c in cells] == [60] * 5
    assert [len(c.val) for c in cells] == [20] * 5 and [len(c.test) for c in cells] == [20] * 5
    assert sorted(np.concatenate([c.test for c in cells]).tolist()) == list(range(100))
    for c in cells:
        assert np.bincount(labels[c.val]).tolist() == [10, 10]


# ----------------------------------------------------------------------------- metrics and statistics


def test_binary_scores_by_hand():
    # positive class 1: 3 positives (2 found), 5 negatives (4 right)
    y_true = [1, 1, 1, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 0, 0, 0, 0, 0, 1]
    s = king.binary_scores(y_true, y_pred, positive=1)
    assert s == pytest.approx(
        {
            "accuracy": 6 / 8,
            "sensitivity": 2 / 3,
            "specificity": 4 / 5,
            "balanced_accuracy": (2 / 3 + 4 / 5) / 2,
        }
    )
    flipped = king.binary_scores(y_true, y_pred, positive=0)
    assert flipped["sensitivity"] == pytest.approx(4 / 5) and flipped["specificity"] == pytest.approx(2 / 3)
    assert math.isnan(king.binary_scores([0, 0], [0, 1], positive=1)["sensitivity"])


REAL = [0.60, 0.55, 0.65, 0.62, 0.58]
LARGE = [0.80, 0.74, 0.79, 0.83, 0.78]
SMALL = [0.58, 0.60, 0.61, 0.66, 0.55]
CHANCE = [0.5, 0.5, 0.5, 0.52, 0.5]


def _rows():
    rows = []
    for name, values in (
        ("real", REAL),
        ("synthetic-large", LARGE),
        ("synthetic-small", SMALL),
        ("majority", CHANCE),
    ):
        for fold, v in enumerate(values):
            row = {m: v for m in king.METRICS}
            rows.append({"set": name, "fold": fold, **row, "n_real": 10, "n_synthetic": 0})
    return rows


def test_statistics_against_hand_computed_values():
    sets = ["real", "synthetic-small", "synthetic-large"]
    out = king.tests_against_real(_rows(), sets)
    n = 5
    # paired t by hand: mean difference over its standard error
    d = np.array(LARGE) - np.array(REAL)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    pair = out["pairs"]["synthetic-large"]
    assert pair["t"] == pytest.approx(t) and pair["diff"] == pytest.approx(d.mean())
    assert pair["p"] == pytest.approx(2 * stats.t.sf(abs(t), n - 1))
    assert pair["p_bonferroni"] == pytest.approx(min(1.0, 2 * pair["p"]))  # two sets against Real
    assert out["pairs"]["synthetic-small"]["p_bonferroni"] == 1.0 or out["pairs"]["synthetic-small"][
        "p_bonferroni"
    ] == pytest.approx(2 * out["pairs"]["synthetic-small"]["p"])
    # one-way ANOVA of the small sets by hand: between- and within-group mean squares
    groups = [np.array(REAL), np.array(SMALL)]
    grand = np.concatenate(groups).mean()
    between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (len(groups) - 1)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (2 * n - len(groups))
    f = between / within
    assert out["anova_small"]["F"] == pytest.approx(f) and out["anova_small"]["df"] == (1, 8)
    assert out["anova_small"]["p"] == pytest.approx(stats.f.sf(f, 1, 8))
    assert out["anova_all"]["df"] == (2, 12)
    # Real against chance, one-sided
    c = np.array(REAL) - np.array(CHANCE)
    tc = c.mean() / (c.std(ddof=1) / math.sqrt(n))
    assert out["chance"]["t"] == pytest.approx(tc)
    assert out["chance"]["p"] == pytest.approx(stats.t.sf(tc, n - 1))
    # means and Student-t intervals over the folds
    summary = {e["set"]: e for e in king.summarise(_rows(), sets)}
    half = stats.t.ppf(0.975, n - 1) * np.std(LARGE, ddof=1) / math.sqrt(n)
    assert summary["synthetic-large"]["accuracy"] == pytest.approx(np.mean(LARGE))
    assert summary["synthetic-large"]["accuracy_hi"] == pytest.approx(np.mean(LARGE) + half)
    assert list(summary) == ["real", "synthetic-small", "synthetic-large", "majority"]
    lines = king.direction_lines(king.summarise(_rows(), sets), out)
    assert any(line.startswith("- Synthetic (large) above Real") and line.endswith("holds") for line in lines)
    assert any(line.startswith("- Real above chance") and line.endswith("holds") for line in lines)
    assert any(line.startswith("- Small sets comparable") and "holds" in line for line in lines)


def test_constant_differences_do_not_break_the_tests():
    rows = [r for r in _rows() if r["set"] in ("real", "majority")]
    rows += [dict(r, set="mixed-small") for r in rows if r["set"] == "real"]
    out = king.tests_against_real(rows, ["real", "mixed-small"])
    assert (out["pairs"]["mixed-small"]["t"], out["pairs"]["mixed-small"]["p"]) == (0.0, 1.0)
    shifted = [dict(r, accuracy=r["accuracy"] + 0.1) for r in rows if r["set"] == "mixed-small"]
    out = king.tests_against_real([*rows[:10], *shifted], ["real", "mixed-small"])
    assert out["pairs"]["mixed-small"]["p"] == 0.0 and out["pairs"]["mixed-small"]["t"] == math.inf


# ----------------------------------------------------------------------------- configuration


def test_presets_and_config_errors():
    assert {"king2024", "quick"} <= set(king.diagnosis_presets())
    for preset in ("king2024", "quick"):
        cfg = king.diagnosis_config(preset)
        assert cfg["sets"] == list(king.SETS) and cfg["positive"] == "patient"
        assert [g["preset"] for g in cfg["generators"].values()] == ["king2024-alpha-sn-gan-aux"]
        assert cfg["data"]["scale"] == "[-1,1]" and cfg["cv"]["folds"] == 5
    paper = king.diagnosis_config("king2024")
    assert paper["data"]["shape"] == [64, 64, 64] and paper["large_factor"] == 5
    assert paper["classifiers"]["vgg3d"]["lr"] == 5e-6 and paper["classifiers"]["vgg3d"]["sigmoid_unit"]
    with pytest.raises(KeyError, match="cv.repeats"):
        king.diagnosis_config("quick", [{"cv": {"repeats": 2}}])
    with pytest.raises(ValueError, match="sets must name each set once"):
        king.diagnosis_config("quick", [{"sets": ["augmented"]}])
    with pytest.raises(ValueError, match="cv.folds must be an integer >= 3"):
        king.diagnosis_config("quick", [{"cv": {"folds": 2}}])
    with pytest.raises(ValueError, match="exactly one generator and one classifier"):
        king.diagnosis_config("quick", [{"classifiers": {"dnn3d": {}}}])
    with pytest.raises(ValueError, match="data.trim"):
        king.diagnosis_config("quick", [{"data": {"trim": True}}])
    with pytest.raises(ValueError, match="DiffAugment3d"):
        king.diagnosis_config("quick", [{"augment": {"p": 2.0}}])
    with pytest.raises(FileNotFoundError, match="known: "):
        king.diagnosis_config("nope")
    with pytest.raises(ValueError, match="generators.alpha-sn-gan-aux.preset: no training preset 'nope'"):
        king.diagnosis_config("quick", [{"generators": {"alpha-sn-gan-aux": {"preset": "nope"}}}])
    # the preset's sets come back in the paper's order
    assert king.diagnosis_config("quick", [{"sets": ["infinite", "real"]}])["sets"] == ["real", "infinite"]


# ----------------------------------------------------------------------------- a tiny real run

GRID = [24, 24, 24]


def _tiny_table(root):
    """A tiny smri cohort (2 classes x 10 volumes at 24^3) whose subjects have two volumes each
    (of one class), so a split that ignored subjects would leak."""
    from brainkern.data import cohorts

    table = cohorts.smri(root / "cohort", n_per_class=10, shape=tuple(GRID), seed=3)
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    out = root / "labels.csv"
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        for i, row in enumerate(rows):
            path = str(table.parent / row["path"])
            writer.writerow({"path": path, "label": row["label"], "subject": f"{row['label']}-{i // 2:02d}"})
    return out


def _tiny_config(table, cache, root):
    """The quick preset on the tiny cohort: 3 folds, a tiny linear conditional GAN trained for 2
    iterations in place of the alpha-SN-GAN, a narrow vgg3d for 2 epochs (a preset file of its
    own, since a preset's generator and classifier replace the defaults' while --set merges)."""
    import yaml

    spec = {
        "data": {"cohort": None, "table": str(table), "shape": GRID, "cache_dir": str(cache)},
        "cv": {"folds": 3},
        "large_factor": 1,
        "train": {"steps": None, "infinite_iterations": 3, "eval_every": 2},
        "generators": {
            "tiny": {
                "preset": "zhuang2019-icw-gan",
                "set": {
                    "model.name": "test-tiny-cgan",
                    "model.latent_dim": 4,
                    "train.iters": 2,
                    "train.batch_size": 2,
                    "train.d_updates": 1,
                },
            }
        },
        "classifiers": {"vgg3d": {"width": 0.125, "epochs": 2, "batch_size": 4, "lr": 1e-3}},
        "threads": 1,
    }
    path = root / "diagnosis-tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return king.diagnosis_config(path)


class _Spy:
    """Records every classifier fit's training and validation volumes."""

    def __init__(self):
        self.fits = []

    def install(self, mp):
        from brainkern.models.classifier import TorchClassifier

        fit, fit_stream = TorchClassifier.fit, TorchClassifier.fit_stream
        spy = self

        def record_fit(clf, x, y, *, validation=None, transform=None):
            spy.fits.append({"x": np.asarray(x), "y": np.asarray(y), "val": validation, "stream": False})
            return fit(clf, x, y, validation=validation, transform=transform)

        def record_stream(clf, draw, iterations, **kw):
            drawn = []

            def watched():
                batch = draw()
                drawn.append(np.asarray(batch[0]))
                return batch

            spy.fits.append({"x": drawn, "val": kw.get("validation"), "stream": True})
            return fit_stream(clf, watched, iterations, **kw)

        mp.setattr(TorchClassifier, "fit", record_fit)
        mp.setattr(TorchClassifier, "fit_stream", record_stream)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests import tiny_conditional  # noqa: F401  (registers test-tiny-cgan)

    root = tmp_path_factory.mktemp("diagnosis")
    cfg = _tiny_config(_tiny_table(root), root / "cache", root)
    spy = _Spy()
    with pytest.MonkeyPatch.context() as mp:
        spy.install(mp)
        out = king.run_diagnosis(cfg, root / "exp", progress=False, log=None)
    return cfg, out, spy


def _results(out):
    with open(out / "results.csv") as fh:
        return list(csv.DictReader(fh))


def test_tiny_run_writes_every_output(tiny_run):
    cfg, out, _ = tiny_run
    assert king.SETS[0] == "real"
    for name in ("config.yaml", "run.json", "splits.json", "results.csv", "table.md", "statistics.json"):
        assert (out / name).is_file(), name
    for name in ("figure6.png", "figureS11.png"):
        assert (out / name).stat().st_size > 1000, name
    rows = _results(out)
    assert sorted((r["set"], int(r["fold"])) for r in rows) == sorted(
        (s, f) for s in [*king.SETS, "majority"] for f in range(3)
    )
    splits = json.loads((out / "splits.json").read_text())
    labels = {}
    with open(cfg["data"]["table"]) as fh:
        for i, rec in enumerate(csv.DictReader(fh)):
            labels[i] = int(rec["label"] == "patient")
    for r in rows:
        assert 0.0 <= float(r["accuracy"]) <= 1.0
        if r["set"] == "majority":
            continue
        train = splits["cells"][int(r["fold"])]["volumes"]["train"]
        per_class = np.bincount([labels[i] for i in train], minlength=2)
        sizes = king.set_sizes(r["set"], per_class, 1)
        expected = (sum(a for a, _ in sizes), sum(b for _, b in sizes))
        if r["set"] == "infinite":
            expected = (0, 3 * 4)  # 3 iterations of batch 4, nothing stored
        assert (int(r["n_real"]), int(r["n_synthetic"])) == expected, r
        assert int(r["n_val"]) == len(splits["cells"][int(r["fold"])]["volumes"]["val"])
    assert (out / "histories" / "infinite-f0.json").is_file()
    table = (out / "table.md").read_text()
    assert "| Synthetic (large) |" in table and "Majority class (chance)" in table
    assert "The paper's direction" in table and "One-way ANOVA" in table


def test_tiny_run_never_lets_a_held_out_subject_in(tiny_run):
    from brainkern.data import VolumeDataset

    cfg, out, spy = tiny_run
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["cells"]) == 3 and splits["positive"] == "patient"
    for cell in splits["cells"]:
        parts = {p: set(cell["subjects"][p]) for p in ("train", "val", "test")}
        assert not (
            parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"]
        )
        assert cell["generators"]["tiny"] == sorted(parts["train"])
        run_split = json.loads((out / "generators" / f"f{cell['fold']}" / "tiny" / "split.json").read_text())
        files = set(run_split["files"]["train"])
        assert files == set(cell["files"]["train"])
        assert not files & set(cell["files"]["test"]) and not files & set(cell["files"]["val"])
    # What each classifier saw: validation always the fold's real validation volumes; training
    # volumes never a validation or test volume.
    ds = VolumeDataset.from_table(
        cfg["data"]["table"], shape=tuple(GRID), scale="[-1,1]", clip=(0.01, 0.99), trim=False, mask=None
    )
    real = np.asarray(ds.volumes, dtype=np.float32)[:, None]
    assert len(spy.fits) == 3 * len(king.SETS)
    for k, fit in enumerate(spy.fits):
        cell = splits["cells"][k // len(king.SETS)]
        x_val, _ = fit["val"]
        np.testing.assert_array_equal(x_val, real[cell["volumes"]["val"]])
        held_out = cell["volumes"]["val"] + cell["volumes"]["test"]
        held = real[held_out].reshape(len(held_out), -1)
        train = np.concatenate(fit["x"]) if fit["stream"] else fit["x"]
        flat = train.reshape(len(train), -1)
        assert not (np.abs(flat[:, None, :] - held[None]).max(-1) == 0).any()


def test_resume_refits_only_missing_rows(tiny_run, monkeypatch):
    cfg, out, _ = tiny_run
    rows = _results(out)
    keep = [r for r in rows if not (r["fold"] == "1" and r["set"] in ("real", "synthetic-large"))]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
    ckpts = sorted((out / "generators").rglob("last.pt"))
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    fits = []
    real_fit = king._fit_set
    monkeypatch.setattr(king, "_fit_set", lambda name, *a, **k: fits.append(name) or real_fit(name, *a, **k))
    king.run_diagnosis(cfg, out, progress=False, log=None)
    assert sorted(fits) == ["real", "synthetic-large"]
    again = _results(out)
    key = ("set", "fold", "accuracy", "n_real", "n_synthetic")
    assert sorted(tuple(r[k] for k in key) for r in again) == sorted(tuple(r[k] for k in key) for r in rows)
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps  # no generator retrained


def test_a_changed_config_is_refused(tiny_run):
    cfg, out, _ = tiny_run
    with pytest.raises(ValueError, match="another configuration"):
        king.run_diagnosis(dict(cfg, seed=cfg["seed"] + 1), out, progress=False, log=None)


def test_command_line_errors_are_one_line(capsys, tmp_path):
    from brainkern.experiment.king_cli import main

    assert main(["--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no diagnosis preset 'nope'" in capsys.readouterr().err
    assert main(["--preset", "quick", "--set", "cv.folds=1", "--out", str(tmp_path / "x")]) == 2
    assert "cv.folds must be an integer >= 3" in capsys.readouterr().err
    assert (
        main(["--preset", "quick", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "missing.csv" in capsys.readouterr().err
    assert not (tmp_path / "x" / "config.yaml").exists()
