"""Brain masks fitted from a set of volumes (a training fold), for voxel-wise models.

Voxel-wise models (a linear SVM on masked voxels, a Gaussian mixture in a PCA space
of the brain; Zhuang et al. 2019) keep only the voxels that carry signal. After
per-volume min-max scaling the background (the value 0 of a statistical map, or
of a skull-stripped image) is no longer 0: it lands on a value of its own in each
volume. It is, though, still the one value that most voxels of the volume share,
so each volume's background is taken as its most frequent value, and the mask is
the voxels that differ from their volume's background in at least ``fraction`` of
the volumes. Only the volumes given are read: fit on a training fold, apply to
anything.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["background_values", "foreground_mask"]

# Values within this of a volume's background count as background (float32 rounding).
TOLERANCE = 1e-6


def _rows(volumes: Any) -> np.ndarray:
    if hasattr(volumes, "detach"):  # a torch tensor
        volumes = volumes.detach().cpu().numpy()
    x = np.asarray(volumes)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"expected a batch of at least one volume (N, ...), got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def background_values(volumes: Any) -> np.ndarray:
    """Each volume's most frequent value, ``(N,)`` float64: its background.

    Args:
        volumes: ``(N, ...)`` volumes (a numpy array or tensor; any trailing shape).
    """
    rows = _rows(volumes)
    out = np.empty(rows.shape[0], dtype=np.float64)
    for i, row in enumerate(rows):
        values, counts = np.unique(row, return_counts=True)
        out[i] = values[np.argmax(counts)]
    return out


def foreground_mask(volumes: Any, fraction: float = 0.5) -> np.ndarray:
    """Voxels that differ from their volume's background in at least ``fraction`` of the volumes.

    Args:
        volumes: ``(N, *S)`` volumes (``S`` = ``(D, H, W)``, or ``(1, D, H, W)``,
            or flat rows ``(V,)``), the training volumes only.
        fraction: in ``(0, 1]``.

    Returns:
        ``S``-shaped bool array.

    Raises:
        ValueError: no volumes, a bad ``fraction``, or a mask with no voxel.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    shape = (volumes.shape if hasattr(volumes, "shape") else np.asarray(volumes).shape)[1:]
    rows = _rows(volumes)
    bg = background_values(rows)
    count = np.zeros(rows.shape[1], dtype=np.int64)
    for row, b in zip(rows, bg, strict=True):
        count += np.abs(row.astype(np.float64) - b) > TOLERANCE
    mask = count >= float(fraction) * rows.shape[0]
    if not mask.any():
        raise ValueError(
            f"foreground_mask: no voxel differs from the background in {fraction:g} of the "
            f"{rows.shape[0]} volumes (constant volumes?)"
        )
    return mask.reshape(tuple(shape))
