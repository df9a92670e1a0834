"""Kwon et al.'s generation metrics: batch MMD^2, MS-SSIM diversity, the table."""

import math

import numpy as np
import pytest
import torch

from brainkern.evaluate import (
    batch_mmd2,
    format_table,
    generation_table,
    matched_noise,
    ms_ssim3d,
    ms_ssim_diversity,
    voxel_sd,
)
from brainkern.evaluate import generation as gen

GRID = (16, 16, 16)


def _cohort(n: int, seed: int, grid=GRID) -> torch.Tensor:
    """Brain-like stand-ins: one smooth template, each subject scaled, shifted and noisy."""
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in grid]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    template = torch.exp(-(x**2 / 0.4 + y**2 / 0.5 + z**2 / 0.3)) * 1.6 - 0.8
    scale = 1 + 0.1 * torch.randn(n, 1, 1, 1, generator=g)
    shift = 0.05 * torch.randn(n, 1, 1, 1, generator=g)
    noise = 0.05 * torch.randn(n, *grid, generator=g)
    return (template * scale + shift + noise).clamp(-1, 1)[:, None]


def _explicit_mmd(real: torch.Tensor, fake: torch.Tensor, ri: torch.Tensor, fi: torch.Tensor) -> torch.Tensor:
    """||mean(x_t) - mean(y_t)||^2 per test, in float64, one test at a time."""
    out = []
    for t in range(ri.shape[0]):
        x = real[ri[t]].double().flatten(1)
        y = fake[fi[t]].double().flatten(1)
        out.append(((x.mean(0) - y.mean(0)) ** 2).sum())
    return torch.stack(out)


# --------------------------------------------------------------------------- batch_mmd2


@pytest.mark.parametrize("n_tests", [1, 7, 23])
def test_batch_mmd2_matches_explicit_loop(n_tests):
    g = torch.Generator().manual_seed(1)
    real = torch.randn(12, 1, *GRID, generator=g)
    fake = (torch.randn(10, *GRID, generator=g) * 1.3 + 0.2).double().numpy()  # 4-D numpy, float64
    out = batch_mmd2(real, fake, n_tests=n_tests, batch_size=4, seed=3)
    ri, fi = gen._mmd_indices(12, 10, n_tests, 4, 3)
    for t in range(n_tests):  # distinct indices within each test
        assert len(set(ri[t].tolist())) == 4 and len(set(fi[t].tolist())) == 4
    want = _explicit_mmd(real[:, 0], torch.from_numpy(fake), ri, fi)
    assert out["mmd2"] == pytest.approx(float(want.mean()), rel=1e-5)
    assert out["mmd2_std"] == pytest.approx(float(want.std(correction=0)), rel=1e-4, abs=1e-6)
    assert out["mmd2_per_voxel"] == pytest.approx(float(want.mean()) / math.prod(GRID), rel=1e-5)
    assert out["n_tests"] == n_tests and out["batch_size"] == 4
    assert all(isinstance(out[k], float) for k in ("mmd2", "mmd2_std", "mmd2_per_voxel"))


def test_batch_mmd2_chunking_does_not_change_the_result(monkeypatch):
    real, fake = _cohort(10, 0), _cohort(9, 1) + 0.1
    whole = batch_mmd2(real, fake, n_tests=13, batch_size=3, seed=5)
    monkeypatch.setattr(gen, "_CHUNK_BYTES", 1)  # one test per chunk
    one_by_one = batch_mmd2(real, fake, n_tests=13, batch_size=3, seed=5)
    assert one_by_one["mmd2"] == pytest.approx(whole["mmd2"], rel=1e-6)
    assert one_by_one["mmd2_std"] == pytest.approx(whole["mmd2_std"], rel=1e-5)


def test_batch_mmd2_separates_identical_from_shifted_sets():
    real = _cohort(24, 0)
    same = batch_mmd2(real, real, n_tests=20, batch_size=8, seed=0)["mmd2"]
    other = batch_mmd2(real, _cohort(24, 1), n_tests=20, batch_size=8, seed=0)["mmd2"]
    shifted = batch_mmd2(real, real + 0.2, n_tests=20, batch_size=8, seed=0)["mmd2"]
    # A shift of 0.2 adds exactly 0.04 per voxel to ||mean difference||^2 on average.
    assert shifted > 5 * max(same, other)
    assert shifted - same == pytest.approx(0.04 * math.prod(GRID), rel=0.5)
    assert 0 < same and 0 < other


def test_batch_mmd2_is_reproducible_and_seed_dependent():
    real, fake = _cohort(12, 0), _cohort(12, 1)
    a = batch_mmd2(real, fake, n_tests=6, batch_size=4, seed=11)
    b = batch_mmd2(real, fake, n_tests=6, batch_size=4, seed=11)
    c = batch_mmd2(real, fake, n_tests=6, batch_size=4, seed=12)
    assert a == b
    assert a["mmd2"] != c["mmd2"]


def test_batch_mmd2_reads_memmaps(tmp_path):
    real, fake = _cohort(9, 0), _cohort(9, 1)
    mm = np.lib.format.open_memmap(
        tmp_path / "fake.npy", mode="w+", dtype=np.float32, shape=tuple(fake.shape)
    )
    mm[:] = fake.numpy()
    mm.flush()
    ro = np.load(tmp_path / "fake.npy", mmap_mode="r")
    got = batch_mmd2(real, ro, n_tests=5, batch_size=4, seed=2)
    assert got == batch_mmd2(real, fake, n_tests=5, batch_size=4, seed=2)


def test_batch_mmd2_errors():
    real = torch.zeros(8, 1, *GRID)
    with pytest.raises(ValueError, match="has only 5"):
        batch_mmd2(real, torch.zeros(5, 1, *GRID))
    with pytest.raises(ValueError, match="different grids"):
        batch_mmd2(real, torch.zeros(8, 1, 16, 16, 15))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        batch_mmd2(real, torch.zeros(8, 2, *GRID))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        batch_mmd2(real, torch.zeros(8, *GRID[:2]))
    with pytest.raises(ValueError, match="n_tests"):
        batch_mmd2(real, real, n_tests=0)
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        batch_mmd2(real, [[0.0]])
    bad = real.clone()
    bad[3, 0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        batch_mmd2(real, bad, n_tests=3)


# --------------------------------------------------------------------------- ms_ssim_diversity


def test_ms_ssim_diversity_of_copies_is_one():
    one = torch.rand(1, 1, *GRID, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = ms_ssim_diversity(one.repeat(5, 1, 1, 1, 1), n_pairs=30, batch_size=8)
    assert out["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert out["ms_ssim_std"] == pytest.approx(0.0, abs=1e-5)
    assert out["n_pairs"] == 30


def test_ms_ssim_diversity_of_independent_noise_is_low():
    noise = torch.randn(10, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    assert ms_ssim_diversity(noise, n_pairs=40)["ms_ssim"] < 0.2
    # Structured volumes sharing a template are far more alike.
    assert ms_ssim_diversity(_cohort(10, 0, (24, 24, 24)), n_pairs=40)["ms_ssim"] > 0.5


def test_ms_ssim_diversity_never_pairs_a_volume_with_itself():
    # Two unrelated volumes: every allowed pair scores ms_ssim3d(a, b); a self-pair would score 1.
    pair = torch.randn(2, 1, *GRID, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    expected = float(ms_ssim3d(pair[:1], pair[1:], 2.0, low=-1.0))
    out = ms_ssim_diversity(pair, n_pairs=64, batch_size=16)
    assert expected < 0.5
    assert out["ms_ssim"] == pytest.approx(expected, abs=1e-5)
    assert out["ms_ssim_std"] == pytest.approx(0.0, abs=1e-5)
    # And the draws cover the ordered pairs i != j uniformly.
    i, j = gen._pair_indices(4, 12000, seed=0)
    assert bool((i != j).all())
    counts = torch.zeros(4, 4)
    counts.index_put_((i, j), torch.ones(12000), accumulate=True)
    off = counts[~torch.eye(4, dtype=torch.bool)]
    assert float(off.min()) > 850 and float(off.max()) < 1150  # 1000 expected, sd about 30


def test_ms_ssim_diversity_reproducible_and_chunk_free():
    vols = _cohort(8, 4)
    a = ms_ssim_diversity(vols, n_pairs=25, seed=7, batch_size=50)
    b = ms_ssim_diversity(vols, n_pairs=25, seed=7, batch_size=4)
    assert a["ms_ssim"] == pytest.approx(b["ms_ssim"], abs=1e-6)
    assert a == ms_ssim_diversity(vols, n_pairs=25, seed=7, batch_size=50)
    assert a["ms_ssim"] != ms_ssim_diversity(vols, n_pairs=25, seed=8)["ms_ssim"]


def test_ms_ssim_diversity_errors():
    with pytest.raises(ValueError, match="at least 7 voxels"):
        ms_ssim_diversity(torch.zeros(4, 1, 16, 6, 16))
    with pytest.raises(ValueError, match="pairs of distinct volumes"):
        ms_ssim_diversity(torch.zeros(1, 1, *GRID))
    with pytest.raises(ValueError, match="data_range"):
        ms_ssim_diversity(torch.zeros(4, 1, *GRID), data_range=0)
    bad = torch.zeros(3, 1, *GRID)
    bad[:, :, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ms_ssim_diversity(bad, n_pairs=2)


# --------------------------------------------------------------------------- matched_noise


def test_matched_noise_matches_moments(monkeypatch):
    real = (_cohort(7, 2) * 0.7 + 0.3).numpy()[:, 0]  # 4-D numpy input
    mean, std = float(real.astype(np.float64).mean()), float(real.astype(np.float64).std())
    noise = matched_noise(real, 20, seed=4)
    assert noise.shape == (20, 1, *GRID) and noise.dtype == torch.float32
    assert float(noise.mean()) == pytest.approx(mean, abs=0.02)
    assert float(noise.std()) == pytest.approx(std, rel=0.02)
    # Exactly: standard normal draws of the same seed, scaled by the set's moments,
    # also when the moments are accumulated one volume at a time.
    monkeypatch.setattr(gen, "_CHUNK_BYTES", 1)
    z = torch.randn(20, 1, *GRID, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(matched_noise(real, 20, seed=4), z * std + mean, atol=1e-5)
    with pytest.raises(ValueError, match="n must be"):
        matched_noise(real, 0)
    with pytest.raises(ValueError, match="no volumes"):
        matched_noise(real[:0], 3)


# --------------------------------------------------------------------------- the table


def test_generation_table_ranks_candidates():
    real = _cohort(16, 0)
    collapsed = _cohort(1, 5).repeat(12, 1, 1, 1, 1)
    candidates = {
        "good": _cohort(12, 1),
        "noise": matched_noise(real, 12, seed=1),
        "constant": torch.full((12, 1, *GRID), float(real.mean())),
        "collapsed": collapsed,
    }
    rows = generation_table(real, candidates, n_tests=12, batch_size=4, n_pairs=16, seed=0, progress=True)
    assert [r["model"] for r in rows] == ["good", "noise", "constant", "collapsed", "real"]
    by = {r["model"]: r for r in rows}
    assert by["good"]["mmd2"] < by["noise"]["mmd2"] / 5
    assert by["good"]["mmd2"] < by["constant"]["mmd2"] / 5
    assert by["collapsed"]["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert by["noise"]["ms_ssim"] < by["good"]["ms_ssim"]
    # Real halves: 8 volumes a side at batch 4, finite and as small as a good candidate.
    assert math.isfinite(by["real"]["mmd2"]) and by["real"]["mmd2"] < by["noise"]["mmd2"] / 5
    # Varied sets stay below the collapsed one's 1 (these stand-ins differ only in global
    # scale, offset and noise, so on the shifted [0, 2] scale they are still very alike).
    assert by["good"]["ms_ssim"] < 0.995 and by["real"]["ms_ssim"] < 0.995
    # Every candidate is measured against the same real draws as batch_mmd2 alone.
    alone = batch_mmd2(real, candidates["good"], n_tests=12, batch_size=4, seed=0)
    assert by["good"]["mmd2"] == alone["mmd2"]
    # The voxel-wise spread: 0 for a collapsed set, the data's own for real-like sets.
    assert by["collapsed"]["voxel_sd"] == pytest.approx(0.0, abs=1e-6)
    assert by["constant"]["voxel_sd"] == pytest.approx(0.0, abs=1e-6)
    assert by["good"]["voxel_sd"] == pytest.approx(by["real"]["voxel_sd"], rel=0.3)

    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0] == (
        "| model | MMD^2 (Kwon, linear) | MMD^2 (RBF, voxels) | MMD^2 (RBF, 4^3 blocks) | MS-SSIM "
        "| voxel SD |"
    )
    assert len(lines) == 2 + len(rows)
    assert lines[-1].startswith("| real | ") and "±" in lines[-1]


def test_generation_table_small_real_set_and_errors():
    real, fake = _cohort(6, 0), _cohort(6, 1)
    rows = generation_table(real, {"g": fake}, n_tests=3, batch_size=4, n_pairs=4)
    assert math.isnan(rows[-1]["mmd2"]) and math.isfinite(rows[-1]["ms_ssim"])
    assert "| real | n/a | n/a | n/a | " in format_table(rows)
    with pytest.raises(ValueError, match="rename"):
        generation_table(real, {"real": fake})
    with pytest.raises(ValueError, match="grid"):
        generation_table(real, {"g": fake, "h": torch.zeros(6, 1, 16, 16, 12)}, batch_size=4)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        generation_table(real, {"g": fake[:3]}, batch_size=4)
    with pytest.raises(ValueError, match="at least 16 voxels"):
        generation_table(real[:, :, :12], {"g": fake[:, :, :12]}, batch_size=4, ms_ssim="kwon2019")
    with pytest.raises(ValueError, match="at least 7 voxels"):
        generation_table(torch.zeros(8, 1, 6, 6, 6), {"g": torch.zeros(8, 1, 6, 6, 6)}, batch_size=4)


def test_format_table_numbers():
    row = {
        "model": "m",
        "mmd2": 1234.5678,
        "mmd2_std": 12.3456,
        "mmd2_per_voxel": 0.000123456,
        "ms_ssim": 0.84567,
        "ms_ssim_std": 0.01234,
        "voxel_sd": 0.11745,
    }
    lines = format_table([row]).splitlines()
    assert lines[0] == "| model | MMD^2 (Kwon, linear) | MS-SSIM | voxel SD |"  # only the columns it has
    assert lines[-1] == "| m | 1235 ± 12.35 | 0.846 ± 0.012 | 0.117 |"
    row.update(
        mmd2_rbf4=0.01234, mmd2_rbf4_std=0.0005, nn_ratio=0.987, copy_rate=0.25, ms_ssim_convention="kwon2019"
    )
    lines = format_table([row]).splitlines()
    assert lines[0] == (
        "| model | MMD^2 (Kwon, linear) | MMD^2 (RBF, 4^3 blocks) | MS-SSIM (Kwon conv.) | voxel SD "
        "| NN ratio | near copies |"
    )
    assert lines[-1] == "| m | 1235 ± 12.35 | 0.0123 ± 0.0005 | 0.846 ± 0.012 | 0.117 | 0.99 | 25% |"


def test_voxel_sd_matches_numpy():
    vols = _cohort(9, 3)
    expected = vols.double().numpy().std(axis=0).mean()
    assert voxel_sd(vols) == pytest.approx(expected, rel=1e-9)
    assert voxel_sd(vols.numpy()[:, 0]) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        voxel_sd(vols[:1])
