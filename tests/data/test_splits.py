import numpy as np
import pytest

from brainkern.data import stratified_kfold


def _cohort():
    # 30 subjects, 2-3 volumes each (sessions), imbalanced classes (12 vs 18 subjects)
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for s in range(30):
        label = "patient" if s < 12 else "control"
        for _ in range(int(rng.integers(2, 4))):
            labels.append(label)
            groups.append(f"sub-{s:02d}")
    return np.array(labels), np.array(groups)


def test_grouped_folds_partition_without_subject_leakage():
    labels, groups = _cohort()
    folds = stratified_kfold(labels, n_splits=5, groups=groups, seed=3)
    assert len(folds) == 5
    all_test = np.concatenate([te for _, te in folds])
    assert sorted(all_test.tolist()) == list(range(len(labels)))  # each volume tested once
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert not set(groups[train]) & set(groups[test])
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
        # stratified: every fold tests both classes, in roughly the overall proportion (0.4)
        frac = np.mean(labels[test] == "patient")
        assert 0.2 <= frac <= 0.6


def test_ungrouped_stratification_is_exact_and_seeded():
    labels = np.array([0] * 20 + [1] * 10)
    folds = stratified_kfold(labels, n_splits=5, seed=0)
    for _, test in folds:
        assert np.bincount(labels[test]).tolist() == [4, 2]
    again = stratified_kfold(labels, n_splits=5, seed=0)
    other = stratified_kfold(labels, n_splits=5, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_none_groups_are_singletons():
    labels = [0, 0, 1, 1, 0, 1]
    folds = stratified_kfold(labels, n_splits=2, groups=[None] * 6, seed=0)
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(6))


def test_split_errors():
    with pytest.raises(ValueError, match="n_splits"):
        stratified_kfold([0, 1], n_splits=1)
    with pytest.raises(ValueError, match="class 1 has 2"):
        stratified_kfold([0, 0, 0, 1, 1], n_splits=3)
    with pytest.raises(ValueError, match="subject"):
        stratified_kfold([0, 0, 1, 1], n_splits=2, groups=["a", "b", "c", "c"])
    with pytest.raises(ValueError, match="groups has 3"):
        stratified_kfold([0, 0, 1, 1], n_splits=2, groups=["a", "b", "c"])
