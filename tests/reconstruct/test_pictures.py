"""Reconstruction pictures: stimulus/reconstruction grids, tilings, the accuracy-by-SNR figure."""

from __future__ import annotations

import numpy as np
import pytest

mpimg = pytest.importorskip("matplotlib.image")
ndimage = pytest.importorskip("scipy.ndimage")

from brainkern.reconstruct.identify import identify, shuffled_control  # noqa: E402
from brainkern.reconstruct.pictures import (  # noqa: E402
    identification_figure,
    reconstruction_grid,
    save_image_grid,
)

PANEL_PX = 96  # 0.96 inch panels at 100 dpi


def _read(path) -> np.ndarray:
    """The PNG as uint8 RGB (H, W, 3)."""
    img = mpimg.imread(str(path))
    return np.round(img[..., :3] * 255).astype(np.uint8)


def _squares(rgb: np.ndarray, value: int) -> list[tuple[int, int]]:
    """(height, width) of each connected region whose pixels are exactly ``value`` in all channels."""
    labels, count = ndimage.label((rgb == value).all(axis=2))
    boxes = ndimage.find_objects(labels)
    return sorted((b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes[:count])


def test_grid_fixed_value_range_and_equal_panels(tmp_path):
    white, black = np.ones((16, 16), np.float32), -np.ones((16, 16), np.float32)
    stimuli = np.stack([white, black])
    path = reconstruction_grid(stimuli, {"m": np.stack([black, white])}, tmp_path / "g.png", titles=False)
    assert path == tmp_path / "g.png" and path.is_file()
    rgb = _read(path)
    for value in (255, 0):  # +1 renders white, -1 black: two equal square panels of each
        sq = _squares(rgb, value)
        assert len(sq) == 2, sq
        for h, w in sq:
            assert abs(h - PANEL_PX) <= 2 and abs(w - PANEL_PX) <= 2


def test_grid_does_not_stretch_each_image(tmp_path):
    half = np.full((2, 16, 16), 0.5, np.float32)
    half[:, :, :8] = -0.5  # per-image scaling would draw this black and white
    rgb = _read(reconstruction_grid(half, {"m": half}, tmp_path / "g.png", titles=False))
    assert not (rgb == 0).all(axis=2).any() and not (rgb == 255).all(axis=2).any()
    grey = rgb[..., 0]
    # -0.5 and +0.5 on the [-1, 1] grey ramp: about 64 and 191
    assert np.sum(np.abs(grey.astype(int) - 64) <= 2) > 3 * PANEL_PX * PANEL_PX // 2
    assert np.sum(np.abs(grey.astype(int) - 191) <= 2) > 3 * PANEL_PX * PANEL_PX // 2


@pytest.mark.parametrize(("n", "columns", "rows"), [(4, 10, 2), (8, 4, 4), (3, 1, 6)])
def test_grid_shape_follows_rows_and_columns(tmp_path, n, columns, rows):
    x = np.random.default_rng(0).uniform(-1, 1, (n, 16, 16)).astype(np.float32)
    rgb = _read(reconstruction_grid(x, {"m": x[::-1]}, tmp_path / "g.png", columns=columns, titles=False))
    h, w = rgb.shape[:2]
    cols = min(n, columns)
    assert w / h == pytest.approx(cols / rows, rel=0.12)
    assert abs(w - cols * PANEL_PX) <= 0.12 * w


def test_grid_n_labels_and_accuracy(tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, (6, 16, 16)).astype(np.float32)
    rows = {"GAN": x, "ridge": x[::-1]}
    plain = _read(reconstruction_grid(x, rows, tmp_path / "a.png", n=4, titles=False))
    labelled = _read(reconstruction_grid(x, rows, tmp_path / "b.png", n=4))
    with_acc = _read(
        reconstruction_grid(x, rows, tmp_path / "c.png", n=4, accuracy={"GAN": np.linspace(0, 1, 6)})
    )
    assert plain.shape[0] == labelled.shape[0] < with_acc.shape[0]  # a text strip under each method row
    assert plain.shape[1] < labelled.shape[1] == with_acc.shape[1]  # room for the row labels
    with pytest.raises(ValueError, match="not a row"):
        reconstruction_grid(x, rows, tmp_path / "d.png", accuracy={"other": np.ones(6)})
    with pytest.raises(ValueError, match="at least"):
        reconstruction_grid(x, {"short": x[:2]}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="at least one row"):
        reconstruction_grid(x, {}, tmp_path / "d.png")


def test_save_image_grid(tmp_path):
    x = np.zeros((13, 16, 16), np.float32)
    x[3] = 1.0
    path = save_image_grid(x, tmp_path / "sub" / "t.png", columns=5)
    rgb = _read(path)
    assert len(_squares(rgb, 255)) >= 1  # the +1 image is white; 3 rows of up to 5
    assert rgb.shape[1] > rgb.shape[0]
    with pytest.raises(ValueError, match="columns"):
        save_image_grid(x, tmp_path / "t.png", columns=0)
    with pytest.raises(ValueError, match=r"\(n, S, S\)"):
        save_image_grid(x[0], tmp_path / "t.png")


def test_identification_figure(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (10, 16, 16)).astype(np.float32)
    good = identify(x, x + rng.normal(0, 1, x.shape).astype(np.float32))
    chance = identify(x, shuffled_control(x))
    path = identification_figure(
        {0.1: {"GAN": chance, "shuffled": chance}, "inf": {"GAN": good}}, tmp_path / "f.png"
    )
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="feature"):
        identification_figure({1: {"GAN": good}}, tmp_path / "f.png", kind="feature")
    with pytest.raises(ValueError, match="SNR"):
        identification_figure({}, tmp_path / "f.png")
