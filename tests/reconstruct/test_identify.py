"""Pairwise identification (Seeliger et al. 2018, section 3.2, with a similarity measure as judge)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

stats = pytest.importorskip("scipy.stats")

from brainkern.reconstruct.identify import (  # noqa: E402
    PAPER_FIGURES,
    format_identification,
    identification,
    identify,
    shuffled_control,
    similarity_matrix,
)


def _smooth_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """Random images with some spatial structure, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, size // 4, size // 4))
    return np.kron(coarse, np.ones((4, 4))).astype(np.float32) + rng.normal(0, 0.1, (n, size, size)).astype(
        np.float32
    )


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# ----------------------------------------------------------------------------- similarity


def test_pixel_similarity_matches_corrcoef():
    x = _smooth_images(5, seed=1)
    r = _smooth_images(5, seed=2)
    S = similarity_matrix(x, r)
    ref = np.array([[_corr(x[i], r[j]) for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(S, ref, atol=1e-10)
    # torch (N, 1, S, S) input gives the same
    S2 = similarity_matrix(torch.from_numpy(x)[:, None], torch.from_numpy(r)[:, None])
    np.testing.assert_allclose(S2, S, atol=1e-12)


def test_masked_similarity_ignores_pixels_outside_mask():
    x = _smooth_images(4, seed=3)
    r = _smooth_images(4, seed=4)
    yy, xx = np.mgrid[:16, :16]
    mask = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 6**2
    S = similarity_matrix(x, r, mask=mask)
    ref = np.array([[_corr(x[i][mask], r[j][mask]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(S, ref, atol=1e-10)
    rng = np.random.default_rng(5)
    x2, r2 = x.copy(), r.copy()
    x2[:, ~mask] = rng.uniform(-1, 1, x2[:, ~mask].shape)
    r2[:, ~mask] = rng.uniform(-1, 1, r2[:, ~mask].shape)
    np.testing.assert_allclose(similarity_matrix(x2, r2, mask=mask), S, atol=1e-12)
    assert not np.allclose(similarity_matrix(x2, r2), similarity_matrix(x, r), atol=1e-3)


def test_feature_similarity_uses_the_callable():
    x = _smooth_images(6, seed=6)
    r = _smooth_images(6, seed=7)
    calls = []

    def quadrant_means(batch: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(batch.shape), batch.dtype))
        q = batch.reshape(batch.shape[0], 1, 2, 8, 2, 8).mean(dim=(3, 5))
        return q.reshape(batch.shape[0], 4)

    S = similarity_matrix(x, r, "feature", quadrant_means, batch_size=4)
    assert calls == [((4, 1, 16, 16), torch.float32), ((2, 1, 16, 16), torch.float32)] * 2
    fx = x.reshape(6, 2, 8, 2, 8).mean(axis=(2, 4)).reshape(6, 4)
    fr = r.reshape(6, 2, 8, 2, 8).mean(axis=(2, 4)).reshape(6, 4)
    ref = np.array([[_corr(fx[i], fr[j]) for j in range(6)] for i in range(6)])
    np.testing.assert_allclose(S, ref, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        similarity_matrix(x, r, "feature")
    with pytest.raises(ValueError, match="must map"):
        similarity_matrix(x, r, "feature", lambda b: b[:1].flatten(1))


def test_constant_image_correlates_zero():
    x = _smooth_images(3, seed=8)
    r = x.copy()
    r[1] = -1.0
    S = similarity_matrix(x, r)
    assert np.isfinite(S).all()
    np.testing.assert_array_equal(S[:, 1], 0.0)


def test_similarity_rejects_bad_input():
    x = _smooth_images(3)
    with pytest.raises(ValueError, match="same shape"):
        similarity_matrix(x, x[:2])
    with pytest.raises(ValueError, match="kind"):
        similarity_matrix(x, x, "ssim")
    with pytest.raises(ValueError, match="mask"):
        similarity_matrix(x, x, mask=np.zeros((16, 16), bool))


# ----------------------------------------------------------------------------- identification


def test_hand_made_3x3_with_a_tie():
    S = np.array(
        [
            [0.9, 0.5, 0.9],  # wins against 1, ties with 2: 1.5 of 2
            [0.8, 0.2, 0.1],  # loses to 0, wins against 2: 1 of 2
            [0.3, 0.4, 0.6],  # wins both: 2 of 2
        ]
    )
    res = identification(S, comparisons=2)  # 2 of 2 distractors: every other image
    ap = res["all_pairs"]
    assert ap["accuracy"] == pytest.approx(4.5 / 6)
    assert [im["all_pairs"] for im in res["images"]] == [0.75, 0.5, 1.0]
    # images above half: 2 wins, one image at exactly 0.5 left out -> P(X >= 2 | n = 2) = 1/4
    assert (ap["above_half"]["k"], ap["above_half"]["n"], ap["above_half"]["ties"]) == (2, 2, 1)
    assert ap["above_half"]["p_value"] == pytest.approx(0.25)
    pp = res["paper"]
    assert pp["overall"] == pytest.approx(0.75)
    assert [im["correct"] for im in res["images"]] == [1.5, 1, 2]
    assert [im["vote"] for im in res["images"]] == [1, 0.5, 1]  # 1 of 2 is a tied vote
    assert pp["by_image"] == pytest.approx(2.5 / 3)
    # comparisons: 4 wins, 1 loss, 1 tie left out -> P(X >= 4 | n = 5) = 6/32
    t = pp["overall_test"]
    assert (t["k"], t["n"], t["ties"]) == (4, 5, 1)
    assert t["p_value"] == pytest.approx(6 / 32)
    assert pp["by_image_test"]["p_value"] == pytest.approx(0.25)
    assert sorted(res["images"][0]["distractors"]) == [1, 2]


def test_perfect_reconstructions_identify_fully():
    x = _smooth_images(20, seed=9)
    res = identify(x, x)["pixel"]
    assert res["all_pairs"]["accuracy"] == 1.0
    assert res["all_pairs"]["ci"] == [1.0, 1.0]
    assert res["paper"]["overall"] == 1.0 and res["paper"]["by_image"] == 1.0
    assert res["paper"]["by_image_test"]["p_value"] == pytest.approx(0.5**20)


def test_shuffled_reconstructions_are_at_chance():
    x = _smooth_images(300, seed=10)
    r = shuffled_control(x, seed=11)
    assert not any(np.array_equal(x[i], r[i]) for i in range(len(x)))  # a derangement
    assert sorted(map(bytes, r)) == sorted(map(bytes, x))  # a permutation
    res = identification(similarity_matrix(x, r), seed=12)
    # each stimulus's own image is one distractor among n-1: expected 0.5 - 0.5/(n-1) = 0.498
    assert res["all_pairs"]["accuracy"] == pytest.approx(0.5, abs=0.03)
    assert res["paper"]["overall"] == pytest.approx(0.5, abs=0.05)
    lo, hi = res["all_pairs"]["ci"]
    assert lo < 0.5 < hi
    assert res["paper"]["by_image_test"]["p_value"] > 0.01


def test_binomial_matches_scipy_and_clopper_pearson():
    rng = np.random.default_rng(13)
    S = rng.normal(size=(40, 40)) + 0.4 * np.eye(40)
    res = identification(S, comparisons=5, seed=3)
    for key, outcomes in (
        ("by_image_test", [im["vote"] for im in res["images"]]),
        ("overall_test", None),
    ):
        t = res["paper"][key]
        if outcomes is not None:
            assert t["k"] == sum(v == 1 for v in outcomes) and t["n"] == 40
        assert t["p_value"] == pytest.approx(
            stats.binomtest(t["k"], t["n"], 0.5, alternative="greater").pvalue
        )
        k, n = t["k"], t["n"]
        assert t["ci"][0] == pytest.approx(stats.beta.ppf(0.025, k, n - k + 1))
        assert t["ci"][1] == pytest.approx(stats.beta.ppf(0.975, k + 1, n - k))
    correct = sum(im["correct"] for im in res["images"])
    assert res["paper"]["overall_test"]["k"] == correct and res["paper"]["overall_test"]["n"] == 200


def test_paper_protocol_draws_distinct_distractors():
    rng = np.random.default_rng(14)
    n = 12
    S = rng.normal(size=(n, n))
    res = identification(S, comparisons=5, seed=7)
    for im in res["images"]:
        d = im["distractors"]
        i = im["index"]
        assert len(d) == 5 and len(set(d)) == 5
        assert i not in d and all(0 <= j < n for j in d)
        assert im["correct"] == sum(S[i, i] > S[i, j] for j in d)
        assert im["vote"] == (1 if im["correct"] >= 3 else 0)
    assert identification(S, comparisons=5, seed=7) == res
    assert identification(S, comparisons=5, seed=8)["images"] != res["images"]
    with pytest.raises(ValueError, match="comparisons"):
        identification(S, comparisons=12)
    with pytest.raises(ValueError, match="square"):
        identification(S[:, :5])


def test_identify_kinds_and_json():
    x = _smooth_images(8, seed=15)
    r = x + np.random.default_rng(16).normal(0, 0.5, x.shape).astype(np.float32)
    assert set(identify(x, r)) == {"pixel"}
    res = identify(x, r, features=lambda b: b.flatten(1)[:, ::3], comparisons=3)
    assert set(res) == {"pixel", "feature"}
    assert res["feature"]["comparisons"] == 3
    json.dumps(res)


def test_format_identification_lists_methods_and_paper_figures():
    x = _smooth_images(10, seed=17)
    results = {
        "GAN latent (ensemble of 15)": identify(x, x),
        "shuffled (chance)": identify(x, shuffled_control(x)),
    }
    text = format_identification(results)
    assert "GAN latent (ensemble of 15)" in text and "shuffled (chance)" in text
    assert "100.0 [100.0, 100.0]" in text
    for name, f in PAPER_FIGURES.items():
        assert f"{name}: {f['overall']:.1f}% overall" in text
    assert "BRAINS: 75.0% overall (350 comparisons), 74.3% by image (70 images)" in text
    assert "human" in text
    only = format_identification(results, paper="vim-1")
    assert "vim-1: 67.6% overall" in only and "BRAINS" not in only
    assert "Seeliger" not in format_identification(results, paper=[])
    with pytest.raises(ValueError, match="unknown"):
        format_identification(results, paper="NSD")
