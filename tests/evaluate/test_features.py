"""Feature extractors: MedicalNet's ResNet-50 layout and checkpoint loading, the autoencoder."""

import numpy as np
import pytest
import torch

from brainkern.evaluate import extract_features, fit_autoencoder, resnet50_3d
from brainkern.evaluate.features import AutoencoderExtractor, ResNet3d, load_medicalnet_weights
from tests.evaluate.test_distribution import _structured


def _volumes(n: int, grid=(16, 16, 16), seed: int = 0) -> torch.Tensor:
    return _structured(n, seed, grid)


@pytest.fixture(scope="module")
def resnet() -> ResNet3d:
    torch.manual_seed(0)
    return resnet50_3d(allow_random=True)


def test_resnet50_layout_matches_medicalnet(resnet):
    # MedicalNet's ResNet-50 trunk: 46.16 M parameters without the segmentation head.
    assert sum(p.numel() for p in resnet.parameters()) == 46_155_072
    assert tuple(resnet.conv1.weight.shape) == (64, 1, 7, 7, 7) and resnet.conv1.stride == (2, 2, 2)
    assert [len(s) for s in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)] == [3, 4, 6, 3]
    # Stage 2 strides; stages 3 and 4 dilate (2, 4) instead, in every block.
    assert resnet.layer2[0].conv2.stride == (2, 2, 2)
    assert all(b.conv2.stride == (1, 1, 1) and b.conv2.dilation == (2, 2, 2) for b in resnet.layer3)
    assert all(b.conv2.dilation == (4, 4, 4) and b.conv2.padding == (4, 4, 4) for b in resnet.layer4)
    # Projection shortcuts (type B) exactly where the shape changes.
    assert [i for i, b in enumerate(resnet.layer1) if b.downsample is not None] == [0]
    assert resnet.layer3[0].downsample[0].stride == (1, 1, 1)
    keys = set(resnet.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.bias"} <= keys


def test_resnet_features_shape_and_grid(resnet):
    x = _volumes(2)
    f = extract_features(x, resnet, batch_size=1)
    assert f.shape == (2, 2048) and f.dtype == np.float64
    # Stages 3 and 4 keep 1/8 of the grid: a 16^3 volume ends at 2^3 before the pooling.
    with torch.no_grad():
        y = torch.nn.functional.max_pool3d(resnet.conv1(x[:1]), 3, 2, 1)
        y = resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(y))))
    assert tuple(y.shape) == (1, 2048, 2, 2, 2)
    # Batches do not change the features (eval mode: no batch statistics).
    torch.testing.assert_close(f, extract_features(x, resnet, batch_size=2), rtol=1e-5, atol=1e-6)


def test_random_resnet_refused_for_metrics():
    model = resnet50_3d()
    with pytest.raises(ValueError, match="random weights"):
        extract_features(_volumes(1), model)
    assert "random weights" in resnet50_3d(allow_random=True).name


def test_medicalnet_checkpoint_loads_with_module_prefix(tmp_path, resnet):
    # A checkpoint as MedicalNet writes it: DataParallel's "module." prefix, the segmentation
    # head, and no num_batches_tracked counters (older PyTorch).
    state = {
        f"module.{k}": v * 0.5 if k.endswith("weight") else v
        for k, v in resnet.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    state["module.conv_seg.0.weight"] = torch.zeros(2048, 32, 2, 2, 2)
    path = tmp_path / "resnet_50.pth"
    torch.save({"state_dict": state}, path)
    model = resnet50_3d(path)
    assert model.name == "medicalnet-resnet50 (resnet_50.pth)"
    torch.testing.assert_close(model.conv1.weight, resnet.conv1.weight * 0.5)
    torch.testing.assert_close(model.layer4[2].bn3.weight, resnet.layer4[2].bn3.weight * 0.5)
    assert extract_features(_volumes(1), model).shape == (1, 2048)
    report = load_medicalnet_weights(ResNet3d(), path)
    assert report["ignored"] == ["conv_seg.0.weight"] and len(report["absent_counters"]) == 53


def test_medicalnet_checkpoint_errors(tmp_path, resnet):
    state = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    del state["module.layer2.0.conv1.weight"]
    state["module.fc.weight"] = torch.zeros(3, 2048)
    state["module.conv1.weight"] = torch.zeros(64, 3, 7, 7, 7)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(ValueError) as err:
        resnet50_3d(bad)
    msg = str(err.value)
    assert "missing: layer2.0.conv1.weight" in msg
    assert "unexpected: fc.weight" in msg and "other shape: conv1.weight" in msg
    with pytest.raises(FileNotFoundError):
        resnet50_3d(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        resnet50_3d(tmp_path / "junk.pth")


def test_autoencoder_deterministic_learns_and_takes_odd_grids():
    train = _volumes(24, seed=1)
    a = fit_autoencoder(train, iters=40, batch_size=8, seed=3)
    b = fit_autoencoder(train, iters=40, batch_size=8, seed=3)
    c = fit_autoencoder(train, iters=40, batch_size=8, seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    # Training lowers the reconstruction error well below the untrained network's.
    untrained = AutoencoderExtractor()
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(untrained(train), train)
        after = torch.nn.functional.mse_loss(a(train), train)
    assert after < 0.5 * before
    f = extract_features(_volumes(5), a, batch_size=2)
    assert f.shape == (5, a.feature_dim) == (5, 128) and a.name == "autoencoder-3d"
    odd = fit_autoencoder(_volumes(4, grid=(11, 9, 13)), iters=2, batch_size=2)
    assert odd(_volumes(2, grid=(11, 9, 13))).shape == (2, 1, 11, 9, 13)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 8"):
        fit_autoencoder(_volumes(4, grid=(6, 16, 16)), iters=1)
    with pytest.raises(ValueError, match="at least 2"):
        fit_autoencoder(_volumes(1), iters=1)
    with pytest.raises(ValueError, match="iters"):
        fit_autoencoder(_volumes(4), iters=0)
    ae = AutoencoderExtractor()
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(_volumes(2), ae, batch_size=0)
    x = _volumes(2)
    x[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        extract_features(x, ae)
