import numpy as np
import pytest
import torch

from brainkern.data import Record, SliceDataset, VolumeDataset, read_table
from brainkern.data.slices import central_range
from tests.data.helpers import make_table

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
nib = pytest.importorskip("nibabel")

SHAPE = (12, 14, 10)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two 'sequences' of the same 6 volumes (3 subjects): two scalings, no trimming."""
    table = make_table(tmp_path_factory.mktemp("slices"), shape=SHAPE)
    a = VolumeDataset.from_table(table, scale="[-1,1]", trim=False)
    b = VolumeDataset.from_table(table, scale="[0,1]", clip=None, trim=False)
    assert not np.allclose(a.volumes, b.volumes)
    return table, a, b


@pytest.mark.parametrize("plane,axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_provenance_and_channel_order(pair, plane, axis):
    _, a, b = pair
    ds = SliceDataset([b, a], plane, (0, SHAPE[axis]))
    assert ds.axis == axis and len(ds) == 6 * SHAPE[axis]
    rest = tuple(s for i, s in enumerate(SHAPE) if i != axis)
    for k in (0, 5, len(ds) - 1, 3 * SHAPE[axis] + 2):
        item = ds[k]
        v, s = item["volume"], item["slice"]
        assert (v, s) == (k // SHAPE[axis], k % SHAPE[axis])
        x = item["image"]
        assert x.shape == (2, *rest) and x.dtype == torch.float32
        for c, src in enumerate((b, a)):
            np.testing.assert_array_equal(x[c].numpy(), np.take(src.volumes[v], s, axis=axis))
        assert item["plane"] == plane and item["label"] == int(a.labels[v]) == ds.labels[k]
        assert item["subject"] == a.subjects[v] and item["source"] == (str(b.paths[v]), str(a.paths[v]))
    one = SliceDataset(a, plane, (0, 2))[1]
    assert one["image"].shape == (1, *rest) and one["source"] == str(a.paths[0])


def test_upright_turns_for_display(pair):
    _, a, _ = pair
    raw, up = SliceDataset(a, "axial", (4, 5))[2], SliceDataset(a, "axial", (4, 5), upright=True)[2]
    np.testing.assert_array_equal(up["image"][0].numpy(), np.flipud(raw["image"][0].numpy().T))
    assert up["image"].shape == (1, SHAPE[1], SHAPE[0])


def test_default_central_range_and_errors(pair):
    _, a, _ = pair
    assert central_range(64, 0.5) == (16, 48) and central_range(10, 1.0) == (0, 10)
    assert central_range(5, 0.01) == (2, 3)
    ds = SliceDataset(a)  # sagittal, central half of 12 planes
    assert (ds.plane, ds.start, ds.stop) == ("sagittal", 3, 9) and len(ds) == 6 * 6
    assert set(ds.slice_indices.tolist()) == set(range(3, 9))
    ax = SliceDataset(a, "axial", central=0.8)
    assert (ax.start, ax.stop) == (1, 9)
    for bad in [(-1, 3), (3, 3), (5, 2), (0, 13)]:
        with pytest.raises(ValueError, match="outside"):
            SliceDataset(a, "sagittal", bad)
    with pytest.raises(ValueError, match="central"):
        SliceDataset(a, central=0.0)
    with pytest.raises(ValueError, match="central"):
        SliceDataset(a, central=1.5)
    with pytest.raises(ValueError, match="not both"):
        SliceDataset(a, slices=(0, 2), central=0.5)
    with pytest.raises(ValueError, match="plane"):
        SliceDataset(a, "transverse")
    with pytest.raises(ValueError, match="size"):
        SliceDataset(a, size=0)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_resize(pair):
    _, a, b = pair
    for size in (8, 32):  # down (antialiased) and up
        ds = SliceDataset([a, b], "coronal", size=size)
        x = ds[7]["image"]
        assert x.shape == (2, size, size) and x.dtype == torch.float32 and torch.isfinite(x).all()
        raw = SliceDataset([a, b], "coronal")[7]["image"]
        # a resize keeps the slice's mean roughly and differs between the two sequences
        assert abs(float(x[0].mean() - raw[0].mean())) < 0.15
        assert not torch.allclose(x[0], x[1])
    same = SliceDataset(a, "sagittal", size=None)[0]["image"]
    assert same.shape == (1, 14, 10)


def test_subsets_keep_subjects_apart(pair):
    _, a, b = pair
    ds = SliceDataset([a, b], "axial", size=16)
    train = ds.for_subjects(["s0", "s2"])
    test = ds.for_subjects(["s1"])
    assert set(train.volume_indices.tolist()) == {0, 1, 4, 5} and set(test.volume_indices.tolist()) == {2, 3}
    assert len(train) + len(test) == len(ds)
    assert {train[k]["subject"] for k in range(len(train))} == {"s0", "s2"}
    assert {test[k]["subject"] for k in range(len(test))} == {"s1"}
    sub = ds.subset([3])
    assert sub.size == 16 and len(sub) == ds.stop - ds.start and set(sub.volume_indices.tolist()) == {3}
    np.testing.assert_array_equal(sub.labels, np.full(len(sub), a.labels[3]))
    with pytest.raises(ValueError, match="unknown subjects"):
        ds.for_subjects(["s9"])
    with pytest.raises(ValueError, match="volume indices"):
        ds.subset([6])
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 2, 16, 16) and batch["volume"].tolist() == [0] * 4


def test_mismatched_datasets(pair):
    table, a, _ = pair
    recs = read_table(table)
    with pytest.raises(ValueError, match="volumes"):
        SliceDataset([a, VolumeDataset(recs[:4], scale=None, trim=False)])
    renamed = [Record(r.path, r.label, "x" if i == 2 else r.subject) for i, r in enumerate(recs)]
    with pytest.raises(ValueError, match="volume 2 is subject 'x'"):
        SliceDataset([a, VolumeDataset(renamed, scale=None, trim=False)])
    with pytest.raises(ValueError, match="grid"):
        SliceDataset([a, VolumeDataset(recs, shape=(8, 8, 8), trim=False)])
    with pytest.raises(ValueError, match="at least one"):
        SliceDataset([])
    with pytest.raises(TypeError, match="not a VolumeDataset"):
        SliceDataset([a, np.zeros((6, *SHAPE))])
