"""The feature network of Seeliger et al.'s image loss (brainkern.reconstruct.features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn")

from brainkern.reconstruct.features import (  # noqa: E402
    FeatureNet,
    _Shift,
    feature_vector,
    load_feature_net,
    save_feature_net,
    train_feature_net,
)


def _net(side: int = 32, seed: int = 0) -> FeatureNet:
    torch.manual_seed(seed)
    return FeatureNet(4, side=side).eval()


def test_shapes_and_pre_activation_maps():
    net = _net(64)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert net(x).shape == (2, 4)
    maps = net.features(x)
    assert list(maps) == ["conv1", "conv2"]
    assert maps["conv1"].shape == (2, 32, 64, 64) and maps["conv2"].shape == (2, 64, 32, 32)
    assert (maps["conv1"] < 0).any() and (maps["conv2"] < 0).any()  # before the ReLU
    # conv2's map is conv2 applied to conv1's pooled ReLU
    want2 = net.convs[1](F.max_pool2d(F.relu(net.convs[0](x)), 2))
    torch.testing.assert_close(maps["conv1"], net.convs[0](x))
    torch.testing.assert_close(maps["conv2"], want2)
    assert FeatureNet(3, side=40)(torch.zeros(1, 1, 40, 40)).shape == (1, 3)
    assert "64x64 grey -> 4 classes" in net.describe() and "M parameters" in net.describe()


def test_bad_arguments():
    for side in (16, 36):
        with pytest.raises(ValueError, match="divisible by 8"):
            FeatureNet(3, side=side)
    with pytest.raises(ValueError, match="n_classes"):
        FeatureNet(1)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        _net(32)(torch.zeros(1, 1, 64, 64))


def test_shift_moves_images_by_at_most_four_pixels():
    x = torch.full((64, 1, 32, 32), -1.0)
    x[:, 0, 16, 16] = 1.0
    out = _Shift(4, 32, None)(x, torch.Generator().manual_seed(0))
    pos = (out[:, 0] == 1.0).flatten(1).float().argmax(1)
    rows, cols = pos // 32 - 16, pos % 32 - 16
    assert ((out == 1.0).flatten(1).sum(1) == 1).all()  # the pixel moved, nothing else appeared
    assert rows.abs().max() == 4 and cols.abs().max() == 4
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 20
    assert torch.equal(_Shift(0, 32, None)(x, torch.Generator()), x)


def _bars(n: int, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal (0) or vertical (1) bars at random positions on noise, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, -0.6, size=(n, side, side)).astype(np.float32)
    y = np.arange(n) % 2
    for i in range(n):
        at = rng.integers(4, side - 7)
        if y[i]:
            x[i, 4:-4, at : at + 3] = 1.0
        else:
            x[i, at : at + 3, 4:-4] = 1.0
    return x, y


def test_training_separates_bars_deterministically():
    torch.set_num_threads(1)
    x, y = _bars(200, 32, 0)
    kw = {"epochs": 3, "batch_size": 32, "seed": 1, "progress": False, "widths": (8, 16, 16, 16, 16)}
    net, hist = train_feature_net(x, y, 2, **kw)
    assert hist["n_train"] == 180 and hist["n_val"] == 20 and hist["chance"] == 0.5
    assert len(hist["train_loss"]) == len(hist["val_accuracy"]) == 3
    assert max(hist["val_accuracy"]) > 0.9
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    again, hist2 = train_feature_net(torch.from_numpy(x)[:, None], y, 2, **kw)
    assert hist2["train_loss"] == hist["train_loss"]
    for a, b in zip(net.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_errors():
    x, y = _bars(20, 32, 0)
    with pytest.raises(ValueError, match="labels must be in"):
        train_feature_net(x, y + 1, 2, progress=False)
    with pytest.raises(ValueError, match="fewer than 2 images"):
        train_feature_net(x, np.r_[np.zeros(19, int), 1], 2, progress=False)
    with pytest.raises(ValueError, match="one label per image"):
        train_feature_net(x, y[:5], 2, progress=False)


def test_save_load_round_trip(tmp_path):
    net = _net(32)
    path = save_feature_net(net, tmp_path / "sub" / "features.pt")
    back = load_feature_net(path)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.equal(back(x), net(x))
    assert torch.equal(back.features(x)["conv2"], net.features(x)["conv2"])
    assert back.config == net.config and not back.training
    with pytest.raises(FileNotFoundError, match="train_feature_net"):
        load_feature_net(tmp_path / "missing.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="save_feature_net"):
        load_feature_net(tmp_path / "other.pt")


def test_feature_vector():
    net = _net(32)
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 32, 32)).astype(np.float32)
    v = feature_vector(net, x, batch_size=2)
    assert v.shape == (5, 32 * 32 * 32 + 64 * 16 * 16)
    maps = net.features(torch.from_numpy(x)[:, None])
    torch.testing.assert_close(v[3, : 32 * 32 * 32], maps["conv1"][3].flatten())
    torch.testing.assert_close(v[3, 32 * 32 * 32 :], maps["conv2"][3].flatten())
    pooled = feature_vector(net, torch.from_numpy(x)[:, None], pool=2)
    assert pooled.shape == (5, 32 * 16 * 16 + 64 * 8 * 8)
    torch.testing.assert_close(pooled[0, 0], maps["conv1"][0, 0, :2, :2].mean())
    with pytest.raises(ValueError, match="pool"):
        feature_vector(net, x, pool=3)
