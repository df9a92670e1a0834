"""Preprocessing of brain volumes onto one training grid, with affine bookkeeping.

The steps, in the order they run (each optional):

1. ``reorient``: reorder/flip axes to RAS+ (nibabel ``as_closest_canonical``); no
   interpolation.
2. ``resample``: volumes whose grid differs from the first volume's are resampled
   onto it (nilearn ``resample_img``, linear).
3. ``trim``: crop the planes that are background (0) in every volume of the data
   set: one bounding box for the whole data set.
4. ``shape``: resize to the training grid (trilinear, with a Gaussian anti-alias
   filter when shrinking). The output grid keeps the input's field of view: voxel
   ``j`` of the output sits at input voxel ``(j + 1/2) * s - 1/2`` (``s`` = input
   size / output size), so the centre of the output grid maps to the same world
   point as the centre of the input grid.
5. ``clip``: clip each volume to its ``(low, high)`` intensity quantiles.
6. ``scale``: min-max scale each volume to ``[0, 1]`` or ``[-1, 1]``.

Every affine a step changes is updated, so a volume written with the final affine
overlays the inputs in any viewer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCALES = {"[0,1]": (0.0, 1.0), "[-1,1]": (-1.0, 1.0)}
STEPS = ("reorient", "resample", "trim", "resize", "clip", "scale")


def normalise_scale(scale: Any) -> str | None:
    """``"[-1,1]"``, ``"[0,1]"`` or ``None`` from the spellings users write."""
    if scale is None or scale is False or (isinstance(scale, str) and scale.lower() == "none"):
        return None
    if isinstance(scale, str):
        key = scale.replace(" ", "")
        if key in SCALES:
            return key
    elif isinstance(scale, tuple | list) and len(scale) == 2:
        key = f"[{scale[0]:g},{scale[1]:g}]"
        if key in SCALES:
            return key
    raise ValueError(f"scale must be '[0,1]', '[-1,1]' or None, got {scale!r}")


@dataclass
class Preprocess:
    """The preprocessing settings of a :class:`~brainkern.data.VolumeDataset`.

    Attributes:
        reorient: reorient every volume to RAS+ first.
        resample: resample volumes onto the first volume's grid when grids differ
            (if ``False``, differing grids are an error).
        trim: crop all-background planes (one bounding box for the data set).
        shape: the output grid ``(D, H, W)``; ``None`` keeps the (trimmed) grid.
        antialias: Gaussian pre-filter (sigma ``(s - 1) / 2`` voxels along an axis
            shrunk by ``s``) before a shrinking resize.
        clip: ``(low, high)`` quantiles each volume is clipped to, or ``None``.
        scale: ``"[-1,1]"``, ``"[0,1]"`` or ``None``.
        mask: ``"auto"`` (computed from the data: voxels that are foreground in at
            least ``mask_fraction`` of the volumes), a NIfTI path (resampled onto the
            output grid, nearest neighbour, > 0.5), or ``None``.
        mask_fraction: see ``mask``.
        background: the raw intensity that counts as background (trimming, mask).
        nan_policy: passed to :func:`~brainkern.data.load_volume`.
        index: volume index for 4D files.
        fit_on: the volumes (indices) from which the data-derived quantities are
            fitted, the trimming box and the ``"auto"`` mask, so that a training
            fold fits them and held-out volumes are only transformed; ``None``:
            all volumes. (Clipping quantiles and min-max scaling are per volume:
            nothing is fitted across volumes there.)
    """

    reorient: bool = True
    resample: bool = True
    trim: bool = True
    shape: tuple[int, int, int] | None = None
    antialias: bool = True
    clip: tuple[float, float] | None = (0.01, 0.99)
    scale: str | None = "[-1,1]"
    mask: str | None = "auto"
    mask_fraction: float = 0.5
    background: float = 0.0
    nan_policy: str = "raise"
    index: int | None = None
    fit_on: tuple[int, ...] | None = None
    steps: tuple[str, ...] = field(default=STEPS, init=False)

    def __post_init__(self) -> None:
        self.scale = normalise_scale(self.scale)
        if self.shape is not None:
            shape = tuple(int(s) for s in self.shape)
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"shape must be three positive sizes (D, H, W), got {self.shape!r}")
            self.shape = shape  # type: ignore[assignment]
        if self.clip is not None:
            lo, hi = (float(q) for q in self.clip)
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"clip must be quantiles 0 <= low < high <= 1, got {self.clip!r}")
            self.clip = (lo, hi)
        if self.mask is not None and self.mask != "auto":
            self.mask = str(Path(self.mask).resolve())
        if not 0.0 < self.mask_fraction <= 1.0:
            raise ValueError(f"mask_fraction must be in (0, 1], got {self.mask_fraction}")
        if self.nan_policy not in ("raise", "zero"):
            raise ValueError(f"nan_policy must be 'raise' or 'zero', got {self.nan_policy!r}")
        if self.fit_on is not None:
            fit_on = tuple(sorted({int(i) for i in self.fit_on}))
            if not fit_on or fit_on[0] < 0:
                raise ValueError("fit_on must list one or more volume indices >= 0")
            self.fit_on = fit_on  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        d["clip"] = list(self.clip) if self.clip is not None else None
        d["steps"] = list(self.steps)
        d["fit_on"] = list(self.fit_on) if self.fit_on is not None else None
        return d


# ----------------------------------------------------------------------------- geometry


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = 1e-4) -> bool:
    """True when two grids have the same shape and (numerically) the same affine."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=atol)


def crop_affine(affine: np.ndarray, start) -> np.ndarray:
    """The affine of the sub-grid whose voxel 0 is voxel ``start`` of ``affine``'s grid."""
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(start, dtype=np.float64)
    return affine @ shift


def resize_affine(affine: np.ndarray, in_shape, out_shape) -> np.ndarray:
    """The affine of ``out_shape`` covering the same field of view as ``in_shape``.

    Output voxel ``j`` lies at input voxel ``(j + 1/2) * s - 1/2`` with
    ``s = in / out`` per axis (the half-voxel, "align_corners=False" convention of
    ``torch.nn.functional.interpolate`` and ``scipy.ndimage.zoom(grid_mode=True)``),
    so the grid centres ``(in - 1) / 2`` and ``(out - 1) / 2`` map to the same world
    point and the outer voxel faces coincide.
    """
    s = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = np.diag(s)
    m[:3, 3] = s / 2.0 - 0.5
    return affine @ m


def grid_centre(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates (mm) of the centre of a grid."""
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    return affine[:3, :3] @ c + affine[:3, 3]


def resize_volume(data: np.ndarray, out_shape, antialias: bool = True) -> np.ndarray:
    """Trilinear resize of a 3D array with the field of view kept (see :func:`resize_affine`).

    Args:
        data: ``(X, Y, Z)`` array.
        out_shape: ``(D, H, W)``.
        antialias: Gaussian pre-filter along shrunk axes (sigma ``(s - 1) / 2``).

    Returns:
        ``(D, H, W)`` float32 array; values stay within the input's range.
    """
    from scipy import ndimage

    out_shape = tuple(int(s) for s in out_shape)
    if tuple(data.shape) == out_shape:
        return np.asarray(data, dtype=np.float32)
    s = np.asarray(data.shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    src = np.asarray(data, dtype=np.float32)
    if antialias and np.any(s > 1.0):
        sigma = np.maximum((s - 1.0) / 2.0, 0.0)
        src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest", truncate=3.0)
    out = ndimage.affine_transform(
        src, s, offset=s / 2.0 - 0.5, output_shape=out_shape, order=1, mode="nearest", prefilter=False
    )
    return out.astype(np.float32, copy=False)


def reorient_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip axes to the closest RAS+ orientation (no interpolation)."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32)), np.asarray(img.affine)


def resample_to(data: np.ndarray, affine: np.ndarray, shape, target_affine, interpolation="linear"):
    """Resample a volume onto another grid with nilearn (outside the input: 0)."""
    import nibabel as nib
    from nilearn.image import resample_img

    img = resample_img(
        nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine),
        target_affine=np.asarray(target_affine),
        target_shape=tuple(int(s) for s in shape),
        interpolation=interpolation,
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(img.dataobj, dtype=np.float32)


def foreground_bbox(foreground: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(start, stop)`` of the smallest box holding every True voxel (whole grid if none)."""
    if not foreground.any():
        return (0, 0, 0), tuple(int(s) for s in foreground.shape)  # type: ignore[return-value]
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(foreground.any(axis=other))
        start.append(int(idx[0]))
        stop.append(int(idx[-1]) + 1)
    return tuple(start), tuple(stop)  # type: ignore[return-value]


def clip_scale(
    data: np.ndarray, clip: tuple[float, float] | None, scale: str | None, background: float = 0.0
) -> tuple[np.ndarray, float]:
    """Quantile clipping then min-max scaling of one volume.

    Returns:
        The float32 result and the value ``background`` maps to (used for masks).
    """
    out = np.asarray(data, dtype=np.float32)
    bg = float(background)
    if clip is not None:
        lo, hi = np.quantile(out, clip)
        out = np.clip(out, lo, hi)
        bg = float(np.clip(bg, lo, hi))
    if scale is not None:
        a, b = SCALES[scale]
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            k = (b - a) / (hi - lo)
            out = (out - lo) * k + a
            bg = (bg - lo) * k + a
        else:
            out = np.full_like(out, a)
            bg = a
        out = np.clip(out, a, b)
    return np.ascontiguousarray(out, dtype=np.float32), bg
