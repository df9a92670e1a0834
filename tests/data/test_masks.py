"""Brain masks fitted from training volumes (brainkern.data.masks)."""

import numpy as np
import pytest
import torch

from brainkern.data import background_values, foreground_mask


def _maps(n: int, seed: int = 0) -> np.ndarray:
    """``n`` volumes 6x7x5 whose background is a different constant in each (min-max scaled
    maps), with signal in a 2x3x2 box and in one voxel of the first volume only."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 6, 7, 5), dtype=np.float32)
    for i in range(n):
        x[i] = rng.uniform(0.2, 0.6)
        x[i, 2:4, 1:4, 1:3] = rng.uniform(0.7, 1.0, size=(2, 3, 2))
    x[0, 0, 0, 0] = 0.99
    return x


def test_background_is_each_volumes_most_frequent_value():
    x = _maps(4)
    np.testing.assert_allclose(background_values(x), x[:, -1, -1, -1])


def test_mask_is_the_voxels_with_signal_in_most_volumes():
    x = _maps(5)
    mask = foreground_mask(x)
    assert mask.shape == (6, 7, 5) and mask.dtype == bool
    want = np.zeros((6, 7, 5), dtype=bool)
    want[2:4, 1:4, 1:3] = True
    np.testing.assert_array_equal(mask, want)  # the single-volume voxel is not in half of them
    assert foreground_mask(x, fraction=0.2)[0, 0, 0]  # ... but it is in one fifth


def test_mask_takes_channels_flat_rows_and_tensors():
    x = _maps(3)
    want = foreground_mask(x)
    np.testing.assert_array_equal(foreground_mask(torch.from_numpy(x[:, None]))[0], want)
    np.testing.assert_array_equal(foreground_mask(x.reshape(3, -1)), want.ravel())


def test_mask_errors():
    with pytest.raises(ValueError, match="fraction"):
        foreground_mask(_maps(2), fraction=0)
    with pytest.raises(ValueError, match="no voxel"):
        foreground_mask(np.ones((3, 4, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="at least one"):
        foreground_mask(np.ones((0, 4, 4, 4), dtype=np.float32))
