"""Fidelity and diversity of generated volumes measured on features: FID, precision / recall,
feature MMD^2, and the PCA picture of King et al. (2024, seed 003).

King et al. judge their generators by four figures computed on 3D features of the
real and the synthetic volumes (their Fig. 2 and 4) and show the first two principal
components of the same features (Fig. S7 and S8):

- :func:`fid`: the Frechet distance between Gaussians fitted to the two feature sets
  (Heusel et al. 2017), ``||mu_r - mu_g||^2 + tr(C_r) + tr(C_g) - 2 tr((C_r C_g)^(1/2))``;
  lower is better. :func:`frechet_distance` computes it from the moments in float64;
  the trace of the matrix square root comes from the eigenvalues of the symmetric
  positive semi-definite ``C_r^(1/2) C_g C_r^(1/2)`` (the same eigenvalues as ``C_r C_g``),
  so nothing complex ever appears and rank-deficient covariances (fewer volumes than
  features, the usual case here) are fine.
- :func:`precision_recall`: Kynkaanniemi et al.'s (2019) k-nearest-neighbour manifolds.
  Each real feature vector gets a ball reaching its k-th nearest *other* real one; the
  precision is the share of generated vectors inside at least one real ball (fidelity),
  the recall the share of real vectors inside at least one ball of the generated set,
  whose radii come from the generated vectors themselves (coverage). Higher is better.
- :func:`feature_mmd2`: the unbiased MMD^2 between the feature sets
  (:func:`brainkern.ops.mmd2`), with a linear kernel or a sum of Gaussian kernels whose
  bandwidths are read once from the real features (:func:`feature_bandwidths`), so
  every row of a table uses the same kernel. Lower is better; 0 in expectation for two
  samples of one distribution (it can be slightly negative).

:func:`fidelity_table` puts generators beside the trivial baselines of
:mod:`brainkern.evaluate.baselines` and says where a baseline wins; :func:`pca_scatter`
draws the PCA picture. Features come from :mod:`brainkern.evaluate.features`; every
table names its extractor, because the numbers mean nothing across extractors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.evaluate._volumes import VolumesLike, _check_count

__all__ = [
    "FIDELITY_METRICS",
    "feature_bandwidths",
    "feature_mmd2",
    "fid",
    "fidelity_metrics",
    "fidelity_notes",
    "fidelity_table",
    "format_fidelity_table",
    "frechet_distance",
    "pca_scatter",
    "precision_recall",
]

# Metric -> (title, True when higher is better).
FIDELITY_METRICS = {
    "fid": ("FID", False),
    "precision": ("Precision", True),
    "recall": ("Recall", True),
    "mmd2": ("MMD^2", False),
}
MMD_KERNELS = ("rbf", "linear")
# Multiples of the median pairwise distance of the real features used as RBF bandwidths.
_RBF_SCALES = (0.5, 1.0, 2.0)
# Why each trivial baseline can win a metric (the note a table prints when it does).
_BASELINE_WHY = {
    "training copies": "they are real volumes, so only a memorisation check tells a generator that copies "
    "its training set from one that generalises",
    "mean volume": "one volume repeated: a metric that does not look at the spread of the generated set "
    "rewards sitting in the middle of the data",
    "voxel Gaussian": "it matches every voxel's mean and SD: the extractor does not separate "
    "voxel noise from anatomy here",
}


def _features(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 ``(N, F)`` array with at least ``min_rows`` rows."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, F), got {a.shape}")
    if len(a) < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} feature vectors, got {len(a)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return a


def _same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"real and fake features differ in width: {a.shape[1]} and {b.shape[1]}")


def _clip_rounding(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with those at rounding level (below ``F * eps``
    times the largest, negative ones included) set to 0: their square roots (about 1e-8)
    would otherwise add up to a visible error for rank-deficient covariances."""
    floor = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 0.0)
    return np.where(w > floor, w, 0.0)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(_clip_rounding(w))) @ v.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """The Frechet distance between N(``mu1``, ``cov1``) and N(``mu2``, ``cov2``), in float64.

    ``tr((C1 C2)^(1/2))`` is the sum of the square roots of the eigenvalues of
    ``S C2 S`` with ``S = C1^(1/2)`` (symmetric PSD, so real); eigenvalues at rounding level
    (below ``F * eps`` of the largest, or negative) count as zero.

    Args:
        mu1, mu2: ``(F,)`` means; cov1, cov2: ``(F, F)`` symmetric PSD covariances.

    Raises:
        ValueError: mismatched shapes, a covariance that is not symmetric, NaN or inf.
    """
    mu1, mu2 = (np.asarray(m, dtype=np.float64) for m in (mu1, mu2))
    cov1, cov2 = (np.asarray(c, dtype=np.float64) for c in (cov1, cov2))
    f = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (f,) or mu2.shape != (f,) or cov1.shape != (f, f) or cov2.shape != (f, f):
        raise ValueError(
            f"expected means (F,) and covariances (F, F) of one F, got {mu1.shape}, {cov1.shape}, "
            f"{mu2.shape}, {cov2.shape}"
        )
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        scale = max(float(np.abs(c).max()), 1e-300)
        if float(np.abs(c - c.T).max()) > 1e-8 * scale:
            raise ValueError(f"{name} is not symmetric")
    s1 = _psd_sqrt((cov1 + cov1.T) / 2)
    m = s1 @ ((cov2 + cov2.T) / 2) @ s1
    cross = float(np.sqrt(_clip_rounding(np.linalg.eigvalsh((m + m.T) / 2))).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)


def fid(real_feats: Any, fake_feats: Any) -> float:
    """FID between two feature sets ``(N_r, F)`` and ``(N_g, F)``: :func:`frechet_distance` of
    their means and covariances (``ddof=1``).

    Raises:
        ValueError: fewer than 2 vectors a side, different widths, NaN or inf.
    """
    r, g = _features(real_feats, "real", 2), _features(fake_feats, "fake", 2)
    _same_width(r, g)
    return frechet_distance(
        r.mean(0), np.atleast_2d(np.cov(r, rowvar=False)), g.mean(0), np.atleast_2d(np.cov(g, rowvar=False))
    )


def _cdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(len(a), len(b))``, from differences (exact zeros for equal rows)."""
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return torch.cdist(ta, tb, compute_mode="donot_use_mm_for_euclid_dist").numpy()


def _kth_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its ``k``-th nearest *other* row."""
    d = _cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.'s (2019) improved precision and recall.

    A real vector's ball has the radius of its ``k``-th nearest other real vector; a fake
    vector's, of its ``k``-th nearest other fake vector. A point on a ball's surface is
    inside it.

    Returns:
        ``(precision, recall)``: the share of fake vectors inside some real ball, and the
        share of real vectors inside some fake ball.

    Raises:
        ValueError: ``k < 1``, ``k`` not below both set sizes, different widths, NaN or inf.
    """
    k = _check_count("k", k)
    r, g = _features(real_feats, "real"), _features(fake_feats, "fake")
    _same_width(r, g)
    if k >= min(len(r), len(g)):
        raise ValueError(f"k={k} needs more than k vectors a side; real has {len(r)}, fake has {len(g)}")
    d = _cdist(g, r)  # (N_g, N_r)
    precision = float(np.mean((d <= _kth_radii(r, k)[None, :]).any(axis=1)))
    recall = float(np.mean((d <= _kth_radii(g, k)[:, None]).any(axis=0)))
    return precision, recall


def feature_bandwidths(real_feats: Any) -> tuple[float, ...]:
    """RBF bandwidths for :func:`feature_mmd2`: the median distance between distinct real
    vectors times 0.5, 1 and 2.

    Raises:
        ValueError: fewer than 2 vectors, or all of them equal.
    """
    r = _features(real_feats, "real", 2)
    d = _cdist(r, r)[np.triu_indices(len(r), 1)]
    median = float(np.median(d))
    if not median > 0:
        raise ValueError("the real features are all equal: no bandwidth can be read from them")
    return tuple(s * median for s in _RBF_SCALES)


def feature_mmd2(
    real_feats: Any, fake_feats: Any, kernel: str = "rbf", bandwidths: Sequence[float] | None = None
) -> float:
    """Unbiased MMD^2 between feature sets ``(N_r, F)`` and ``(N_g, F)``, in float64.

    Args:
        kernel: ``"rbf"`` (a sum of Gaussian kernels at ``bandwidths``) or ``"linear"``.
        bandwidths: RBF bandwidths; ``None``: :func:`feature_bandwidths` of ``real_feats``.
            Give one set of bandwidths to every row of a table.

    Raises:
        ValueError: an unknown kernel, fewer than 2 vectors a side, different widths, NaN or inf.
    """
    from brainkern.ops import mmd2

    if kernel not in MMD_KERNELS:
        raise ValueError(f"kernel must be one of {MMD_KERNELS}, got {kernel!r}")
    r, g = _features(real_feats, "real", 2), _features(fake_feats, "fake", 2)
    _same_width(r, g)
    bw = None
    if kernel == "rbf":
        bw = list(feature_bandwidths(r) if bandwidths is None else bandwidths)
    return float(mmd2(torch.from_numpy(r), torch.from_numpy(g), kernel, "unbiased", bw))


def fidelity_metrics(
    real_feats: Any,
    fake_feats: Any,
    *,
    k: int = 3,
    kernel: str = "rbf",
    bandwidths: Sequence[float] | None = None,
) -> dict[str, float]:
    """The four figures of King et al.'s Fig. 2 for one generated set: ``{"fid", "precision",
    "recall", "mmd2"}`` (see :func:`fid`, :func:`precision_recall`, :func:`feature_mmd2`)."""
    precision, recall = precision_recall(real_feats, fake_feats, k)
    return {
        "fid": fid(real_feats, fake_feats),
        "precision": precision,
        "recall": recall,
        "mmd2": feature_mmd2(real_feats, fake_feats, kernel, bandwidths),
    }


def fidelity_notes(rows: Sequence[Mapping[str, Any]], baselines: Sequence[str]) -> list[str]:
    """One line per trivial baseline that scores at least as well as every model on some metric:
    which metrics, its value beside the best model's, and why a baseline can do that.

    Args:
        rows: ``{"name", metric: value, ...}`` per set (each metric of :data:`FIDELITY_METRICS`).
        baselines: which names are trivial baselines (the rest are models).
    """
    models = [r for r in rows if r["name"] not in baselines]
    notes = []
    for b in (r for r in rows if r["name"] in baselines):
        won = []
        for metric, (title, higher) in FIDELITY_METRICS.items():
            sign = 1.0 if higher else -1.0
            if all(sign * b[metric] >= sign * m[metric] for m in models):
                best = max(models, key=lambda m: sign * m[metric]) if models else None
                versus = f" vs {best['name']} {best[metric]:.4g}" if best else ""
                won.append(f"{title} ({b[metric]:.4g}{versus})")
        if won:
            why = _BASELINE_WHY.get(b["name"], "a generator that learned nothing scores as well")
            notes.append(
                f"the baseline '{b['name']}' scores at least as well as every model on "
                f"{', '.join(won)}: {why}."
            )
    return notes


def fidelity_table(
    real: VolumesLike,
    fakes: Mapping[str, VolumesLike],
    extractor: torch.nn.Module,
    *,
    train: VolumesLike | None = None,
    k: int = 3,
    kernel: str = "rbf",
    seed: int = 0,
    n_baseline: int | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """FID, precision, recall and MMD^2 on features of each generated set, beside the trivial
    baselines (:func:`brainkern.evaluate.make_baselines`: mean volume, voxel Gaussian,
    training copies), with notes where a baseline wins.

    Args:
        real: the real volumes ``(N, 1, D, H, W)`` the sets are compared with (held-out
            subjects, ideally).
        fakes: name -> generated volumes on the same grid.
        extractor: a feature extractor (:mod:`brainkern.evaluate.features`).
        train: the volumes the baselines are fitted on (the generators' training
            volumes); ``None``: ``real`` itself (then "training copies" are copies of the
            reference and score as well as real data can).
        k: the neighbour of :func:`precision_recall`.
        kernel: the MMD^2 kernel (``"rbf"``, bandwidths from the real features; ``"linear"``).
        seed: seeds the baselines.
        n_baseline: volumes per baseline (default: the largest generated set, else ``len(real)``).

    Returns:
        ``{"extractor": its name, "k", "kernel", "n_real", "baselines_fitted_on", "rows":
        [{"name", "kind": "model" | "baseline", "n", "fid", "precision", "recall", "mmd2"}],
        "notes": [...]}``.

    Raises:
        ValueError: a generated set named like a baseline, and the errors of the metrics.
    """
    from brainkern.evaluate.baselines import BASELINES, make_baselines
    from brainkern.evaluate.features import extract_features

    clash = sorted(set(fakes) & set(BASELINES))
    if clash:
        raise ValueError(f"generated sets may not take a baseline's name: {clash}")
    real_f = _features(extract_features(real, extractor, batch_size), "real", 2)
    n = n_baseline or max((len(v) for v in fakes.values()), default=len(real_f))
    sets = {**fakes, **make_baselines(real if train is None else train, n, seed=seed)}
    bw = feature_bandwidths(real_f) if kernel == "rbf" else None
    rows = []
    for name, vols in sets.items():
        f = extract_features(vols, extractor, batch_size)
        rows.append(
            {
                "name": name,
                "kind": "baseline" if name in BASELINES else "model",
                "n": len(f),
                **fidelity_metrics(real_f, f, k=k, kernel=kernel, bandwidths=bw),
            }
        )
    return {
        "extractor": extractor.name,
        "k": k,
        "kernel": kernel,
        "n_real": len(real_f),
        "baselines_fitted_on": "real (no training set given)" if train is None else "train",
        "rows": rows,
        "notes": fidelity_notes(rows, BASELINES),
    }


def format_fidelity_table(table: Mapping[str, Any]) -> str:
    """A :func:`fidelity_table` result as markdown (the extractor named above the table)."""
    lines = [
        f"Features: {table['extractor']}; {table['n_real']} real volumes; precision / recall with "
        f"k = {table['k']}; MMD^2 unbiased, {table['kernel']} kernel.",
        "",
        "| set | kind | n | " + " | ".join(t for t, _ in FIDELITY_METRICS.values()) + " |",
        "| --- | --- | ---: |" + " ---: |" * len(FIDELITY_METRICS),
    ]
    for r in table["rows"]:
        cells = " | ".join(f"{r[m]:.4g}" for m in FIDELITY_METRICS)
        lines.append(f"| {r['name']} | {r['kind']} | {r['n']} | {cells} |")
    if table["notes"]:
        lines += ["", *(f"- {note}" for note in table["notes"])]
    return "\n".join(lines) + "\n"


_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def pca_scatter(
    real_feats: Any,
    fake_feats: Mapping[str, Any],
    labels: Mapping[str, Sequence] | None = None,
    path: str | os.PathLike = "pca.png",
    *,
    title: str | None = None,
) -> Path:
    """King et al.'s Fig. S7 / S8: the first two principal components of the features, the PCA
    fitted on the real features only (scikit-learn), one colour per set, one marker per class.

    Args:
        real_feats: ``(N_r, F)``; fake_feats: set name -> ``(N, F)``.
        labels: set name (``"real"`` or a key of ``fake_feats``) -> one class per row; sets
            without labels are drawn with one marker.
        path: the PNG to write.

    Raises:
        ValueError: fewer than 2 real vectors, widths or label counts that do not fit.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    r = _features(real_feats, "real", 2)
    pca = PCA(n_components=2, random_state=0).fit(r)
    sets = {"real": r}
    for name, f in fake_feats.items():
        sets[name] = _features(f, name)
        _same_width(r, sets[name])
    labels = dict(labels or {})
    for name, lab in labels.items():
        if name not in sets or len(lab) != len(sets[name]):
            raise ValueError(f"labels[{name!r}]: expected one class per row of a set named {list(sets)}")
    classes = list(dict.fromkeys(str(c) for lab in labels.values() for c in lab))
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    colours = plt.get_cmap("tab10")
    for i, (name, f) in enumerate(sets.items()):
        z = pca.transform(f)
        colour = "black" if name == "real" else colours((i - 1) % 10)
        lab = labels.get(name)
        groups = (
            [(None, np.ones(len(f), bool))]
            if lab is None
            else [(c, np.asarray([str(x) == c for x in lab])) for c in classes]
        )
        for c, rows in groups:
            if not rows.any():
                continue
            marker = _MARKERS[classes.index(c) % len(_MARKERS)] if c is not None else "o"
            ax.scatter(
                z[rows, 0],
                z[rows, 1],
                s=14,
                marker=marker,
                color=colour,
                alpha=0.8 if name == "real" else 0.55,
                label=name if c is None else f"{name}, {c}",
                linewidths=0,
            )
    ev = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC 1 ({100 * ev[0]:.0f}% of the real variance)")
    ax.set_ylabel(f"PC 2 ({100 * ev[1]:.0f}%)" if len(ev) > 1 and not math.isnan(ev[1]) else "PC 2")
    ax.set_title(title or "First two principal components (PCA of the real features)", fontsize=9)
    ax.legend(fontsize=6, loc="best", markerscale=1.2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
