"""FID, precision / recall and feature MMD^2 against explicit references; the table and the PCA picture."""

import math

import numpy as np
import pytest
import torch

scipy = pytest.importorskip("scipy")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from scipy import linalg  # noqa: E402

from brainkern.evaluate import (  # noqa: E402
    feature_mmd2,
    fid,
    fidelity_table,
    format_fidelity_table,
    frechet_distance,
    pca_scatter,
    precision_recall,
)
from brainkern.evaluate.features import AutoencoderExtractor  # noqa: E402
from brainkern.evaluate.fidelity import feature_bandwidths, fidelity_notes  # noqa: E402


def _cov(rng: np.random.Generator, f: int, rank: int) -> np.ndarray:
    a = rng.normal(size=(f, rank))
    return a @ a.T / rank


@pytest.mark.parametrize(("f", "rank1", "rank2"), [(5, 5, 5), (12, 12, 4), (20, 7, 20), (3, 1, 3)])
def test_frechet_distance_matches_scipy_sqrtm(f, rank1, rank2):
    rng = np.random.default_rng(f + rank1)
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    c1, c2 = _cov(rng, f, rank1), _cov(rng, f, rank2)
    root = linalg.sqrtm(c1 @ c2)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root).real)
    got = frechet_distance(mu1, c1, mu2, c2)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-8)


def test_frechet_distance_hand_values_and_errors():
    # Diagonal covariances: sum (m1 - m2)^2 + sum (sqrt(a) - sqrt(b))^2.
    got = frechet_distance([0, 0], np.diag([4.0, 1.0]), [1, 2], np.diag([1.0, 9.0]))
    assert got == pytest.approx(1 + 4 + (2 - 1) ** 2 + (1 - 3) ** 2)
    c = _cov(np.random.default_rng(0), 6, 3)
    assert frechet_distance(np.ones(6), c, np.ones(6), c) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance([0, 0], [[1.0, 0.5], [0.0, 1.0]], [0, 0], np.eye(2))
    with pytest.raises(ValueError, match="expected means"):
        frechet_distance([0, 0, 0], np.eye(2), [0, 0], np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance([0, math.nan], np.eye(2), [0, 0], np.eye(2))


def test_fid_of_feature_sets():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) * 2 + 1
    expected = frechet_distance(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T))
    assert fid(a, b) == pytest.approx(expected)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-9)
    assert fid(torch.from_numpy(a), b) == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ in width"):
        fid(a, b[:, :5])
    with pytest.raises(ValueError, match="at least 2"):
        fid(a, b[:1])


def _brute_precision_recall(real, fake, k):
    """Kynkaanniemi et al. written out with loops: radii from the k-th nearest other point."""

    def radii(x):
        out = []
        for i in range(len(x)):
            d = sorted(math.dist(x[i], x[j]) for j in range(len(x)) if j != i)
            out.append(d[k - 1])
        return out

    rr, rf = radii(real), radii(fake)
    inside_real = [any(math.dist(f, r) <= rr[j] for j, r in enumerate(real)) for f in fake]
    inside_fake = [any(math.dist(r, f) <= rf[j] for j, f in enumerate(fake)) for r in real]
    return sum(inside_real) / len(fake), sum(inside_fake) / len(real)


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (3, 1), (5, 2)])
def test_precision_recall_matches_brute_force(k, seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(25, 4))
    fake = rng.normal(size=(18, 4)) * 1.3 + 0.6
    expected = _brute_precision_recall(real.tolist(), fake.tolist(), k)
    got = precision_recall(real, fake, k)
    assert got == pytest.approx(expected, abs=0)
    assert 0 < min(got) < 1  # the sets overlap partly: a non-trivial case


def test_precision_recall_hand_cases():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(20, 3))
    assert precision_recall(real, real.copy(), 3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, 3) == (0.0, 0.0)
    # Every fake vector at one real point: all inside (precision 1); their radii are 0, so
    # only real points equal to that point are covered (recall 1/20).
    collapsed = np.repeat(real[:1], 10, axis=0)
    assert precision_recall(real, collapsed, 3) == (1.0, 1 / 20)
    # On a line, k = 2: reals at 0..4 have radii 2, 1, 1, 1, 2; fakes at 5.5, 6 and 9 have
    # radii 3.5, 3, 3.5. Fakes 5.5 and 6 (on the surface) lie in the ball of real 4: precision
    # 2/3. Reals 4, 3 and 2 (on the surface) lie in the ball of fake 5.5: recall 3/5.
    real_line = np.arange(5.0)[:, None]
    fake_line = np.array([[5.5], [6.0], [9.0]])
    assert precision_recall(real_line, fake_line, 2) == pytest.approx((2 / 3, 3 / 5))
    assert _brute_precision_recall(real_line.tolist(), fake_line.tolist(), 2) == pytest.approx((2 / 3, 3 / 5))
    with pytest.raises(ValueError, match="k=3 needs more than k"):
        precision_recall(real, real[:3], 3)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(real, real, 0)


def _explicit_mmd2(x, y, kern):
    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    m, n = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def test_feature_mmd2_matches_explicit_unbiased_estimate():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(15, 5)), rng.normal(size=(11, 5)) + 0.4
    assert feature_mmd2(x, y, "linear") == pytest.approx(_explicit_mmd2(x, y, lambda a, b: a @ b.T))
    bw = feature_bandwidths(x)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(15, 1)]
    assert bw == pytest.approx((0.5 * np.median(d), np.median(d), 2 * np.median(d)))

    def rbf(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * s * s)) for s in bw)

    assert feature_mmd2(x, y) == pytest.approx(_explicit_mmd2(x, y, rbf), rel=1e-9)
    assert feature_mmd2(x, y, bandwidths=bw) == pytest.approx(_explicit_mmd2(x, y, rbf), rel=1e-9)
    with pytest.raises(ValueError, match="kernel must be one of"):
        feature_mmd2(x, y, "poly")


def test_notes_name_a_winning_baseline():
    rows = [
        {"name": "gan", "fid": 5.0, "precision": 0.5, "recall": 0.4, "mmd2": 0.2},
        {"name": "training copies", "fid": 1.0, "precision": 0.9, "recall": 0.3, "mmd2": 0.3},
        {"name": "mean volume", "fid": 9.0, "precision": 0.5, "recall": 0.0, "mmd2": 0.9},
    ]
    notes = fidelity_notes(rows, ("training copies", "mean volume"))
    assert len(notes) == 2
    assert notes[0].startswith(
        "the baseline 'training copies' scores at least as well as every model on FID (1 vs gan 5), "
        "Precision (0.9 vs gan 0.5): "
    )
    assert "memorisation" in notes[0]
    # A tie counts.
    assert notes[1].startswith(
        "the baseline 'mean volume' scores at least as well as every model on Precision (0.5 vs gan 0.5): "
    )
    assert fidelity_notes(rows[:1], ("training copies",)) == []


def _blobs(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, 8)] * 3
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    out = []
    for _ in range(n):
        c = 0.3 * torch.randn(3, generator=g) + shift
        out.append(torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / 0.3))
    return torch.stack(out)[:, None]


def test_fidelity_table_with_baselines_and_pca(tmp_path):
    torch.manual_seed(0)
    extractor = AutoencoderExtractor(width=4, code=4)
    real, train = _blobs(20, 1), _blobs(20, 2)
    fakes = {"good": _blobs(20, 3), "shifted": _blobs(20, 4, shift=0.8)}
    table = fidelity_table(real, fakes, extractor, train=train, k=3, seed=0)
    names = [r["name"] for r in table["rows"]]
    assert names == ["good", "shifted", "mean volume", "voxel Gaussian", "training copies"]
    assert table["extractor"] == "autoencoder-3d" and table["n_real"] == 20
    rows = {r["name"]: r for r in table["rows"]}
    assert rows["good"]["fid"] < rows["shifted"]["fid"]
    assert rows["good"]["mmd2"] < rows["shifted"]["mmd2"]
    assert rows["mean volume"]["recall"] <= 1 / 20 and rows["mean volume"]["kind"] == "baseline"
    text = format_fidelity_table(table)
    assert "Features: autoencoder-3d" in text and "| training copies | baseline | 20 |" in text
    assert all(f"- {n}" in text for n in table["notes"])
    with pytest.raises(ValueError, match="baseline's name"):
        fidelity_table(real, {"mean volume": real}, extractor)

    from brainkern.evaluate import extract_features

    feats = {name: extract_features(v, extractor) for name, v in fakes.items()}
    labels = {"real": ["a", "b"] * 10, "good": ["a"] * 20}
    out = pca_scatter(extract_features(real, extractor), feats, labels, tmp_path / "pca.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="one class per row"):
        pca_scatter(extract_features(real, extractor), feats, {"good": ["a"]}, tmp_path / "x.png")
