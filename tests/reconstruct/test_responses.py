"""Brain responses for reconstruction: the Gabor-wavelet voxel simulator, the loader, PCA."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("sklearn")
pytest.importorskip("pandas")

from brainkern.reconstruct.responses import (  # noqa: E402
    GaborEncoder,
    Responses,
    average_repeats,
    fit_pca,
    grating,
    load_responses,
    noise_ceiling,
    reduce,
    save_responses,
    simulate,
    simulate_responses,
)

S = 32


@pytest.fixture(scope="module")
def enc() -> GaborEncoder:
    return GaborEncoder(S, 200, seed=0)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """200 smooth random images in [-1, 1] (not the encoder's own reference)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, S, S))
    k = np.exp(-(np.arange(-3, 4) ** 2) / 2.0)
    x = np.apply_along_axis(np.convolve, 1, x, k, mode="same")
    x = np.apply_along_axis(np.convolve, 2, x, k, mode="same")
    return (x / np.abs(x).max()).astype(np.float32)


# --------------------------------------------------------------------------- encoder


def test_pyramid_and_voxel_layout(enc: GaborEncoder) -> None:
    # S = 32: frequencies 1, 2, 4, 8 cycles per image, 8 orientations each.
    assert sorted(set(enc.wavelet_frequencies)) == [1.0, 2.0, 4.0, 8.0]
    for f in (1.0, 2.0, 4.0, 8.0):
        n_pos = (enc.wavelet_frequencies == f).sum() / 8
        sigma = 0.5622 * S / f  # one-octave envelope SD
        assert n_pos == math.ceil(S / (2.0 * sigma)) ** 2
    assert enc.centres.shape == (200, 2) and enc.sizes.shape == (200,) and enc.frequencies.shape == (200,)
    # centres inside the image; RF size linear in eccentricity; density falls with eccentricity
    assert (enc.centres >= -0.5).all() and (enc.centres <= S - 0.5).all()
    np.testing.assert_allclose(enc.sizes, 0.03 * S + 0.2 * enc.eccentricities, rtol=1e-12)
    inner = (enc.eccentricities < S / 8).mean()  # area fraction of that disc is 1/16 of the disc S/2
    assert inner > 0.3
    # larger RFs prefer lower spatial frequencies
    big, small = enc.sizes > np.median(enc.sizes), enc.sizes <= np.median(enc.sizes)
    assert enc.frequencies[big].mean() < enc.frequencies[small].mean()
    np.testing.assert_allclose(enc.pooling.sum(1), 1.0, rtol=1e-5)
    assert (enc.pooling > 0).all()
    # deterministic in the seed
    again, other = GaborEncoder(S, 200, seed=0), GaborEncoder(S, 200, seed=1)
    np.testing.assert_array_equal(again.centres, enc.centres)
    np.testing.assert_array_equal(again.pooling, enc.pooling)
    assert not np.allclose(other.centres, enc.centres)


def test_uniform_image_gives_no_energy_and_texture_does(enc: GaborEncoder, reference: np.ndarray) -> None:
    for level in (0.0, 0.6, -1.0):
        e = enc.energies(np.full((1, S, S), level, dtype=np.float32))
        assert np.abs(e).max() < 1e-4
    blank = enc.encode(np.zeros((1, S, S), np.float32), progress=False)[0]
    textured = enc.encode(reference[:4], progress=False)
    assert (textured > blank + 0.05).all()


def test_a_patch_inside_the_rf_moves_the_voxel_far_more_than_outside(enc: GaborEncoder) -> None:
    blank = enc.encode(np.zeros((1, S, S), np.float32), progress=False)[0]
    spots = [(S / 4, S / 4), (S / 4, 3 * S / 4), (3 * S / 4, S / 4), (3 * S / 4, 3 * S / 4)]
    for v in np.argsort(enc.sizes)[:8]:
        c = tuple(enc.centres[v])
        far = max(spots, key=lambda p: math.dist(p, c))
        kw = {"sigma": float(enc.sizes[v])}
        inside = grating(S, enc.frequencies[v], enc.orientations[v], centre=c, **kw)
        outside = grating(S, enc.frequencies[v], enc.orientations[v], centre=far, **kw)
        r = enc.encode(np.stack([inside, outside]), progress=False)[:, v] - blank[v]
        assert r[0] > 5 * r[1] > 0, (v, r)


def test_orientation_tuning_shows() -> None:
    def pref_vs_orth(e: GaborEncoder) -> np.ndarray:
        voxels = range(20)
        images = []
        for v in voxels:
            for theta in (e.orientations[v], e.orientations[v] + np.pi / 2):
                images.append(grating(S, 4.0, theta, contrast=0.8))
        r = e.encode(np.stack(images), progress=False)[:, list(voxels)]
        return np.array([r[2 * i, i] / r[2 * i + 1, i] for i in range(len(voxels))])

    tuned = pref_vs_orth(GaborEncoder(S, 20, seed=3, tuning=0.9))
    untuned = pref_vs_orth(GaborEncoder(S, 20, seed=3, tuning=0.0, orientation_jitter=0.0))
    assert (tuned > 1.1).all()
    assert np.abs(untuned - 1).max() < 0.05


def test_rf_maps_peak_at_the_centres(enc: GaborEncoder) -> None:
    maps = enc.rf_maps()
    assert maps.shape == (200, S, S) and maps.dtype == np.float32
    peaks = np.array([np.unravel_index(m.argmax(), m.shape) for m in maps])
    assert np.abs(peaks - enc.centres).max() <= 0.5 + 1e-9
    eff = enc.rf_maps(effective=True)
    peaks = np.array([np.unravel_index(m.argmax(), m.shape) for m in eff])
    dist = np.linalg.norm(peaks - enc.centres, axis=1)
    assert (dist <= 1.5 * enc.sizes + 1.0).all()
    assert np.allclose(eff.max(axis=(1, 2)), 1.0)


def test_encode_checks_its_input(enc: GaborEncoder) -> None:
    with pytest.raises(ValueError, match=r"\(N, 32, 32\)"):
        enc.encode(np.zeros((2, 16, 16)), progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        enc.encode(np.full((1, S, S), 255.0), progress=False)
    one = grating(S, 2.0, 0.3)
    np.testing.assert_allclose(
        enc.encode(one[None, None], progress=False), enc.encode(one, progress=False), rtol=1e-6
    )
    # batching does not change the result
    x = np.stack([grating(S, f, 0.2 * f) for f in (1.0, 2.0, 3.0, 5.0, 7.0)])
    np.testing.assert_allclose(
        enc.encode(x, batch_size=2, progress=False), enc.encode(x, progress=False), rtol=1e-5
    )


# --------------------------------------------------------------------------- noise


def test_snr_and_repeats_set_the_noise(enc: GaborEncoder, reference: np.ndarray) -> None:
    signal = enc.signal(reference, reference=reference, progress=False)
    np.testing.assert_allclose(signal.var(axis=0), 1.0, rtol=1e-3)
    for snr, repeats in ((0.5, 1), (0.5, 4), (2.0, 1)):
        y = simulate_responses(
            reference, enc, snr=snr, repeats=repeats, seed=3, reference=reference, progress=False
        )
        noise_var = (y - signal).var()
        # 40,000 draws: relative SE of a variance about 0.7%
        assert noise_var == pytest.approx(1.0 / (snr * repeats), rel=0.04)
        r = np.mean([np.corrcoef(signal[:, v], y[:, v])[0, 1] for v in range(enc.n_voxels)])
        assert r == pytest.approx(noise_ceiling(snr, repeats), abs=0.02)
    a = simulate_responses(reference[:10], enc, seed=7, reference=reference, progress=False)
    b = simulate_responses(reference[:10], enc, seed=7, reference=reference, progress=False)
    c = simulate_responses(reference[:10], enc, seed=8, reference=reference, progress=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    clean = simulate_responses(reference[:10], enc, snr=math.inf, reference=reference, progress=False)
    np.testing.assert_allclose(clean, signal[:10], atol=1e-4)
    with pytest.raises(ValueError, match="snr"):
        simulate_responses(reference[:2], enc, snr=0.0, progress=False)


def test_signal_scale_does_not_depend_on_the_other_images(enc: GaborEncoder, reference: np.ndarray) -> None:
    test = reference[:3]
    alone = enc.signal(test, progress=False)
    with_others = enc.signal(np.concatenate([test, reference[100:140] * 0.1]), progress=False)
    np.testing.assert_allclose(with_others[:3], alone, atol=1e-4)


def test_noise_ceiling_by_hand() -> None:
    assert noise_ceiling(1.0) == pytest.approx(math.sqrt(0.5))
    assert noise_ceiling(1.0, 13) == pytest.approx(math.sqrt(13 / 14))
    assert noise_ceiling(0.25, 2) == pytest.approx(math.sqrt(0.5 / 1.5))
    assert noise_ceiling(math.inf, 2) == 1.0


def test_simulate_a_whole_experiment(enc: GaborEncoder, reference: np.ndarray) -> None:
    train, test = reference[:60], reference[60:70]
    names = [f"img-{k}" for k in range(70)]
    r = simulate(
        train, test, enc, train_names=names[:60], test_names=names[60:], snr=0.5, seed=2, progress=False
    )
    assert r.data.shape == (70, 200) and r.part == ["train"] * 60 + ["test"] * 10 and r.stimuli == names
    assert r.n_averaged.tolist() == [2] * 60 + [13] * 10
    expect = simulate_responses(test, enc, snr=0.5, repeats=13, seed=[2, 1], reference=train, progress=False)
    np.testing.assert_array_equal(r.data[60:], expect)
    # test rows average 13 trials: much closer to the noise-free signal than the 2-trial training rows
    sig = enc.signal(reference[:70], reference=train, progress=False)
    err = (r.data - sig) ** 2
    assert err[60:].mean() < 0.3 * err[:60].mean()
    with pytest.raises(ValueError, match="one name per image"):
        simulate(train, test, enc, train_names=names[:5], test_names=names[60:], progress=False)


# --------------------------------------------------------------------------- PCA


def test_pca_is_fitted_on_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((6, 40))
    train = rng.standard_normal((80, 6)) * [10, 6, 4, 2, 1, 0.5] @ basis + 0.05 * rng.standard_normal(
        (80, 40)
    )
    test = rng.standard_normal((10, 6)) @ basis
    tr, te, pca = reduce(train, test, 0.99)
    tr2, te2, pca2 = reduce(train, test + 1e6, 0.99)
    np.testing.assert_allclose(pca2.components_, pca.components_)
    np.testing.assert_allclose(pca.mean_, train.mean(0))
    # the smallest number of components that keeps >= 99% of the training variance (by hand)
    centred = train - train.mean(0)
    sv = np.linalg.svd(centred, compute_uv=False)
    share = np.cumsum(sv**2) / (sv**2).sum()
    k = int(np.searchsorted(share, 0.99) + 1)
    assert pca.n_components_ == k and tr.shape == (80, k) and te.shape == (10, k)
    assert pca.explained_variance_ratio_.sum() >= 0.99
    np.testing.assert_allclose(te, (test - train.mean(0)) @ pca.components_.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(tr2, tr, rtol=1e-5, atol=1e-4)
    assert reduce(train, test, 0.9)[2].n_components_ < k
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        fit_pca(train, 1.5)
    mixed = Responses(train[:4], ["a", "b", "c", "d"], ["train", "train", "test", "train"])
    with pytest.raises(ValueError, match="select"):
        fit_pca(mixed)
    with pytest.raises(ValueError, match="like train"):
        reduce(train, test[:, :5])


# --------------------------------------------------------------------------- loader


def _write_table(path, stimuli, parts, repeats=None, sep=","):
    lines = [sep.join(["stimulus", "part"] + (["repeat"] if repeats is not None else []))]
    for i, (s, p) in enumerate(zip(stimuli, parts, strict=True)):
        row = [s, p] + ([str(repeats[i])] if repeats is not None else [])
        lines.append(sep.join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nifti_series_and_table(tmp_path) -> None:
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(1)
    t = 6
    series = np.zeros((4, 5, 3, t), dtype=np.float32)
    live = rng.random((4, 5, 3)) < 0.5
    series[live] = rng.standard_normal((int(live.sum()), t)) + 100.0
    series[0, 0, 0] = 7.0  # constant over time: left out by default
    live[0, 0, 0] = False
    affine = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -60], [0, 0, 2.5, -20], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(series, affine), tmp_path / "bold.nii.gz")
    table = _write_table(tmp_path / "t.csv", ["a", "b", "a", "c", "b", "d"], ["train"] * 4 + ["Test", "test"])
    r = load_responses(tmp_path / "bold.nii.gz", table)
    assert r.data.shape == (t, int(live.sum()))
    np.testing.assert_allclose(r.data, series[live].T)
    assert r.voxels["affine"] == affine.tolist() and r.voxels["shape"] == [4, 5, 3]
    np.testing.assert_array_equal(r.voxels["indices"], np.argwhere(live))
    assert r.part == ["train"] * 4 + ["test"] * 2 and r.stimuli[:2] == ["a", "b"]
    # an explicit mask picks its voxels, including constant ones
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[0, 0, 0] = mask[1, 2, 0] = mask[3, 4, 2] = 1
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii")
    rm = load_responses(tmp_path / "bold.nii.gz", table, mask=tmp_path / "mask.nii")
    np.testing.assert_allclose(rm.data, series[mask > 0].T)
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "moved.nii")
    with pytest.raises(ValueError, match="affine"):
        load_responses(tmp_path / "bold.nii.gz", table, mask=tmp_path / "moved.nii")
    # and the saved array round-trips
    back = load_responses(
        save_responses(r, tmp_path / "out") / "responses.npy", tmp_path / "out" / "stimuli.csv"
    )
    np.testing.assert_array_equal(back.data, r.data)
    assert back.stimuli == r.stimuli and back.part == r.part


def test_array_formats_and_round_trip(tmp_path) -> None:
    data = np.arange(15, dtype=np.float32).reshape(5, 3) / 7
    np.save(tmp_path / "r.npy", data)
    table = _write_table(
        tmp_path / "t.tsv", list("abcab"), ["train"] * 3 + ["test"] * 2, [1, 1, 1, 2, 2], "\t"
    )
    r = load_responses(tmp_path / "r.npy", table)
    np.testing.assert_array_equal(r.data, data)
    assert r.repeat.tolist() == [1, 1, 1, 2, 2]
    back = load_responses(save_responses(r, tmp_path / "o") / "responses.npy", tmp_path / "o" / "stimuli.csv")
    np.testing.assert_array_equal(back.data, data)
    assert (back.stimuli, back.part, back.repeat.tolist()) == (r.stimuli, r.part, r.repeat.tolist())
    # CSV of numbers, with and without a header row
    np.savetxt(tmp_path / "r.csv", data, delimiter=",")
    np.testing.assert_allclose(load_responses(tmp_path / "r.csv", table).data, data, rtol=1e-6)
    np.savetxt(tmp_path / "h.csv", data, delimiter=",", header="v1,v2,v3", comments="")
    np.testing.assert_allclose(load_responses(tmp_path / "h.csv", table).data, data, rtol=1e-6)


def test_loader_errors(tmp_path) -> None:
    np.save(tmp_path / "r.npy", np.zeros((4, 3), np.float32))
    short = _write_table(tmp_path / "short.csv", list("abc"), ["train"] * 3)
    with pytest.raises(ValueError, match=r"r\.npy has 4 samples but short\.csv has 3 rows"):
        load_responses(tmp_path / "r.npy", short)
    bad = _write_table(tmp_path / "bad.csv", list("abcd"), ["train", "valid", "test", "train"])
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['valid'\]"):
        load_responses(tmp_path / "r.npy", bad)
    good = _write_table(tmp_path / "good.csv", list("abcd"), ["train"] * 4)
    nan = np.zeros((4, 3), np.float32)
    nan[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(ValueError, match="NaN"):
        load_responses(tmp_path / "nan.npy", good)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_responses(tmp_path / "missing.npy", good)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_responses(tmp_path / "r.npy", tmp_path / "missing.csv")
    (tmp_path / "nocol.csv").write_text("image,part\na,train\nb,train\nc,train\nd,train\n")
    with pytest.raises(ValueError, match="stimulus"):
        load_responses(tmp_path / "r.npy", tmp_path / "nocol.csv")


def test_average_repeats_by_hand() -> None:
    data = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [0, 0]], dtype=np.float32)
    r = Responses(data, ["x", "y", "x", "x", "y", "x"], ["train", "train", "train", "test", "train", "test"])
    a = average_repeats(r)
    assert a.stimuli == ["x", "y", "x"] and a.part == ["train", "train", "test"]
    np.testing.assert_allclose(a.data, [[3, 4], [6, 7], [3.5, 4]])
    assert a.n_averaged.tolist() == [2, 2, 2]
    # averaging averages again weights by how many samples each row holds
    b = average_repeats(Responses(a.data, ["x"] * 3, ["train"] * 3, n_averaged=np.array([1, 2, 3])))
    np.testing.assert_allclose(b.data, [[(3 + 12 + 10.5) / 6, (4 + 14 + 12) / 6]], rtol=1e-6)
    assert b.n_averaged.tolist() == [6]
    assert a.select("test").stimuli == ["x"] and a.select("train").data.shape == (2, 2)
