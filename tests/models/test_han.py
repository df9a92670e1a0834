"""Han et al. (2018, seed 002): the 2D ``dcgan2d`` and ``wgan2d`` models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainkern.models import GenerativeModel, build_model, model_names
from brainkern.models.han import DCGANDiscriminator2d, DCGANGenerator2d

SMALL = {"latent_dim": 8, "width": 4}


def _small(name: str, side: int = 16, channels: int = 1, **extra) -> GenerativeModel:
    torch.manual_seed(0)
    return build_model(name, shape=(side, side), channels=channels, **SMALL, **extra)


def test_registered_with_their_family_and_loss():
    assert {"dcgan2d", "wgan2d"} <= set(model_names("generative"))
    d, w = _small("dcgan2d"), _small("wgan2d")
    assert (d.family, d.loss) == ("gan", "standard")
    assert (w.family, w.loss) == ("gan", "wgan")
    assert list(d.networks()) == ["generator", "discriminator"]
    assert not d.conditional and d.num_classes == 0
    assert d.config == {
        "name": "dcgan2d",
        "shape": [16, 16],
        "channels": 1,
        "latent_dim": 8,
        "width": 4,
        "out_activation": "none",
        "d_activation": "elu",
        "negative_slope": 0.2,
    }
    assert build_model(**d.config).parameter_counts() == d.parameter_counts()


@pytest.mark.parametrize("side", [16, 64, 128])
@pytest.mark.parametrize("channels", [1, 4])
def test_shapes(side, channels):
    m = _small("dcgan2d", side, channels)
    assert m.shape == (side, side) and m.channels == channels
    x = m.generate(m.sample_latent(3))
    assert x.shape == (3, channels, side, side)
    assert m.discriminator(x).shape == (3, 1)
    # log2(S / 4) stride-2 layers on each side: one more per doubling of the side.
    strided = [c for c in m.discriminator.modules() if isinstance(c, nn.Conv2d) and c.stride == (2, 2)]
    up = [c for c in m.generator.modules() if isinstance(c, nn.ConvTranspose2d) and c.stride == (2, 2)]
    assert len(strided) == len(up) == {16: 2, 64: 4, 128: 5}[side]


def _generator_count(L: int, w: int, C: int, k: int) -> int:
    """By hand: 4x4 projection L -> w 2^(k-1) (no bias) + BN, k-1 halving layers (no bias) + BN,
    and the last 4x4 layer to C with bias."""
    chans = [w * 2 ** (k - 1 - i) for i in range(k)]
    total = L * chans[0] * 16 + 2 * chans[0]
    for a, b in zip(chans[:-1], chans[1:], strict=True):
        total += a * b * 16 + 2 * b
    return total + chans[-1] * C * 16 + C


def _discriminator_count(w: int, C: int, k: int) -> int:
    chans = [w * 2**i for i in range(k)]
    total = C * chans[0] * 16 + chans[0]  # first layer: bias, no BN
    for a, b in zip(chans[:-1], chans[1:], strict=True):
        total += a * b * 16 + 2 * b
    return total + chans[-1] * 16 + 1


def test_parameter_counts_at_64_and_128_by_hand():
    # Han et al.'s setting: latent 100, half of DCGAN's 64 channels, 4 sequences.
    m64 = build_model("dcgan2d", shape=(64, 64), channels=4)
    # 100*256*16 + 512 + 256*128*16 + 256 + 128*64*16 + 128 + 64*32*16 + 64 + 32*4*16 + 4
    assert _generator_count(100, 32, 4, 4) == 1_100_740
    # 4*32*16 + 32 + 32*64*16 + 128 + 64*128*16 + 256 + 128*256*16 + 512 + 256*16 + 1
    assert _discriminator_count(32, 4, 4) == 695_201
    assert m64.parameter_counts() == {"generator": 1_100_740, "discriminator": 695_201}
    m128 = build_model("wgan2d", shape=(128, 128), channels=4)
    assert m128.parameter_counts() == {
        "generator": _generator_count(100, 32, 4, 5),
        "discriminator": _discriminator_count(32, 4, 5),
    }
    assert m128.parameter_counts() == {"generator": 3_608_516, "discriminator": 2_797_473}
    text = m64.describe()
    assert "grid 64x64, 4 channels" in text and "1,100,740" in text and "695,201" in text


def test_defaults_are_han_et_al():
    m = build_model("dcgan2d")
    assert m.shape == (64, 64) and m.latent_dim == 100 and m.channels == 1
    G, D = m.generator, m.discriminator
    assert G.width == D.width == 32  # half of Radford et al.'s 64
    # no tanh at the generator's output: the last module is the transposed convolution
    assert isinstance(G.net[-1], nn.ConvTranspose2d) and not any(isinstance(x, nn.Tanh) for x in G.modules())
    acts = [type(x) for x in D.modules() if isinstance(x, (nn.ELU, nn.LeakyReLU, nn.ReLU))]
    assert acts == [nn.ELU] * 4
    convs = [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 10 and all(c.kernel_size == (4, 4) for c in convs)
    # BatchNorm: every generator layer but the last; every discriminator layer but the first and last
    assert sum(isinstance(x, nn.BatchNorm2d) for x in G.modules()) == 4
    assert sum(isinstance(x, nn.BatchNorm2d) for x in D.modules()) == 3
    assert D.net[0].bias is not None and isinstance(D.net[1], nn.ELU)


def test_radford_options():
    m = _small("dcgan2d", out_activation="tanh", d_activation="leaky_relu")
    assert isinstance(m.generator.net[-1], nn.Tanh)
    relus = [x for x in m.discriminator.modules() if isinstance(x, nn.LeakyReLU)]
    assert len(relus) == 2 and all(r.negative_slope == 0.2 for r in relus)
    with torch.no_grad():
        m.generator.net[-2].weight.mul_(1e3)
    x = m.generate(m.sample_latent(4))
    assert x.abs().max() <= 1.0 and x.abs().max() > 0.99


def test_dcgan_init():
    torch.manual_seed(0)
    m = build_model("dcgan2d", shape=(64, 64), channels=4)
    weights = torch.cat(
        [x.weight.flatten() for x in m.modules() if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d))]
    )
    assert weights.numel() > 1_700_000
    assert abs(weights.mean().item()) < 2e-4
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    biases = [x.bias for x in m.modules() if isinstance(x, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(b is None or torch.equal(b, torch.zeros_like(b)) for b in biases)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


def test_sample_shape_determinism_and_zero():
    m = _small("wgan2d", 32, 4)
    a = m.sample(5, generator=torch.Generator().manual_seed(3), batch_size=2)
    b = m.sample(5, generator=torch.Generator().manual_seed(3), batch_size=5)
    c = m.sample(5, generator=torch.Generator().manual_seed(4))
    assert a.shape == (5, 4, 32, 32) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)
    assert m.generator.training  # sample() restores the mode
    assert m.sample(0).shape == (0, 4, 32, 32)
    assert build_model("dcgan2d", shape=(16, 16), **SMALL).sample(0).shape == (0, 1, 16, 16)


def test_three_d_models_keep_one_channel():
    m = build_model("wgan-gp", shape=(16, 16, 16), latent_dim=4, width=2)
    assert m.channels == 1 and m.sample(0).shape == (0, 1, 16, 16, 16)
    assert "channels" not in repr(m).splitlines()[1] and "channels" not in m.describe()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shape": (64, 32)}, ValueError, "must be square"),
        ({"shape": (48, 48)}, ValueError, "power of two >= 16"),
        ({"shape": (8, 8)}, ValueError, "power of two >= 16"),
        ({"shape": (16, 16, 16)}, TypeError, "2 ints"),
        ({"channels": 0}, ValueError, "channels must be >= 1"),
        ({"out_activation": "sigmoid"}, ValueError, "out_activation must be one of"),
        ({"d_activation": "relu"}, ValueError, "d_activation must be one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_model("dcgan2d", **{**SMALL, "shape": (16, 16), **kwargs})


def test_bad_inputs_say_what_was_expected():
    G = DCGANGenerator2d(16, latent_dim=8, channels=2, width=4)
    D = DCGANDiscriminator2d(16, channels=2, width=4)
    with pytest.raises(ValueError, match=r"expected z of shape \(N, 8\), got \(2, 7\)"):
        G(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 2, 16, 16\), got \(2, 1, 16, 16\)"):
        D(torch.randn(2, 1, 16, 16))
