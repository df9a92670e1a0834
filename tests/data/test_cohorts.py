import subprocess
import sys

import numpy as np
import pytest

from brainkern.data import VolumeDataset, cohorts, load_volume
from brainkern.data.__main__ import main
from brainkern.data.preprocess import grid_centre

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
nib = pytest.importorskip("nibabel")
pd = pytest.importorskip("pandas")

SMALL = (16, 16, 16)


def _bytes(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_smri_table_determinism_and_geometry(tmp_path):
    a = cohorts.smri(tmp_path / "a", n_per_class=2, shape=SMALL, seed=3)
    cohorts.smri(tmp_path / "b", n_per_class=2, shape=SMALL, seed=3)
    assert a == tmp_path / "a" / "labels.csv"
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")  # same bytes twice
    cohorts.smri(tmp_path / "c", n_per_class=2, shape=SMALL, seed=4)
    assert (
        _bytes(tmp_path / "a")["images/sub-0001_control.nii.gz"]
        != _bytes(tmp_path / "c")["images/sub-0001_control.nii.gz"]
    )
    df = pd.read_csv(a)
    assert list(df.columns) == ["path", "label", "subject"]
    assert df.label.tolist() == ["control", "control", "patient", "patient"]
    assert df.subject.is_unique
    vol = load_volume(tmp_path / "a" / df.path[0])
    assert vol.data.shape == SMALL and vol.header.get_data_dtype() == np.int16
    assert vol.data[0, 0, 0] == 0 and vol.data.max() > 100  # background 0, brain in scanner units
    zooms = vol.zooms
    assert np.allclose(zooms, zooms[0]) and 8 < zooms[0] < 14  # isotropic, brain field of view
    assert np.allclose(vol.affine[:3, :3], np.diag(zooms))  # RAS
    assert (
        np.linalg.norm(grid_centre(vol.affine, SMALL) - np.array([0.0, -18.0, 6.0])) < 15
    )  # MNI brain centre
    ds = VolumeDataset.from_table(a)
    assert ds.classes == ["control", "patient"] and len(ds) == 4


def test_smri_subject_does_not_depend_on_cohort_size(tmp_path):
    cohorts.smri(tmp_path / "a", n_per_class=1, shape=SMALL, seed=0)
    cohorts.smri(tmp_path / "b", n_per_class=3, shape=SMALL, seed=0)
    name = "images/sub-0001_control.nii.gz"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_smri_patient_effect_is_regional():
    shape = (64, 64, 64)
    tpl = cohorts._smri_templates(shape)
    region = tpl["atrophy_weight"] > 0.3
    far = (tpl["atrophy_weight"] < 0.01) & (tpl["brain"] > 0.9)
    dist = (
        np.sqrt(((np.indices(shape) - tpl["ventricle_vox"].reshape(3, 1, 1, 1)) ** 2).sum(0)) * tpl["voxel"]
    )
    near = dist < 25.0
    for seed in (0, 1):
        # the same random stream: the same deformation, bias and noise; only the effect differs
        control = cohorts._smri_subject(tpl, shape, np.random.default_rng(seed), severity=0.0)
        patient = cohorts._smri_subject(tpl, shape, np.random.default_rng(seed), severity=1.0)
        drop_region = 1 - patient[region].mean() / control[region].mean()
        drop_far = abs(1 - patient[far].mean() / control[far].mean())
        assert drop_region > 0.02 and drop_far < 0.01  # grey matter loss where it should be
        dark = 0.6 * np.median(control[control > 0])
        n_control = ((control > 0) & (control < dark) & near).sum()
        n_patient = ((patient > 0) & (patient < dark) & near).sum()
        assert n_patient > 1.05 * n_control  # larger ventricles


def test_fmri_grid_and_classes(tmp_path):
    table = cohorts.fmri(tmp_path / "f", n_per_class=2, n_classes=3, seed=1)
    df = pd.read_csv(table)
    assert df.label.tolist() == ["visual"] * 2 + ["motor"] * 2 + ["auditory"] * 2
    ref = nib.load(str(cohorts.template_dir() / cohorts.FMRI_GRID_FILE))
    vols = [load_volume(tmp_path / "f" / p) for p in df.path]
    for v in vols:
        assert v.data.shape == (53, 63, 46)
        np.testing.assert_allclose(v.affine, ref.affine, atol=1e-5)
        assert v.data[0, 0, 0] == 0 and np.abs(v.data).max() > 2
    # each map is closest to its own class's noise-free pattern (nearest template)
    world = cohorts._world_grid(ref.affine, (53, 63, 46))
    patterns = [
        cohorts._blobs(world, [c for c, _ in spots], [6.0] * len(spots), [a for _, a in spots]).ravel()
        for spots in (cohorts.FMRI_CLASSES[n] for n in ("visual", "motor", "auditory"))
    ]
    for j, v in enumerate(vols):
        scores = [np.corrcoef(v.data.ravel(), p)[0, 1] for p in patterns]
        assert int(np.argmax(scores)) == j // 2, scores
    again = cohorts.fmri(tmp_path / "g", n_per_class=2, n_classes=3, seed=1)
    assert _bytes(table.parent) == _bytes(again.parent)


def test_fmri_other_shape_keeps_field_of_view(tmp_path):
    table = cohorts.fmri(tmp_path / "f", n_per_class=1, n_classes=2, shape=SMALL)
    v = load_volume(tmp_path / "f" / pd.read_csv(table).path[0])
    assert v.data.shape == SMALL
    np.testing.assert_allclose(grid_centre(v.affine, SMALL), grid_centre(cohorts.fmri_grid(), (53, 63, 46)))


def test_fmri_noise_scales_only_the_noise(tmp_path):
    """``noise`` multiplies the smooth noise field: the same draw, so the difference between
    two noise levels is the noise itself, and the default (1) is the cohort as before."""
    maps = {}
    for noise in (1.0, 3.0):
        table = cohorts.fmri(tmp_path / f"n{noise}", n_per_class=1, n_classes=2, shape=SMALL, noise=noise)
        maps[noise] = np.stack([load_volume(table.parent / p).data for p in pd.read_csv(table).path])
    default = cohorts.fmri(tmp_path / "d", n_per_class=1, n_classes=2, shape=SMALL)
    assert _bytes(default.parent) == _bytes(tmp_path / "n1.0")
    signal = 1.5 * maps[1.0] - 0.5 * maps[3.0]  # signal + k*field and signal + 3k*field
    assert np.abs(maps[3.0] - signal).std() > 2.5 * np.abs(maps[1.0] - signal).std()


def test_cohort_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="n_per_class"):
        cohorts.smri(tmp_path, n_per_class=0)
    with pytest.raises(ValueError, match="effect"):
        cohorts.smri(tmp_path, n_per_class=1, effect=-1)
    with pytest.raises(ValueError, match="n_classes"):
        cohorts.fmri(tmp_path, n_per_class=1, n_classes=8)
    with pytest.raises(ValueError, match="noise"):
        cohorts.fmri(tmp_path, n_per_class=1, noise=0)
    with pytest.raises(ValueError, match="shape"):
        cohorts.smri(tmp_path, n_per_class=1, shape=(16, 16))


def test_make_cohort_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "make-cohort",
            "smri",
            "--out",
            str(out),
            "--n-per-class",
            "2",
            "--shape",
            "16",
            "16",
            "16",
            "--seed",
            "3",
            "--effect",
            "1.5",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "labels.csv" in capsys.readouterr().out
    ref = cohorts.smri(tmp_path / "api", n_per_class=2, shape=SMALL, seed=3, effect=1.5)
    assert _bytes(out) == _bytes(ref.parent)
    rc = main(
        [
            "make-cohort",
            "fmri",
            "--out",
            str(tmp_path / "f"),
            "--n-per-class",
            "1",
            "--n-classes",
            "2",
            "--shape",
            "12",
            "14",
            "10",
        ]
    )
    assert rc == 0 and len(pd.read_csv(tmp_path / "f" / "labels.csv")) == 2
    with pytest.raises(SystemExit):
        main(["make-cohort", "fmri", "--out", str(tmp_path / "x"), "--effect", "2"])
    with pytest.raises(SystemExit):
        main(["make-cohort", "smri", "--out", str(tmp_path / "x"), "--n-per-class", "0"])


def test_cli_help_is_fast_and_light():
    code = (
        "import sys; from brainkern.data.__main__ import build_parser; build_parser(); "
        "print(any(m in sys.modules for m in ('nilearn', 'scipy', 'nibabel', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
