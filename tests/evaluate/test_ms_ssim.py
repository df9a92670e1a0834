"""3D MS-SSIM against a slow float64 reference written here with numpy."""

import numpy as np
import pytest
import torch

from brainkern.evaluate import ms_ssim3d
from brainkern.evaluate.ms_ssim import DEFAULT_WEIGHTS, number_of_scales


def _slow_ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float, win: int, sigma: float, weights):
    """Direct windowed sums over every valid window position, one volume pair."""
    coords = np.arange(win) - (win - 1) / 2
    g1 = np.exp(-(coords**2) / (2 * sigma**2))
    g1 /= g1.sum()
    window = g1[:, None, None] * g1[None, :, None] * g1[None, None, :]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = 1.0
    for j, w in enumerate(weights):
        pa = np.lib.stride_tricks.sliding_window_view(a, (win, win, win))
        pb = np.lib.stride_tricks.sliding_window_view(b, (win, win, win))
        mu_a = (pa * window).sum(axis=(-3, -2, -1))
        mu_b = (pb * window).sum(axis=(-3, -2, -1))
        var_a = (pa**2 * window).sum(axis=(-3, -2, -1)) - mu_a**2
        var_b = (pb**2 * window).sum(axis=(-3, -2, -1)) - mu_b**2
        cov = (pa * pb * window).sum(axis=(-3, -2, -1)) - mu_a * mu_b
        cs = ((2 * cov + c2) / (var_a + var_b + c2)).mean()
        value *= max(cs, 0.0) ** w
        if j == len(weights) - 1:
            lum = ((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)).mean()
            value *= max(lum, 0.0) ** w
        else:

            def half(v):
                d, h, w_ = (s // 2 * 2 for s in v.shape)
                v = v[:d, :h, :w_]
                return v.reshape(d // 2, 2, h // 2, 2, w_ // 2, 2).mean(axis=(1, 3, 5))

            a, b = half(a), half(b)
    return value


def _smooth_pair(shape, seed, noise):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    # Smooth so that structure survives the coarser scales.
    for axis in range(3):
        base = (base + np.roll(base, 1, axis) + np.roll(base, -1, axis)) / 3
    other = base + noise * rng.standard_normal(shape)
    return base, other


@pytest.mark.parametrize(
    "shape, win, sigma",
    [((16, 16, 16), 7, 1.5), ((17, 15, 22), 5, 1.0), ((32, 28, 30), 7, 1.5)],
)
def test_matches_slow_reference(shape, win, sigma):
    a, b = _smooth_pair(shape, seed=1, noise=0.3)
    fit = number_of_scales(shape, win)
    weights = [w / sum(DEFAULT_WEIGHTS[:fit]) for w in DEFAULT_WEIGHTS[:fit]]
    expected = _slow_ms_ssim(a, b, 4.0, win, sigma, weights)
    ta = torch.from_numpy(a)[None, None]
    tb = torch.from_numpy(b)[None, None]
    got = ms_ssim3d(ta, tb, data_range=4.0, win_size=win, sigma=sigma)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    got32 = ms_ssim3d(ta.float(), tb.float(), data_range=4.0, win_size=win, sigma=sigma)
    assert got32.item() == pytest.approx(expected, rel=1e-4)


def test_batch_is_per_pair_and_identity_is_one():
    pairs = [_smooth_pair((24, 24, 24), seed=s, noise=n) for s, n in ((0, 0.1), (1, 0.5), (2, 1.0))]
    a = torch.stack([torch.from_numpy(p[0]) for p in pairs])[:, None]
    b = torch.stack([torch.from_numpy(p[1]) for p in pairs])[:, None]
    batch = ms_ssim3d(a, b, data_range=4.0)
    single = torch.cat([ms_ssim3d(a[i : i + 1], b[i : i + 1], data_range=4.0) for i in range(3)])
    torch.testing.assert_close(batch, single)
    assert batch[0] > batch[1] > batch[2]  # more noise, less similar
    torch.testing.assert_close(ms_ssim3d(a, a, data_range=4.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(ms_ssim3d(a, b, data_range=4.0), ms_ssim3d(b, a, data_range=4.0))


def test_works_at_64_cubed_with_four_scales():
    assert number_of_scales((64, 64, 64), 7) == 4
    x = torch.rand(2, 1, 64, 64, 64)
    value = ms_ssim3d(x, x.flip(0), data_range=1.0)
    assert value.shape == (2,) and torch.all((value >= 0) & (value < 1))


def test_errors():
    with pytest.raises(ValueError, match="one shape"):
        ms_ssim3d(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 9), 1.0)
    with pytest.raises(ValueError, match="smaller than the 7-voxel window"):
        ms_ssim3d(torch.zeros(1, 1, 6, 8, 8), torch.zeros(1, 1, 6, 8, 8), 1.0)
    with pytest.raises(ValueError, match="only 2 scales"):
        ms_ssim3d(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16), 1.0, weights=[0.2] * 5)
    with pytest.raises(ValueError, match="odd"):
        ms_ssim3d(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 1, 16, 16, 16), 1.0, win_size=6)


def test_low_shifts_signed_data_to_start_at_zero():
    a, b = _smooth_pair((24, 24, 24), seed=3, noise=0.3)
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    lo = float(min(ta.min(), tb.min()))
    torch.testing.assert_close(
        ms_ssim3d(ta, tb, data_range=4.0, low=lo), ms_ssim3d(ta - lo, tb - lo, data_range=4.0)
    )
    # A [-1, 1] "brain" (a ball at 0.6 on a -1 background) against the same ball shifted by
    # two voxels: near-identical volumes. Unshifted, the luminance term goes negative
    # where the local means differ in sign (the rims) and the score collapses; with low=-1 it
    # is high, as for any near-identical pair.
    z, y, x = torch.meshgrid(*(torch.arange(24.0),) * 3, indexing="ij")
    ball = lambda cx: torch.where((x - cx) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 < 49, 0.6, -1.0)  # noqa: E731
    p, q = ball(11.0)[None, None].double(), ball(13.0)[None, None].double()
    shifted = ms_ssim3d(p, q, data_range=2.0, low=-1.0).item()
    assert shifted > 0.5
    assert ms_ssim3d(p, q, data_range=2.0).item() < shifted


# --- the "kwon2019" convention ----------------------------------------------------------------


def _slow_kwon2019(a: np.ndarray, b: np.ndarray) -> float:
    """Kwon et al.'s code path, transcribed with scipy's Gaussian filter, one pair of 3D volumes."""
    from scipy.ndimage import gaussian_filter

    def blur(v):
        return gaussian_filter(v, sigma=1.5)  # radius 6, mode 'reflect', as the authors call it

    def half(v):
        d, h, w_ = (s // 2 * 2 for s in v.shape)
        v = v[:d, :h, :w_]
        return v.reshape(d // 2, 2, h // 2, 2, w_ // 2, 2).mean(axis=(1, 3, 5))

    c1, c2 = 0.01**2, 0.03**2
    ssim, cs = [], []
    for j in range(5):
        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        cs_map = (2 * cov + c2) / (var_a + var_b + c2)
        ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        ssim.append(ssim_map.mean())
        cs.append(cs_map.mean())
        if j < 4:
            a, b = half(a), half(b)
    value = 1.0
    for j in range(4):
        value *= cs[j] ** DEFAULT_WEIGHTS[j] * ssim[4] ** DEFAULT_WEIGHTS[4]
    return value


def _signed_pair(shape, seed, noise):
    """A smooth pair squashed into (-1, 1), as generator output and real data are."""
    a, b = _smooth_pair(shape, seed, noise)
    return np.tanh(a), np.tanh(b)


@pytest.mark.parametrize("shape", [(16, 16, 16), (20, 18, 16), (32, 32, 32)])
def test_kwon2019_matches_scipy_transcription(shape):
    # 16 per side reaches a single voxel at the coarsest scale, so the 13-tap filter
    # reflects many times over there (and over 2^3 and 4^3 one and two scales up).
    a, b = _signed_pair(shape, seed=4, noise=0.3)
    expected = _slow_kwon2019(a, b)
    assert 0.1 < expected < 0.99  # a real pair: every term positive, none trivial
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    got = ms_ssim3d(ta, tb, convention="kwon2019")
    assert got.shape == (1,) and got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-6)
    got32 = ms_ssim3d(ta.float(), tb.float(), convention="kwon2019")
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(expected, rel=1e-4)


def test_kwon2019_filter_reflects_like_scipy_below_the_radius():
    # The filter alone, on lines shorter than its radius (6): scipy's half-sample
    # reflection repeated, including the lengths 1, 2 and 4 the coarse scales reach.
    from scipy.ndimage import gaussian_filter

    from brainkern.evaluate.ms_ssim import _KWON_RADIUS, _blur_same

    taps = torch.arange(-_KWON_RADIUS, _KWON_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (taps / 1.5) ** 2)
    g = g / g.sum()
    rng = np.random.default_rng(5)
    for shape in ((1, 2, 4), (3, 5, 13), (4, 4, 4)):
        v = rng.standard_normal(shape)
        got = _blur_same(torch.from_numpy(v)[None, None], g)[0, 0].numpy()
        np.testing.assert_allclose(got, gaussian_filter(v, sigma=1.5), rtol=0, atol=1e-12)


def test_kwon2019_identity_symmetry_and_batch():
    pairs = [_signed_pair((16, 20, 24), seed=s, noise=n) for s, n in ((0, 0.1), (1, 0.5), (2, 1.0))]
    a = torch.stack([torch.from_numpy(p[0]) for p in pairs])[:, None]
    b = torch.stack([torch.from_numpy(p[1]) for p in pairs])[:, None]
    batch = ms_ssim3d(a, b, convention="kwon2019")
    single = torch.cat([ms_ssim3d(a[i : i + 1], b[i : i + 1], convention="kwon2019") for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-12, atol=0)
    assert batch[0] > batch[1] > batch[2]  # more noise, less similar
    torch.testing.assert_close(ms_ssim3d(b, a, convention="kwon2019"), batch, rtol=1e-12, atol=0)
    torch.testing.assert_close(ms_ssim3d(a, a, convention="kwon2019"), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(ms_ssim3d(a.float(), a.float(), convention="kwon2019"), torch.ones(3))


def test_kwon2019_differs_from_standard_on_signed_data():
    # The lead's two calls on [-1, 1] volumes; the conventions must not coincide.
    a, b = _signed_pair((32, 32, 32), seed=6, noise=0.5)
    ta, tb = torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()
    standard = ms_ssim3d(ta, tb, 2.0, low=-1.0).item()
    kwon = ms_ssim3d(ta, tb, convention="kwon2019").item()
    assert kwon == pytest.approx(_slow_kwon2019(a, b), rel=1e-4)
    assert abs(kwon - standard) > 1e-3


def test_kwon2019_errors():
    from brainkern.evaluate.ms_ssim import CONVENTIONS, KWON2019_MIN_SIDE, minimum_side

    assert CONVENTIONS == ("standard", "kwon2019")
    assert KWON2019_MIN_SIDE == 16 and minimum_side("kwon2019") == 16 and minimum_side("standard") == 7
    x = torch.zeros(1, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="every side >= 16"):
        ms_ssim3d(torch.zeros(1, 1, 16, 15, 16), torch.zeros(1, 1, 16, 15, 16), convention="kwon2019")
    with pytest.raises(ValueError, match="without data_range=2.0, low=-1.0"):
        ms_ssim3d(x, x, 2.0, low=-1.0, convention="kwon2019")
    for option in ({"win_size": 11}, {"sigma": 1.0}, {"weights": [0.2] * 5}, {"k1": 0.02}, {"k2": 0.06}):
        with pytest.raises(ValueError, match=f"without {next(iter(option))}="):
            ms_ssim3d(x, x, convention="kwon2019", **option)
    with pytest.raises(ValueError, match="convention must be one of"):
        ms_ssim3d(x, x, 2.0, convention="kwon")
    with pytest.raises(ValueError, match="needs data_range"):
        ms_ssim3d(x, x)
