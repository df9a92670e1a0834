"""Training on one fold: subject-grouped stratified splits, preprocessing fitted on the
training part only, the split written to the run, held-out volumes for evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brainkern.data import VolumeDataset
from brainkern.data.sources import Record
from brainkern.train import config
from brainkern.train.data import make_split
from brainkern.train.engine import Trainer
from tests.data.helpers import blob_volume, write_nifti

REPO = Path(__file__).resolve().parents[2]


def records(n_subjects=8, per_subject=2):
    """Two classes, ``per_subject`` volumes per subject."""
    return [
        Record(Path(f"v{s}_{k}.nii.gz"), "ab"[s % 2], f"sub{s}")
        for s in range(n_subjects)
        for k in range(per_subject)
    ]


def data_cfg(**over):
    return {**config.DEFAULTS["data"], **over}


def test_folds_partition_subjects_and_stratify():
    recs = records()
    seen_test = []
    for fold in range(4):
        split = make_split(recs, data_cfg(folds=4, fold=fold, split_seed=3))
        train, test = set(split["subjects"]["train"]), set(split["subjects"]["test"])
        assert not train & test and len(train | test) == 8
        # both classes in every held-out fold; a subject's two volumes on one side
        assert {recs[i].label for i in split["parts"]["test"]} == {"a", "b"}
        assert sorted(split["parts"]["train"] + split["parts"]["test"]) == list(range(16))
        seen_test += split["subjects"]["test"]
    assert sorted(seen_test) == sorted(f"sub{s}" for s in range(8))  # each subject held out once
    again = make_split(recs, data_cfg(folds=4, fold=2, split_seed=3))
    assert again == make_split(recs, data_cfg(folds=4, fold=2, split_seed=3))
    assert make_split(recs, data_cfg()) is None


def test_split_file_errors(tmp_path):
    recs = records(4, 1)
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["sub0", "sub1"], "test": ["sub2", "sub9"]}))
    with pytest.raises(ValueError, match="part 'test' names 1 subject.*lacks: sub9"):
        make_split(recs, data_cfg(split_file=str(f)))
    f.write_text(json.dumps({"train": ["sub0", "sub1"], "test": ["sub1"]}))
    with pytest.raises(ValueError, match="subject 'sub1' is in both 'train' and 'test'"):
        make_split(recs, data_cfg(split_file=str(f)))
    f.write_text(json.dumps({"train": ["sub0", "sub3"], "val": ["sub1"], "test": ["sub2"]}))
    split = make_split(recs, data_cfg(split_file=str(f)))
    assert split["parts"] == {"train": [0, 3], "val": [1], "test": [2]}
    with pytest.raises(ValueError, match=r"data.fold must be an integer in 0 \.\. 2"):
        config.resolve("quick", [{"data": {"folds": 3, "fold": 3}}])
    with pytest.raises(ValueError, match="data.folds: Input should be greater than or equal to 2"):
        config.resolve("quick", [{"data": {"folds": 1}}])


def test_trimming_box_and_mask_are_fitted_on_the_training_volumes_only(tmp_path):
    # Volumes 0-2 sit in a central box; volume 3 (held out) reaches the grid's corner.
    shape = (16, 16, 16)
    recs = []
    for i in range(4):
        box = ((4, 4, 4), (12, 12, 12)) if i < 3 else ((0, 0, 0), (16, 16, 16))
        write_nifti(tmp_path / f"v{i}.nii.gz", blob_volume(shape, seed=i, box=box))
        recs.append(Record(tmp_path / f"v{i}.nii.gz", "a", f"s{i}"))
    fitted = VolumeDataset(recs, shape=(8, 8, 8), fit_on=[0, 1, 2])
    everything = VolumeDataset(recs, shape=(8, 8, 8))
    assert fitted.config["bbox"] == {"start": [4, 4, 4], "stop": [12, 12, 12]}
    assert everything.config["bbox"] == {"start": [0, 0, 0], "stop": [16, 16, 16]}
    assert fitted.config["fit_on"] == [0, 1, 2] and len(fitted) == 4  # held-out volume transformed
    # the auto mask counts the fitting volumes only: the held-out volume's corner is not brain
    assert not fitted.mask[0, 0, 0] and fitted.mask.sum() > 0
    with pytest.raises(ValueError, match="fit_on names volume 7"):
        VolumeDataset(recs, shape=(8, 8, 8), fit_on=[0, 7])


@pytest.fixture
def cohort_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_fold(**data):
    return config.resolve(
        "quick",
        [
            {
                "model": {"latent_dim": 8, "width": 4, "code_hidden": 16},
                "data": {
                    "n_per_class": 4,
                    "shape": [16, 16, 16],
                    "cohort_shape": [16, 16, 16],
                    "folds": None,
                    **data,
                },
                "train": {"iters": 2, "batch_size": 2, "threads": 1},
                "log": {"every": 1, "checkpoint_every": 2, "picture_every": 2, "n_samples": 0},
            }
        ],
    )


def test_a_run_trains_on_its_fold_and_records_the_split(tmp_path, cohort_cache):
    cfg = tiny_fold(folds=4, fold=1, split_seed=0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False, log=None)
    trainer.fit()
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    train, test = set(split["parts"]["train"]), set(split["parts"]["test"])
    assert split["method"] == "stratified-group-kfold" and split["fold"] == 1
    assert set(split["trained_on"]) == train and not train & test and len(train | test) == 8
    assert not set(split["subjects"]["train"]) & set(split["subjects"]["test"])
    assert trainer.dataset.config["fit_on"] == sorted(train)  # preprocessing fitted on train only
    idx, what = trainer.evaluation_indices()
    assert set(idx.tolist()) == test and what.startswith("held-out test volumes")
    # batches draw training volumes only
    assert set(trainer.batches.indices.tolist()) == train
    unsplit = Trainer(tiny_fold(), tmp_path / "all", progress=False, log=None)
    assert unsplit.evaluation_indices()[1].startswith("training volumes")


def test_bad_fold_is_a_one_line_error_before_any_run_directory(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "brainkern.train", "--out", str(tmp_path / "run"), "--set", "data.folds=3",
         "--set", "data.fold=5"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 2
    assert "data.fold must be an integer in 0 .. 2" in out.stderr
    assert not (tmp_path / "run").exists()


def test_split_file_naming_missing_subjects_fails_before_the_run_directory(tmp_path, cohort_cache):
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["nobody"], "test": []}))
    with pytest.raises(ValueError, match="lacks: nobody"):
        Trainer(tiny_fold(split_file=str(f)), tmp_path / "run", progress=False, log=None)
    assert not (tmp_path / "run").exists()
