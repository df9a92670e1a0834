"""The stimulus image domains of brainkern.data.stimuli (Seeliger et al. 2018, seed 004).

Digits (scikit-learn's, upsampled), natural patches (scikit-image's and scikit-learn's sample
photographs, imadjust-like contrast, optional circular aperture) and a folder of images; the
experiment's parts (no test photograph in any other part) and the 2D run's data set.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from brainkern.data.stimuli import (  # noqa: E402
    NATURAL_PHOTOS,
    Stimuli,
    StimulusDataset,
    circle_mask,
    experiment_parts,
    load_domain,
)

N_NATURAL = 200
SIZE = 32


@pytest.fixture(scope="module")
def digits() -> Stimuli:
    return load_domain("digits", progress=False)


@pytest.fixture(scope="module")
def natural() -> Stimuli:
    return load_domain("natural", size=SIZE, n=N_NATURAL, seed=0, progress=False)


# ------------------------------------------------------------------------- digits


def test_digits_are_sklearns_upsampled_in_range(digits):
    from sklearn.datasets import load_digits

    target = load_digits().target
    x = digits.images
    assert x.shape == (1797, 64, 64) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() <= 1.0 and x.max() > 0.99
    # A dark ground: the corners (outside the centred 0.8 S square) are -1 exactly.
    for corner in (x[:, :6, :6], x[:, :6, -6:], x[:, -6:, :6], x[:, -6:, -6:]):
        assert np.all(corner == -1.0)
    np.testing.assert_array_equal(digits.labels, target)
    assert digits.labels.dtype == np.int64 and digits.classes == [str(d) for d in range(10)]
    assert len(set(digits.names)) == 1797 and digits.names[42] == "digits-0042"
    np.testing.assert_array_equal(digits.groups, np.arange(1797))
    assert digits.domain == "digits" and digits.mask is None and digits.size == 64 and len(digits) == 1797
    # The ink is where sklearn's 8x8 image has it: the 8x8 block means of the centred square
    # follow the original's pixels (bright pixels bright, empty pixels dark).
    small = load_digits().images[0] / 16.0
    inner = x[0, 6:57, 6:57][:48, :48]  # 0.8 * 64 = 51 pixels from 6; 48 = 8 x 6
    blocks = inner.reshape(8, 6, 8, 6).mean((1, 3))
    assert np.corrcoef(blocks.ravel(), small.ravel())[0, 1] > 0.8


def test_digits_at_size_32():
    small = load_domain("digits", size=32, progress=False)
    assert small.images.shape == (1797, 32, 32) and small.images.dtype == np.float32
    assert small.images.min() >= -1.0 and small.images.max() <= 1.0
    assert np.all(small.images[:, 0, :] == -1.0) and np.all(small.images[:, :, -1] == -1.0)


# ------------------------------------------------------------------------- natural


def test_natural_patches_are_deterministic_labelled_and_stretched(natural):
    x = natural.images
    assert x.shape == (N_NATURAL, SIZE, SIZE) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert natural.classes == list(NATURAL_PHOTOS) and natural.domain == "natural" and natural.mask is None
    assert natural.labels.dtype == np.int64
    assert natural.labels.min() >= 0 and natural.labels.max() < len(NATURAL_PHOTOS)
    np.testing.assert_array_equal(natural.groups, natural.labels)  # a patch's source is its photograph
    assert len(np.unique(natural.labels)) == len(NATURAL_PHOTOS)  # 200 draws reach all 18
    assert len(set(natural.names)) == N_NATURAL
    # imadjust: each patch's 1st and 99th percentiles sit at black and white (up to the
    # interpolation of percentiles across the clipped tail).
    flat = x.reshape(N_NATURAL, -1)
    stretched = flat.std(1) > 0.05
    assert stretched.mean() > 0.95
    assert np.all(np.percentile(flat[stretched], 1, axis=1) <= -0.9)
    assert np.all(np.percentile(flat[stretched], 99, axis=1) >= 0.9)
    # Deterministic by seed; another seed draws other patches.
    again = load_domain("natural", size=SIZE, n=N_NATURAL, seed=0, progress=False)
    np.testing.assert_array_equal(again.images, x)
    np.testing.assert_array_equal(again.labels, natural.labels)
    other = load_domain("natural", size=SIZE, n=N_NATURAL, seed=1, progress=False)
    assert not np.array_equal(other.labels, natural.labels)
    assert np.abs(other.images - x).mean() > 0.1


def test_natural_masked_by_the_aperture():
    masked = load_domain("natural", size=SIZE, n=12, seed=0, mask=True, progress=False)
    disc = circle_mask(SIZE)
    np.testing.assert_array_equal(masked.mask, disc)
    assert np.all(masked.images[:, ~disc] == 0.0)
    plain = load_domain("natural", size=SIZE, n=12, seed=0, progress=False)
    np.testing.assert_array_equal(masked.images[:, disc], plain.images[:, disc])  # inside untouched
    assert plain.mask is None


def test_circle_mask_by_hand():
    # Pixel centres at -1.5 .. 1.5 from the centre, radius 2: only the corners (1.5^2 * 2 = 4.5) fall out.
    expected = np.ones((4, 4), dtype=bool)
    expected[[0, 0, 3, 3], [0, 3, 0, 3]] = False
    np.testing.assert_array_equal(circle_mask(4), expected)
    big = circle_mask(64)
    assert big.dtype == bool and big.shape == (64, 64)
    np.testing.assert_array_equal(big, big.T)
    np.testing.assert_array_equal(big, big[::-1])
    assert abs(big.sum() - np.pi * 32**2) < 0.01 * np.pi * 32**2


# ------------------------------------------------------------------------- folder


def _png(path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_a_folder_labels_by_subfolder_and_crops_the_centre(tmp_path):
    wide = np.zeros((30, 60))
    wide[:, 30:45] = 255  # the centre square (columns 15..44): left half black, right half white
    tall = np.zeros((60, 30))
    tall[30:45, :] = 255  # the centre square (rows 15..44): top black, bottom white
    _png(tmp_path / "a" / "wide.png", wide)
    _png(tmp_path / "b" / "tall.png", tall)
    _png(tmp_path / "b" / "deeper" / "x.png", np.tile(np.arange(0, 256, 16), (16, 1)))
    _png(tmp_path / "top.png", np.tile(np.arange(0, 256, 16), (16, 1)).T)
    (tmp_path / "notes.txt").write_text("not an image")
    s = load_domain(str(tmp_path), size=16, progress=False)
    assert s.names == ["a/wide.png", "b/deeper/x.png", "b/tall.png", "top.png"]
    assert s.classes == [tmp_path.name, "a", "b"]  # files at the top: one class named by the folder
    np.testing.assert_array_equal(s.labels, [1, 2, 2, 0])
    np.testing.assert_array_equal(s.groups, np.arange(4))
    assert s.images.shape == (4, 16, 16) and s.images.dtype == np.float32 and s.domain == str(tmp_path)
    w, t = s.images[0], s.images[2]
    # Centre-cropped (an off-centre crop would be all black, hence flat mid-grey).
    assert np.all(w[:, :6] < -0.9) and np.all(w[:, 10:] > 0.9)
    assert np.all(t[:6] < -0.9) and np.all(t[10:] > 0.9)
    # A ramp is stretched to the full range.
    assert s.images[1].min() == -1.0 and s.images[1].max() == 1.0


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="no .*file under"):
        load_domain(str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="images.domain must be one of"):
        load_domain("faces", progress=False)
    with pytest.raises(ValueError, match="only the natural domain"):
        load_domain("digits", n=100, progress=False)
    with pytest.raises(ValueError, match="images.size"):
        load_domain("digits", size=4, progress=False)
    with pytest.raises(ValueError, match="images.size"):
        load_domain("digits", size=True, progress=False)
    with pytest.raises(ValueError, match="images.n must be a positive integer"):
        load_domain("natural", n=0, progress=False)  # not the default 3000


# ------------------------------------------------------------------------- experiment_parts


def _check_partition(parts: dict[str, np.ndarray], n: int) -> None:
    assert set(parts) == {"prior", "train", "test", "unused"}
    everything = np.concatenate([parts[k] for k in ("prior", "train", "test", "unused")])
    assert everything.size == n and np.array_equal(np.sort(everything), np.arange(n))  # disjoint, complete
    for idx in parts.values():
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)


def test_experiment_parts_of_digits(digits):
    parts = experiment_parts(digits, 290, 70, seed=0)
    _check_partition(parts, 1797)
    assert (parts["train"].size, parts["test"].size, parts["prior"].size) == (290, 70, 1797 - 360)
    assert parts["unused"].size == 0  # each digit is its own source
    again = experiment_parts(digits, 290, 70, seed=0)
    for k in parts:
        np.testing.assert_array_equal(again[k], parts[k])
    other = experiment_parts(digits, 290, 70, seed=1)
    assert not np.array_equal(other["test"], parts["test"])
    none = experiment_parts(digits, 0, 0)
    assert none["test"].size == none["train"].size == 0 and none["prior"].size == 1797


def test_experiment_parts_keep_test_photographs_out(natural):
    parts = experiment_parts(natural, 40, 30, seed=3)
    _check_partition(parts, N_NATURAL)
    assert (parts["train"].size, parts["test"].size) == (40, 30)
    g = natural.groups
    test_photos = set(g[parts["test"]].tolist())
    assert not test_photos & set(g[parts["prior"]].tolist())
    assert not test_photos & set(g[parts["train"]].tolist())
    # The rest of the test photographs' patches are left out of everything.
    assert set(g[parts["unused"]].tolist()) <= test_photos
    np.testing.assert_array_equal(
        np.sort(np.concatenate([parts["test"], parts["unused"]])),
        np.flatnonzero(np.isin(g, list(test_photos))),
    )
    assert len(test_photos) < len(NATURAL_PHOTOS)


def test_experiment_parts_refuse_too_many(digits, natural):
    with pytest.raises(ValueError, match="fewer than the 1800 test stimuli"):
        experiment_parts(digits, 0, 1800)
    with pytest.raises(ValueError, match="prior of at least 64"):
        experiment_parts(digits, 1700, 70)
    with pytest.raises(ValueError, match="too few"):
        experiment_parts(natural, N_NATURAL - 64, 10)
    with pytest.raises(ValueError, match="must be >= 0"):
        experiment_parts(digits, -1, 10)


# ------------------------------------------------------------------------- StimulusDataset


def test_stimulus_dataset_items_split_and_save(tmp_path):
    ds = StimulusDataset({"domain": "digits", "size": 16, "stimuli": [50, 20]}, progress=False)
    assert len(ds) == 1797 and ds.shape == (16, 16) and ds.channels == 1 and ds.classes == list("0123456789")
    assert ds.settings == {
        "size": 16,
        "mask": False,
        "seed": 0,
        "n": None,
        "stimuli": [50, 20],
        "domain": "digits",
    }
    item = ds[5]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    np.testing.assert_array_equal(item["image"][0].numpy(), ds.stimuli.images[5])
    assert item["label"] == int(ds.labels[5]) and item["subject"] == "digits-0005"
    assert ds[-1]["subject"] == "digits-1796"
    with pytest.raises(IndexError):
        ds[1797]
    split = ds.split()
    parts = experiment_parts(ds.stimuli, 50, 20, seed=0)
    assert split["method"] == "stimuli"
    assert split["parts"]["train"] == parts["prior"].tolist()
    assert split["parts"]["test"] == parts["test"].tolist()
    names = ds.stimuli.names
    assert (
        split["experiment_train"] == [names[i] for i in parts["train"]]
        and len(split["experiment_train"]) == 50
    )
    used = set(split["subjects"]["train"]) | set(split["subjects"]["test"])
    assert not set(split["experiment_train"]) & used
    assert split["subjects"]["test"] == sorted(names[i] for i in parts["test"])
    # No stimuli reserved: the prior gets every image and there is no test part.
    whole = StimulusDataset({"domain": "digits", "size": 16}, progress=False).split()
    assert whole["parts"] == {"train": list(range(1797))} and whole["experiment_train"] == []
    # save: [-1, 1] to 0..255, an 8-bit grey PNG of the image's size.
    from PIL import Image

    image = torch.full((1, 16, 16), -1.0)
    image[0, :, 8:] = 1.0
    image[0, 0, 0] = 0.0
    path = ds.save(image, tmp_path / "deep" / "x.png")
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (16, 16)
        grey = np.asarray(im)
    assert grey[1, 0] == 0 and grey[0, 15] == 255 and grey[0, 0] == 128
    assert np.all(grey[:, 8:] == 255) and np.all(grey[1:, :8] == 0)
    ds.save(np.zeros((16, 16)), tmp_path / "flat.png")
    with Image.open(tmp_path / "flat.png") as im:
        assert np.all(np.asarray(im) == 128)
    with pytest.raises(ValueError, match="expected an image"):
        ds.save(np.zeros((2, 16, 16)), tmp_path / "bad.png")


def test_natural_test_stimuli_come_from_several_photographs_in_turn(natural):
    parts = experiment_parts(natural, 40, 30, seed=1)
    counts = np.bincount(natural.groups[parts["test"]])
    used = counts[counts > 0]
    assert len(used) >= 3  # not all test stimuli from one photograph
    assert used.max() - used.min() <= 1  # taken from each in turn
