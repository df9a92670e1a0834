"""The smri cohort's simulated MR sequences (T1, T1c, T2, FLAIR) and tumour-like lesions."""

import gzip
import hashlib

import numpy as np
import pytest

from brainkern.data import cohorts, load_volume
from brainkern.data.__main__ import main

nib = pytest.importorskip("nibabel")
pd = pytest.importorskip("pandas")
pytest.importorskip("scipy")
pytest.importorskip("nilearn")

GRID = (32, 32, 32)
ALL = ("t1", "t1c", "t2", "flair")

# Written by the code before sequences and lesions existed (smri(n_per_class=2, shape=(24,)*3,
# seed=3)): sha256 of each file's uncompressed bytes (NIfTI header + data), so a different zlib
# does not matter. They hold for the template maps fingerprinted below.
TEMPLATE_FINGERPRINT = "18258c947116a11137b65d0e5e734ca8ec671fba5f1e754bac89ea506d291fd1"
REFERENCE = {
    "images/sub-0001_control.nii.gz": "441bf93ae1b27fe37389cf06c33c51c471b982c331ae95c0a757289efd26da76",
    "images/sub-0002_control.nii.gz": "2494f97a5ac54fba53b80a7f92c63d9aee55ece9a853c547bb34d11e3ed055aa",
    "images/sub-0003_patient.nii.gz": "8158e252e24323d748a5052169a8d7f8c4712da785ef1c25bc1366ed1a4c62d3",
    "images/sub-0004_patient.nii.gz": "e258a8632cd9b62a3b945b0546dda4428246540ec6515f37c0c850444a49dc98",
    "labels.csv": "6ab70f7e51e9d04fb11874eb172b0a7decd8d8efa1a0835acbbe369720494b19",
}


def _digests(folder):
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            raw = p.read_bytes()
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(
                gzip.decompress(raw) if p.name.endswith(".gz") else raw
            ).hexdigest()
    return out


def _data(folder, row):
    return np.asarray(load_volume(folder / row).data, dtype=np.float64)


def test_defaults_write_what_they_wrote_before(tmp_path):
    tpl = cohorts._smri_templates((24, 24, 24))
    h = hashlib.sha256()
    for key in ("t1", "gm", "wm", "brain"):
        h.update(np.ascontiguousarray(tpl[key], dtype=np.float32).tobytes())
    if h.hexdigest() != TEMPLATE_FINGERPRINT:
        pytest.skip(
            "this nilearn/scipy resamples the templates differently; the reference hashes do not apply"
        )
    cohorts.smri(tmp_path / "a", n_per_class=2, shape=(24, 24, 24), seed=3)
    assert _digests(tmp_path / "a") == REFERENCE
    # More sequences, or lesions in nobody, leave every T1 file and labels.csv as they were.
    cohorts.smri(tmp_path / "b", n_per_class=2, shape=(24, 24, 24), seed=3, sequences=ALL, lesions=0.0)
    digests = _digests(tmp_path / "b")
    assert {k: digests[k] for k in REFERENCE} == REFERENCE
    assert not (tmp_path / "b" / "masks").exists()


def test_lesions_change_only_the_lesioned_subjects_t1(tmp_path):
    plain = cohorts.smri(tmp_path / "a", n_per_class=3, shape=GRID, seed=5)
    cohorts.smri(tmp_path / "b", n_per_class=3, shape=GRID, seed=5, lesions=0.5)
    rows = pd.read_csv(plain).path
    lesioned = [cohorts.lesion_mask_path(tmp_path / "b" / r) is not None for r in rows]
    assert 0 < sum(lesioned) < len(rows)  # this seed gives some of each
    for row, has in zip(rows, lesioned, strict=True):
        same = (tmp_path / "a" / row).read_bytes() == (tmp_path / "b" / row).read_bytes()
        assert same != has, row


def test_every_sequence_shares_the_table_grid_and_anatomy(tmp_path):
    folder = tmp_path / "c"
    table = cohorts.smri(folder, n_per_class=1, shape=GRID, seed=1, sequences=("t2", "t1", "flair"))
    assert table == cohorts.sequence_table(folder, "t1") == folder / "labels.csv"
    assert cohorts.sequence_table(folder, "t2") == folder / "labels_t2.csv"
    assert not (folder / "labels_t1c.csv").exists()
    main_df = pd.read_csv(table)
    assert main_df.path.tolist() == ["images/sub-0001_control.nii.gz", "images/sub-0002_patient.nii.gz"]
    ref = load_volume(folder / main_df.path[0])
    for seq in ("t2", "flair"):
        df = pd.read_csv(cohorts.sequence_table(folder, seq))
        assert df.subject.tolist() == main_df.subject.tolist() and df.label.tolist() == main_df.label.tolist()
        assert df.path.tolist() == [p.replace(".nii.gz", f"_{seq}.nii.gz") for p in main_df.path]
        vol = load_volume(folder / df.path[0])
        assert vol.header.get_data_dtype() == np.int16 and vol.data.shape == GRID
        np.testing.assert_array_equal(vol.affine, ref.affine)
        # the same pose and deformation: exactly the same brain outline
        np.testing.assert_array_equal(vol.data > 0, ref.data > 0)
        assert not np.array_equal(vol.data, ref.data)


def test_tissue_contrast_of_each_sequence(tmp_path):
    folder = tmp_path / "t"
    cohorts.smri(folder, n_per_class=1, shape=GRID, seed=2, sequences=ALL, effect=0.0)
    tpl = cohorts._smri_templates(GRID)
    masks = {"wm": tpl["wm"] > 0.9, "gm": tpl["gm"] > 0.7, "csf": tpl["csf"] > 0.6}
    assert min(m.sum() for m in masks.values()) >= 20
    order = {"t1": ("wm", "gm", "csf"), "t1c": ("wm", "gm", "csf"), "t2": ("csf", "gm", "wm")}
    order["flair"] = ("gm", "wm", "csf")
    for seq, (hi, mid, lo) in order.items():
        for row in pd.read_csv(cohorts.sequence_table(folder, seq)).path:
            img = _data(folder, row)
            mean = {k: img[m].mean() for k, m in masks.items()}
            # partial volume at 6 mm voxels blurs the contrasts, the order stays
            assert mean[hi] > 1.04 * mean[mid] and mean[mid] > 1.04 * mean[lo], (seq, mean)


def test_lesion_appearance_and_masks(tmp_path):
    folder = tmp_path / "l"
    table = cohorts.smri(folder, n_per_class=1, shape=GRID, seed=4, sequences=ALL, lesions=1.0)
    rows = pd.read_csv(table).path
    assert sorted(p.name for p in (folder / "masks").iterdir()) == [
        "sub-0001_control_lesion.nii.gz",
        "sub-0002_patient_lesion.nii.gz",
    ]
    tpl = cohorts._smri_templates(GRID)
    paths = {seq: pd.read_csv(cohorts.sequence_table(folder, seq)).path for seq in ALL}
    for i, row in enumerate(rows):
        expected = folder / "masks" / row.replace("images/", "").replace(".nii.gz", "_lesion.nii.gz")
        assert all(cohorts.lesion_mask_path(folder / paths[seq][i]) == expected for seq in ALL)
        mask_vol = load_volume(cohorts.lesion_mask_path(folder / row))
        assert mask_vol.header.get_data_dtype() == np.uint8
        mask = np.asarray(mask_vol.data)
        assert set(np.unique(mask)) == {0, 1, 2, 3}
        core_at = np.argwhere(mask == 3).mean(0)
        assert (core_at[0] < GRID[0] / 2 - 1) or (core_at[0] > GRID[0] / 2)  # off the midline
        normal_wm = (tpl["wm"] > 0.9) & (mask == 0)
        rel = {}
        for seq in ALL:
            img = _data(folder, paths[seq][i])
            assert (img[mask > 0] > 0).all()  # the lesion lies in the brain
            wm = img[normal_wm].mean()
            rel[seq] = {k: img[mask == v].mean() / wm for k, v in (("oedema", 1), ("rim", 2), ("core", 3))}
        assert rel["flair"]["oedema"] > 1.3 and rel["t2"]["oedema"] > 1.3  # oedema bright on FLAIR, T2
        assert rel["t1"]["oedema"] < 1.0  # and a little dark on T1
        assert rel["t1c"]["rim"] > 1.2 and rel["t1c"]["rim"] > rel["t1"]["rim"] + 0.3  # enhancing rim
        # the necrotic core: dark on T1 and T1c (inside the bright rim), bright on T2
        assert rel["t1"]["core"] < 0.8 and rel["t1c"]["core"] < min(1.0, rel["t1c"]["rim"] - 0.4)
        assert rel["t2"]["core"] > 1.5


def test_no_lesions_no_masks_and_stale_masks_go(tmp_path):
    folder = tmp_path / "s"
    cohorts.smri(folder, n_per_class=1, shape=(24, 24, 24), seed=0, lesions=1.0)
    assert len(list((folder / "masks").iterdir())) == 2
    table = cohorts.smri(folder, n_per_class=1, shape=(24, 24, 24), seed=0, lesions=0.0)
    assert list((folder / "masks").iterdir()) == []  # a rewrite without lesions leaves none behind
    assert all(cohorts.lesion_mask_path(folder / p) is None for p in pd.read_csv(table).path)


def test_subject_independent_of_cohort_size_and_other_sequences(tmp_path):
    cohorts.smri(tmp_path / "a", n_per_class=1, shape=(24, 24, 24), seed=7, sequences=ALL, lesions=1.0)
    cohorts.smri(tmp_path / "b", n_per_class=2, shape=(24, 24, 24), seed=7, sequences=ALL, lesions=1.0)
    cohorts.smri(tmp_path / "c", n_per_class=1, shape=(24, 24, 24), seed=7, sequences=("t2",), lesions=1.0)
    a, b, c = (_digests(tmp_path / k) for k in "abc")
    files = [k for k in a if k.startswith(("images/sub-0001", "masks/sub-0001"))]
    assert len(files) == 5
    assert all(a[k] == b[k] for k in files)
    assert all(a[k] == c[k] for k in files if k in c) and "images/sub-0001_control_t2.nii.gz" in c


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sequences": "t2"}, "sequences"),
        ({"sequences": ("t1", "t1")}, "sequences"),
        ({"sequences": ("t1", "pd")}, "sequences"),
        ({"sequences": ()}, "sequences"),
        ({"lesions": -0.1}, "lesions"),
        ({"lesions": 1.5}, "lesions"),
        ({"lesions": float("nan")}, "lesions"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cohorts.smri(tmp_path, n_per_class=1, shape=(16, 16, 16), **kwargs)
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_sequence_table_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="sequence must be one of"):
        cohorts.sequence_table(tmp_path, "T2")


def test_cli_sequences_and_lesions(tmp_path, capsys):
    args = ["make-cohort", "smri", "--out", str(tmp_path / "cli"), "--n-per-class", "1"]
    args += ["--shape", "16", "16", "16", "--seed", "3", "--quiet", "--sequences", "t1", "flair"]
    assert main([*args, "--lesions", "1"]) == 0
    ref = cohorts.smri(
        tmp_path / "api", n_per_class=1, shape=(16, 16, 16), seed=3, sequences=("flair",), lesions=1
    )
    assert _digests(tmp_path / "cli") == _digests(ref.parent)
    assert "labels_flair.csv" in _digests(ref.parent)
    with pytest.raises(SystemExit):
        main([*args, "--lesions", "1.5"])
    with pytest.raises(SystemExit):
        main(["make-cohort", "fmri", "--out", str(tmp_path / "f"), "--sequences", "t2"])
    capsys.readouterr()
    assert main([*args[:-3], "--sequences", "t2", "t2"]) == 2  # duplicates: a clear error, no traceback
    assert "sequences must be distinct" in capsys.readouterr().err
