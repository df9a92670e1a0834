"""``python -m brainkern.sample`` for class-conditional runs: which classes, file names, the labels table.

A conditional model samples ``--n`` volumes per class (``--per-class``) or the
classes ``--labels`` names in turn, and refuses to guess; an unconditional model
refuses both flags and samples as it always did. The labels table beside the
volumes reads back as a data set. (The unconditional command line end to end is
in ``tests/train/test_engine.py``.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")

from brainkern import sample  # noqa: E402
from brainkern.data import VolumeDataset, load_volume  # noqa: E402
from brainkern.train.engine import Trainer, load_run  # noqa: E402
from tests.tiny_conditional import SHAPE, UNCONDITIONAL, tiny_config  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _train(run_dir: Path, model_name: str | None = None, **data) -> Path:
    cfg = tiny_config(**({"model": model_name} if model_name else {}), **({"data": data} if data else {}))
    Trainer(cfg, run_dir, progress=False, log=None).fit()
    return run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A conditional run on the classes motor (0) and visual (1)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        return _train(tmp_path_factory.mktemp("sample") / "run")


def _expected(run_dir: Path, n: int, labels: list[int] | None, batch_size: int, seed: int = 0) -> np.ndarray:
    """The ``n`` volumes (one shard: ``n`` < 256) with ``labels``: their latents drawn at once from
    the shard's seeded generator, generated batch by batch."""
    model, _, _ = load_run(run_dir, "last", "cpu")
    z = model.sample_latent(n, generator=torch.Generator().manual_seed(sample.shard_seed(seed, 0)))
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            part = None if labels is None else torch.tensor(labels[start : start + batch_size])
            out.append(model.generate(z[start : start + batch_size], part))
    return torch.cat(out)[:, 0].numpy()


def _table(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_per_class_writes_n_volumes_of_each_class_and_a_table(run, tmp_path):
    out = tmp_path / "gen"
    argv = [str(run), "--n", "3", "--per-class", "--batch-size", "2", "--seed", "5", "--out", str(out)]
    assert sample.main([*argv, "--quiet"]) == 0
    names = sorted(p.name for p in out.glob("*.nii.gz"))
    assert names == [f"sample_{i:05d}_{c}.nii.gz" for i, c in enumerate(["motor"] * 3 + ["visual"] * 3)]
    rows = _table(out)
    assert [r["label"] for r in rows] == ["motor"] * 3 + ["visual"] * 3
    assert [r["subject"] for r in rows] == [f"synthetic-{i:05d}" for i in range(6)]
    assert [r["path"] for r in rows] == names  # relative to the table's folder

    # Each volume is the generator's answer to its seeded latent and its own class.
    volumes = np.stack([load_volume(out / name).data for name in names])
    np.testing.assert_allclose(volumes, _expected(run, 6, [0, 0, 0, 1, 1, 1], 2, seed=5), atol=1e-6)
    assert not np.allclose(volumes, _expected(run, 6, [1, 1, 1, 0, 0, 0], 2, seed=5), atol=1e-3)

    ds = VolumeDataset.from_table(out / "labels.csv", scale=None, clip=None, trim=False, mask=None)
    assert ds.classes == ["motor", "visual"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.shape == SHAPE and ds.subjects[0] == "synthetic-00000"
    np.testing.assert_allclose(ds.volumes, volumes, atol=1e-6)


def test_per_class_keeps_to_the_classes_the_run_trained_on(tmp_path):
    run = _train(tmp_path / "visual-only", classes=["visual"])
    paths = sample.sample_run(run, 2, tmp_path / "gen", per_class=True, progress=False)
    assert [p.name for p in paths] == ["sample_00000_visual.nii.gz", "sample_00001_visual.nii.gz"]
    assert [r["label"] for r in _table(tmp_path / "gen")] == ["visual", "visual"]


def test_labels_cycle_by_name_or_index(run, tmp_path):
    by_name = sample.sample_run(run, 5, tmp_path / "a", labels="visual,motor", batch_size=3, progress=False)
    by_index = sample.sample_run(run, 5, tmp_path / "b", labels=[1, "0"], batch_size=3, progress=False)
    classes = ["visual", "motor"] * 2 + ["visual"]
    assert [p.name for p in by_name] == [f"sample_{i:05d}_{c}.nii.gz" for i, c in enumerate(classes)]
    assert [r["label"] for r in _table(tmp_path / "a")] == classes
    for a, b in zip(by_name, by_index, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(load_volume(a).data, load_volume(b).data)
    volumes = np.stack([load_volume(p).data for p in by_name])
    np.testing.assert_allclose(volumes, _expected(run, 5, [1, 0, 1, 0, 1], 3), atol=1e-6)


def test_class_names_and_their_sources(run, tmp_path):
    classes = ["motor", "visual"]
    assert sample.parse_labels("visual, 0 ,motor", classes) == [1, 0, 0]
    assert sample.parse_labels(["1", "0", 0], ["1", "0"]) == [0, 1, 0]  # a name wins over an index
    with pytest.raises(ValueError, match="unknown class 'auditory'; the run's classes are 0=motor, 1=visual"):
        sample.parse_labels("visual,auditory", classes)
    with pytest.raises(ValueError, match="unknown class '2'"):
        sample.parse_labels("2", classes)
    with pytest.raises(ValueError, match="separated by commas"):
        sample.parse_labels("visual,,motor", classes)
    assert sample.run_classes(run, 2) == classes
    # without run.json: split.json's classes (null here), then the indices
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "split.json").write_text('{"classes": ["a", "b"]}')
    assert sample.run_classes(copy, 2) == ["a", "b"]
    (copy / "split.json").write_text('{"classes": null}')
    assert sample.run_classes(copy, 2) == ["0", "1"]


def test_conditional_model_needs_a_choice_of_classes(run, tmp_path, capsys):
    assert sample.main([str(run), "--n", "2", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is conditional (2 classes: motor, visual)" in err and "--per-class or --labels" in err
    assert not (tmp_path / "x").exists()
    assert sample.main([str(run), "--n", "2", "--labels", "auditory", "--quiet"]) == 2
    assert "unknown class 'auditory'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main([str(run), "--n", "2", "--labels", "motor", "--per-class"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="either labels or per_class"):
        sample.sample_run(run, 2, labels="motor", per_class=True)


def test_unconditional_model_refuses_classes_and_samples_as_before(tmp_path, capsys):
    run = _train(tmp_path / "plain", UNCONDITIONAL)
    for flags in (["--per-class"], ["--labels", "motor"]):
        assert sample.main([str(run), "--n", "2", "--quiet", *flags]) == 2
        assert "is unconditional: it takes no --per-class or --labels" in capsys.readouterr().err
    out = tmp_path / "gen"
    assert sample.main([str(run), "--n", "3", "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"sample_{i:05d}.nii.gz" for i in range(3)]
    volumes = np.stack([load_volume(out / f"sample_{i:05d}.nii.gz").data for i in range(3)])
    np.testing.assert_allclose(volumes, _expected(run, 3, None, 2), atol=1e-6)
    assert [r["label"] for r in _table(out)] == ["generated"] * 3
    # trained on one class: the table says which
    single = _train(tmp_path / "single", UNCONDITIONAL, classes=["motor"])
    sample.sample_run(single, 2, tmp_path / "one", progress=False)
    assert [r["label"] for r in _table(tmp_path / "one")] == ["motor", "motor"]
