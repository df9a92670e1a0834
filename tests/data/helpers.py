"""Small synthetic brain-like volumes written to a temporary folder (fixed seeds, real affines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Optional packages (absent on a bare GPU image): skip this module, do not fail collection.
nib = pytest.importorskip("nibabel")


def ras_affine(zooms=(2.0, 2.5, 3.0), origin=(-20.0, -30.0, -12.0)) -> np.ndarray:
    a = np.diag([*zooms, 1.0])
    a[:3, 3] = origin
    return a


def blob_volume(shape=(12, 14, 10), seed=0, box=None, bright=1.0) -> np.ndarray:
    """An ellipsoidal 'brain' with texture, inside ``box`` ((start), (stop)) or centred;
    background exactly 0."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    if box is None:
        start = [s // 5 for s in shape]
        stop = [s - s // 5 for s in shape]
    else:
        start, stop = box
    grid = np.indices(shape, dtype=np.float64)
    centre = [(a + b - 1) / 2 for a, b in zip(start, stop, strict=True)]
    radius = [(b - a) / 2 for a, b in zip(start, stop, strict=True)]
    r2 = sum(((grid[k] - centre[k]) / radius[k]) ** 2 for k in range(3))
    inside = r2 <= 1.0
    # keep the box exact: force the 6 extreme planes of the box to hold foreground
    for k in range(3):
        idx = [int(round(c)) for c in centre]
        for end in (start[k], stop[k] - 1):
            idx2 = list(idx)
            idx2[k] = end
            inside[tuple(idx2)] = True
    data = np.where(inside, bright * (100.0 + 20.0 * rng.standard_normal(shape) + 50.0 * (1 - r2)), 0.0)
    data[inside] = np.maximum(data[inside], 1.0)
    return data.astype(np.float32)


def write_nifti(path, data, affine=None, dtype=np.float32, slope=None, inter=None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), ras_affine() if affine is None else affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    nib.save(img, str(path))
    return path


def make_table(
    tmp_path,
    n_per_class=3,
    classes=("a", "b"),
    shape=(12, 14, 10),
    sep=",",
    name="labels.csv",
    affine=None,
    subjects=True,
):
    """Write volumes under tmp_path/img and a labels table with relative paths."""
    rows = []
    k = 0
    for c in classes:
        for j in range(n_per_class):
            rel = f"img/{c}_{j}.nii.gz"
            write_nifti(tmp_path / rel, blob_volume(shape, seed=k, bright=1.0 + 0.1 * k), affine)
            rows.append((rel, c, f"s{k // 2}" if subjects else ""))
            k += 1
    table = Path(tmp_path) / name
    header = ["path", "label", "subject"] if subjects else ["path", "label"]
    lines = [sep.join(header)] + [sep.join(r if subjects else r[:2]) for r in rows]
    table.write_text("\n".join(lines) + "\n")
    return table
