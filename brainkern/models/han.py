"""Han et al. (2018, seed 002): 2D DCGAN and WGAN on multi-sequence sagittal MR slices.

Han et al. train one architecture two ways: Radford et al.'s DCGAN (2016) with the
non-saturating GAN loss and Adam, and the same networks as a Wasserstein GAN with
weight clipping and RMSprop (Arjovsky et al. 2017). They change DCGAN in four ways,
the defaults here:

- the generator has no tanh at its output (``out_activation="none"``; ``"tanh"`` is
  Radford et al.'s);
- the discriminator uses ELU (``d_activation="elu"``; ``"leaky_relu"`` with slope 0.2
  is Radford et al.'s);
- every filter is 4x4 (the reference DCGAN's projection and strided filters are
  already 4x4 in its PyTorch form; 5x5 in its TensorFlow form);
- half the channels: Radford et al.'s networks have 64 channels at the largest
  feature map and 8 x 64 = 512 at 4x4; ``width=32`` is half of that.

The images are square, ``(N, C, S, S)`` with ``S`` a power of two >= 16, and ``C`` the
number of MR sequences stacked as channels (4 for Han et al.'s "Concat" of T1, T1c,
T2 and FLAIR). Both networks have ``log2(S) - 2`` stride-2 layers between the 4x4
map and the image, so 128x128 has one layer more than 64x64, its channel count
doubling again towards the 4x4 end (``16 w`` at 128, ``8 w`` at 64).

Weights follow Radford et al.: every convolution's weights from N(0, 0.02), biases
zero; BatchNorm starts at scale 1 and shift 0 (PyTorch's default; Radford et al.
do not say).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

from brainkern.models.base import GenerativeModel, _check_count
from brainkern.models.registry import register_model

__all__ = [
    "D_ACTIVATIONS",
    "OUT_ACTIVATIONS",
    "DCGANDiscriminator2d",
    "DCGANGenerator2d",
    "check_side",
    "dcgan2d",
    "wgan2d",
]

OUT_ACTIVATIONS = ("none", "tanh")
D_ACTIVATIONS = ("elu", "leaky_relu")
INIT_STD = 0.02  # Radford et al.'s weight initialisation
_BASE = 4  # side of the map the generator starts from and the discriminator ends at


def check_side(shape: int | Sequence[int], owner: str) -> int:
    """The side ``S`` of a square ``(S, S)`` grid (an int means a square), a power of two >= 16.

    Raises:
        TypeError: not an int or two ints.
        ValueError: not square, or a side that is not a power of two >= 16.
    """
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape), int(shape))
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or len(shape) != 2
        or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape)
    ):
        raise TypeError(f"{owner}: shape must be an int or 2 ints (H, W), got {shape!r}")
    h, w = (int(s) for s in shape)
    if h != w:
        raise ValueError(f"{owner}: the slice grid must be square, got shape ({h}, {w})")
    if h < 16 or h & (h - 1):
        raise ValueError(f"{owner}: the side must be a power of two >= 16 (64 or 128 in Han et al.), got {h}")
    return h


def _positive(value: object, name: str, owner: str) -> int:
    return _check_count(value, f"{owner}: {name}", minimum=1)


def _choose(value: str, allowed: tuple[str, ...], name: str, owner: str) -> str:
    if value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {value!r}")
    return value


def _dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation of every convolution in ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _stages(side: int) -> int:
    """Number of stride-2 layers between the 4x4 map and an ``side x side`` image."""
    return int(math.log2(side // _BASE))


class DCGANGenerator2d(nn.Module):
    """DCGAN generator (Radford et al. 2016) as Han et al. (2018) use it:
    ``z (N, latent_dim) -> x (N, channels, S, S)``.

    A 4x4 transposed convolution projects ``z`` (seen as a 1x1 map) to ``w 2^(k-1)``
    channels at 4x4, where ``k = log2(S / 4)``; then ``k - 1`` stride-2 4x4 transposed
    convolutions, each halving the channels and doubling the side, each followed by
    BatchNorm and ReLU; and a last stride-2 4x4 transposed convolution to ``channels``
    (with bias, no BatchNorm), followed by ``out_activation``.

    Args:
        shape: the image side ``S`` or ``(S, S)``, a power of two >= 16.
        latent_dim: size of ``z``.
        channels: image channels (MR sequences).
        width: ``w``, channels of the last hidden layer (32: half of Radford et al.'s 64).
        out_activation: ``"none"`` (Han et al.) or ``"tanh"`` (Radford et al.).

    Raises:
        TypeError, ValueError: a bad shape, non-positive sizes, an unknown activation;
            at call time, ``z`` not ``(N, latent_dim)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int] = 64,
        latent_dim: int = 100,
        channels: int = 1,
        width: int = 32,
        out_activation: str = "none",
    ) -> None:
        super().__init__()
        owner = "DCGANGenerator2d"
        self.side = check_side(shape, owner)
        self.latent_dim = _positive(latent_dim, "latent_dim", owner)
        self.channels = _positive(channels, "channels", owner)
        self.width = _positive(width, "width", owner)
        self.out_activation = _choose(out_activation, OUT_ACTIVATIONS, "out_activation", owner)
        k = _stages(self.side)
        chans = [self.width * 2 ** (k - 1 - i) for i in range(k)]  # 4x4 .. S/2 x S/2
        # Bias-free where BatchNorm follows: its shift makes a bias redundant.
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(self.latent_dim, chans[0], _BASE, 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers.append(nn.ConvTranspose2d(chans[-1], self.channels, 4, 2, 1, bias=True))
        if self.out_activation == "tanh":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"DCGANGenerator2d: expected z of shape (N, {self.latent_dim}), got {tuple(z.shape)}"
            )
        return self.net(z[:, :, None, None])

    def extra_repr(self) -> str:
        return (
            f"side={self.side}, latent_dim={self.latent_dim}, channels={self.channels}, "
            f"width={self.width}, out_activation={self.out_activation!r}"
        )


class DCGANDiscriminator2d(nn.Module):
    """DCGAN discriminator (Radford et al. 2016) as Han et al. (2018) use it:
    ``x (N, channels, S, S) -> (N, 1)`` logits (critic values for the WGAN).

    ``k = log2(S / 4)`` stride-2 4x4 convolutions, the channels doubling from ``w``:
    the first with bias and no BatchNorm, the others bias-free with BatchNorm, each
    followed by ``d_activation``; then a 4x4 convolution of the 4x4 map to one value
    (no activation: a logit for the standard loss, an unbounded score for the WGAN).

    Args:
        shape: the image side ``S`` or ``(S, S)``, a power of two >= 16.
        channels: image channels.
        width: ``w``, channels of the first layer (32: half of Radford et al.'s 64).
        d_activation: ``"elu"`` (Han et al.) or ``"leaky_relu"`` (slope
            ``negative_slope``, Radford et al.'s 0.2).
        negative_slope: the LeakyReLU's slope.

    Raises:
        TypeError, ValueError: a bad shape, non-positive sizes, an unknown activation;
            at call time, an input that is not ``(N, channels, S, S)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int] = 64,
        channels: int = 1,
        width: int = 32,
        d_activation: str = "elu",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        owner = "DCGANDiscriminator2d"
        self.side = check_side(shape, owner)
        self.channels = _positive(channels, "channels", owner)
        self.width = _positive(width, "width", owner)
        self.d_activation = _choose(d_activation, D_ACTIVATIONS, "d_activation", owner)
        self.negative_slope = float(negative_slope)
        k = _stages(self.side)
        chans = [self.channels] + [self.width * 2**i for i in range(k)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(self._activation())
        layers.append(nn.Conv2d(chans[-1], 1, _BASE, 1, 0, bias=True))
        self.net = nn.Sequential(*layers)
        _dcgan_init(self)

    def _activation(self) -> nn.Module:
        if self.d_activation == "elu":
            return nn.ELU()
        return nn.LeakyReLU(self.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, self.side, self.side):
            raise ValueError(
                f"DCGANDiscriminator2d: expected images of shape (N, {self.channels}, {self.side}, "
                f"{self.side}), got {tuple(x.shape)}"
            )
        return self.net(x).flatten(1)

    def extra_repr(self) -> str:
        return (
            f"side={self.side}, channels={self.channels}, width={self.width}, "
            f"d_activation={self.d_activation!r}"
        )


def _register(name: str, loss: str, doc: str) -> Callable[..., GenerativeModel]:
    """Registers the factory of one of Han et al.'s two models: the same keywords (the
    architecture), its own ``loss``."""

    def factory(
        shape: Sequence[int] = (64, 64),
        channels: int = 1,
        latent_dim: int = 100,
        width: int = 32,
        out_activation: str = "none",
        d_activation: str = "elu",
        negative_slope: float = 0.2,
    ) -> GenerativeModel:
        side = check_side(shape, name)
        return GenerativeModel(
            name=name,
            shape=(side, side),
            latent_dim=latent_dim,
            family="gan",
            loss=loss,
            channels=channels,
            networks={
                "generator": DCGANGenerator2d(side, latent_dim, channels, width, out_activation),
                "discriminator": DCGANDiscriminator2d(side, channels, width, d_activation, negative_slope),
            },
        )

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = doc
    return register_model(name)(factory)


_RAISES = """

    Raises:
        TypeError, ValueError: a grid that is not square with a power-of-two side >= 16,
            non-positive sizes, an unknown activation.
"""

dcgan2d = _register(
    "dcgan2d",
    "standard",
    """Han et al.'s 2D DCGAN (Radford et al.'s networks, half width, ELU, no tanh) on
    multi-sequence slices; standard GAN loss.

    Generator ``(N, latent_dim) -> (N, channels, S, S)``, discriminator
    ``(N, channels, S, S) -> (N, 1)``; see :class:`DCGANGenerator2d` and
    :class:`DCGANDiscriminator2d` for the arguments."""
    + _RAISES,
)

wgan2d = _register(
    "wgan2d",
    "wgan",
    """Han et al.'s 2D WGAN: the dcgan2d networks trained as a Wasserstein GAN with weight
    clipping (Arjovsky et al. 2017; presets add RMSprop and train.weight_clip).

    The loss is ``"wgan"`` (no gradient penalty): the critic must be kept Lipschitz by
    ``train.weight_clip``, as the ``han2018-wgan-*`` presets do."""
    + _RAISES,
)
