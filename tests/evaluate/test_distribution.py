"""Kernel MMD^2, the memorisation check and the trivial baselines, against explicit formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brainkern.evaluate import distribution as dist
from brainkern.evaluate import (
    format_table,
    generation_table,
    kernel_mmd2,
    make_baselines,
    mean_volume,
    memorisation,
    nearest_distances,
    rbf_bandwidths,
    training_copies,
    verdict,
    voxel_gaussian,
)
from brainkern.evaluate.generation import memorisation_verdict

GRID = (8, 8, 8)


def _structured(n: int, seed: int, grid=GRID) -> torch.Tensor:
    """Volumes whose variation is spatially smooth (a template moved and scaled) plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in grid]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    out = []
    for _ in range(n):
        c = 0.3 * torch.randn(3, generator=g)
        w = 0.3 + 0.1 * torch.rand(1, generator=g)
        blob = torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / w)
        out.append(blob * 1.8 - 0.9 + 0.03 * torch.randn(grid, generator=g))
    return torch.stack(out)[:, None]


def _explicit_unbiased(x: torch.Tensor, y: torch.Tensor, k) -> float:
    """Unbiased MMD^2 from the kernel function, pair by pair, float64."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return float(kxx + kyy - 2 * kxy)


def _rbf(bandwidths):
    def k(a, b):
        d2 = ((a - b) ** 2).sum()
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    return k


def _poly(a, b):
    return (a @ b / a.numel() + 1) ** 3


# --------------------------------------------------------------------------- kernel MMD^2


@pytest.mark.parametrize("pool", [1, 2])
def test_rbf_and_kid_match_explicit_formulas(pool):
    real, fake = _structured(9, 0), _structured(7, 1) * 0.8
    bw = rbf_bandwidths(real, pool=pool)
    ri, fi = dist._subset_indices(9, 7, 3, 5, 4)
    pooled = (lambda v: F.avg_pool3d(v, pool)) if pool > 1 else (lambda v: v)
    want_rbf = np.mean(
        [_explicit_unbiased(pooled(real[ri[t]]), pooled(fake[fi[t]]), _rbf(bw)) for t in range(3)]
    )
    got = kernel_mmd2(real, fake, kernel="rbf", n_subsets=3, subset_size=5, pool=pool, seed=4)
    assert got["mmd2"] == pytest.approx(want_rbf, rel=1e-9, abs=1e-12)
    assert got["subset_size"] == 5 and got["bandwidths"] == pytest.approx(bw)
    want_kid = np.mean(
        [_explicit_unbiased(pooled(real[ri[t]]), pooled(fake[fi[t]]), _poly) for t in range(3)]
    )
    kid = kernel_mmd2(real, fake, kernel="poly", n_subsets=3, subset_size=5, pool=pool, seed=4)
    assert kid["mmd2"] == pytest.approx(want_kid, rel=1e-9, abs=1e-12) and kid["bandwidths"] is None


def test_rbf_bandwidths_are_the_median_distance_times_half_one_two():
    real = _structured(6, 2)
    flat = real.double().flatten(1)
    d = [float((flat[i] - flat[j]).norm()) for i in range(6) for j in range(i + 1, 6)]
    med = float(np.median(d)) if len(d) % 2 else float(torch.tensor(d).median())  # torch: lower median
    assert rbf_bandwidths(real) == pytest.approx((0.5 * med, med, 2 * med), rel=1e-9)
    pooled = F.avg_pool3d(real, 2).double().flatten(1)
    pairs = [float((pooled[i] - pooled[j]).norm()) for i in range(6) for j in range(i + 1, 6)]
    dp = torch.tensor(pairs, dtype=torch.float64)
    assert rbf_bandwidths(real, pool=2)[1] == pytest.approx(float(dp.median()), rel=1e-9)
    with pytest.raises(ValueError, match="identical"):
        rbf_bandwidths(torch.zeros(4, 1, *GRID))


def test_unbiased_mmd_is_near_zero_for_one_distribution_and_large_for_another():
    a, b = _structured(40, 3), _structured(40, 4)
    same = kernel_mmd2(a, b, n_subsets=10, subset_size=20)
    shifted = kernel_mmd2(a, b + 0.5, n_subsets=10, subset_size=20, bandwidths=tuple(same["bandwidths"]))
    assert abs(same["mmd2"]) < 0.05 < shifted["mmd2"]


def test_kernel_mmd2_errors():
    real = _structured(4, 0)
    with pytest.raises(ValueError, match="kernel"):
        kernel_mmd2(real, real, kernel="linear")
    with pytest.raises(ValueError, match="at least 2"):
        kernel_mmd2(real, real[:1])
    with pytest.raises(ValueError, match="grids"):
        kernel_mmd2(real, torch.zeros(4, 1, 8, 8, 6), kernel="poly")


# --------------------------------------------------------------------------- memorisation


def test_nearest_distances_match_brute_force():
    q, t = _structured(5, 0), _structured(7, 1)
    want = [min(float(((a.double() - b.double()) ** 2).mean().sqrt()) for b in t) for a in q]
    # Gram-matrix distances (|a|^2 + |b|^2 - 2ab) lose a few digits to cancellation in float64.
    assert nearest_distances(q, t) == pytest.approx(want, rel=1e-7)
    loo = [
        min(float(((t[i] - t[j]) ** 2).double().mean().sqrt()) for j in range(7) if j != i) for i in range(7)
    ]
    assert nearest_distances(t, t, leave_one_out=True) == pytest.approx(loo, rel=1e-7)
    assert nearest_distances(t, t) == pytest.approx(np.zeros(7), abs=1e-6)


def test_memorisation_flags_copies_and_not_new_subjects():
    train, held_out, new = _structured(30, 0), _structured(20, 1), _structured(40, 2)
    copies = training_copies(train, 40, seed=0)[0]
    flagged = memorisation(copies, train, held_out)
    assert flagged["nn_ratio"] == pytest.approx(0.0, abs=1e-6) and flagged["copy_rate"] == 1.0
    fresh = memorisation(new, train, held_out)
    assert 0.7 < fresh["nn_ratio"] < 1.4 and fresh["copy_rate"] < 0.2
    assert "held-out" in fresh["reference"]
    loo = memorisation(new, train)
    assert "no held-out" in loo["reference"] and loo["nn_reference_median"] > 0
    with pytest.raises(ValueError, match="quantile"):
        memorisation(new, train, quantile=1.0)


# --------------------------------------------------------------------------- baselines


def test_mean_volume_is_the_voxelwise_mean_repeated():
    train = _structured(6, 0)
    m = mean_volume(train.numpy()[:, 0], 3)  # 4-D numpy input
    assert m.shape == (3, 1, *GRID) and m.dtype == torch.float32
    want = train.double().mean(0, keepdim=True).float()
    torch.testing.assert_close(m, want.expand(3, -1, -1, -1, -1), rtol=0, atol=1e-6)


def test_voxel_gaussian_has_the_training_moments_and_no_spatial_correlation():
    train = _structured(12, 1)
    g = voxel_gaussian(train, 4000, seed=0).double()
    mu, sd = train.double().mean(0), train.double().std(0, correction=0)
    assert torch.allclose(g.mean(0), mu, atol=5 * float(sd.max()) / math.sqrt(4000))
    assert torch.allclose(g.std(0), sd, rtol=0.1, atol=1e-3)
    # Neighbouring voxels vary together in the data, independently in the baseline.
    z = (g - g.mean(0)) / g.std(0).clamp_min(1e-9)
    corr = float((z[..., 1:, :, :] * z[..., :-1, :, :]).mean())
    zt = (train.double() - mu) / sd.clamp_min(1e-9)
    assert abs(corr) < 0.02 < float((zt[..., 1:, :, :] * zt[..., :-1, :, :]).mean())
    assert torch.equal(voxel_gaussian(train, 3, seed=5), voxel_gaussian(train, 3, seed=5))
    with pytest.raises(ValueError, match="at least 2"):
        voxel_gaussian(train[:1], 3)


def test_training_copies_are_training_volumes():
    train = _structured(5, 2)
    vols, rows = training_copies(train, 9, seed=1)
    assert vols.shape == (9, 1, *GRID) and rows.shape == (9,)
    for v, r in zip(vols, rows, strict=True):
        assert torch.equal(v, train[r])
    assert list(make_baselines(train, 4)) == ["mean volume", "voxel Gaussian", "training copies"]


# --------------------------------------------------------------------------- the table


def test_the_table_ranks_the_trivial_generators_as_they_should_be():
    train, held_out = _structured(40, 0), _structured(24, 1)
    cands = make_baselines(train, 32, seed=0)
    rows = generation_table(held_out, cands, train=train, n_tests=8, batch_size=4, n_pairs=8, subset_size=12)
    by = {r["model"]: r for r in rows}
    # The flaw of the linear batch MMD^2: the variance-free mean volume beats real data on it.
    assert by["mean volume"]["mmd2"] < by["training copies"]["mmd2"]
    # The unbiased RBF MMD^2 puts real data (copies, the real halves) first, at about 0.
    assert by["training copies"]["mmd2_rbf"] < by["mean volume"]["mmd2_rbf"] / 2
    assert abs(by["real"]["mmd2_rbf"]) < 0.1
    # On 4^3 blocks the per-voxel Gaussian's independent noise averages away: no structure.
    assert by["voxel Gaussian"]["mmd2_rbf4"] > by["training copies"]["mmd2_rbf4"] + 0.2
    # Memorisation: copies are caught, the Gaussian is not a copy.
    assert by["training copies"]["copy_rate"] == 1.0 and by["training copies"]["nn_ratio"] < 1e-6
    assert by["voxel Gaussian"]["copy_rate"] == 0.0
    assert math.isnan(by["real"]["nn_ratio"])
    table = format_table(rows)
    assert "MMD^2 (RBF, 4^3 blocks)" in table.splitlines()[0] and "near copies" in table
    # Without training volumes there are no memorisation columns.
    rows = generation_table(held_out, {"g": cands["voxel Gaussian"]}, n_tests=4, batch_size=4, n_pairs=4)
    assert "nn_ratio" not in rows[0] and "NN ratio" not in format_table(rows)
    with pytest.raises(ValueError, match="kernel column"):
        generation_table(held_out, cands, kernel_columns=("mmd2_rbf8",))


def test_verdict_counts_better_only_against_every_baseline():
    real = {"model": "real", "mmd2": 1.0, "ms_ssim": 0.9, "voxel_sd": 0.1}
    rows = [
        {
            "model": "trained",
            "mmd2": 2.0,
            "mmd2_rbf": 0.1,
            "ms_ssim": 0.88,
            "voxel_sd": 0.15,
            "nn_ratio": 1.3,
        },  # noqa: E501
        {"model": "a", "mmd2": 1.0, "mmd2_rbf": 0.5, "ms_ssim": 0.5, "voxel_sd": 0.1, "nn_ratio": 0.0},
        {"model": "b", "mmd2": 3.0, "mmd2_rbf": math.nan, "ms_ssim": 1.0, "voxel_sd": 0.0, "nn_ratio": 0.5},
        real,
    ]
    v = verdict(rows, "trained", ["a", "b"])
    assert v["mmd2"] == {"beats": ["b"], "loses": ["a"]}
    assert v["mmd2_rbf"] == {"beats": ["a"], "loses": []}  # NaN comparisons are left out
    assert v["ms_ssim"] == {"beats": ["a", "b"], "loses": []}  # |0.88 - 0.9| is the smallest gap
    assert v["voxel_sd"] == {"beats": ["b"], "loses": ["a"]}
    assert "nn_ratio" not in v  # memorisation is a check, not a ranking
    v = verdict([{**rows[0], "mmd2": 1.0}, *rows[1:]], "trained", ["a", "b"])
    assert v["mmd2"] == {"beats": ["b"], "loses": ["a"]}  # a tie is not a win
    with pytest.raises(KeyError, match="not a row"):
        verdict(rows, "trained", ["c"])


def test_memorisation_verdict():
    def row(ratio, rate):
        return {"memorisation": {"nn_ratio": ratio, "copy_rate": rate, "quantile": 0.05}}

    assert memorisation_verdict(row(1.1, 0.0)) is False
    assert memorisation_verdict(row(0.5, 0.0)) is True  # nearer to the training set than new subjects
    assert memorisation_verdict(row(1.0, 0.2)) is True  # too many near copies
    assert memorisation_verdict({"model": "real"}) is None
