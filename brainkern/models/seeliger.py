"""Seeliger et al. (2018, seed 004): the DCGAN that serves as the image prior of their
reconstructions of seen images from fMRI (:mod:`brainkern.reconstruct`).

Section 2.2 of the paper describes one architecture, trained separately on each stimulus
domain (handwritten characters, natural grey-scale photographs), on 64x64 grey-scale images
in [-1, 1]:

- generator: ``z`` (50 values) through a linear layer to 512 channels at 4x4, then four
  stride-2 4x4 transposed convolutions to 256, 128, 64 and 1 channels, BatchNorm and ReLU
  between them and tanh at the output. That is Radford et al.'s generator as
  :class:`~brainkern.models.han.DCGANGenerator2d` builds it with ``width=64`` and
  ``out_activation="tanh"`` (its 4x4 transposed convolution of the 1x1 code is the linear
  layer); the paper's clipping of the output to [-1, 1] is what tanh already does.
- discriminator (:class:`SeeligerDiscriminator`): Gaussian noise of standard deviation 0.15
  added to every input (Salimans et al.'s "handicap"); a 3x3 stride-1 convolution to 32
  channels, three 4x4 stride-2 convolutions to 64, 128 and 256 channels, each convolution
  followed by BatchNorm and ELU; a linear layer from all final activations to one logit.
  :meth:`SeeligerDiscriminator.features` returns the first layer's activations, which the
  paper matches between real and generated batches (Salimans et al.'s feature matching;
  ``train.feature_matching`` in :mod:`brainkern.train.recipes`).
- latent prior: ``z`` uniform in ``[-1, 1]^50``, divided by its length (a point of the unit
  sphere), so that a linear map from brain responses has a bounded target
  (:class:`SeeligerModel`, :func:`sphere`).

brainkern's choices where the paper is silent: the noise is added in training mode only (an
evaluated discriminator is deterministic); the convolutions followed by BatchNorm have no
bias (BatchNorm's shift makes one redundant), the final linear layer has one; weights as
Radford et al. (convolutions from N(0, 0.02), biases zero; the linear layer too); the same
four layers for other sides (a power of two >= 16: the final map is ``S / 8`` on a side).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brainkern.models.base import GenerativeModel
from brainkern.models.han import INIT_STD, DCGANGenerator2d, _dcgan_init, _positive, check_side
from brainkern.models.registry import register_model

__all__ = ["INPUT_NOISE", "SeeligerDiscriminator", "SeeligerModel", "seeliger_dcgan", "sphere"]

INPUT_NOISE = 0.15  # Seeliger et al.'s standard deviation of the discriminator's input noise
_STRIDED = 3  # stride-2 layers of the discriminator after its first (stride-1) layer
_SQRT_HALF = 0.5**0.5


def sphere(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``z / ||z||`` along the last axis: codes ``(..., L)`` moved onto the unit sphere.

    Seeliger et al. normalise their uniform codes so, and again after averaging an
    ensemble's predicted codes. The length is clamped at ``eps`` (a zero code stays zero
    rather than becoming NaN). Differentiable.
    """
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


class SeeligerDiscriminator(nn.Module):
    """Seeliger et al.'s DCGAN discriminator: ``x (N, channels, S, S) -> (N, 1)`` logits.

    In training mode ``input_noise`` times standard normal noise (torch's global generator)
    is added to the input first. Then a 3x3 stride-1 convolution to ``width`` channels and
    three 4x4 stride-2 convolutions doubling the channels (``width`` 32: 32, 64, 128, 256 as
    in the paper), each followed by BatchNorm and ELU; a linear layer maps the
    ``8 width (S / 8)^2`` final activations to one logit.

    Args:
        shape: the image side ``S`` or ``(S, S)``, a power of two >= 16 (64 in the paper).
        channels: image channels (1: grey-scale).
        width: channels of the first layer.
        input_noise: standard deviation of the training-time input noise (0: none).
        first_norm: BatchNorm after the first convolution (the paper: every layer is normalised).
            ``False`` leaves the input layer unnormalised, as Radford et al. advise; brainkern's
            quick reconstruction preset needs it (with the paper's normalised input layer its small
            prior stayed noise for 300 iterations).

    Raises:
        TypeError, ValueError: a bad shape, non-positive sizes, a negative noise; at call
            time, an input that is not ``(N, channels, S, S)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int] = 64,
        channels: int = 1,
        width: int = 32,
        input_noise: float = INPUT_NOISE,
        first_norm: bool = True,
    ) -> None:
        super().__init__()
        owner = "SeeligerDiscriminator"
        self.side = check_side(shape, owner)
        self.channels = _positive(channels, "channels", owner)
        self.width = _positive(width, "width", owner)
        self.input_noise = _noise_level(input_noise, owner)
        self.first = nn.Sequential(
            nn.Conv2d(self.channels, self.width, 3, 1, 1, bias=not first_norm),
            nn.BatchNorm2d(self.width) if first_norm else nn.Identity(),
            nn.ELU(),
        )
        self.first_norm = bool(first_norm)
        layers: list[nn.Module] = []
        for i in range(_STRIDED):
            c_in, c_out = self.width * 2**i, self.width * 2 ** (i + 1)
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ELU()]
        self.body = nn.Sequential(*layers)
        final = self.side // 2**_STRIDED
        self.head = nn.Linear(self.width * 2**_STRIDED * final * final, 1)
        _dcgan_init(self)
        nn.init.normal_(self.head.weight, 0.0, INIT_STD)
        nn.init.zeros_(self.head.bias)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, self.side, self.side):
            raise ValueError(
                f"SeeligerDiscriminator: expected images of shape (N, {self.channels}, {self.side}, "
                f"{self.side}), got {tuple(x.shape)}"
            )

    def _noised(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.input_noise > 0:
            return x + self.input_noise * torch.randn_like(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's activations ``(N, width, S, S)`` (after its BatchNorm and ELU) of
        ``x (N, channels, S, S)``, noised first in training mode as :meth:`forward` does:
        what Seeliger et al.'s feature matching compares."""
        self._check(x)
        return self.first(self._noised(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.features(x)).flatten(1))

    def extra_repr(self) -> str:
        return (
            f"side={self.side}, channels={self.channels}, width={self.width}, input_noise={self.input_noise}"
        )


def _noise_level(value: object, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{owner}: input_noise must be a finite number >= 0, got {value!r}")
    return float(value)


class SeeligerModel(GenerativeModel):
    """A :class:`GenerativeModel` whose latent prior is Seeliger et al.'s: uniform on the
    cube ``[-1, 1]^latent_dim``, then projected onto the unit sphere (:func:`sphere`)."""

    def sample_latent(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` codes ``(n, latent_dim)``, float32, of unit length: each uniform on
        ``[-1, 1]^latent_dim``, then divided by its length.

        The uniform draws are the base class's standard normal ones mapped through
        ``erf(g / sqrt(2))`` (uniform on (-1, 1) for standard normal ``g``), so the contract
        is :meth:`GenerativeModel.sample_latent`'s: with a seeded CPU ``generator`` the codes
        are drawn on the CPU and moved to ``device`` (the same codes on every device); without
        one, by ``device``'s global generator.

        Raises:
            ValueError: ``n < 0``.
        """
        g = super().sample_latent(n, generator=generator, device=device)
        return sphere(torch.erf(g * _SQRT_HALF))


@register_model("seeliger-dcgan")
def seeliger_dcgan(
    shape: Sequence[int] = (64, 64),
    channels: int = 1,
    latent_dim: int = 50,
    width: int = 64,
    d_width: int = 32,
    input_noise: float = INPUT_NOISE,
    d_first_norm: bool = True,
) -> GenerativeModel:
    """Seeliger et al.'s (2018) DCGAN image prior on grey-scale stimuli; standard GAN loss.

    Generator ``(N, latent_dim) -> (N, channels, S, S)`` in [-1, 1]
    (:class:`~brainkern.models.han.DCGANGenerator2d` with tanh, ``width`` channels at its
    last hidden layer: 64 gives the paper's 512-256-128-64), discriminator
    ``(N, channels, S, S) -> (N, 1)`` (:class:`SeeligerDiscriminator`, first layer
    ``d_width`` channels) with a ``features`` method for feature matching; codes uniform on
    the cube and normalised onto the unit sphere (:class:`SeeligerModel`). ``d_first_norm``
    is the discriminator's ``first_norm`` (True: the paper's).

    Raises:
        TypeError, ValueError: a grid that is not square with a power-of-two side >= 16,
            non-positive sizes, a negative input noise.
    """
    side = check_side(shape, "seeliger-dcgan")
    return SeeligerModel(
        name="seeliger-dcgan",
        shape=(side, side),
        latent_dim=latent_dim,
        family="gan",
        loss="standard",
        channels=channels,
        networks={
            "generator": DCGANGenerator2d(side, latent_dim, channels, width, "tanh"),
            "discriminator": SeeligerDiscriminator(side, channels, d_width, input_noise, d_first_norm),
        },
    )
