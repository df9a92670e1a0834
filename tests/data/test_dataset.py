import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from brainkern.data import Record, VolumeDataset, load_volume, save_volume
from brainkern.data import cache as bk_cache
from brainkern.data.preprocess import grid_centre, resize_affine, resize_volume
from tests.data.helpers import blob_volume, make_table, ras_affine, write_nifti

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
nib = pytest.importorskip("nibabel")


def _records(tmp_path, vols, affines=None, labels=None):
    recs = []
    for i, v in enumerate(vols):
        aff = ras_affine() if affines is None else affines[i]
        p = write_nifti(tmp_path / f"v{i}.nii.gz", v, aff)
        recs.append(Record(p, (labels or ["x", "y"])[i % 2], f"s{i}"))
    return recs


def _world_com(data, affine):
    w = np.clip(data - data.min(), 0, None).astype(np.float64)
    ijk = np.indices(data.shape).reshape(3, -1)
    c = (ijk * w.reshape(1, -1)).sum(1) / w.sum()
    return affine[:3, :3] @ c + affine[:3, 3]


def test_items_and_config(tmp_path):
    ds = VolumeDataset.from_table(make_table(tmp_path), shape=(8, 9, 10))
    item = ds[4]
    x, y = item["image"], item["label"]
    assert x.shape == (1, 8, 9, 10) and x.dtype == torch.float32 and isinstance(y, int) and y == 1
    assert item["index"] == 4 and ds[-1]["index"] == 5
    assert float(x.min()) == pytest.approx(-1.0) and float(x.max()) == pytest.approx(1.0)
    assert ds[-1]["image"].shape == (1, 8, 9, 10)
    ds.transform = lambda it: {**it, "image": it["image"] * 0, "seen": True}
    assert ds[4]["seen"] and float(ds[4]["image"].abs().max()) == 0
    ds.transform = None
    with pytest.raises(IndexError):
        ds[6]
    cfg = ds.config
    json.dumps(cfg)  # recordable in a run
    assert cfg["shape"] == [8, 9, 10] and cfg["scale"] == "[-1,1]" and cfg["clip"] == [0.01, 0.99]
    assert cfg["trim"] is True and cfg["output_shape"] == [8, 9, 10] and cfg["n_volumes"] == 6
    assert np.allclose(cfg["affine"], ds.affine)
    assert ds.mask.shape == (8, 9, 10) and ds.mask.dtype == bool and 0 < ds.mask.mean() < 1


@pytest.mark.parametrize("scale,lo,hi", [("[0,1]", 0.0, 1.0), ((-1, 1), -1.0, 1.0)])
def test_scaling(tmp_path, scale, lo, hi):
    ds = VolumeDataset.from_table(make_table(tmp_path), scale=scale, clip=None, trim=False)
    v = ds.volumes
    assert np.allclose(v.min(axis=(1, 2, 3)), lo) and np.allclose(v.max(axis=(1, 2, 3)), hi)
    raw = VolumeDataset.from_table(make_table(tmp_path), scale=None, clip=None, trim=False, reorient=False)
    np.testing.assert_array_equal(raw.volumes[0], load_volume(tmp_path / "img/a_0.nii.gz").data)
    np.testing.assert_allclose(raw.affine, ras_affine())


def test_quantile_clip(tmp_path):
    vol = blob_volume((12, 12, 12), seed=3)
    vol[6, 6, 6] = 1e6  # an outlier voxel
    recs = _records(tmp_path, [vol, blob_volume((12, 12, 12), seed=4)])
    ds = VolumeDataset(recs, clip=(0.0, 0.99), scale=None, trim=False)
    assert ds.volumes[0].max() == pytest.approx(np.quantile(vol, 0.99))
    assert ds.config["clip"] == [0.0, 0.99]


def test_trim_affine_and_content(tmp_path):
    shape = (16, 14, 12)
    box0 = ((3, 2, 4), (12, 11, 9))
    box1 = ((5, 4, 2), (13, 10, 10))
    affine = ras_affine()
    recs = _records(tmp_path, [blob_volume(shape, 0, box0), blob_volume(shape, 1, box1)], [affine, affine])
    ds = VolumeDataset(recs, scale=None, clip=None, trim=True)
    start, stop = (3, 2, 2), (13, 11, 10)
    assert ds.config["bbox"] == {"start": list(start), "stop": list(stop)}
    assert ds.shape == tuple(b - a for a, b in zip(start, stop, strict=True))
    # voxel 0 of the output is voxel `start` of the input, and the content matches
    np.testing.assert_allclose(ds.affine[:3, 3], affine[:3, :3] @ start + affine[:3, 3])
    src = load_volume(recs[1].path).data
    np.testing.assert_array_equal(ds.volumes[1], src[3:13, 2:11, 2:10])
    # trimming removed only background
    assert src.sum() == pytest.approx(ds.volumes[1].sum(), rel=1e-6)


def test_resize_keeps_field_of_view(tmp_path):
    shape = (20, 18, 16)
    box = ((4, 3, 2), (17, 15, 14))
    affine = ras_affine(zooms=(1.5, 2.0, 2.5), origin=(-10.0, 7.0, 3.0))
    vols = [blob_volume(shape, s, box) for s in (0, 1)]
    recs = _records(tmp_path, vols, [affine, affine])
    out = (9, 11, 7)
    ds = VolumeDataset(recs, shape=out, scale=None, clip=None, trim=True, antialias=False)
    start, stop = np.array(box[0]), np.array(box[1])
    # centre of the output grid = world centre of the data set's bounding box
    np.testing.assert_allclose(
        grid_centre(ds.affine, out), affine[:3, :3] @ ((start + stop - 1) / 2) + affine[:3, 3]
    )
    # outer faces coincide: voxel -1/2 of the output is voxel start - 1/2 of the input
    face_out = ds.affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    face_in = affine @ np.array([*(start - 0.5), 1.0])
    np.testing.assert_allclose(face_out, face_in, atol=1e-9)
    # voxel sizes scale by in/out
    zooms = np.sqrt((ds.affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(zooms, np.array([1.5, 2.0, 2.5]) * (stop - start) / out)
    # the content sits at the same world place: intensity centre of mass within a voxel
    com_in = _world_com(vols[0], affine)
    com_out = _world_com(ds.volumes[0], ds.affine)
    assert np.abs(com_in - com_out).max() < 0.5 * zooms.min()
    # a written output overlays the input in world space
    p = ds.save(torch.from_numpy(np.asarray(ds.volumes[0])), tmp_path / "out" / "o.nii.gz")
    np.testing.assert_allclose(load_volume(p).affine, ds.affine, atol=1e-6)


def test_resize_matches_torch_interpolate():
    x = np.random.default_rng(0).standard_normal((9, 7, 5)).astype(np.float32)
    for out in [(18, 14, 10), (5, 4, 3)]:
        ours = resize_volume(x, out, antialias=False)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(x)[None, None], size=out, mode="trilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    a = resize_affine(ras_affine(), (9, 7, 5), (18, 14, 10))
    np.testing.assert_allclose(grid_centre(a, (18, 14, 10)), grid_centre(ras_affine(), (9, 7, 5)))


def test_reorientation_to_ras(tmp_path):
    vol = blob_volume((10, 12, 8), seed=5, box=((1, 2, 1), (6, 11, 7)))
    ras = ras_affine()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = vol.shape[0] - 1
    las = ras @ flip  # same world positions, x axis stored reversed
    recs = _records(tmp_path, [vol[::-1].copy(), vol], [las, ras])
    ds = VolumeDataset(recs, scale=None, clip=None, trim=False)
    assert ds.config["reorient"] is True
    np.testing.assert_allclose(ds.affine, ras)
    np.testing.assert_array_equal(ds.volumes[0], vol)  # no resampling needed after reorientation
    np.testing.assert_array_equal(ds.volumes[1], vol)


def test_resampling_onto_first_grid(tmp_path):
    vol = blob_volume((10, 12, 8), seed=5)
    shifted = ras_affine(origin=(-20.0 + 2.0, -30.0, -12.0))  # one voxel along x
    recs = _records(tmp_path, [vol, vol], [ras_affine(), shifted])
    ds = VolumeDataset(recs, scale=None, clip=None, trim=False)
    np.testing.assert_allclose(ds.volumes[1][1:], vol[:-1], atol=1e-4)
    with pytest.raises(ValueError, match="differs from the first"):
        VolumeDataset(recs, scale=None, trim=False, resample=False)


def test_mask_from_data_and_from_file(tmp_path):
    shape = (12, 12, 12)
    vols = [blob_volume(shape, s) for s in range(4)]
    recs = _records(tmp_path, vols)
    ds = VolumeDataset(recs, trim=False, mask_fraction=0.5)
    fg = np.mean([v > 0 for v in vols], axis=0) >= 0.5
    np.testing.assert_array_equal(ds.mask, fg)
    np.testing.assert_array_equal(ds.compute_mask([0]), vols[0] > 0)
    m = np.zeros(shape)
    m[2:7, 3:9, 4:10] = 1
    mask_path = write_nifti(tmp_path / "mask.nii", m, ras_affine())
    ds2 = VolumeDataset(recs, trim=False, mask=mask_path)
    np.testing.assert_array_equal(ds2.mask, m > 0)
    assert VolumeDataset(recs, mask=None).mask is None


def test_bad_volume_in_dataset(tmp_path):
    table = make_table(tmp_path)
    bad = blob_volume((12, 14, 10))
    bad[1, 1, 1] = np.nan
    write_nifti(tmp_path / "img" / "b_1.nii.gz", bad)
    with pytest.raises(ValueError, match="b_1.nii.gz: 1 voxel"):
        VolumeDataset.from_table(table)
    ds = VolumeDataset.from_table(table, nan_policy="zero")
    assert np.isfinite(ds.volumes).all()


def _no_nifti_reads(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a NIfTI file was read")

    monkeypatch.setattr(nib, "load", fail)


def test_cache_hit_miss_and_invalidation(tmp_path, monkeypatch):
    table = make_table(tmp_path)
    cache = tmp_path / "cache"
    first = VolumeDataset.from_table(table, shape=(8, 8, 8), cache_dir=cache)
    assert not first.cache_hit and isinstance(first.volumes, np.memmap)
    with monkeypatch.context() as m:
        _no_nifti_reads(m)
        second = VolumeDataset.from_table(table, shape=(8, 8, 8), cache_dir=cache)
    assert second.cache_hit
    np.testing.assert_array_equal(second.volumes, first.volumes)
    np.testing.assert_array_equal(second.mask, first.mask)
    np.testing.assert_allclose(second.affine, first.affine)
    assert second.config == first.config and second.config["cache_key"]
    torch.testing.assert_close(second[3]["image"], first[3]["image"])
    # other settings: a miss
    with monkeypatch.context() as m:
        _no_nifti_reads(m)
        with pytest.raises(ValueError, match="NIfTI file was read"):
            VolumeDataset.from_table(table, shape=(8, 8, 9), cache_dir=cache)
    # touching an input invalidates the entry; the stale entry is pruned
    target = tmp_path / "img" / "a_2.nii.gz"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with monkeypatch.context() as m:
        _no_nifti_reads(m)
        with pytest.raises(ValueError, match="NIfTI file was read"):
            VolumeDataset.from_table(table, shape=(8, 8, 8), cache_dir=cache)
    save_volume(blob_volume((12, 14, 10), seed=42) * 3, ras_affine(), target)  # new content too
    third = VolumeDataset.from_table(table, shape=(8, 8, 8), cache_dir=cache)
    assert not third.cache_hit
    assert not np.array_equal(third.volumes[2], first.volumes[2])
    np.testing.assert_array_equal(third.volumes[0], first.volumes[0])
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and entries[0].startswith("vol-")


def test_cache_concurrent_fill(tmp_path):
    table = make_table(tmp_path, n_per_class=2)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: VolumeDataset.from_table(table, cache_dir=cache), range(2))
    np.testing.assert_array_equal(a.volumes, b.volumes)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".build")] == []
    assert len(list(cache.glob("vol-*"))) == 1
    # the publish step itself: the second build loses and is discarded, the entry stays whole
    key = "k" * 8
    builds = [bk_cache.new_build_dir(cache, key) for _ in range(2)]
    for i, b_dir in enumerate(builds):
        np.save(b_dir / "volumes.npy", np.full((1, 2, 2, 2), i, dtype=np.float32))
        (b_dir / "meta.json").write_text("{}")
    entry = bk_cache.entry_dir(cache, key)
    bk_cache.publish(builds[0], entry)
    bk_cache.publish(builds[1], entry)
    assert not builds[1].exists() and np.load(entry / "volumes.npy").max() == 0


def test_pickle_reopens_memmap(tmp_path):
    ds = VolumeDataset.from_table(make_table(tmp_path), cache_dir=tmp_path / "c")
    blob = pickle.dumps(ds)
    assert len(blob) < ds.volumes.nbytes  # the arrays are not copied into the pickle
    clone = pickle.loads(blob)
    torch.testing.assert_close(clone[2]["image"], ds[2]["image"])
    assert clone.classes == ds.classes


def test_empty_dataset():
    with pytest.raises(ValueError, match="at least one"):
        VolumeDataset([])


def test_4d_inputs_need_an_index(tmp_path):
    series = [
        np.stack([blob_volume((10, 10, 10), seed=10 * i + t) for t in range(3)], axis=-1) for i in range(2)
    ]
    recs = _records(tmp_path, series)
    with pytest.raises(ValueError, match=r"4D with shape \(10, 10, 10, 3\)"):
        VolumeDataset(recs)
    ds = VolumeDataset(recs, index=2, scale=None, clip=None, trim=False)
    np.testing.assert_array_equal(ds.volumes[1], series[1][..., 2])
    assert ds.config["index"] == 2
