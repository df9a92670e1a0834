"""Experiment ``kwon2019-table1``: Kwon et al.'s Table 1 for a run, during training and after it.

One tiny run (16^3, 2 iterations, CPU) is trained with the run report plugged
in; its end-of-run table, the experiment's command line and the
``python -m brainkern.evaluate`` shortcut must then agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
pytest.importorskip("nibabel")

from brainkern.evaluate.__main__ import main as evaluate_main  # noqa: E402
from brainkern.experiment.__main__ import main as experiment_main  # noqa: E402
from brainkern.experiment.kwon import RunReport, evaluate_run, write_report  # noqa: E402
from brainkern.train import config  # noqa: E402
from brainkern.train.engine import Trainer  # noqa: E402

ROWS = ["trained", "untrained", "noise (matched)", "mean volume", "voxel Gaussian", "training copies", "real"]
SMALL_EVALUATION = ["--quiet", "--n-generated", "8", "--mmd-tests", "2", "--pairs", "4"]


def tiny(**data) -> dict:
    """Two iterations of a 16^3 alpha-WGAN-GP, with a small evaluation (seconds)."""
    return config.resolve(
        "quick",
        [
            {"data": {"folds": None, **data}},
            {
                "model": {"latent_dim": 8, "width": 4, "code_hidden": 16},
                "data": {"n_per_class": 3, "shape": [16, 16, 16], "cohort_shape": [16, 16, 16]},
                "train": {"iters": 2, "batch_size": 2, "threads": 1},
                "log": {
                    "every": 1,
                    "checkpoint_every": 2,
                    "picture_every": 2,
                    "n_samples": 1,
                    "n_pictures": 2,
                },
                "evaluate": {"n_generated": 8, "mmd_tests": 2, "mmd_batch": 2, "ms_ssim_pairs": 4},
            },
        ],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained run directory, evaluated at its end by :class:`RunReport`."""
    # The cohort cache of the whole session (making the cohort is the slow part).
    cache = tmp_path_factory.getbasetemp() / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINKERN_CACHE", str(cache))
        run_dir = tmp_path_factory.mktemp("kwon") / "run"
        Trainer(tiny(), run_dir, progress=False, log=None, callbacks=[RunReport(progress=False)]).fit()
    return run_dir


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _evaluation(run_dir: Path) -> dict:
    return json.loads((run_dir / "evaluation.json").read_text())


def test_the_run_report_draws_pictures_and_evaluates_at_the_end(run):
    pictures = sorted(p.name for p in (run / "pictures").iterdir())
    assert pictures == ["losses.png", "samples_0000002.png"]
    evaluation = _evaluation(run)
    assert [r["model"] for r in evaluation["rows"]] == ROWS
    assert evaluation["iterations"] == 2 and evaluation["checkpoint"] == "last"
    assert evaluation["grid"] == [16, 16, 16] and evaluation["n_real"] == 6 and evaluation["n_generated"] == 8
    assert evaluation["real"] == "training volumes (6; the run has no held-out part)"
    report = (run / "report.md").read_text()
    assert "Kwon et al. (2019) Table 1" in report and "![samples_0000002]" in report
    assert "| noise (matched) |" in report and "| training copies |" in report
    # Without a held-out part, the memorisation reference is the training set itself
    # (each volume's nearest other one), and the report says so.
    memo = {r["model"]: r["memorisation"] for r in evaluation["rows"]}
    assert memo["training copies"]["nn_ratio"] == 0.0 and memo["training copies"]["copy_rate"] == 1.0
    assert "no held-out part" in memo["trained"]["reference"] and "no held-out part" in report
    assert "Does the trained generator beat every baseline?" in report


def test_command_line_shortcut_and_end_of_run_give_one_table(run, capsys):
    at_end = _evaluation(run)["rows"]
    assert experiment_main(["kwon2019-table1", str(run), *SMALL_EVALUATION]) == 0
    by_name = capsys.readouterr().out
    rows = _evaluation(run)["rows"]
    (run / "evaluation.json").unlink()
    assert evaluate_main([str(run), *SMALL_EVALUATION]) == 0
    by_shortcut = capsys.readouterr().out
    # Same seeds, same checkpointed weights (BatchNorm statistics included): same numbers.
    assert rows == at_end and _evaluation(run)["rows"] == at_end
    assert by_name == by_shortcut
    assert by_name.splitlines()[0] == (
        "| model | MMD^2 (Kwon, linear) | MMD^2 (RBF, voxels) | MMD^2 (RBF, 4^3 blocks) | MS-SSIM | voxel SD "
        "| NN ratio | near copies |"
    )
    assert by_name.rstrip().endswith(f"written: {run / 'report.md'} and {run / 'evaluation.json'}")


def test_a_run_with_a_held_out_fold_is_compared_with_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer = Trainer(
        tiny(folds=2, fold=1), run_dir, progress=False, log=None, callbacks=[RunReport(progress=False)]
    )
    trainer.fit()
    held_out = json.loads((run_dir / "split.json").read_text())["parts"]["test"]
    at_end = _evaluation(run_dir)
    assert at_end["n_real"] == len(held_out) and at_end["real"].startswith("held-out test volumes")
    assert len(trainer.indices) + len(held_out) == 6
    # After the fact the experiment rebuilds the same split and compares with the same volumes.
    assert experiment_main(["kwon2019-table1", str(run_dir), *SMALL_EVALUATION]) == 0
    capsys.readouterr()
    again = _evaluation(run_dir)
    assert again["rows"] == at_end["rows"] and again["real"] == at_end["real"]


def test_overrides_and_checkpoint_choice_reach_the_report(run):
    rows, path = evaluate_run(
        run, checkpoint="best", n_generated=6, mmd_tests=1, ms_ssim_pairs=3, progress=False
    )
    assert path == run / "report.md"
    evaluation = _evaluation(run)
    assert evaluation["checkpoint"] == "best" and evaluation["n_generated"] == 6
    assert [r["model"] for r in rows] == ROWS == [r["model"] for r in evaluation["rows"]]
    assert "- checkpoint: best" in path.read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}"], "has no config.yaml: not a brainkern run directory"),
        (["{tmp}/missing"], "has no config.yaml"),
    ],
    ids=["not-a-run", "no-folder"],
)
def test_a_bad_run_directory_is_a_one_line_error(argv, message, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert experiment_main(["kwon2019-table1", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_missing_checkpoint_is_a_one_line_error(run, tmp_path, capsys):
    copy = tmp_path / "run"
    copy.mkdir()
    (copy / "config.yaml").write_text((run / "config.yaml").read_text())
    assert evaluate_main([str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "last.pt" in err


def test_write_report_without_pictures(tmp_path):
    rows = [{"model": "trained", "mmd2": 1.0, "mmd2_std": 0.1, "mmd2_per_voxel": 0.01}]
    info = {"model": "m", "iterations": 3, "grid": [16, 16, 16]}
    path = write_report(tmp_path, rows, info)
    text = path.read_text()
    assert text.startswith("# brainkern run: m\n") and "- iterations: 3" in text and "(none)" in text
    assert _evaluation(tmp_path) == {**info, "rows": rows}


# ------------------------------------------------------------------ class-conditional models


def _conditional():
    from tests import tiny_conditional

    return tiny_conditional


def _capture_table(monkeypatch) -> dict:
    """Replace the table's computation by a recorder of what it was given (the metrics are
    tested elsewhere; here only which volumes reach them)."""
    import brainkern.experiment.kwon as kwon

    seen: dict = {}

    def record(real, candidates, **kwargs):
        seen.update(real=real, candidates=candidates, **kwargs)
        return []

    monkeypatch.setattr(kwon, "generation_table", record)
    return seen


def test_generation_labels_follow_the_real_classes():
    import torch

    from brainkern.experiment.kwon import generation_labels
    from brainkern.models import build_model

    tc = _conditional()
    model = build_model(tc.NAME, num_classes=3)
    assert generation_labels(build_model(tc.UNCONDITIONAL), 4, [0, 1]) is None
    assert generation_labels(model, 5).tolist() == [0, 1, 2, 0, 1]
    real = [2, 0, 0, 1]
    assert generation_labels(model, 8, real).tolist() == [2, 2, 0, 0, 0, 0, 1, 1]  # exact proportions
    counts = torch.bincount(generation_labels(model, 7, real), minlength=3).tolist()
    assert counts[0] in (3, 4) and counts[1] in (1, 2) and counts[2] in (1, 2) and sum(counts) == 7
    with pytest.raises(ValueError, match=r"outside 0 \.\. 2"):
        generation_labels(model, 4, [0, 3])
    with pytest.raises(ValueError, match="no real labels"):
        generation_labels(model, 4, [])


def test_evaluate_model_samples_a_conditional_model_in_the_real_proportions(monkeypatch):
    import torch

    from brainkern.experiment.kwon import evaluate_model
    from brainkern.train.engine import build_run_model

    tc = _conditional()
    cfg = tc.tiny_config(evaluate={"n_generated": 8, "mmd_batch": 2, "mmd_tests": 1, "ms_ssim_pairs": 2})
    cfg["model"]["num_classes"] = 2
    model = build_run_model(cfg, torch.device("cpu"))
    real = torch.rand(4, 1, *tc.SHAPE, generator=torch.Generator().manual_seed(0))
    seen = _capture_table(monkeypatch)
    evaluate_model(model, real, cfg, real_labels=[1, 1, 1, 0])
    labels = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)
    batch = cfg["train"]["batch_size"]
    assert torch.equal(
        seen["candidates"]["trained"], model.sample(8, labels, generator=gen, batch_size=batch)
    )
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)
    fresh = build_run_model(cfg, torch.device("cpu")).sample(8, labels, generator=gen, batch_size=batch)
    assert torch.equal(seen["candidates"]["untrained"], fresh)
    # volumes in [0, 1] (data.scale) are measured over that range
    assert seen["data_range"] == 1.0 and seen["low"] == 0.0
    with pytest.raises(ValueError, match="is conditional"):
        model.sample(2)  # what evaluate_model did before it passed labels


def test_evaluate_model_keeps_the_unconditional_samples(monkeypatch):
    import torch

    from brainkern.experiment.kwon import evaluate_model
    from brainkern.train.engine import build_run_model

    tc = _conditional()
    small = {"n_generated": 6, "mmd_batch": 2, "mmd_tests": 1, "ms_ssim_pairs": 2}
    cfg = tc.tiny_config(tc.UNCONDITIONAL, evaluate=small, data={"scale": "[-1,1]"})
    model = build_run_model(cfg, torch.device("cpu"))
    real = torch.rand(4, 1, *tc.SHAPE, generator=torch.Generator().manual_seed(0))
    seen = _capture_table(monkeypatch)
    evaluate_model(model, real, cfg, real_labels=[1, 1, 1, 0])  # labels ignored: unconditional
    gen = torch.Generator().manual_seed(cfg["seed"] + 2)
    expected = model.sample(6, generator=gen, batch_size=cfg["train"]["batch_size"])
    assert torch.equal(seen["candidates"]["trained"], expected)
    assert seen["data_range"] == 2.0 and seen["low"] == -1.0


def test_the_run_report_of_a_conditional_run(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from brainkern.models import GenerativeModel

    tc = _conditional()
    calls: list[tuple[int, list[int] | None]] = []
    original = GenerativeModel.sample

    def spy(self, n, labels=None, **kwargs):
        calls.append((n, None if labels is None else torch.as_tensor(labels).tolist()))
        return original(self, n, labels, **kwargs)

    monkeypatch.setattr(GenerativeModel, "sample", spy)
    cfg = tc.tiny_config(
        log={"picture_every": 2, "n_pictures": 4},
        evaluate={"enabled": True, "n_generated": 8, "mmd_batch": 2, "mmd_tests": 2, "ms_ssim_pairs": 4},
    )
    report = RunReport(progress=False)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None, callbacks=[report])
    trainer.fit()
    assert (tmp_path / "run" / "pictures" / "samples_0000002.png").is_file()
    rows = _evaluation(tmp_path / "run")["rows"]
    assert [r["model"] for r in rows] == ROWS
    # the picture: each generated column in the class of the real volume above it
    pictured = [labels for n, labels in calls if n == 4]
    assert pictured and all(labels == report.real_labels.tolist() for labels in pictured)
    assert sorted(set(report.real_labels.tolist())) == [0, 1]  # both classes shown
    # the table: the classes of the 8 real (training) volumes, 4 of each
    indices, _ = trainer.evaluation_indices()
    real_labels = np.asarray(trainer.dataset.labels)[np.sort(indices)].tolist()
    evaluated = [labels for n, labels in calls if n == 8][-2:]  # the last: trained, untrained
    assert evaluated == [real_labels] * 2 and sorted(real_labels) == [0] * 4 + [1] * 4
