"""Cross-validation splits: stratified by class, grouped by subject, seeded."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_kfold(
    labels: Sequence, n_splits: int = 5, groups: Sequence | None = None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits, keeping each subject's volumes in one fold.

    Uses scikit-learn's ``StratifiedKFold`` (no groups) or ``StratifiedGroupKFold``
    (groups given: no group is in two test folds, so no subject leaks between a
    fold's training and test sets), shuffled with ``seed``.

    Args:
        labels: ``(N,)`` class of each volume (ints or strings).
        n_splits: number of folds (>= 2).
        groups: ``(N,)`` subject of each volume, or ``None``. Volumes whose group
            is ``None`` are each their own group.
        seed: shuffling seed; the same seed gives the same folds.

    Returns:
        ``n_splits`` pairs ``(train_idx, test_idx)`` of sorted int64 arrays.

    Raises:
        ValueError: fewer than 2 splits, lengths that differ, or a class with fewer
            members (groups, when grouped) than ``n_splits``.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels)
    n = len(y)
    if int(n_splits) != n_splits or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits}")
    if n == 0:
        raise ValueError("stratified_kfold needs at least one label")
    if groups is None:
        classes, counts = np.unique(y, return_counts=True)
        if counts.min() < n_splits:
            c = classes[np.argmin(counts)]
            raise ValueError(f"class {c} has {counts.min()} volume(s), fewer than n_splits={n_splits}")
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = splitter.split(np.zeros(n), y)
    else:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries but labels has {n}")
        g = np.array([f"__volume_{i}" if s is None else str(s) for i, s in enumerate(groups)])
        for c in np.unique(y):
            n_groups = len(np.unique(g[y == c]))
            if n_groups < n_splits:
                raise ValueError(f"class {c} has {n_groups} subject(s), fewer than n_splits={n_splits}")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        folds = splitter.split(np.zeros(n), y, g)
    return [(np.sort(tr).astype(np.int64), np.sort(te).astype(np.int64)) for tr, te in folds]
