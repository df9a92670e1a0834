"""2D runs (Han et al.'s slice models) through the training engine, on a tiny smri cohort.

The split stays one of subjects: every training slice comes from a training volume and every
evaluated slice from a held-out one; several sequences are stacked as channels; a 2D run
writes PNG samples and the machine observer's report; 3D runs refuse several sequences.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkern.train import config
from brainkern.train.data import evaluation_indices, load_run_data, training_indices
from brainkern.train.engine import Trainer, load_run

nib = pytest.importorskip("nibabel")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny2d(sequences=("t1", "t2"), **data) -> dict:
    """A 2D run of 16x16 slices in a few seconds: 2 x 4 subjects, 3 folds (one held out)."""
    return config.resolve(
        "han2018-dcgan-64",
        [
            {
                "model": {"latent_dim": 8, "width": 4},
                "data": {
                    "n_per_class": 4,
                    "shape": [16, 16, 16],
                    "cohort_shape": [16, 16, 16],
                    "sequences": list(sequences),
                    "lesions": 0.5,
                    "folds": 3,
                    "slices": {"plane": "sagittal", "central": 0.5, "size": 16},
                    **data,
                },
                "train": {"iters": 4, "batch_size": 8, "threads": 1},
                "log": {
                    "every": 1,
                    "checkpoint_every": 2,
                    "picture_every": 4,
                    "n_samples": 3,
                    "n_pictures": 2,
                },
                "evaluate": {"n_generated": 24},
            }
        ],
    )


def test_slices_split_by_subject_and_stack_sequences():
    cfg = tiny2d()
    split, ds = load_run_data(cfg["data"], progress=False)
    assert ds.channels == 2 and ds.shape == (16, 16)
    assert ds.stop - ds.start == 8  # the central half of 16 sagittal planes
    train = training_indices(ds, None, split)
    held, what = evaluation_indices(ds, None, split)
    assert what.startswith(f"held-out test slices ({len(held)} of ")
    train_vols = set(ds.volume_indices[train].tolist())
    held_vols = set(ds.volume_indices[held].tolist())
    assert train_vols == set(split["parts"]["train"]) and held_vols == set(split["parts"]["test"])
    assert not train_vols & held_vols
    assert len(train) == 8 * len(train_vols) and len(held) == 8 * len(held_vols)
    # Channel k of an item is sequence k's volume at that slice, as preprocessed.
    item = ds[int(held[3])]
    for k, vols in enumerate(ds.datasets):
        plane = vols.volumes[item["volume"], item["slice"]]
        np.testing.assert_allclose(item["image"][k].numpy(), np.asarray(plane).T[::-1], atol=1e-6)
    # The two sequences differ (T2 is not T1 again).
    assert not torch.allclose(item["image"][0], item["image"][1])


def test_several_sequences_need_slices_and_the_smri_cohort():
    cfg = tiny2d()
    with pytest.raises(ValueError, match="3D models take one sequence"):
        load_run_data({**cfg["data"], "slices": None}, progress=False)
    with pytest.raises(ValueError, match="only the embedded smri cohort"):
        load_run_data({**cfg["data"], "cohort": "fmri"}, progress=False)


def test_a_2d_run_trains_samples_and_reports(tmp_path):
    run = tmp_path / "run"
    from brainkern.experiment.han import ROWS, SliceReport

    trainer = Trainer(tiny2d(), run, progress=False, log=None, callbacks=[SliceReport(permutations=2)])
    trainer.fit()
    assert trainer.model.shape == (16, 16) and trainer.model.channels == 2
    samples = np.load(run / "samples" / "samples.npy")
    assert samples.shape == (3, 2, 16, 16)
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [f"sample_00{i}.png" for i in range(3)]
    assert (run / "pictures" / "samples_0000004.png").is_file()
    split = json.loads((run / "split.json").read_text())
    assert set(split["parts"]) == {"train", "test"}  # volumes (subjects), not slices
    assert len(split["trained_on"]) == 8 * len(split["parts"]["train"])  # the training slices
    evaluation = json.loads((run / "evaluation.json").read_text())
    rows = {r["source"]: r for r in evaluation["rows"]}
    assert list(rows) == list(ROWS)
    for r in rows.values():
        assert 0 <= r["ci"][0] <= r["accuracy"] <= r["ci"][1] <= 1
    model, cfg, _ = load_run(run, device="cpu")
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 2, 16, 16)
    assert "C2ST accuracy" in (run / "report.md").read_text()
    # The evaluation command gives a 2D run this table again (not Kwon et al.'s 3D one).
    from brainkern.evaluate.__main__ import main as evaluate

    (run / "report.md").unlink()
    assert evaluate([str(run), "--quiet", "--n-generated", "16", "--permutations", "2"]) == 0
    again = json.loads((run / "evaluation.json").read_text())
    assert [r["source"] for r in again["rows"]] == list(ROWS) and again["rows"][0]["n_other"] == 16
    assert "C2ST accuracy" in (run / "report.md").read_text()
    # A Visual Turing Test session of the run: held-out slices beside samples, one sequence
    # per trial, the real slices' subjects kept for the machine observer's folds.
    session = run.parent / "session"
    assert (
        evaluate(["turing", str(run), "--n", "3", "--pool", "8", "--no-serve", "--session", str(session)])
        == 0
    )
    meta = json.loads((session / "session.json").read_text())
    assert meta["kind"] == "2d" and meta["channel_names"] == ["T1", "T2"]
    assert meta["real_images"].startswith("held-out test slices (")
    with np.load(session / "images.npz") as z:
        assert z["real"].shape == z["synthetic"].shape == (8, 2, 16, 16)
        assert set(z["real_groups"]) <= set(split["subjects"]["test"])
    assert evaluate(["turing-report", str(session), "--permutations", "2"]) == 0
    report = json.loads((session / "report.json").read_text())
    assert report["machine"]["grouped_by_subject"] is True
    # Streamed sampling keeps a 2D run's channels (memmap only; NIfTI is for volumes).
    from brainkern.data import VolumeDataset
    from brainkern.sample import sample_run

    with pytest.raises(ValueError, match="2D run"):
        sample_run(run, 3, tmp_path / "nifti", progress=False, device="cpu")
    sample_run(run, 5, tmp_path / "mm", format="memmap", shard_size=2, progress=False, device="cpu")
    images = np.load(tmp_path / "mm" / "volumes.npy")
    assert images.shape == (5, 2, 16, 16) and np.isfinite(images).all()
    assert images[:, 1].std() > 0  # the second sequence is written too
    with pytest.raises(ValueError, match="images of a 2D run"):
        VolumeDataset.from_memmap(tmp_path / "mm")


def test_the_command_line_trains_a_han_preset(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "brainkern.train",
        "--preset",
        "han2018-wgan-64",
        "--iters",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--no-evaluate",
        "--batch-size",
        "4",
        "--set",
        "data.n_per_class=5",
        "--set",
        "data.shape=[16,16,16]",
        "--set",
        "data.cohort_shape=[16,16,16]",
        "--set",
        "data.slices={size: 16}",
        "--set",
        "data.sequences=[flair]",
        "--set",
        "model.width=4",
        "--set",
        "train.threads=1",
        "--set",
        "log.n_samples=1",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "samples (PNG)" in done.stdout
    assert np.load(out / "samples" / "samples.npy").shape == (1, 1, 16, 16)
    saved = (out / "config.yaml").read_text()
    assert "rmsprop" in saved and "weight_clip: 0.01" in saved


class _Drawn:
    """A stand-in 2D model whose samples are given images (real ones, or a collapsed set)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def sample(self, n, labels=None, *, generator=None, batch_size=64, device="cpu"):
        return self.images[:n]


def _slices(rng, subjects: int, per: int, shift: float = 0.0) -> tuple[torch.Tensor, list[str]]:
    """Smooth random 2-channel 16x16 images, ``per`` correlated slices per subject."""
    base = rng.standard_normal((subjects, 1, 2, 4, 4))
    x = base + 0.3 * rng.standard_normal((subjects, per, 2, 4, 4)) + shift
    x = torch.nn.functional.interpolate(
        torch.as_tensor(x.reshape(-1, 2, 4, 4)), size=(16, 16), mode="bilinear"
    )
    return x.float(), [f"s{i}" for i in range(subjects) for _ in range(per)]


def test_the_machine_observer_tells_collapse_and_shift_from_real():
    from brainkern.experiment.han import evaluate_slices

    rng = np.random.default_rng(0)
    train, train_subjects = _slices(rng, 60, 4)
    real, real_subjects = _slices(rng, 40, 4)
    other, _ = _slices(rng, 40, 4)  # new subjects of the same distribution

    def table(model):
        rows = evaluate_slices(
            model, real, real_subjects, train, train_subjects, n_generated=160, permutations=0, seed=1
        )
        return {r["source"]: r for r in rows}

    same = table(_Drawn(other))
    # Real against real, and a model drawing from the real distribution: about chance.
    for name in ("model", "training slices (real vs real)"):
        assert same[name]["ci"][0] < 0.5 < same[name]["ci"][1] or abs(same[name]["accuracy"] - 0.5) < 0.1
    # The mean image repeated is caught through the spread (the quadratic feature), and a
    # per-pixel Gaussian through its lost spatial structure.
    assert same["mean training image"]["accuracy"] > 0.8
    assert same["pixel Gaussian"]["accuracy"] > 0.8
    shifted = table(_Drawn(_slices(rng, 40, 4, shift=0.5)[0]))
    assert shifted["model"]["accuracy"] > 0.9
