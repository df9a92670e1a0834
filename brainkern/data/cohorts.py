"""Embedded cohorts: labelled NIfTI data sets simulated from templates shipped with nilearn.

Nothing here is real patient or task data. Both cohorts are built from real
brain images that nilearn carries inside its package (no download ever):

- the MNI152 2009 (ICBM 152 nonlinear symmetric 09a) T1 template and its grey-
  and white-matter probability maps, 1 mm, skull-stripped;
- the grid of a Neurovault statistical map (``image_10426.nii.gz``: 53 x 63 x 46,
  3 mm), the grid of the fMRI maps in Zhuang et al. (seed 000).

:func:`smri` draws each subject as a smooth random deformation, bias field,
intensity and noise draw of the T1 template; patients additionally carry a
regional grey-matter loss (temporal, hippocampal and frontal) and enlarged
ventricles, both scaled by ``effect``. :func:`fmri` draws task maps whose class
is a set of activation blobs in its own anatomical regions (MNI coordinates),
with per-subject jitter of centres, widths and amplitudes and smooth noise.

Each subject has its own random stream (seeded by ``(seed, class, subject)``), so
a subject's volume does not depend on how many subjects are drawn, and two runs
with the same arguments write the same bytes.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from brainkern.data.io import save_volume
from brainkern.data.preprocess import resize_affine
from brainkern.data.sources import Record, write_table

T1_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM_FILE = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
WM_FILE = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
FMRI_GRID_FILE = "image_10426.nii.gz"
FMRI_SHAPE = (53, 63, 46)

SMRI_CLASSES = ("control", "patient")

# Where each patient loses grey matter: (MNI centre in mm, Gaussian sigma in mm, weight).
# Medial temporal lobe / hippocampus, lateral temporal cortex, dorsolateral prefrontal
# cortex, both hemispheres: the regions most often reported for grey-matter loss in
# schizophrenia and Alzheimer's disease cohorts.
ATROPHY_REGIONS = (
    ((-28.0, -22.0, -14.0), 12.0, 1.0),
    ((28.0, -22.0, -14.0), 12.0, 1.0),
    ((-54.0, -20.0, -10.0), 14.0, 0.8),
    ((54.0, -20.0, -10.0), 14.0, 0.8),
    ((-36.0, 40.0, 24.0), 16.0, 0.7),
    ((36.0, 40.0, 24.0), 16.0, 0.7),
)
# Lateral ventricles: searched for near this MNI point.
VENTRICLE_SEARCH = ((0.0, -10.0, 15.0), 30.0)

# The size of the patient effect at effect=1.0 (calibrated with scripts/calibrate_smri.py).
ATROPHY_AT_1 = 0.42  # fraction of the GM-to-CSF contrast lost at a region's centre
VENTRICLE_AT_1 = 0.26  # radial expansion of the ventricular region (26 % wider)

# fMRI classes: activation blobs (MNI centre in mm, amplitude in t-units).
FMRI_CLASSES: dict[str, tuple[tuple[tuple[float, float, float], float], ...]] = {
    "visual": (
        ((-10.0, -92.0, 2.0), 5.0),
        ((12.0, -90.0, 2.0), 5.0),
        ((-40.0, -78.0, -8.0), 3.5),
        ((42.0, -76.0, -8.0), 3.5),
    ),
    "motor": (((-38.0, -22.0, 58.0), 5.5), ((0.0, -6.0, 60.0), 3.5), ((20.0, -52.0, -22.0), 3.5)),
    "auditory": (((-52.0, -22.0, 8.0), 5.0), ((54.0, -20.0, 8.0), 5.0)),
    "language": (((-48.0, 18.0, 14.0), 5.0), ((-56.0, -44.0, 14.0), 4.5), ((-52.0, -10.0, -8.0), 3.0)),
    "working_memory": (
        ((-42.0, 30.0, 30.0), 4.0),
        ((44.0, 32.0, 30.0), 4.0),
        ((-34.0, -56.0, 46.0), 4.0),
        ((36.0, -56.0, 46.0), 4.0),
    ),
    "default_mode": (
        ((0.0, -54.0, 28.0), 4.5),
        ((0.0, 50.0, -4.0), 4.0),
        ((-46.0, -66.0, 32.0), 3.0),
        ((48.0, -64.0, 32.0), 3.0),
    ),
    "emotion": (((-22.0, -6.0, -18.0), 4.5), ((22.0, -6.0, -18.0), 4.5), ((0.0, 40.0, -16.0), 3.0)),
}
# A weak task-general response every class shares (anterior insula, dorsal ACC), so that
# "is anything active" does not give the class away.
FMRI_SHARED = (((-32.0, 20.0, 2.0), 2.0), ((34.0, 20.0, 2.0), 2.0), ((0.0, 18.0, 40.0), 2.0))


def template_dir() -> Path:
    """The folder of images shipped inside nilearn (``nilearn/datasets/data``), found
    from nilearn's package path without importing nilearn or fetching anything.

    Raises:
        ImportError: nilearn is not installed.
        FileNotFoundError: the installed nilearn lacks one of the template files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded cohorts need nilearn (pip install 'nilearn>=0.10')")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    for name in (T1_FILE, GM_FILE, WM_FILE, FMRI_GRID_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"nilearn's package data lacks {name} (looked in {folder})")
    return folder


def _world_grid(affine: np.ndarray, shape) -> np.ndarray:
    """``(3, D, H, W)`` world coordinates (mm) of every voxel centre."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)


def _blobs(world: np.ndarray, centres, sigmas, amplitudes) -> np.ndarray:
    out = np.zeros(world.shape[1:], dtype=np.float64)
    for c, s, a in zip(centres, sigmas, amplitudes, strict=True):
        d2 = sum((world[k] - c[k]) ** 2 for k in range(3))
        out += a * np.exp(-d2 / (2.0 * s * s))
    return out


@lru_cache(maxsize=16)
def _upsampler(low: int, size: int) -> np.ndarray:
    """``(size, low)`` matrix of 1-D cubic-spline upsampling (scipy ``zoom`` of the identity)."""
    from scipy import ndimage

    return ndimage.zoom(np.eye(low), (size / low, 1.0), order=3, mode="nearest", grid_mode=True)


def _smooth_field(rng: np.random.Generator, n_fields: int, low: int, shape) -> np.ndarray:
    """``n_fields`` smooth random fields ``(n, *shape)``: normal draws on a ``low^3`` control
    grid upsampled with cubic splines.

    The same as ``scipy.ndimage.zoom(ctrl, order=3, grid_mode=True)`` on each field (a
    tensor-product spline is separable), applied as three small matrix products, which is
    about 100x faster than the 3D zoom.
    """
    ctrl = rng.standard_normal((n_fields, low, low, low))
    a, b, c = (_upsampler(low, s) for s in shape)
    return np.einsum("ai,bj,ck,nijk->nabc", a, b, c, ctrl, optimize=True).astype(np.float32)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="vol")


# ----------------------------------------------------------------------------- sMRI


@lru_cache(maxsize=4)
def _smri_templates(shape: tuple[int, int, int]) -> dict:
    """The T1, GM, WM and brain maps on the output grid, plus the atrophy weight and the
    ventricle centre (voxel units)."""
    import nibabel as nib
    from nilearn.image import resample_img, smooth_img

    folder = template_dir()
    t1 = nib.load(str(folder / T1_FILE))
    brain_1mm = np.asarray(t1.dataobj) > 0
    ijk = np.argwhere(brain_1mm)
    lo = t1.affine[:3, :3] @ ijk.min(0) + t1.affine[:3, 3]
    hi = t1.affine[:3, :3] @ ijk.max(0) + t1.affine[:3, 3]
    margin = 4.0
    extent = hi - lo + 2 * margin
    voxel = float(np.max(extent / np.asarray(shape)))
    centre = (lo + hi) / 2.0
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = centre - voxel * (np.asarray(shape) - 1) / 2.0

    # Anti-alias before going from 1 mm to the coarser grid (sigma = (s - 1) / 2 voxels).
    fwhm = max(voxel - 1.0, 0.0) / 2.0 * 2.3548
    maps = {}
    for key, name, scale in (("t1", T1_FILE, 1.0), ("gm", GM_FILE, 1 / 255), ("wm", WM_FILE, 1 / 255)):
        img = nib.load(str(folder / name))
        img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32) * scale, img.affine)
        if fwhm > 0:
            img = smooth_img(img, fwhm)
        out = resample_img(
            img,
            target_affine=affine,
            target_shape=shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
        maps[key] = np.asarray(out.dataobj, dtype=np.float32)
    brain_img = nib.Nifti1Image(brain_1mm.astype(np.float32), t1.affine)
    if fwhm > 0:
        brain_img = smooth_img(brain_img, fwhm)
    brain = resample_img(
        brain_img,
        target_affine=affine,
        target_shape=shape,
        interpolation="linear",
        force_resample=True,
        copy_header=True,
    )
    maps["brain"] = np.asarray(brain.dataobj, dtype=np.float32)
    csf = np.clip(maps["brain"] - maps["gm"] - maps["wm"], 0.0, 1.0)

    world = _world_grid(affine, shape)
    region = _blobs(
        world,
        [c for c, _, _ in ATROPHY_REGIONS],
        [s for _, s, _ in ATROPHY_REGIONS],
        [w for _, _, w in ATROPHY_REGIONS],
    )
    maps["atrophy_weight"] = (np.clip(region, 0, 1) * maps["gm"]).astype(np.float32)
    maps["csf_level"] = float((maps["t1"] * csf).sum() / max(csf.sum(), 1e-6))

    # Ventricle centre: CSF-weighted centroid near the lateral ventricles (1 mm template).
    gm1 = np.asarray(nib.load(str(folder / GM_FILE)).dataobj, dtype=np.float32) / 255
    wm1 = np.asarray(nib.load(str(folder / WM_FILE)).dataobj, dtype=np.float32) / 255
    csf1 = np.clip(brain_1mm - gm1 - wm1, 0, 1)
    pts = np.argwhere(csf1 > 0.5)
    xyz = pts @ t1.affine[:3, :3].T + t1.affine[:3, 3]
    near = np.linalg.norm(xyz - np.asarray(VENTRICLE_SEARCH[0]), axis=1) < VENTRICLE_SEARCH[1]
    v_world = xyz[near].mean(0) if near.any() else np.asarray(VENTRICLE_SEARCH[0])
    inv = np.linalg.inv(affine)
    maps["ventricle_vox"] = inv[:3, :3] @ v_world + inv[:3, 3]
    maps["affine"] = affine
    maps["voxel"] = voxel
    return maps


def _smri_subject(tpl: dict, shape, rng: np.random.Generator, severity: float) -> np.ndarray:
    """One simulated T1 volume (int16-ready intensities, background exactly 0)."""
    from scipy import ndimage

    voxel = tpl["voxel"]
    t1 = tpl["t1"]
    # Natural variation every subject has: grey-matter contrast and ventricle size.
    gm_var = 0.04 * rng.standard_normal()
    vent_var = 0.04 * rng.standard_normal()
    loss = ATROPHY_AT_1 * severity
    img = t1 * (1.0 + gm_var * tpl["gm"]) - loss * tpl["atrophy_weight"] * (t1 - tpl["csf_level"])

    grid = np.indices(shape, dtype=np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    # Global pose and head size: small rotation about z and x, isotropic scale.
    ax, az = np.deg2rad(rng.normal(0.0, 2.0, size=2))
    scale = 1.0 + 0.03 * rng.standard_normal()
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    m = (rz @ rx / scale).astype(np.float32)
    rel = grid - centre.reshape(3, 1, 1, 1)
    coords = np.tensordot(m, rel, axes=1) + centre.reshape(3, 1, 1, 1)
    # Smooth nonlinear deformation: ~3 mm per component on a 5^3 control grid.
    coords += _smooth_field(rng, 3, 5, shape).astype(np.float32) * (3.0 / voxel)
    # Ventricle enlargement: pull sampling points towards the ventricles' centre so the
    # dark region grows by (1 + k); sigma 24 mm keeps it central.
    k = VENTRICLE_AT_1 * severity + vent_var
    vc = tpl["ventricle_vox"].astype(np.float32).reshape(3, 1, 1, 1)
    d = grid - vc
    sig = 24.0 / voxel
    w = np.exp(-(d**2).sum(0) / (2 * sig * sig))
    coords -= (k / (1.0 + k)) * d * w

    out = ndimage.map_coordinates(img, coords, order=1, mode="constant", cval=0.0)
    brain = ndimage.map_coordinates(tpl["brain"], coords, order=1, mode="constant", cval=0.0) > 0.5
    bias = np.exp(0.08 * _smooth_field(rng, 1, 4, shape)[0])
    gain = rng.uniform(3.4, 4.6)  # scanner units: brain intensities of a few hundred
    noise = rng.uniform(0.02, 0.04) * 180.0 * gain
    out = out * bias * gain + noise * rng.standard_normal(shape)
    out = np.where(brain, np.clip(out, 1.0, None), 0.0)
    return out


def smri(
    out_dir: str | os.PathLike,
    *,
    n_per_class: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    effect: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a simulated 2-class structural MRI cohort ("control", "patient").

    Each subject is the MNI152 2009 T1 template (resampled to ``shape``, isotropic
    voxels covering the brain, a proper RAS affine) under a smooth random
    deformation with a small pose and size change, a multiplicative bias field, a
    gain and Gaussian noise inside the brain. Patients also lose grey matter in
    medial/lateral temporal and dorsolateral prefrontal regions (weighted by the GM
    map) and have ventricles enlarged by a radial deformation; both scale with
    ``effect`` times a per-patient severity in [0.6, 1.4]. Controls vary in
    ventricle size and grey-matter contrast too. Volumes are int16 NIfTI (``.nii.gz``),
    background exactly 0.

    At ``effect=1.0`` a standardised linear SVM on brain-masked voxels, 40 subjects
    per class at 32^3, separates the classes clearly above chance but not perfectly
    (see ``scripts/calibrate_smri.py``).

    Args:
        out_dir: output folder (created); volumes go to ``out_dir/images/``.
        n_per_class: subjects per class (>= 1).
        shape: output grid ``(D, H, W)``.
        effect: patient effect size (0 makes the classes indistinguishable).
        seed: random seed.
        progress: show a tqdm bar.

    Returns:
        The labels table ``out_dir/labels.csv`` (columns path, label, subject).

    Raises:
        ValueError: bad ``n_per_class``, ``shape`` or ``effect``.
    """
    shape = _check_shape(shape, minimum=8)
    n_per_class = _check_count(n_per_class)
    if not np.isfinite(effect) or effect < 0:
        raise ValueError(f"effect must be a finite number >= 0, got {effect}")
    tpl = _smri_templates(shape)

    def draw(class_idx: int, rng: np.random.Generator) -> np.ndarray:
        severity = effect * rng.uniform(0.6, 1.4) if class_idx == 1 else 0.0
        return _smri_subject(tpl, shape, rng, severity)

    return _write_cohort(
        Path(out_dir), SMRI_CLASSES, n_per_class, seed, draw, tpl["affine"], np.int16, "smri", progress
    )


# ----------------------------------------------------------------------------- fMRI


def fmri_grid(shape: tuple[int, int, int] = FMRI_SHAPE) -> np.ndarray:
    """The affine of the Neurovault 3 mm grid (53 x 63 x 46), or of ``shape`` covering the
    same field of view."""
    import nibabel as nib

    img = nib.load(str(template_dir() / FMRI_GRID_FILE))
    if tuple(img.shape[:3]) != FMRI_SHAPE:
        raise ValueError(f"{FMRI_GRID_FILE} has shape {img.shape}, expected {FMRI_SHAPE}")
    return resize_affine(np.asarray(img.affine, dtype=np.float64), FMRI_SHAPE, shape)


@lru_cache(maxsize=4)
def _fmri_templates(shape: tuple[int, int, int]) -> dict:
    import nibabel as nib
    from nilearn.image import resample_img

    folder = template_dir()
    affine = fmri_grid(shape)
    t1 = nib.load(str(folder / T1_FILE))
    brain = nib.Nifti1Image((np.asarray(t1.dataobj) > 0).astype(np.float32), t1.affine)
    with warnings.catch_warnings():
        # Linear on purpose: the brain fraction of each 3 mm voxel, thresholded at 1/2.
        warnings.filterwarnings("ignore", message="Resampling binary images")
        brain = resample_img(
            brain,
            target_affine=affine,
            target_shape=shape,
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
    return {
        "affine": affine,
        "mask": np.asarray(brain.dataobj) > 0.5,
        "world": _world_grid(affine, shape),
        "voxel": float(np.sqrt((affine[:3, :3] ** 2).sum(0)).mean()),
    }


def _fmri_subject(tpl: dict, blobs, shape, rng: np.random.Generator, noise_sd: float = 1.0) -> np.ndarray:
    from scipy import ndimage

    spots = list(blobs) + list(FMRI_SHARED)
    centres = [np.asarray(c) + rng.normal(0.0, 4.0, size=3) for c, _ in spots]
    sigmas = [6.0 * float(np.clip(1.0 + 0.15 * rng.standard_normal(), 0.6, 1.6)) for _ in spots]
    amps = [a * float(np.clip(1.0 + 0.25 * rng.standard_normal(), 0.2, 2.0)) for _, a in spots]
    signal = _blobs(tpl["world"], centres, sigmas, amps)
    # Smooth noise: white noise blurred to ~10 mm FWHM, rescaled to unit variance.
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=4.25 / tpl["voxel"], mode="nearest")
    field /= field[tpl["mask"]].std() + 1e-12
    out = signal + rng.uniform(0.8, 1.2) * noise_sd * field
    return np.where(tpl["mask"], out, 0.0)


def fmri(
    out_dir: str | os.PathLike,
    *,
    n_per_class: int,
    n_classes: int = 4,
    shape: tuple[int, int, int] = FMRI_SHAPE,
    seed: int = 0,
    noise: float = 1.0,
    progress: bool = False,
) -> Path:
    """Write a simulated task-map cohort on the Neurovault 53 x 63 x 46, 3 mm grid.

    Class ``k`` is a set of Gaussian activation blobs (t-units) at the MNI
    coordinates of its regions (``FMRI_CLASSES``: visual, motor, auditory,
    language, working_memory, default_mode, emotion), plus a weak response shared
    by all classes. Each map jitters the blob centres (4 mm), widths and
    amplitudes, adds smooth unit-variance noise (~10 mm FWHM) and is masked by the
    brain (MNI152 brain resampled onto the grid with nilearn). Float32 NIfTI.

    Args:
        out_dir: output folder (created); maps go to ``out_dir/maps/``.
        n_per_class: maps per class (>= 1).
        n_classes: how many of the classes above, in that order (2 to 7).
        shape: output grid; another shape covers the same field of view.
        seed: random seed.
        noise: SD of the smooth noise in t-units (1 by default; larger values make the
            classes harder to tell apart: the blobs' amplitudes are 2 to 5.5).
        progress: show a tqdm bar.

    Returns:
        The labels table ``out_dir/labels.csv``.

    Raises:
        ValueError: bad ``n_per_class``, ``n_classes``, ``shape`` or ``noise``.
    """
    shape = _check_shape(shape, minimum=4)
    n_per_class = _check_count(n_per_class)
    names = tuple(FMRI_CLASSES)
    if not 2 <= n_classes <= len(names):
        raise ValueError(f"n_classes must be in [2, {len(names)}], got {n_classes}")
    names = names[:n_classes]
    if not float(noise) > 0:
        raise ValueError(f"noise must be > 0, got {noise}")
    tpl = _fmri_templates(shape)

    def draw(class_idx: int, rng: np.random.Generator) -> np.ndarray:
        return _fmri_subject(tpl, FMRI_CLASSES[names[class_idx]], shape, rng, float(noise))

    return _write_cohort(
        Path(out_dir),
        names,
        n_per_class,
        seed,
        draw,
        tpl["affine"],
        np.float32,
        "fmri",
        progress,
        folder="maps",
    )


# ----------------------------------------------------------------------------- shared


def _check_shape(shape, minimum: int) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError as err:
        raise ValueError(f"shape must be three sizes (D, H, W), got {shape!r}") from err
    if len(out) != 3 or min(out) < minimum:
        raise ValueError(f"shape must be three sizes >= {minimum}, got {shape!r}")
    return out  # type: ignore[return-value]


def _check_count(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"n_per_class must be a positive integer, got {n}")
    return int(n)


def _write_cohort(
    out_dir: Path,
    classes,
    n_per_class: int,
    seed: int,
    draw: Callable[[int, np.random.Generator], np.ndarray],
    affine: np.ndarray,
    dtype,
    kind: str,
    progress: bool,
    folder: str = "images",
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = _progress(len(classes) * n_per_class, f"{kind} cohort", progress)
    subject = 0
    for c, name in enumerate(classes):
        for j in range(n_per_class):
            subject += 1
            sub = f"sub-{subject:04d}"
            rng = np.random.default_rng([seed, c, j, 0 if kind == "smri" else 1])
            vol = draw(c, rng)
            path = save_volume(vol, affine, out_dir / folder / f"{sub}_{name}.nii.gz", dtype=dtype)
            records.append(Record(path=path, label=name, subject=sub))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return write_table(records, out_dir / "labels.csv")
