"""Trivial generators: what a generation metric must be able to tell apart from a model.

A figure for a trained generator means little until it is read beside what a
generator that learned nothing useful would score. These three need no training
and are fitted on the *training* volumes only (never on the volumes the metrics
compare with):

- :func:`mean_volume`: the voxel-wise mean training volume, repeated. It has no
  variance at all, yet the biased linear MMD^2 of Kwon et al. (the squared distance
  between batch means plus the two batches' spreads) rewards it, because that
  estimate shrinks with the generated batch's own variance.
- :func:`voxel_gaussian`: independent voxels, each Gaussian with its training mean
  and standard deviation. It matches every voxel's first two moments and the mean
  squared distance between volumes, but none of the spatial structure (no edge, no
  fold is shared between neighbouring voxels).
- :func:`training_copies`: training volumes drawn at random. A generator that
  memorised its data would look like this; the distribution metrics cannot tell it
  from new real subjects, and the memorisation check
  (:func:`brainkern.evaluate.memorisation`) exists to catch it.

Every function reads the volumes a chunk at a time (they may be memory-mapped) and
returns float32 ``(n, 1, D, H, W)`` CPU tensors; all randomness comes from ``seed``.
"""

from __future__ import annotations

import numpy as np
import torch

from brainkern.evaluate._volumes import VolumesLike, _check_count, _generator, _Volumes, voxel_moments

__all__ = ["BASELINES", "make_baselines", "mean_volume", "training_copies", "voxel_gaussian"]

# Names of the rows make_baselines adds, in table order.
BASELINES = ("mean volume", "voxel Gaussian", "training copies")


def mean_volume(train: VolumesLike, n: int) -> torch.Tensor:
    """``n`` copies of the voxel-wise mean of ``train`` ``(N, 1, D, H, W)`` (or ``(N, D, H, W)``).

    Raises:
        ValueError: an empty ``train``, ``n < 1``, bad shapes, NaN or inf.
    """
    n = _check_count("n", n)
    mean, _ = voxel_moments(_Volumes(train, "train"))
    return mean.float().reshape(1, 1, *mean.shape).expand(n, -1, -1, -1, -1).clone()


def voxel_gaussian(train: VolumesLike, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` volumes of independent Gaussian voxels with the training set's per-voxel mean and
    (population) standard deviation.

    The values are not clipped to the data's range: the baseline is exactly the
    per-voxel Gaussian, not a tidied version of it.

    Raises:
        ValueError: fewer than 2 training volumes, ``n < 1``, bad shapes, NaN or inf.
    """
    n = _check_count("n", n)
    vols = _Volumes(train, "train")
    if len(vols) < 2:
        raise ValueError(f"a per-voxel standard deviation needs at least 2 training volumes, got {len(vols)}")
    mean, sd = voxel_moments(vols)
    noise = torch.randn(n, 1, *vols.grid, generator=_generator(seed), dtype=torch.float64)
    return (noise * sd + mean).float()


def training_copies(train: VolumesLike, n: int, *, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` training volumes drawn uniformly with replacement, and which ones.

    Returns:
        ``(volumes (n, 1, D, H, W) float32, rows (n,) int64)``: ``rows`` index ``train``.

    Raises:
        ValueError: an empty ``train``, ``n < 1``, bad shapes.
    """
    n = _check_count("n", n)
    vols = _Volumes(train, "train")
    if len(vols) == 0:
        raise ValueError("train holds no volumes")
    rows = torch.randint(len(vols), (n,), generator=_generator(seed))
    return vols.take(rows, torch.device("cpu")), rows.numpy()


def make_baselines(train: VolumesLike, n: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The three trivial generators of this module, ``n`` volumes each, by row name
    (:data:`BASELINES`), fitted on ``train`` only."""
    return {
        "mean volume": mean_volume(train, n),
        "voxel Gaussian": voxel_gaussian(train, n, seed=seed),
        "training copies": training_copies(train, n, seed=seed + 1)[0],
    }
