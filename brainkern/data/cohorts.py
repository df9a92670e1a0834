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

:func:`smri` can also write T2, FLAIR and contrast-enhanced T1 (T1c) volumes of the
same subjects (the four sequences of Han et al., seed 002), built from the GM, WM and
CSF maps with each sequence's approximate tissue contrast, and give a fraction of
subjects a simulated tumour-like lesion (necrotic core, enhancing rim, oedema) with
its label map. These contrasts are rough textbook orderings, not a physical (Bloch)
simulation.

Each subject has its own random stream (seeded by ``(seed, class, subject)``), so
a subject's volume does not depend on how many subjects are drawn, and two runs
with the same arguments write the same bytes.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable, Sequence
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

# MR sequences of the smri cohort, in Han et al.'s order. T1 is the template image itself;
# the others are built from the tissue maps.
SMRI_SEQUENCES = ("t1", "t1c", "t2", "flair")
# Approximate signal of (CSF, GM, WM) in each tissue-map sequence, as a multiple of the
# template's T1 white-matter level (so every sequence lands in the same scanner-unit range).
# T1c keeps T1's ordering (WM > GM > CSF, ratios measured on the template); T2 has CSF
# brightest, then GM, then WM; FLAIR nulls free water (CSF dark) and keeps GM above WM.
SEQUENCE_TISSUE = {
    "t1c": (0.37, 0.74, 1.0),
    "t2": (1.25, 0.62, 0.46),
    "flair": (0.15, 0.82, 0.58),
}
# Gadolinium in pial vessels: T1c brightens the GM/CSF boundary (peak of 4 * gm * csf).
T1C_VESSELS = 0.15
# Approximate lesion signal (oedema, enhancing rim, necrotic core) as a multiple of the same
# sequence's normal WM signal: the core is fluid (dark on T1/T1c, bright on T2), the rim
# takes up contrast (bright on T1c only), oedema is water (bright on T2 and FLAIR, a little
# dark on T1).
LESION_SIGNAL = {
    "t1": (0.82, 0.9, 0.45),
    "t1c": (0.82, 1.5, 0.45),
    "t2": (1.9, 1.5, 2.5),
    "flair": (2.0, 1.6, 0.9),
}
LESION_LABELS = ("none", "oedema", "rim", "core")  # values 0..3 of a lesion mask
LESION_RADIUS_MM = (6.0, 15.0)  # tumour (rim's outer edge) radius
LESION_OEDEMA_MM = (4.0, 15.0)  # oedema beyond the tumour

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
    maps["csf"] = csf
    # T1 of white matter, the unit of the simulated sequences' signals; the fourth power of
    # the WM map weights it towards pure WM, away from partial-volume edges.
    wm4 = maps["wm"] ** 4
    maps["wm_level"] = float((maps["t1"] * wm4).sum() / max(wm4.sum(), 1e-6))

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


def _sample(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)


def _smri_anatomy(tpl: dict, shape, rng: np.random.Generator, severity: float) -> dict:
    """The draws every sequence of one subject shares: grey-matter contrast, GM loss, and the
    sampling coordinates ``(3, D, H, W)`` of pose, deformation and ventricle change, plus
    the subject's brain mask."""
    voxel = tpl["voxel"]
    # Natural variation every subject has: grey-matter contrast and ventricle size.
    gm_var = 0.04 * rng.standard_normal()
    vent_var = 0.04 * rng.standard_normal()

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
    brain = _sample(tpl["brain"], coords) > 0.5
    return {"gm_var": gm_var, "loss": ATROPHY_AT_1 * severity, "coords": coords, "brain": brain}


def _tissue_change(tpl: dict, image: np.ndarray, csf_level: float, anatomy: dict) -> np.ndarray:
    """The subject's grey-matter contrast and the patient's regional GM loss (towards CSF)
    applied to a template-space image of any sequence."""
    return image * (1.0 + anatomy["gm_var"] * tpl["gm"]) - anatomy["loss"] * tpl["atrophy_weight"] * (
        image - csf_level
    )


def _scanner(image: np.ndarray, brain: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    """One acquisition of a sampled image: bias field, gain and noise; background exactly 0."""
    bias = np.exp(0.08 * _smooth_field(rng, 1, 4, shape)[0])
    gain = rng.uniform(3.4, 4.6)  # scanner units: brain intensities of a few hundred
    noise = rng.uniform(0.02, 0.04) * 180.0 * gain
    out = image * bias * gain + noise * rng.standard_normal(shape)
    return np.where(brain, np.clip(out, 1.0, None), 0.0)


def _smri_subject(tpl: dict, shape, rng: np.random.Generator, severity: float) -> np.ndarray:
    """One simulated T1 volume (int16-ready intensities, background exactly 0)."""
    return _smri_volumes(tpl, shape, rng, severity)["t1"]


def _smri_lesion(tpl: dict, shape, rng: np.random.Generator, anatomy: dict) -> dict:
    """A tumour-like lesion on the subject's grid, in one hemisphere's white matter.

    The tumour is a ball whose radius is modulated by a smooth random field (irregular
    outline): a necrotic core inside an enhancing rim; oedema reaches a further 4-15 mm,
    further along white matter than into cortex, and stops at the brain's edge. Each part
    is at least a voxel thick so coarse grids still show all three.

    Returns:
        ``labels`` (uint8 ``(D, H, W)``: 0 none, 1 oedema, 2 rim, 3 core), ``weights`` (the
        three parts' partial-volume fractions, each ``(D, H, W)``) and ``texture`` (a smooth
        multiplicative heterogeneity of the lesion's signal).
    """
    from scipy import ndimage

    voxel = tpl["voxel"]
    brain = anatomy["brain"]
    wm = _sample(tpl["wm"], anatomy["coords"])
    radius = rng.uniform(*LESION_RADIUS_MM)
    core = radius * rng.uniform(0.4, 0.65)
    radius = max(radius, core + voxel)
    oedema = max(rng.uniform(*LESION_OEDEMA_MM), voxel)
    left = rng.random() < 0.5
    # The MNI midline is world x = 0; the grid's affine is diagonal (RAS).
    x = tpl["affine"][0, 0] * np.arange(shape[0]) + tpl["affine"][0, 3]
    side = ((x < -voxel) if left else (x > voxel))[:, None, None]
    depth = ndimage.distance_transform_edt(brain) * voxel
    for ok in (side & (wm > 0.7) & (depth > radius), side & brain, brain):
        if ok.any():
            break
    candidates = np.argwhere(ok)
    centre = candidates[rng.integers(len(candidates))].astype(np.float32)
    # Irregularity on a ~15 mm control grid (lesion-sized lumps), in units of its own SD.
    low = int(np.clip(round(voxel * max(shape) / 15.0), 4, 16))
    fields = _smooth_field(rng, 3, low, shape)
    fields /= fields.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    dist = np.sqrt(((np.indices(shape, dtype=np.float32) - centre.reshape(3, 1, 1, 1)) ** 2).sum(0)) * voxel
    q = dist / np.clip(1.0 + 0.25 * fields[0], 0.5, 1.5)
    reach = radius + oedema * np.clip(1.0 + 0.45 * fields[1], 0.2, 1.9) * (0.4 + 0.8 * wm)

    def inside(d: np.ndarray, edge) -> np.ndarray:  # a one-voxel-wide partial-volume edge
        return np.clip(0.5 + (edge - d) / voxel, 0.0, 1.0) * brain

    w_core = inside(q, core)
    w_tumour = inside(q, radius)
    w_all = np.maximum(inside(dist, reach), w_tumour)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[w_all >= 0.5] = 1
    labels[w_tumour >= 0.5] = 2
    labels[w_core >= 0.5] = 3
    return {
        "labels": labels,
        "weights": (w_all - w_tumour, w_tumour - w_core, w_core),
        "texture": 1.0 + 0.08 * fields[2],
    }


def _with_lesion(image: np.ndarray, lesion: dict | None, sequence: str, wm_level: float) -> np.ndarray:
    """``image`` with the lesion's parts blended in at ``LESION_SIGNAL`` times the sequence's
    WM level."""
    if lesion is None:
        return image
    w = lesion["weights"]
    signal = sum(level * part for level, part in zip(LESION_SIGNAL[sequence], w, strict=True))
    return image * (1.0 - sum(w)) + wm_level * lesion["texture"] * signal


def _smri_volumes(
    tpl: dict,
    shape,
    rng: np.random.Generator,
    severity: float,
    sequences: tuple[str, ...] = ("t1",),
    lesion_rng: np.random.Generator | None = None,
    lesions: float = 0.0,
    sequence_rng: Callable[[str], np.random.Generator] | None = None,
) -> dict[str, np.ndarray]:
    """One subject in each sequence (T1 always), plus ``"lesion"`` (its label map) when the
    subject drew a lesion. ``rng`` alone draws the anatomy and the T1 acquisition, exactly
    as before sequences existed; the lesion and the other sequences' acquisitions come
    from their own streams."""
    anatomy = _smri_anatomy(tpl, shape, rng, severity)
    lesion = None
    if lesion_rng is not None and lesion_rng.random() < lesions:
        lesion = _smri_lesion(tpl, shape, lesion_rng, anatomy)
    brain, coords = anatomy["brain"], anatomy["coords"]
    t1 = _sample(_tissue_change(tpl, tpl["t1"], tpl["csf_level"], anatomy), coords)
    out = {"t1": _scanner(_with_lesion(t1, lesion, "t1", tpl["wm_level"]), brain, shape, rng)}
    for name in sequences:
        if name == "t1":
            continue
        if sequence_rng is None:
            raise ValueError(f"sequence {name!r} needs its own random stream (sequence_rng)")
        csf_level, gm_level, wm_level = (tpl["wm_level"] * v for v in SEQUENCE_TISSUE[name])
        image = csf_level * tpl["csf"] + gm_level * tpl["gm"] + wm_level * tpl["wm"]
        if name == "t1c":
            image = image + T1C_VESSELS * tpl["wm_level"] * 4.0 * tpl["gm"] * tpl["csf"]
        image = _sample(_tissue_change(tpl, image, csf_level, anatomy), coords)
        out[name] = _scanner(_with_lesion(image, lesion, name, wm_level), brain, shape, sequence_rng(name))
    if lesion is not None:
        out["lesion"] = lesion["labels"]
    return out


def _check_sequences(sequences) -> tuple[str, ...]:
    if isinstance(sequences, str):
        raise ValueError(
            f"sequences must be a list of names from {SMRI_SEQUENCES}, got the string {sequences!r}"
        )
    names = tuple(sequences)
    unknown = [s for s in names if s not in SMRI_SEQUENCES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"sequences must be distinct names from {SMRI_SEQUENCES}, at least one, got {list(names)}"
        )
    return names


def sequence_table(out_dir: str | os.PathLike, sequence: str) -> Path:
    """The labels table of one sequence of an smri cohort written to ``out_dir``:
    ``labels.csv`` for T1 (the cohort's main table), ``labels_<sequence>.csv`` otherwise.
    All tables list the same subjects, labels and order.

    Raises:
        ValueError: ``sequence`` is not one of ``SMRI_SEQUENCES``.
    """
    if sequence not in SMRI_SEQUENCES:
        raise ValueError(f"sequence must be one of {SMRI_SEQUENCES}, got {sequence!r}")
    return Path(out_dir) / ("labels.csv" if sequence == "t1" else f"labels_{sequence}.csv")


def lesion_mask_path(image: str | os.PathLike) -> Path | None:
    """The lesion label map of the subject of an smri image (any sequence: a path from any
    of the cohort's tables), or None when that subject has no lesion.

    The map is ``masks/<sub>_<class>_lesion.nii.gz`` beside ``images/``: uint8, 0 none,
    1 oedema, 2 enhancing rim, 3 necrotic core (``LESION_LABELS``), on the images' grid.
    """
    image = Path(image)
    stem = image.name.removesuffix(".gz").removesuffix(".nii")
    for name in SMRI_SEQUENCES[1:]:
        stem = stem.removesuffix(f"_{name}")
    mask = image.parent.parent / "masks" / f"{stem}_lesion.nii.gz"
    return mask if mask.is_file() else None


def smri(
    out_dir: str | os.PathLike,
    *,
    n_per_class: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    effect: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    sequences: Sequence[str] = ("t1",),
    lesions: float = 0.0,
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

    Other MR sequences (Han et al., seed 002: T1, T1c, T2, FLAIR) are simulated, not
    acquired: each is the template's GM, WM and CSF maps weighted by that sequence's
    approximate tissue signal (``SEQUENCE_TISSUE``: T2 CSF > GM > WM, FLAIR GM > WM > CSF,
    T1c like T1 with enhancing pial vessels), under the same subject's pose, deformation,
    ventricle change and GM loss as its T1, with its own bias field, gain and noise. A
    lesion (in a fraction ``lesions`` of subjects, drawn per subject whatever its class) is
    a tumour-like region in one hemisphere's white matter: an irregular ball of radius
    6-15 mm with a necrotic core and an enhancing rim, and 4-15 mm of oedema around it,
    shown in every sequence with approximate signals (``LESION_SIGNAL``: core dark on
    T1/T1c and bright on T2, rim bright on T1c only, oedema bright on T2/FLAIR and a
    little dark on T1). With the defaults the output is byte for byte what it was before
    sequences and lesions existed; adding sequences never changes T1, and lesions change
    only the lesioned subjects' T1.

    Args:
        out_dir: output folder (created); volumes go to ``out_dir/images/``.
        n_per_class: subjects per class (>= 1).
        shape: output grid ``(D, H, W)``.
        effect: patient effect size (0 makes the classes indistinguishable).
        seed: random seed.
        progress: show a tqdm bar.
        sequences: distinct names from ``("t1", "t1c", "t2", "flair")``. T1 is always
            written (``images/<sub>_<class>.nii.gz``, ``labels.csv``); every other one as
            ``images/<sub>_<class>_<sequence>.nii.gz`` with its table
            ``labels_<sequence>.csv`` (same rows; see :func:`sequence_table`).
        lesions: fraction in [0, 1] of subjects with a lesion; each lesion's label map goes
            to ``masks/<sub>_<class>_lesion.nii.gz`` (see :func:`lesion_mask_path`).

    Returns:
        The labels table ``out_dir/labels.csv`` (columns path, label, subject).

    Raises:
        ValueError: bad ``n_per_class``, ``shape``, ``effect``, ``sequences`` or ``lesions``.
    """
    shape = _check_shape(shape, minimum=8)
    n_per_class = _check_count(n_per_class)
    if not np.isfinite(effect) or effect < 0:
        raise ValueError(f"effect must be a finite number >= 0, got {effect}")
    names = _check_sequences(sequences)
    if not 0.0 <= float(lesions) <= 1.0:
        raise ValueError(f"lesions must be a fraction in [0, 1], got {lesions}")
    extra = tuple(s for s in names if s != "t1")
    tpl = _smri_templates(shape)

    def draw(class_idx: int, stream: Callable[..., np.random.Generator]) -> dict[str, np.ndarray]:
        rng = stream(0)
        severity = effect * rng.uniform(0.6, 1.4) if class_idx == 1 else 0.0
        return _smri_volumes(
            tpl,
            shape,
            rng,
            severity,
            extra,
            lesion_rng=stream(2),
            lesions=float(lesions),
            sequence_rng=lambda name: stream(3, SMRI_SEQUENCES.index(name)),
        )

    return _write_cohort(
        Path(out_dir),
        SMRI_CLASSES,
        n_per_class,
        seed,
        draw,
        tpl["affine"],
        np.int16,
        "smri",
        progress,
        sequences=("t1", *extra),
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

    def draw(class_idx: int, stream: Callable[..., np.random.Generator]) -> np.ndarray:
        return _fmri_subject(tpl, FMRI_CLASSES[names[class_idx]], shape, stream(1), float(noise))

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
    draw: Callable[[int, Callable[..., np.random.Generator]], np.ndarray | dict[str, np.ndarray]],
    affine: np.ndarray,
    dtype,
    kind: str,
    progress: bool,
    folder: str = "images",
    sequences: tuple[str, ...] = ("",),
) -> Path:
    """Draw and write every subject; returns the main table.

    ``draw(class_idx, stream)`` gets ``stream(*key)``, the subject's random generator for
    ``key`` (seeded by ``(seed, class_idx, subject_idx, *key)``), and returns its volume, or
    a dict of volumes keyed by ``sequences``: the first is the main one
    (``<sub>_<class>.nii.gz`` in ``labels.csv``), each other one is written as
    ``<sub>_<class>_<name>.nii.gz`` and listed in ``labels_<name>.csv``. A ``"lesion"``
    entry goes to ``masks/<sub>_<class>_lesion.nii.gz`` (uint8); without one, a mask of
    that name left by an earlier run is removed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[Record]] = {name: [] for name in sequences}
    bar = _progress(len(classes) * n_per_class, f"{kind} cohort", progress)
    subject = 0
    for c, name in enumerate(classes):
        for j in range(n_per_class):
            subject += 1
            sub = f"sub-{subject:04d}"
            drawn = draw(c, lambda *key, c=c, j=j: np.random.default_rng([seed, c, j, *key]))
            vols = drawn if isinstance(drawn, dict) else {sequences[0]: drawn}
            for k, seq in enumerate(sequences):
                tail = f"_{seq}" if k else ""
                path = save_volume(
                    vols[seq], affine, out_dir / folder / f"{sub}_{name}{tail}.nii.gz", dtype=dtype
                )
                tables[seq].append(Record(path=path, label=name, subject=sub))
            mask = out_dir / "masks" / f"{sub}_{name}_lesion.nii.gz"
            if "lesion" in vols:
                save_volume(vols["lesion"], affine, mask, dtype=np.uint8)
            elif mask.exists():
                mask.unlink()
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    for seq in sequences[1:]:
        write_table(tables[seq], out_dir / f"labels_{seq}.csv")
    return write_table(tables[sequences[0]], out_dir / "labels.csv")
