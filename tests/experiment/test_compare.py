"""The architecture comparison (King et al. 2024, Fig. 2): configuration, statistics, a tiny run,
resuming, and no held-out subject in any generator's training split."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

# A bare GPU image (benchmarks/gpu.sh's test stages) may lack these: skip, not fail to collect.
stats = pytest.importorskip("scipy.stats")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from brainkern.experiment import compare  # noqa: E402
from brainkern.experiment.compare_cli import main  # noqa: E402

# Two tiny architectures from presets every checkout has, on the tiny smri cohort test_kwon.py
# makes too (the session's cohort cache holds it once: simulating it is the slow part).
TINY = {
    "data": {"cohort": "smri", "n_per_class": 3, "shape": [16, 16, 16], "cohort_shape": [16, 16, 16]},
    "split": {"folds": 2, "fold": 1, "seed": 0},
    "metrics": {"k": 2},
    "architectures": [
        {
            "name": "wgan",
            "preset": "kwon2019-wgan-gp",
            "set": {
                "model.width": 4,
                "model.latent_dim": 8,
                "train.iters": 2,
                "train.g_updates": 1,
                "train.batch_size": 2,
            },
        },
        {
            "name": "alpha",
            "preset": "quick",
            "set": {
                "model.width": 4,
                "model.latent_dim": 8,
                "model.code_hidden": 8,
                "train.iters": 2,
                "train.batch_size": 2,
            },
        },
    ],
    "sets": 2,
    "extractor": {"iters": 2, "width": 2, "code": 2, "batch_size": 4},
    "threads": 1,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        cfg = compare.compare_config(None, [TINY])
        out = compare.run_compare(cfg, tmp_path_factory.mktemp("compare") / "exp", progress=False, log=None)
    return cfg, out


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_config_presets_and_errors():
    assert {"quick", "king2024-architectures"} <= set(compare.compare_presets())
    full = compare.compare_config("king2024-architectures")
    assert list(full["architectures"]) == [
        "sn-gan",
        "sn-gan+diffaugment",
        "alpha-sn-gan",
        "alpha-sn-gan+diffaugment",
    ]
    assert full["architectures"]["alpha-sn-gan"]["preset"] == "king2024-alpha-sn-gan"
    assert full["sets"] == 10 and full["extractor"]["name"] == "autoencoder-3d"
    # An override updates one architecture's settings and keeps the others.
    cfg = compare.compare_config("quick", [{"architectures": {"sn-gan": {"set": {"train.iters": 7}}}}])
    assert cfg["architectures"]["sn-gan"]["set"]["train.iters"] == 7
    assert cfg["architectures"]["sn-gan"]["set"]["model.width"] == 8
    for bad, match in (
        ({"reference": "all"}, "reference must be one of"),
        ({"sets": 1}, "sets must be an integer >= 2"),
        ({"extractor": {"name": "medicalnet-resnet50"}}, "needs extractor.weights"),
        ({"extractor": {"name": "inception"}}, "extractor.name must be one of"),
        ({"split": {"fold": 5}}, "split.fold must be"),
        ({"data": {"folds": 3}}, "set by the experiment's split"),
        ({"architectures": {"x": {"set": {}}}}, "give {preset: NAME"),
        ({"architectures": {"mean volume": {"preset": "quick"}}}, "baseline's name"),
    ):
        with pytest.raises(ValueError, match=match):
            compare.compare_config("quick", [bad])
    with pytest.raises(KeyError, match="unknown config key 'colour'"):
        compare.compare_config("quick", [{"colour": 1}])
    with pytest.raises(FileNotFoundError, match="known: "):
        compare.compare_config("nope")


def test_anova_and_posthoc_against_hand_formulas():
    values = {"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0, 6.0], "c": [5.0, 5.5, 6.5]}
    rows = [
        {
            "name": n,
            "set": s,
            **{m: v + (0.1 * i if m != "fid" else 0) for i, m in enumerate(compare.METRICS)},
        }
        for n, vs in values.items()
        for s, v in enumerate(vs)
    ]
    out = compare.anova(rows, list(values))
    grand = np.mean(sum(values.values(), []))
    between = sum(3 * (np.mean(v) - grand) ** 2 for v in values.values()) / 2
    within = sum(((np.asarray(v) - np.mean(v)) ** 2).sum() for v in values.values()) / 6
    assert out["fid"]["F"] == pytest.approx(between / within)
    assert out["fid"]["p"] == pytest.approx(stats.f.sf(between / within, 2, 6))
    assert (out["fid"]["df_between"], out["fid"]["df_within"]) == (2, 6)
    tests = [t for t in compare.posthoc(rows, list(values)) if t["metric"] == "fid"]
    assert [(t["a"], t["b"]) for t in tests] == [("a", "b"), ("a", "c"), ("b", "c")]
    sp = math.sqrt((np.var(values["a"], ddof=1) + np.var(values["b"], ddof=1)) / 2)
    t_ab = (np.mean(values["a"]) - np.mean(values["b"])) / (sp * math.sqrt(2 / 3))
    assert tests[0]["t"] == pytest.approx(t_ab) and tests[0]["df"] == 4
    assert tests[0]["p_bonferroni"] == pytest.approx(min(1.0, 3 * 2 * stats.t.sf(abs(t_ab), 4)))
    # No variance within the groups: no F.
    flat = [{**r, "fid": 1.0} for r in rows]
    assert math.isnan(compare.anova(flat, list(values))["fid"]["F"])


def test_tiny_run_writes_every_output(tiny_run):
    cfg, out = tiny_run
    for name in ("config.yaml", "run.json", "splits.json", "extractor.pt", "results.csv", "summary.csv"):
        assert (out / name).is_file(), name
    for name in ("metrics.png", "pca.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    rows = _rows(out / "results.csv")
    names = ["wgan", "alpha", "mean volume", "voxel Gaussian", "training copies"]
    assert sorted((r["name"], int(r["set"])) for r in rows) == sorted((n, s) for n in names for s in (0, 1))
    held_out = len(json.loads((out / "splits.json").read_text())["subjects"]["test"])
    assert all(int(r["n"]) == held_out for r in rows)  # each set as large as the reference
    assert all(0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1 for r in rows)
    # Training copies come from real subjects: they sit nearer the real features than the
    # untrained-looking tiny generators.
    fid = {n: np.mean([float(r["fid"]) for r in rows if r["name"] == n]) for n in names}
    assert fid["training copies"] < min(fid["wgan"], fid["alpha"])
    table = (out / "table.md").read_text()
    assert (
        "Features: **autoencoder-3d (trained on the 3 training volumes only, 2 iterations; 16 features"
        in table
    )
    assert "| wgan | model |" in table and "| training copies | baseline |" in table
    assert "F(1, 2) = " in table and "issue 14" in table
    assert "'training copies' scores at least as well as every model" in table


def test_no_held_out_subject_in_any_generator_training_split(tiny_run):
    _, out = tiny_run
    splits = json.loads((out / "splits.json").read_text())
    train, test = set(splits["subjects"]["train"]), set(splits["subjects"]["test"])
    assert train and test and not train & test
    for name in ("wgan", "alpha"):
        assert set(splits["generators"][name]) == train
        run_split = json.loads((out / "generators" / name / "split.json").read_text())
        assert set(run_split["subjects"]["train"]) == train
        # The volumes the engine trained on: all of the training part, none of the held-out one.
        assert set(run_split["trained_on"]) == set(splits["volumes"]["train"])
        assert not set(run_split["trained_on"]) & set(splits["volumes"]["test"])


def test_resume_reuses_runs_extractor_and_sets(tiny_run):
    cfg, out = tiny_run
    stamps = {
        p: p.stat().st_mtime_ns for p in [out / "extractor.pt", *out.glob("generators/*/checkpoints/last.pt")]
    }
    rows = _rows(out / "results.csv")
    # An interrupted run: the last three sets (one generator set, two baseline sets) missing.
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-3])
    compare.run_compare(cfg, out, progress=False, log=None)
    again = _rows(out / "results.csv")
    assert len(again) == len(rows)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    for a, b in zip(rows, again, strict=True):  # the recomputed sets are the same sets
        assert a["name"] == b["name"] and a["set"] == b["set"]
        assert float(a["fid"]) == pytest.approx(float(b["fid"]), rel=1e-6)
    with pytest.raises(ValueError, match="another configuration"):
        compare.run_compare({**cfg, "sets": 3}, out, progress=False, log=None)


def test_command_line(tmp_path, capsys):
    assert main(["--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no compare preset 'nope'" in capsys.readouterr().err
    assert main(["--preset", "quick", "--set", "reference=all", "--out", str(tmp_path / "x")]) == 2
    assert "reference must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "King et al. (2024) Fig. 2" in capsys.readouterr().out
