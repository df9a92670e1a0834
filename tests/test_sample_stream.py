"""Streaming, sharded, resumable sampling (``python -m brainkern.sample``) and the Infinite set's draw.

A tiny class-conditional run (tests/tiny_conditional.py: a linear generator on a 12x14x10
grid) is sampled into shards of 3 volumes. An interrupted run (the
``BRAINKERN_SAMPLE_STOP_AFTER`` aid: a process stops after some shards and one batch of
the next) that is run again gives the same bytes as an uninterrupted one, in both formats,
on one process and on two (torchrun, gloo) resumed on two or on one. The volumes do not
depend on the batch size or on which shards are drawn together; a rerun with other
settings is refused; the memmap output reads back as a data set equal to the NIfTI output.
"""

from __future__ import annotations

import csv
import itertools
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nibabel")

from brainkern import sample  # noqa: E402
from brainkern.data import VolumeDataset  # noqa: E402
from brainkern.experiment import king  # noqa: E402
from brainkern.train.engine import Trainer, load_run  # noqa: E402
from tests.tiny_conditional import SHAPE, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# 10 volumes in shards of 3 (3, 3, 3, 1), batches of 2 (a shard is 2 + 1 volumes).
N, SHARD, BATCH = 10, 3, 2
LABELS = "visual,motor,motor"  # classes 1, 0, 0 in turn


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A conditional run on the classes motor (0) and visual (1)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINKERN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        run_dir = tmp_path_factory.mktemp("stream") / "run"
        Trainer(tiny_config(), run_dir, progress=False, log=None).fit()
    return run_dir


def _argv(run: Path, out: Path, fmt: str, *extra: str) -> list[str]:
    sizes = ["--shard-size", str(SHARD), "--batch-size", str(BATCH)]
    return [
        str(run),
        "-n",
        str(N),
        "--labels",
        LABELS,
        *sizes,
        "--format",
        fmt,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (shard markers included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_output(a: Path, b: Path) -> None:
    """Byte for byte the same files (volumes, tables, settings, shard markers)."""
    left, right = _contents(a), _contents(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name] == right[name], name


def _stopped(monkeypatch, argv: list[str], after: int, capsys) -> None:
    monkeypatch.setenv(sample.STOP_ENV, str(after))
    assert sample.main(argv) == 2
    assert f"{sample.STOP_ENV}={after}" in capsys.readouterr().err
    monkeypatch.delenv(sample.STOP_ENV)


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted single-process outputs, per format."""
    root = tmp_path_factory.mktemp("reference")
    for fmt in ("nifti", "memmap"):
        assert sample.main(_argv(run, root / fmt, fmt)) == 0
    return {fmt: root / fmt for fmt in ("nifti", "memmap")}


@pytest.mark.parametrize("fmt", ["nifti", "memmap"])
def test_resumed_sampling_equals_uninterrupted_sampling(run, reference, tmp_path, monkeypatch, capsys, fmt):
    out = tmp_path / "out"
    _stopped(monkeypatch, _argv(run, out, fmt), 2, capsys)
    assert sorted(p.name for p in (out / ".shards").iterdir()) == ["0.json", "1.json"]
    table = "index.csv" if fmt == "memmap" else "labels.csv"
    assert not (out / table).exists()
    if fmt == "nifti":  # shard 2's first batch was written, unmarked: it is redone
        partial = sorted(p.name for p in out.glob("*.nii.gz"))[-2:]
        assert partial == ["sample_00006_visual.nii.gz", "sample_00007_motor.nii.gz"]
    assert sample.main(_argv(run, out, fmt)) == 0
    assert "(4 written now, 6 found done)" in capsys.readouterr().out
    _same_output(out, reference[fmt])
    # A finished run run again writes nothing new and changes nothing.
    assert sample.main(_argv(run, out, fmt)) == 0
    assert "(0 written now, 10 found done)" in capsys.readouterr().out
    _same_output(out, reference[fmt])


def test_labels_reach_the_tables_and_memmap_reads_back_as_the_nifti_output(reference):
    classes = ["visual", "motor", "motor"] * 3 + ["visual"]
    with open(reference["memmap"] / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["row"] for r in rows] == [str(i) for i in range(N)]
    assert [r["label"] for r in rows] == classes
    assert [r["subject"] for r in rows] == [f"synthetic-{i:05d}" for i in range(N)]

    nifti = VolumeDataset.from_table(
        reference["nifti"] / "labels.csv", scale=None, clip=None, trim=False, mask=None
    )
    assert [p.name for p in nifti.paths] == [f"sample_{i:05d}_{c}.nii.gz" for i, c in enumerate(classes)]
    mm = VolumeDataset.from_memmap(reference["memmap"])
    assert isinstance(mm.volumes, np.memmap) and not mm.volumes.flags.writeable  # read in place
    assert mm.volumes.shape == (N, *SHAPE) and mm.shape == SHAPE == nifti.shape
    np.testing.assert_array_equal(mm.volumes, nifti.volumes)
    assert mm.classes == nifti.classes == ["motor", "visual"]
    np.testing.assert_array_equal(mm.labels, nifti.labels)
    assert mm.subjects == nifti.subjects
    np.testing.assert_allclose(mm.affine, nifti.affine)
    item = mm[7]
    assert item["label"] == 0 and item["index"] == 7 and item["image"].shape == (1, *SHAPE)
    torch.testing.assert_close(item["image"], nifti[7]["image"])
    again = pickle.loads(pickle.dumps(mm))  # DataLoader workers reopen the map by path
    np.testing.assert_array_equal(again.volumes, mm.volumes)


def test_volumes_follow_the_shard_seeds_whatever_the_batch_size_or_shards_drawn(run, reference):
    model, _, _ = load_run(run, "last", "cpu")
    plan = sample.cycle_labels([1, 0, 0])
    # The memmap holds, per shard k, model.sample(m_k, labels, generator seeded with shard_seed(0, k)).
    volumes = np.load(reference["memmap"] / "volumes.npy")
    for k in range(4):
        start, m = sample.shard_bounds(k, N, SHARD)
        gen = torch.Generator().manual_seed(sample.shard_seed(0, k))
        want = model.sample(m, labels=plan(k, start, m), generator=gen, batch_size=m)
        np.testing.assert_allclose(volumes[start : start + m], want[:, 0].numpy(), atol=1e-6)

    def collect(batch_size: int, shards=None) -> dict[int, torch.Tensor]:
        out = {}
        for start, x, y in sample.sample_batches(
            model, N, labels=plan, shard_size=SHARD, batch_size=batch_size, shards=shards
        ):
            assert x.dtype == torch.float32 and x.device.type == "cpu" and x.shape[1:] == (1, *SHAPE)
            assert y.dtype == torch.int64 and y.tolist() == plan(0, start, len(y)).tolist()
            assert start // SHARD == (start + len(x) - 1) // SHARD  # never across a shard's end
            out.update({start + i: v for i, v in enumerate(x)})
        return out

    one, whole = collect(1), collect(16)
    mixed = collect(2, shards=[3, 1, 0, 2])
    assert sorted(one) == sorted(whole) == sorted(mixed) == list(range(N))
    for i in range(N):
        torch.testing.assert_close(one[i], whole[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(mixed[i], whole[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(volumes[i], whole[i][0].numpy(), atol=1e-6)
    assert model.training is False
    model.train()
    collect(2)
    assert model["generator"].training  # eval mode while generating, restored afterwards
    # Another seed, another set; a shard past the end is an error.
    other = next(sample.sample_batches(model, N, labels=plan, seed=1, shard_size=SHARD))[1]
    assert not torch.allclose(other[0], whole[0], atol=1e-3)
    with pytest.raises(ValueError, match="shard 4 is past the end"):
        next(sample.sample_batches(model, N, labels=plan, shard_size=SHARD, shards=[4]))


def test_the_infinite_set_draws_through_the_same_stream(run):
    model, _, _ = load_run(run, "last", "cpu")
    draw = king.infinite_stream(model, [0.5, 0.5], 4, seed=11)
    endless = sample.sample_batches(
        model, None, labels=sample.weighted_labels([0.5, 0.5], 11), seed=11, shard_size=4, batch_size=4
    )
    for j, (start, x, y) in enumerate(itertools.islice(endless, 3)):
        got_x, got_y = draw()
        assert start == 4 * j
        assert torch.equal(got_y, y) and torch.equal(got_x, x)
    batches = [draw()[1] for _ in range(30)]
    assert 0.35 < torch.cat(batches).float().mean().item() < 0.65
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        sample.weighted_labels([0, 0], 0)


def test_a_rerun_with_other_settings_is_refused(run, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference["memmap"], out)
    for flags, said in (
        (["--seed", "3"], "seed 0 there, 3 here"),
        (["--shard-size", "4"], "shard_size 3 there, 4 here"),
        (["--checkpoint", "best"], "checkpoint 'last' there, 'best' here"),
    ):
        assert sample.main(_argv(run, out, "memmap", *flags)) == 2
        err = capsys.readouterr().err
        assert f"{out} holds another sampling run: {said}" in err and "choose another --out" in err
    assert sample.main(_argv(run, out, "nifti")) == 2
    assert "format 'memmap' there, 'nifti' here" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n 10 there, 9 here"):
        sample.sample_run(run, 9, out, labels=LABELS, shard_size=SHARD, format="memmap", progress=False)
    _same_output(out, reference["memmap"])  # untouched
    with pytest.raises(ValueError, match="format must be one of nifti, nii, memmap"):
        sample.sample_run(run, 2, tmp_path / "x", labels="motor", format="hdf5")
    with pytest.raises(ValueError, match="has not finished"):
        os.remove(out / "index.csv")
        VolumeDataset.from_memmap(out)


def test_per_class_and_uncompressed_nifti(run, tmp_path):
    paths = sample.sample_run(
        run, 2, tmp_path / "a", per_class=True, format="nii", shard_size=3, progress=False
    )
    names = [
        "sample_00000_motor.nii",
        "sample_00001_motor.nii",
        "sample_00002_visual.nii",
        "sample_00003_visual.nii",
    ]
    assert [p.name for p in paths] == names
    ds = VolumeDataset.from_table(tmp_path / "a" / "labels.csv", scale=None, clip=None, trim=False, mask=None)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    got = sample.sample_run(
        run, 2, tmp_path / "b", per_class=True, format="memmap", shard_size=3, progress=False
    )
    assert got == [tmp_path / "b" / "volumes.npy"]
    mm = VolumeDataset.from_memmap(tmp_path / "b")
    assert mm.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(mm.volumes, ds.volumes)


# ---------------------------------------------------------------------- two processes (torchrun, gloo)

_ENTRY = """import sys
import tests.tiny_conditional  # registers the test models
from brainkern.sample import main
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(tmp_path: Path, argv: list[str], stop: int | None = None) -> subprocess.CompletedProcess:
    entry = tmp_path / "entry.py"
    entry.write_text(_ENTRY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop(sample.STOP_ENV, None)
    if stop is not None:
        env[sample.STOP_ENV] = str(stop)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(entry)]
    return subprocess.run([*cmd, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_an_interrupted_two_process_run_resumes_on_two_and_on_one(run, reference, tmp_path):
    out = tmp_path / "two"
    stopped = _torchrun(tmp_path, _argv(run, out, "memmap"), stop=1)
    assert stopped.returncode != 0 and f"{sample.STOP_ENV}=1" in stopped.stderr, stopped.stderr[-3000:]
    # Rank 0 drew shards 0 and 2, rank 1 shards 1 and 3; each stopped after its first.
    assert sorted(p.name for p in (out / ".shards").iterdir()) == ["0.json", "1.json"]
    on_one = tmp_path / "one"
    shutil.copytree(out, on_one)
    finished = _torchrun(tmp_path, _argv(run, out, "memmap"))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "(4 written now, 6 found done)" in finished.stdout
    _same_output(out, reference["memmap"])
    assert sample.main(_argv(run, on_one, "memmap")) == 0
    _same_output(on_one, reference["memmap"])
