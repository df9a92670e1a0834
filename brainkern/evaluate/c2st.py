"""A classifier two-sample test: can a classifier tell real images from synthetic ones?

The machine observer beside Han et al.'s Visual Turing Test (seed 002), after Lopez-Paz
and Oquab (2017): label the real images 1 and the synthetic ones 0, train a classifier on
part of them, and measure its accuracy on the rest. An accuracy of 0.5 means the
classifier cannot tell the two sets apart (as a rater who guesses); 1.0 means it always
can. The test works on 2D slices ``(N, H, W)`` / ``(N, C, H, W)`` and on 3D volumes
``(N, D, H, W)`` / ``(N, C, D, H, W)`` alike: every image is one feature vector.

The classifier (scikit-learn, fitted inside each cross-validation fold on that fold's
training part only, so nothing it learns has seen the images it is scored on):

1. average pooling of each image to at most ``max_features`` values (block means: the
   test then looks at intensities and shapes at a coarser scale, not at voxel noise);
2. standardisation, PCA to ``n_components`` (at most the fold's training size - 1);
3. L2-regularised logistic regression on the components and, with ``quadratic``, one
   more feature, their sum of squares (the squared distance from the
   training part's centre in PCA space): a set that varies too little (a collapsed
   generator, the mean image repeated) or too much is then told apart, not only a set
   with another mean (a linear boundary cannot separate a point at the centre of a cloud
   from the cloud). One feature rather than every square keeps most of the test's power
   on small samples, but not all of it (an extra, noisy feature to weigh), so the plain
   linear test stays the default.

Reported: the cross-validated accuracy (every image predicted once, by the model of the
fold that held it out), its exact binomial 95% interval (Clopper-Pearson, over the
pooled out-of-fold predictions), the per-fold accuracies, and a permutation p-value
(the same cross-validation on ``permutations`` random relabellings of all images;
``p = (1 + #{permuted >= observed}) / (1 + permutations)``, each accuracy pooled over
the folds' held-out images). ``groups`` (e.g. the subject of each slice) keeps
all images of a group in one fold, so slices of one subject never sit on both sides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["C2STResult", "c2st"]


@dataclasses.dataclass(frozen=True)
class C2STResult:
    """The outcome of :func:`c2st`.

    Attributes:
        accuracy: cross-validated accuracy over all ``n_real + n_synthetic`` images.
        ci_low, ci_high: its exact binomial 95% interval (Clopper-Pearson).
        p_value: the permutation p-value of ``accuracy`` (one-sided: above chance).
        fold_accuracies: accuracy of each fold's model on the images it held out.
        permuted_mean: mean accuracy over the permutations (chance, about 0.5).
        n_real, n_synthetic: the images of each set.
        permutations: relabellings behind ``p_value``.
        features: the pooled features per image the classifier saw.
    """

    accuracy: float
    ci_low: float
    ci_high: float
    p_value: float
    fold_accuracies: tuple[float, ...]
    permuted_mean: float
    n_real: int
    n_synthetic: int
    permutations: int
    features: int

    def __str__(self) -> str:
        return (
            f"C2ST accuracy {self.accuracy:.3f} [95% CI {self.ci_low:.3f}, {self.ci_high:.3f}], "
            f"permutation p = {self.p_value:.3g} ({self.permutations} permutations; chance "
            f"{self.permuted_mean:.3f}); {self.n_real} real vs {self.n_synthetic} synthetic, "
            f"{len(self.fold_accuracies)} folds, {self.features} features"
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-able values."""
        out = dataclasses.asdict(self)
        out["fold_accuracies"] = list(self.fold_accuracies)
        return out


def _as_images(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 array ``(N, ...)`` with 2 to 4 dimensions per image."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 3 or arr.ndim > 5:
        raise ValueError(
            f"c2st: {name} must be images (N, H, W), (N, C, H, W), (N, D, H, W) or (N, C, D, H, W); "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"c2st: {name} holds NaN or infinite values")
    return arr


def _pool(x: np.ndarray, max_features: int, spatial: int) -> np.ndarray:
    """Block means over the last ``spatial`` axes, the block side doubling until the image has
    at most ``max_features`` values (edges padded by repetition); ``(N, F)``."""
    lead, grid = x.shape[: x.ndim - spatial], list(x.shape[x.ndim - spatial :])
    factor = 1
    while (
        int(np.prod(lead[1:], dtype=np.int64)) * int(np.prod([-(-g // factor) for g in grid])) > max_features
    ):
        if all(-(-g // factor) == 1 for g in grid):
            break
        factor *= 2
    if factor > 1:
        pads = [(0, 0)] * len(lead) + [(0, (-g) % factor) for g in grid]
        x = np.pad(x, pads, mode="edge")
        shape = list(lead)
        for g in x.shape[len(lead) :]:
            shape += [g // factor, factor]
        x = x.reshape(shape).mean(axis=tuple(range(len(lead) + 1, len(shape), 2)))
    return x.reshape(x.shape[0], -1)


def _with_radius(z: np.ndarray) -> np.ndarray:
    """``(N, K)`` components -> ``(N, K + 1)``: the components and their sum of squares."""
    return np.concatenate([z, (z * z).sum(axis=1, keepdims=True)], axis=1)


def c2st(
    real: Any,
    synthetic: Any,
    *,
    folds: int = 5,
    permutations: int = 100,
    groups: Any = None,
    spatial: int | None = None,
    max_features: int = 4096,
    n_components: int = 32,
    C: float = 1.0,
    quadratic: bool = False,
    seed: int = 0,
) -> C2STResult:
    """Classifier two-sample test of ``real`` against ``synthetic`` images (see the module).

    Args:
        real, synthetic: ``(N, ...)`` arrays or tensors of 2D or 3D images, of one shape
            per image (the two counts may differ).
        folds: stratified cross-validation folds (group-aware with ``groups``).
        permutations: label permutations for the p-value (0: no test, ``p_value`` NaN).
        groups: optional ``(N_real + N_synthetic,)`` group of each image (real first),
            kept within one fold.
        spatial: how many trailing axes are spatial (2 or 3); default 2 for ``(N, H, W)``,
            3 for ``(N, D, H, W)`` and ``(N, C, D, H, W)``; give 2 for ``(N, C, H, W)``
            slices with channels (sequences), which are then never pooled together.
        max_features: pool each image to at most this many values.
        n_components: PCA components (fewer if a fold has fewer training images).
        C: inverse regularisation strength of the logistic regression.
        quadratic: also give the classifier the components' sum of squares (see the module).
        seed: the seed of the folds, the permutations and the solver.

    Returns:
        A :class:`C2STResult`.

    Raises:
        ValueError: images of other dimensions or shapes, non-finite values, fewer than
            ``folds`` images in a set, ``folds < 2``, or ``groups`` of the wrong length.
    """
    from scipy.stats import binomtest
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import (
        StratifiedGroupKFold,
        StratifiedKFold,
        cross_val_predict,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    a, b = _as_images(real, "real"), _as_images(synthetic, "synthetic")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"c2st: real images {a.shape[1:]} and synthetic images {b.shape[1:]} differ in shape"
        )
    folds = int(folds)
    if folds < 2:
        raise ValueError(f"c2st: folds must be >= 2, got {folds}")
    if min(len(a), len(b)) < folds:
        raise ValueError(
            f"c2st: each set needs at least {folds} images for {folds} folds; "
            f"got {len(a)} real, {len(b)} synthetic"
        )
    spatial = (2 if a.ndim == 3 else 3) if spatial is None else int(spatial)
    if spatial not in (2, 3) or a.ndim - 1 - spatial not in (0, 1):
        raise ValueError(f"c2st: spatial={spatial} does not fit images of shape {a.shape[1:]}")
    x = _pool(np.concatenate([a, b]), int(max_features), spatial)
    y = np.concatenate([np.ones(len(a), dtype=np.int64), np.zeros(len(b), dtype=np.int64)])
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(y),):
            raise ValueError(
                f"c2st: groups must have one entry per image ({len(y)}), got shape {groups.shape}"
            )
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    smallest_train = min(len(tr) for tr, _ in cv.split(x, y, groups))
    components = max(1, min(int(n_components), smallest_train - 1, x.shape[1]))
    steps = [StandardScaler(), PCA(n_components=components, random_state=seed)]
    if quadratic:
        steps += [FunctionTransformer(_with_radius), StandardScaler()]
    model = make_pipeline(*steps, LogisticRegression(C=float(C), max_iter=2000))
    predicted = cross_val_predict(model, x, y, cv=cv, groups=groups)
    correct = predicted == y
    fold_acc = tuple(float(correct[test].mean()) for _, test in cv.split(x, y, groups))
    k, n = int(correct.sum()), len(y)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    if permutations > 0:
        # The labels are permuted across all images (scikit-learn's permutation_test_score
        # would permute only within groups, and a group holds one set's images only).
        rng = np.random.default_rng(seed)
        observed = k / n
        perm_scores = np.empty(int(permutations))
        for t in range(int(permutations)):
            y_perm = rng.permutation(y)
            perm_scores[t] = np.mean(cross_val_predict(model, x, y_perm, cv=cv, groups=groups) == y_perm)
        p_value = (1 + int((perm_scores >= observed).sum())) / (1 + int(permutations))
        permuted_mean = float(perm_scores.mean())
    else:
        p_value, permuted_mean = float("nan"), float("nan")
    return C2STResult(
        accuracy=k / n,
        ci_low=float(ci.low),
        ci_high=float(ci.high),
        p_value=float(p_value),
        fold_accuracies=fold_acc,
        permuted_mean=permuted_mean,
        n_real=len(a),
        n_synthetic=len(b),
        permutations=int(permutations),
        features=int(x.shape[1]),
    )
