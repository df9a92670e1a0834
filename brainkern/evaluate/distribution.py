"""Generation metrics that a trivial generator cannot win: kernel MMD^2 and memorisation.

Kwon et al.'s biased linear batch MMD^2 (:func:`brainkern.evaluate.batch_mmd2`) is
``||mean(X) - mean(Y)||^2`` plus the two batches' own spreads, so it rewards a
generator for having *less* variance than the data: the mean training volume beats
real data on it. The figures here do not have that flaw:

- :func:`kernel_mmd2`: the *unbiased* MMD^2 (Gretton et al. 2012) with a
  characteristic kernel on the volumes. ``"rbf"``: a sum of Gaussian kernels whose
  bandwidths are the median pairwise distance of the reference real volumes times
  0.5, 1 and 2, computed once so that every row of a table uses the same kernel.
  ``"poly"``: the cubic polynomial kernel ``(a . b / D + 1)^3`` of the kernel
  inception distance (Binkowski et al. 2018), here on voxels rather than network
  features. The unbiased estimate is 0 in expectation for two samples of one
  distribution whatever the subset size (it can be slightly negative), and a set
  that lacks the real set's variance or structure pays for it.
- :func:`memorisation`: each generated volume's distance to its nearest training
  volume, against the same distance for real volumes the generator never saw
  (held-out subjects; without a held-out set, each training volume's nearest
  *other* training volume). A generator that reproduces its training volumes has
  a ratio near 0 and a high copy rate; one that generalises sits near the real
  reference's own distances (ratio about 1).

Distances are root-mean-square differences per voxel (in the data's units, e.g.
on [-1, 1]), computed from Gram matrices in float64, a chunk of volumes at a time.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from brainkern.evaluate._volumes import (
    _CHUNK_BYTES,
    VolumesLike,
    _check_count,
    _device,
    _generator,
    _paired_chunks,
    _Tick,
    _Volumes,
)

__all__ = ["KERNEL_COLUMNS", "kernel_mmd2", "memorisation", "nearest_distances", "rbf_bandwidths"]

KERNELS = ("rbf", "poly")
# Kernel MMD^2 columns a generation table can carry: name -> (kernel, pool).
KERNEL_COLUMNS = {
    "mmd2_rbf": ("rbf", 1),
    "mmd2_rbf2": ("rbf", 2),
    "mmd2_rbf4": ("rbf", 4),
    "kid": ("poly", 1),
}
# Multiples of the median pairwise distance used as RBF bandwidths.
_RBF_SCALES = (0.5, 1.0, 2.0)
# At most this many volumes enter the median of pairwise distances.
_MEDIAN_VOLUMES = 128


def _pooled(x: torch.Tensor, pool: int) -> torch.Tensor:
    """``(..., 1, D, H, W)`` volumes averaged over ``pool^3`` blocks (a trailing partial block is dropped)."""
    if pool == 1:
        return x
    lead = x.shape[:-4]
    y = F.avg_pool3d(x.reshape(-1, *x.shape[-4:]), pool)
    return y.reshape(*lead, *y.shape[1:])


def _gram_chunks(a: _Volumes, b: _Volumes, device: torch.device, pool: int = 1):
    """Yield ``(rows_a, rows_b, sq_dist)`` blocks of squared Euclidean distances, float64."""
    step = max(1, _CHUNK_BYTES // (a.voxels * 8))
    for i in range(0, len(a), step):
        ra = torch.arange(i, min(i + step, len(a)))
        xa = _pooled(a.take(ra, device), pool).flatten(1).double()
        na = (xa * xa).sum(1)
        for j in range(0, len(b), step):
            rb = torch.arange(j, min(j + step, len(b)))
            xb = _pooled(b.take(rb, device), pool).flatten(1).double()
            d2 = na[:, None] + (xb * xb).sum(1)[None, :] - 2.0 * xa @ xb.T
            yield ra, rb, d2.clamp_min_(0)


def _distances(a: _Volumes, b: _Volumes, device: torch.device, pool: int = 1) -> torch.Tensor:
    """``(len(a), len(b))`` squared distances (of ``pool``-averaged volumes), float64 on the CPU."""
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for ra, rb, d2 in _gram_chunks(a, b, device, pool):
        out[ra[0] : ra[-1] + 1, rb[0] : rb[-1] + 1] = d2.cpu()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{a.name} or {b.name} holds NaN or infinite values")
    return out


def rbf_bandwidths(
    real: VolumesLike, *, pool: int = 1, seed: int = 0, device: torch.device | str | None = None
) -> tuple[float, ...]:
    """RBF bandwidths for :func:`kernel_mmd2`: the median pairwise Euclidean distance of
    ``real`` (at most 128 volumes, drawn with ``seed``; averaged over ``pool^3`` blocks
    first, as :func:`kernel_mmd2` with the same ``pool``) times 0.5, 1 and 2.

    Raises:
        ValueError: fewer than 2 volumes, or all of them identical.
    """
    vols = _Volumes(real, "real")
    if len(vols) < 2:
        raise ValueError(f"the median heuristic needs at least 2 real volumes, got {len(vols)}")
    if len(vols) > _MEDIAN_VOLUMES:
        vols = vols.subset(torch.randperm(len(vols), generator=_generator(seed))[:_MEDIAN_VOLUMES].numpy())
    d2 = _distances(vols, vols, _device(device), pool)
    iu = torch.triu_indices(len(vols), len(vols), offset=1)
    median = float(d2[iu[0], iu[1]].sqrt().median())
    if not median > 0:
        raise ValueError("the real volumes are all identical: no bandwidth can be read from them")
    return tuple(s * median for s in _RBF_SCALES)


def _subset_indices(n_real: int, n_fake: int, n_subsets: int, size: int, seed: int):
    g = _generator(seed)
    real_idx = torch.empty(n_subsets, size, dtype=torch.int64)
    fake_idx = torch.empty(n_subsets, size, dtype=torch.int64)
    for t in range(n_subsets):
        real_idx[t] = torch.randperm(n_real, generator=g)[:size]
        fake_idx[t] = torch.randperm(n_fake, generator=g)[:size]
    return real_idx, fake_idx


def _kernel_mmd2(
    real: _Volumes,
    fake: _Volumes,
    kernel: str,
    n_subsets: int,
    subset_size: int,
    bandwidths: tuple[float, ...] | None,
    seed: int,
    device: torch.device,
    tick: _Tick = None,
    pool: int = 1,
) -> dict:
    from brainkern.ops import mmd2_batched  # noqa: PLC0415

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if real.grid != fake.grid:
        raise ValueError(f"{real.name} and {fake.name} have different grids: {real.grid} and {fake.grid}")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(
            f"the unbiased MMD^2 needs at least 2 volumes a side; {real.name} has {len(real)}, "
            f"{fake.name} has {len(fake)}"
        )
    real_idx, fake_idx = _subset_indices(len(real), len(fake), n_subsets, size, seed)
    per_chunk = max(1, _CHUNK_BYTES // (size * real.voxels * 4))
    bw = bandwidths if kernel == "rbf" else None

    def estimate(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = _pooled(x, pool).double(), _pooled(y, pool).double()
        return mmd2_batched(x, y, kernel=kernel, estimator="unbiased", bandwidths=bw)

    mean, std = _paired_chunks(real, real_idx, fake, fake_idx, per_chunk, device, estimate, tick)
    return {"mmd2": mean, "mmd2_std": std, "n_subsets": n_subsets, "subset_size": size}


def kernel_mmd2(
    real: VolumesLike,
    fake: VolumesLike,
    *,
    kernel: str = "rbf",
    n_subsets: int = 20,
    subset_size: int = 32,
    bandwidths: tuple[float, ...] | None = None,
    pool: int = 1,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict:
    """Unbiased kernel MMD^2 between real and generated volumes, mean over random subsets.

    Each subset draws ``min(subset_size, len(real), len(fake))`` distinct volumes from
    each set; the estimate is computed in float64 by
    :func:`brainkern.ops.mmd2_batched` (``estimator="unbiased"``).

    Args:
        real, fake: ``(N, 1, D, H, W)`` or ``(N, D, H, W)`` volumes on one grid.
        kernel: ``"rbf"`` (Gaussian kernels at ``bandwidths``) or ``"poly"`` (KID's cubic kernel).
        n_subsets, subset_size: how many subsets, and their size per side.
        bandwidths: RBF bandwidths; ``None``: :func:`rbf_bandwidths` of ``real`` (with the
            same ``pool``). Pass the same bandwidths for every candidate of a table.
        pool: compare the volumes averaged over ``pool^3`` blocks (1: voxel by voxel). At
            a coarser scale only structure shared by neighbouring voxels survives: the
            independent noise of a per-voxel Gaussian averages away, the anatomy does not.
        seed: seeds the subset draws.
        device: where the arithmetic runs (default CPU).

    Returns:
        ``{"mmd2": mean, "mmd2_std": population std over subsets, "n_subsets", "subset_size",
        "bandwidths"}`` (``bandwidths`` is ``None`` for ``"poly"``).

    Raises:
        ValueError: an unknown kernel, different grids, fewer than 2 volumes a side,
            NaN or inf values.
    """
    n_subsets = _check_count("n_subsets", n_subsets)
    subset_size = _check_count("subset_size", subset_size, 2)
    dev = _device(device)
    if kernel == "rbf" and bandwidths is None:
        bandwidths = rbf_bandwidths(real, pool=pool, seed=seed, device=dev)
    pool = _check_count("pool", pool)
    out = _kernel_mmd2(
        _Volumes(real, "real"),
        _Volumes(fake, "fake"),
        kernel,
        n_subsets,
        subset_size,
        bandwidths,
        seed,
        dev,
        None,
        pool,
    )
    return {**out, "bandwidths": list(bandwidths) if kernel == "rbf" else None}


def nearest_distances(
    query: VolumesLike,
    train: VolumesLike,
    *,
    leave_one_out: bool = False,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Each query volume's RMS voxel distance to its nearest training volume, ``(N_query,)``.

    ``leave_one_out=True`` (``query`` *is* ``train``): the nearest *other* volume.

    Raises:
        ValueError: different grids, an empty set, NaN or inf values; ``leave_one_out``
            with sets of different sizes or fewer than 2 volumes.
    """
    q, t = _Volumes(query, "query"), _Volumes(train, "train")
    return _nearest(q, t, leave_one_out, _device(device))


def _nearest(q: _Volumes, t: _Volumes, leave_one_out: bool, device: torch.device) -> np.ndarray:
    if q.grid != t.grid:
        raise ValueError(f"{q.name} has grid {q.grid}, {t.name} {t.grid}")
    if len(q) == 0 or len(t) == 0:
        raise ValueError(f"{q.name} has {len(q)} volumes, {t.name} {len(t)}: both need at least one")
    if leave_one_out and (len(q) != len(t) or len(t) < 2):
        raise ValueError("leave_one_out compares a set of at least 2 volumes with itself")
    d2 = _distances(q, t, device)
    if leave_one_out:
        d2.fill_diagonal_(math.inf)
    return (d2.min(dim=1).values / q.voxels).sqrt().numpy()


def _memorisation(
    samples: _Volumes, train: _Volumes, reference: _Volumes | None, quantile: float, device: torch.device
) -> dict:
    if reference is None:
        ref = _nearest(train, train, True, device)
        what = f"training volumes, each to its nearest other ({len(train)}; no held-out part)"
    else:
        ref = _nearest(reference, train, False, device)
        what = f"held-out volumes to their nearest training volume ({len(reference)})"
    near = _nearest(samples, train, False, device)
    threshold = float(np.quantile(ref, quantile))
    ref_median = float(np.median(ref))
    return {
        "nn_median": float(np.median(near)),
        "nn_reference_median": ref_median,
        "nn_ratio": float(np.median(near)) / ref_median if ref_median > 0 else math.nan,
        "copy_rate": float(np.mean(near < threshold)),
        "copy_threshold": threshold,
        "quantile": quantile,
        "reference": what,
    }


def memorisation(
    samples: VolumesLike,
    train: VolumesLike,
    reference: VolumesLike | None = None,
    *,
    quantile: float = 0.05,
    device: torch.device | str | None = None,
) -> dict:
    """Are generated volumes closer to the training volumes than new real subjects are?

    Args:
        samples: generated volumes ``(N, 1, D, H, W)``.
        train: the volumes the generator was trained on.
        reference: real volumes it never saw (held-out subjects); ``None``: each
            training volume's distance to its nearest other training volume stands in.
        quantile: a sample counts as a likely copy when it is nearer to a training
            volume than this quantile of the reference's nearest distances.

    Returns:
        ``{"nn_median": median nearest-training distance of the samples,
        "nn_reference_median": the same for the reference, "nn_ratio": their ratio
        (near 1: as far from the training set as new subjects; near 0: copies),
        "copy_rate": fraction of samples below the threshold, "copy_threshold",
        "quantile", "reference": which reference was used}``.

    Raises:
        ValueError: a quantile outside (0, 1), different grids, empty sets, NaN or inf.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}")
    ref = None if reference is None else _Volumes(reference, "reference")
    return _memorisation(
        _Volumes(samples, "samples"), _Volumes(train, "train"), ref, float(quantile), _device(device)
    )
