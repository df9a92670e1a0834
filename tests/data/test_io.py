import gzip

import numpy as np
import pytest
import torch

from brainkern.data import load_volume, save_volume
from tests.data.helpers import blob_volume, ras_affine, write_nifti

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
nib = pytest.importorskip("nibabel")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_numpy(tmp_path, suffix):
    data = blob_volume((7, 5, 3), seed=1)
    affine = ras_affine()
    affine[0, 1] = 0.3  # a shear survives through the sform
    path = save_volume(data, affine, tmp_path / "deep" / "er" / f"v{suffix}")
    vol = load_volume(path)
    assert vol.data.dtype == np.float32 and vol.data.shape == (7, 5, 3)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.affine.dtype == np.float64
    assert vol.header.get_data_dtype() == np.float32
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


@pytest.mark.parametrize("shape", [(6, 5, 4), (1, 6, 5, 4)])
def test_round_trip_torch(tmp_path, shape):
    x = torch.randn(*shape, dtype=torch.float64)
    path = save_volume(x, torch.from_numpy(ras_affine()), tmp_path / "t.nii.gz")
    vol = load_volume(path)
    np.testing.assert_allclose(vol.data, x.reshape(6, 5, 4).numpy().astype(np.float32))
    np.testing.assert_allclose(vol.affine, ras_affine(), atol=1e-6)


def test_integer_and_scaled_data_come_out_float32(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    p_int = write_nifti(tmp_path / "i.nii", raw, dtype=np.int16)
    p_scaled = write_nifti(tmp_path / "s.nii.gz", raw, dtype=np.int16, slope=0.5, inter=-3.0)
    v = load_volume(p_int)
    assert v.data.dtype == np.float32
    np.testing.assert_array_equal(v.data, raw.astype(np.float32))
    s = load_volume(p_scaled)
    assert s.data.dtype == np.float32
    np.testing.assert_allclose(s.data, raw * 0.5 - 3.0)


def test_4d_needs_index(tmp_path):
    series = np.stack([blob_volume((5, 6, 7), seed=i) for i in range(3)], axis=-1)
    path = write_nifti(tmp_path / "bold.nii.gz", series)
    with pytest.raises(ValueError, match=r"4D with shape \(5, 6, 7, 3\)") as err:
        load_volume(path)
    assert str(path) in str(err.value)
    np.testing.assert_array_equal(load_volume(path, index=2).data, series[..., 2])
    np.testing.assert_array_equal(load_volume(path, index=-1).data, series[..., 2])
    with pytest.raises(ValueError, match="out of range"):
        load_volume(path, index=3)
    # a 4D file holding a single volume is a 3D volume
    single = write_nifti(tmp_path / "one.nii", series[..., :1])
    assert load_volume(single).data.shape == (5, 6, 7)


def test_nan_policy(tmp_path):
    data = blob_volume((5, 5, 5))
    data[0, 0, 0] = np.nan
    data[1, 2, 3] = np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(ValueError, match="2 voxel") as err:
        load_volume(path)
    assert str(path) in str(err.value)
    vol = load_volume(path, nan_policy="zero")
    assert vol.data[0, 0, 0] == 0 and vol.data[1, 2, 3] == 0 and np.isfinite(vol.data).all()
    with pytest.raises(ValueError, match="nan_policy"):
        load_volume(path, nan_policy="ignore")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        load_volume(path)


def test_corrupt_files(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not gzip data at all" * 10)
    with pytest.raises(ValueError, match="garbage.nii.gz"):
        load_volume(garbage)
    text = tmp_path / "text.nii"
    text.write_text("hello\n" * 100)
    with pytest.raises(ValueError, match="text.nii"):
        load_volume(text)
    # a valid header followed by truncated data
    good = write_nifti(tmp_path / "good.nii.gz", blob_volume((20, 20, 20)))
    blob = gzip.decompress(good.read_bytes())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(blob[: len(blob) // 2]))
    with pytest.raises(ValueError, match="truncated.nii.gz"):
        load_volume(truncated)
    # another format nibabel can read is not NIfTI
    mgh = tmp_path / "vol.mgz"
    nib.save(nib.MGHImage(blob_volume((4, 4, 4)), np.eye(4)), str(mgh))
    with pytest.raises(ValueError, match="not a NIfTI"):
        load_volume(mgh)


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        save_volume(np.zeros((2, 3, 4, 5)), np.eye(4), tmp_path / "x.nii")
    with pytest.raises(ValueError, match="affine"):
        save_volume(np.zeros((3, 4, 5)), np.eye(3), tmp_path / "x.nii")
    with pytest.raises(ValueError, match=".nii"):
        save_volume(np.zeros((3, 4, 5)), np.eye(4), tmp_path / "x.npy")
    with pytest.raises(ValueError, match="NaN"):
        save_volume(np.full((3, 4, 5), np.nan), np.eye(4), tmp_path / "x.nii")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = save_volume(np.ones((3, 4, 5)), np.eye(4), tmp_path / "v.nii.gz")
    before = path.read_bytes()

    def broken_save(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_volume(np.zeros((3, 4, 5)), np.eye(4), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    # mkstemp makes owner-only files; volumes, checkpoints and pictures must not stay so.
    import os
    import stat

    from brainkern.data.io import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.bin").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o644
