"""King et al.'s SN-GAN / alpha-SN-GAN networks and conditioning schemes (brainkern.models.king)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainkern.models import build_model
from brainkern.models.king import (
    PerClass,
    ShuffleGenerator,
    ShuffleUp3d,
    SNCodeDiscriminator,
    SNDiscriminator,
)
from brainkern.nn import SNConv3d, SNLinear, spectral_norm_update

GRID = (16, 16, 16)


def _tiny(name: str, conditioning: str = "none", **kw):
    extra = {"code_hidden": 16} if name == "alpha-sn-gan" else {}
    return build_model(
        name, shape=GRID, latent_dim=8, width=4, conditioning=conditioning, num_classes=2, **extra, **kw
    )


def test_paper_sizes_at_64():
    """Fig. S2: the generator has exactly the paper's 25,681,600 parameters; Figs. S3-S5 list
    2,770,977 (discriminator), 19,140,936 (encoder) and 6,244,353 (code discriminator): brainkern's
    differ by 448, 448 and 1 (biases the figures do not count the same way)."""
    model = build_model("alpha-sn-gan", shape=(64, 64, 64))
    counts = model.parameter_counts()
    assert counts["generator"] == 25_681_600
    assert abs(counts["discriminator"] - 2_770_977) <= 448
    assert abs(counts["encoder"] - 19_140_936) <= 448
    assert abs(counts["code_discriminator"] - 6_244_353) <= 1
    assert model.family == "alpha" and model.loss == "hinge" and not model.conditional
    sn = build_model("sn-gan", shape=(64, 64, 64))
    assert sn.family == "gan" and sn.loss == "hinge" and list(sn.networks()) == ["generator", "discriminator"]


def test_icnr_upsampling_starts_as_nearest_neighbour():
    torch.manual_seed(0)
    up = ShuffleUp3d(3, 2)
    x = torch.randn(2, 3, 4, 5, 3)
    y = up(x)
    assert y.shape == (2, 2, 8, 10, 6)
    blocks = y.unflatten(2, (4, 2)).unflatten(4, (5, 2)).unflatten(6, (3, 2))  # (N, C, 4, 2, 5, 2, 3, 2)
    first = blocks[:, :, :, :1, :, :1, :, :1]
    torch.testing.assert_close(blocks, first.expand_as(blocks))
    # and it is nearest-neighbour upsampling of one 3x3x3 convolution
    w = up.conv.weight[::8]
    ref = torch.nn.functional.conv3d(x, w, padding=1).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(y, ref.repeat_interleave(2, 4))


def test_generator_shapes_range_and_labels():
    g = ShuffleGenerator(GRID, 8, width=4, num_classes=3)
    x = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert x.shape == (5, 1, *GRID) and x.abs().max() <= 1
    with pytest.raises(ValueError, match="give labels"):
        g(torch.randn(5, 8))
    with pytest.raises(ValueError, match="codes of shape"):
        g(torch.randn(5, 7), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of 16"):
        ShuffleGenerator((16, 16, 20), 8)


def test_discriminator_is_spectrally_normalised():
    torch.manual_seed(0)
    d = SNDiscriminator(GRID, width=4)
    layers = [m for m in d.modules() if isinstance(m, SNConv3d)]
    assert len(layers) == 5 and not any(type(m) is nn.Conv3d for m in d.modules())
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(10.0)
    for _ in range(60):
        spectral_norm_update(d)
    for layer in layers:
        assert torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2) > 2
        w = layer.normalized_weight().detach().flatten(1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=5e-3)
    assert d(torch.randn(3, 1, *GRID)).shape == (3, 1)
    code = SNCodeDiscriminator(8, hidden=16)
    assert sum(isinstance(m, SNLinear) for m in code.modules()) == 3
    assert code(torch.randn(4, 8)).shape == (4, 1)


def test_projection_discriminator_adds_the_class_inner_product():
    torch.manual_seed(0)
    d = SNDiscriminator(GRID, width=4, num_classes=3, projection=True).eval()
    x = torch.randn(4, 1, *GRID)
    labels = torch.tensor([0, 2, 1, 2])
    h = x
    for block in d.blocks:
        h = block(h)
    expected = d.head(h).flatten(1)
    e = d.embed.normalized_weight()  # (8w, C)
    expected = expected + (e[:, labels].T * h.sum((2, 3, 4))).sum(1, keepdim=True)
    torch.testing.assert_close(d(x, labels), expected)
    with pytest.raises(ValueError, match="give labels"):
        d(x)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        SNDiscriminator(GRID, projection=True)


def test_per_class_routes_each_sample_to_its_network():
    torch.manual_seed(0)
    nets = [nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)]
    per = PerClass(nets)
    x = torch.randn(6, 3)
    labels = torch.tensor([2, 0, 2, 1, 0, 2])
    out = per(x, labels)
    for i, k in enumerate(labels.tolist()):
        torch.testing.assert_close(out[i], nets[k](x[i]))
    out[labels == 1].sum().backward()
    assert all(n.weight.grad is None or not n.weight.grad.any() for n in (nets[0], nets[2]))
    assert nets[1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=">= 2"):
        PerClass([nn.Linear(3, 2)])


@pytest.mark.parametrize("name", ["sn-gan", "alpha-sn-gan"])
@pytest.mark.parametrize("conditioning", ["none", "projection", "aux-classifier", "separate"])
def test_conditioning_schemes_build_and_sample(name, conditioning):
    model = _tiny(name, conditioning)
    nets = model.networks()
    assert model.conditional == (conditioning != "none")
    assert ("classifier" in nets) == (conditioning == "aux-classifier")
    if conditioning == "aux-classifier":
        assert not any(p.requires_grad for p in nets["classifier"].parameters())
        assert not bool(nets["classifier"].fitted)
    if conditioning == "separate":
        assert all(isinstance(net, PerClass) for net in nets.values())
    labels = torch.tensor([0, 1, 1, 0]) if model.conditional else None
    x = model.sample(4, labels, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, *GRID) and torch.isfinite(x).all()
    # rebuilt from its config, the same architecture
    again = build_model(**model.config)
    assert again.parameter_counts() == model.parameter_counts()


def test_bad_conditioning():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        build_model("sn-gan", shape=GRID, conditioning="concat", num_classes=2)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        build_model("sn-gan", shape=GRID, conditioning="projection")
    # unconditional: a class count from the data is ignored
    assert not build_model("sn-gan", shape=GRID, width=4, latent_dim=8, num_classes=2).conditional
