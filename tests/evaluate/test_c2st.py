"""The classifier two-sample test (brainkern.evaluate.c2st)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from brainkern.evaluate.c2st import _pool, c2st  # noqa: E402


def _smooth_images(
    rng: np.random.Generator, n: int, shape: tuple[int, ...], bright: float = 0.0
) -> np.ndarray:
    """Noisy images with a blob whose brightness is ``1 + bright``."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blob = np.exp(-sum(g**2 for g in grids) / 0.2)
    return (1 + bright) * blob[None] + 0.3 * rng.standard_normal((n, *shape))


def test_same_distribution_is_near_chance_and_not_significant():
    rng = np.random.default_rng(0)
    real, synth = _smooth_images(rng, 40, (16, 16)), _smooth_images(rng, 40, (16, 16))
    res = c2st(real, synth, permutations=30, seed=0)
    assert 0.3 <= res.accuracy <= 0.7
    assert res.ci_low <= 0.5 <= res.ci_high
    assert res.p_value > 0.05
    assert 0.4 <= res.permuted_mean <= 0.6


def test_different_distributions_are_told_apart():
    rng = np.random.default_rng(1)
    real, synth = _smooth_images(rng, 40, (8, 8, 8)), _smooth_images(rng, 40, (8, 8, 8), bright=0.8)
    import torch

    res = c2st(torch.from_numpy(real), torch.from_numpy(synth), permutations=30, seed=0)
    assert res.accuracy >= 0.9
    assert res.ci_low > 0.5
    assert res.p_value == pytest.approx(1 / 31)  # no permutation reaches the observed accuracy
    assert len(res.fold_accuracies) == 5 and res.n_real == res.n_synthetic == 40
    assert "C2ST accuracy" in str(res) and res.to_dict()["permutations"] == 30


def test_binomial_interval_is_clopper_pearson_of_pooled_predictions():
    from scipy.stats import beta

    rng = np.random.default_rng(2)
    real, synth = _smooth_images(rng, 30, (8, 8)), _smooth_images(rng, 25, (8, 8), bright=0.3)
    res = c2st(real, synth, permutations=0, folds=3)
    n = 55
    k = round(res.accuracy * n)
    assert res.ci_low == pytest.approx(beta.ppf(0.025, k, n - k + 1))
    assert res.ci_high == pytest.approx(beta.ppf(0.975, k + 1, n - k))
    assert np.isnan(res.p_value)


def test_groups_keep_a_subject_in_one_fold_and_permutations_still_move_labels():
    rng = np.random.default_rng(3)
    real, synth = _smooth_images(rng, 30, (8, 8)), _smooth_images(rng, 30, (8, 8), bright=0.8)
    groups = np.repeat(np.arange(20), 3)  # three slices per "subject"; each subject in one set
    res = c2st(real, synth, groups=groups, permutations=20, seed=0)
    assert res.accuracy >= 0.9
    # Permuting within groups only would leave the labels as they are (p = 1).
    assert res.p_value == pytest.approx(1 / 21)


def test_pooling_averages_blocks_and_keeps_channels_apart():
    x = np.arange(2 * 2 * 4 * 4, dtype=np.float64).reshape(2, 2, 4, 4)
    pooled = _pool(x, max_features=8, spatial=2)  # 2 channels x 2x2 blocks
    assert pooled.shape == (2, 8)
    assert pooled[0, 0] == pytest.approx(x[0, 0, :2, :2].mean())
    assert pooled[0, 4] == pytest.approx(x[0, 1, :2, :2].mean())
    assert _pool(x[:, 0], max_features=1000, spatial=2).shape == (2, 16)  # small enough: untouched


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((10, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        c2st(a, rng.standard_normal((10, 8, 9)))
    with pytest.raises(ValueError, match="at least 5 images"):
        c2st(a, a[:3])
    with pytest.raises(ValueError, match="must be images"):
        c2st(a[0], a[0])
    bad = a.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        c2st(bad, a)
    with pytest.raises(ValueError, match="groups"):
        c2st(a, a, groups=np.arange(5))
    with pytest.raises(ValueError, match="spatial"):
        c2st(a, a, spatial=3)


def test_the_quadratic_feature_catches_a_collapsed_set_the_linear_test_misses():
    # The mean image (plus a trace of noise) sits at the centre of the real cloud: no
    # hyperplane separates it, the squared distance from the centre does.
    rng = np.random.default_rng(5)
    real = _smooth_images(rng, 80, (8, 8))
    collapsed = np.repeat(real.mean(0, keepdims=True), 80, 0) + 0.01 * rng.standard_normal((80, 8, 8))
    linear = c2st(real, collapsed, permutations=0, seed=0)
    quadratic = c2st(real, collapsed, permutations=0, seed=0, quadratic=True)
    assert linear.ci_low < 0.5 < linear.ci_high
    assert quadratic.accuracy > 0.75 and quadratic.ci_low > 0.5
